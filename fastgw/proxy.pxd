# C-level declarations of fastgw/proxy.pyx, cimported by the protocols.

from fastgw._core.router cimport RouteMatch
from fastgw.exchange cimport Downstream, Exchange
from fastgw.plan cimport RoutePlan, SnapshotPlan
from fastgw.upstream cimport Pool, ResponseListener, Upstream, UpstreamConnection


cdef class RequestIds:
    cdef readonly str prefix
    cdef bytes prefix_field             # the prefix and "-", as the ids' bytes start
    cdef public unsigned long long counter

    cdef bytes next_field(self)
    cpdef str next(self)


cdef class Collector(Downstream):
    cdef public int status
    cdef public list headers, chunks
    cdef public Py_ssize_t size, limit
    cdef public bint too_large, cut, finished
    cdef public bytes request_body
    cdef public object done

    cdef _done(self)


cdef class Proxy(ResponseListener):
    cdef public SnapshotPlan snapshot   # a snapshot.Snapshot
    cdef public object loop
    # the access log (the ``access_log`` property: assigning it sets ``_logs_access``),
    # and whether it may write at all (False: "off", and the proxy does not call it)
    cdef object _access_log
    cdef bint _logs_access
    cdef public RequestIds ids
    cdef public bint draining
    # what a protocol switch becomes, by a route's ``websocket`` mode ("http": the
    # WebSocket adapter, set by the worker); a callable (proxy, ex, route, upstream)
    cdef public dict adapters

    cpdef handle(self, Exchange ex)
    cdef _end(self, Exchange ex, exc)
    cpdef fail(self, Exchange ex, int status, str message, list extra=*)
    cpdef prepare(self, Exchange ex, client_request_id)
    cdef _route_and_send(self, Exchange ex, SnapshotPlan snap)
    cdef bint _preflight(self, Exchange ex, SnapshotPlan snap, headers)
    cdef _run_policies(self, Exchange ex, RoutePlan route, RouteMatch match, Py_ssize_t start)
    cdef _answer(self, Exchange ex)
    cdef _forward(self, Exchange ex, RoutePlan route, RouteMatch match)
    cdef _finished(self, Exchange ex, double now=*)
    cdef _send(self, Exchange ex, Pool pool)
    cdef bint _retry(self, Exchange ex, Pool failed, error)
    cpdef bint retry_status(self, Exchange ex, int status)
    cpdef object event_loop(self)
    cpdef bytes upstream_head(self, Exchange ex, str path, str target_address)
    cpdef upstream_done(self, Exchange ex, UpstreamConnection conn, error)
    cpdef Exchange internal_exchange(self, Exchange parent, str path, bytes query, list headers,
                                     Collector collector)
    cpdef send_internal(self, Exchange ex, Upstream upstream, double timeout)
    cpdef respond(self, Exchange ex, int status, list fields, bytes body)
    cpdef finish(self, Exchange ex)
