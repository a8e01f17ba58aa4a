# cython: boundscheck=True, wraparound=True
# (Python semantics for indexing: this module is the request path, not the numeric core.)
"""The life of a request, whatever protocol brought it: route it, run its route's policy
chain, forward it upstream, relay the answer, log it. This is the one place that turns
errors (and the policies' answers) into responses.

``Proxy.handle(ex)`` reads the current ``Snapshot`` once, so a reload (one assignment to
``Proxy.snapshot``) never changes the world under a request in flight.

What it writes upstream (README "What it does with a request"): the normalised, possibly
rewritten path and the raw query; the client's headers minus hop-by-hop ones and minus the framing,
which we write ourselves; ``X-Forwarded-For/-Proto/-Host`` (the client's own only when the
peer is a trusted proxy, else replaced), ``X-Request-Id`` (kept when sane, else made) and
``traceparent`` (passed on when valid, else started). A WebSocket request on a route with
``websocket = "proxy"`` goes with ``Upgrade: websocket`` and ``Connection: upgrade``, and
becomes a tunnel when the upstream answers 101 (``fastgw.upstream``); on a route without
``websocket`` its Upgrade is dropped like any hop-by-hop field.

Compiled (Cython, declared in ``proxy.pxd``): this is the per-request path, typed so
that its reads of the exchange, the route and the pool are C reads. It knows a route and
the snapshot by their C part (``fastgw.plan``: ``RoutePlan``, ``SnapshotPlan``, which
``snapshot.Route`` and ``snapshot.Snapshot`` inherit), so reading a route's upstream,
chain or timeout, or the snapshot's router, looks nothing up; the path sent upstream is
a C call (``RoutePlan.path_for``), and an access log that is "off" is not called at all.

Internal exchanges: requests fastgw itself sends upstream on behalf of an exchange (the
WebSocket adapter's POSTs, ``websocket = "http"``). ``internal_exchange`` makes one whose
``Downstream`` is a ``Collector`` (the response kept whole, then handed to a callback),
and ``send_internal`` sends it on an upstream past routing and the route's policies,
through the same pools, balancing, health, circuits, retries and timeouts as a
proxied request, and into the access log like one. A ``websocket = "http"`` route's
handshake goes, once its policies passed, to the adapter in ``adapters``; so does every
request of a route with ``[routes.aggregate]`` (``adapters["aggregate"]``, fastgw.aggregate).

The chain (``fastgw.policy``): its request phase runs as C calls in ``_run_policies``;
a policy that waits gets a task for that request only (``_wait_then_go_on``), and the
walk goes on after it; its log phase runs in ``_finished``; its response-head phase
runs wherever a head is written (``exchange.head_fields``).

May import: the standard library, orjson, fastgw.errors, fastgw.exchange, fastgw.plan,
fastgw.policy, fastgw.upstream (the handler drives it), fastgw.logs; snapshot only for
types.
"""

import asyncio
import logging
import os
import re

import orjson

from fastgw.errors import FastGWError, UpstreamError, UpstreamRetryable, UpstreamTimeout
from libc.stdint cimport int64_t

from fastgw._core.metrics cimport (
    U_CONNECT_FAILURES, U_RETRIES, U_TIMEOUTS, RouteCounters, UpstreamCounters, method_class, unmatched)
from fastgw._core.router cimport RouteMatch
from fastgw._core.wire cimport (
    H_CONNECTION, H_HOST, H_OTHER, H_TRACEPARENT, H_X_FORWARDED_FOR, H_X_FORWARDED_HOST,
    H_X_FORWARDED_PROTO, H_FORWARDED, H_X_REAL_IP, HeadWriter, new_traceparent)
from fastgw._core.wire import seed_trace_ids
from fastgw.exchange cimport (
    BODY_CHUNKED, BODY_LENGTH, BODY_NONE, BODY_TUNNEL, Downstream, Exchange, FieldView, head_fields, monotonic,
    new_exchange)
from fastgw.plan cimport RoutePlan, SnapshotPlan
from fastgw.policy cimport ANSWERED, CONTINUE, WAIT, Chain, Policy
from fastgw.upstream cimport Pool, ResponseListener, Upstream, UpstreamConnection
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

log = logging.getLogger("fastgw")

REASONS = {
    101: "Switching Protocols",
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    417: "Expectation Failed",
    422: "Unprocessable Content", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}

# Request headers forwarded as the client sent them: every field but the named ones of
# _core.wire (H_OTHER), and Host. The named ones are hop-by-hop (RFC 9110 §7.6.1), the
# framing we write ourselves, Expect (we answer 100-continue), and what we set; of those,
# these are believed (passed on) when the peer is a trusted proxy:
cdef unsigned int TRUSTED_FORWARDING_MASK = (
    1 << H_X_FORWARDED_PROTO | 1 << H_X_FORWARDED_HOST | 1 << H_FORWARDED | 1 << H_X_REAL_IP)


def _seed_trace_ids():
    seed_trace_ids(os.urandom(16))


# Each process its own trace ids: seeded now and again in every forked worker.
_seed_trace_ids()
os.register_at_fork(after_in_child=_seed_trace_ids)

# Methods a retry may send again after a 502/503 (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))

_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@+=/-]{1,200}\Z")
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}\Z")


cdef class RequestIds:
    """Request ids unique per process run: a random prefix and a counter (cheaper than
    a UUID per request, and sortable within one worker)."""

    def __init__(self):
        self.prefix = os.urandom(6).hex()
        self.prefix_field = self.prefix.encode() + b"-"
        self.counter = 0

    cdef bytes next_field(self):
        """The next id as the X-Request-Id bytes (PERF: made in C, one object; its str
        only when something asks, ``Exchange.request_id``)."""
        self.counter += 1
        cdef char out[64]
        cdef Py_ssize_t prefix_length = len(self.prefix_field), i = 64
        cdef unsigned long long n = self.counter
        while True:
            i -= 1
            out[i] = b"0123456789abcdef"[n & 15]
            n >>= 4
            if n == 0:
                break
        i -= prefix_length
        memcpy(out + i, PyBytes_AS_STRING(self.prefix_field), prefix_length)
        return PyBytes_FromStringAndSize(out + i, 64 - i)

    cpdef str next(self):
        return self.next_field().decode("ascii")


def error_body(int status, str message, str request_id):
    return orjson.dumps({"error": message, "status": status, "request_id": request_id})


cdef class Collector(Downstream):
    """The ``Downstream`` of an internal exchange: the response kept whole (at most
    ``limit`` bytes of body, else ``too_large`` and the rest dropped), then
    ``done(collector)`` called once, when it is complete or was cut (``cut``: the upstream
    failed mid-body). A failure before any answer arrives as fastgw's own error answer
    (502, 503, 504), as a client would get it. ``request_body`` is kept so that a request
    that met a stale pooled connection can be sent again whole."""

    def __init__(self, done, bytes request_body=b"", Py_ssize_t limit=16 * 1024 * 1024):
        self.done = done
        self.request_body = request_body
        self.limit = limit
        self.status = 0
        self.headers = []
        self.chunks = []

    @property
    def body(self):
        return b"".join(self.chunks)

    cpdef send_head(self, Exchange ex, int status, list headers, Py_ssize_t length):
        self.status = status
        self.headers = headers
        ex.response_started = True
        ex.status = status

    cpdef send_body(self, Exchange ex, bytes data):
        ex.bytes_out += len(data)
        if self.too_large:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.too_large = True
            self.chunks = []
        else:
            self.chunks.append(data)

    cpdef send_end(self, Exchange ex):
        self._done()

    cpdef abort(self, Exchange ex):
        self.cut = True
        self._done()

    cdef _done(self):
        if self.finished:
            return
        self.finished = True
        try:
            self.done(self)
        except Exception:  # the caller's bug must not break the relay that called us
            log.exception("an internal request's callback failed")


cdef class Proxy(ResponseListener):
    """Holds the current snapshot and serves exchanges against it."""

    def __init__(self, snapshot, access_log):
        self.snapshot = snapshot
        self.access_log = access_log
        self.ids = RequestIds()
        self.draining = False
        self.loop = None
        self.adapters = {}

    @property
    def access_log(self):
        """The access log (``fastgw.logs.AccessLog``); the worker assigns a new one on a
        reload that changes its target."""
        return self._access_log

    @access_log.setter
    def access_log(self, access_log):
        self._access_log = access_log
        # PERF: a log that is "off" never writes, so _finished does not call it (a Python
        # call per request). Any other may write, even after a failed write turned it off
        # for now (``reopen`` turns it on again): it is called, and decides.
        self._logs_access = access_log is not None and access_log.target != "off"

    cpdef handle(self, Exchange ex):
        """Serve ``ex``: called by the protocol when its head is complete.

        The common request runs to its end in callbacks, with no task: route, pick a
        target, take an idle pooled connection, send; the upstream connection relays the
        response and calls ``upstream_done``. Only a request that must open a connection
        (or retry on a fresh one) runs a coroutine, ``_connect_and_send`` (PERF: a task and
        its futures per request cost more than all the routing).
        """
        cdef SnapshotPlan snap = self.snapshot
        try:
            self._route_and_send(ex, snap)
        except FastGWError as exc:
            self._end(ex, exc)
        except Exception:  # a bug of ours: answer 500 and keep serving
            log.exception("request %s failed", ex.request_id)
            self._end(ex, None)

    cdef _end(self, Exchange ex, exc):
        """The request failed: answer (the protocol's reason wins over the upstream's), log.
        An upstream's failure goes to the error log in detail; the client is told only
        what ``public`` says (never an internal address), with the request id that finds
        the detail."""
        if ex.failure is not None:
            exc = ex.failure
        elif isinstance(exc, (UpstreamError, UpstreamTimeout)):
            _log_upstream_failure(ex, exc, f"answered {exc.status}")
        if exc is None:
            self.fail(ex, 500, "internal error")
        else:
            self.fail(ex, exc.status, exc.public or str(exc))
        self._finished(ex)

    cpdef fail(self, Exchange ex, int status, str message, list extra=None):
        """Answer ``status`` with the JSON error body (no body when ``message`` is None),
        or cut the connection when a response is already under way (a half-sent body
        must never look complete) and its protocol cannot take its held head back. The
        head gets the route's policies' fields, as every head does."""
        if status == 499:  # the client left: nothing to answer, only to log
            ex.status = 499
            return
        if ex.response_started and not ex.downstream.retract_head(ex):
            ex.downstream.abort(ex)
            return
        cdef Downstream downstream = ex.downstream
        headers = head_fields(ex, status, [] if message is None else [(b"content-type", b"application/json")],
                              extra)
        if message is None:
            downstream.send_head(ex, status, headers, 0)
        else:
            body = error_body(status, message, ex.request_id)
            downstream.send_head(ex, status, headers, len(body))
            downstream.send_body(ex, body)
        downstream.send_end(ex)

    cpdef prepare(self, Exchange ex, client_request_id):
        """Give the exchange its request id (the client's first X-Request-Id when sane,
        which the protocol found in its own pass over the head), and its client ip and
        trust (the peer is a trusted proxy). Called by the protocol when the head is
        complete, so even its own 4xx answers carry an id."""
        if client_request_id is not None and _SANE_REQUEST_ID.match(client_request_id):
            ex.request_id_field = client_request_id
        else:
            ex.request_id_field = self.ids.next_field()
        cdef SnapshotPlan snap = self.snapshot
        if snap.trusted_proxies and snap.is_trusted(ex.peer_ip):
            ex.trusted_peer = True
            ex.client_ip = snap.client_ip_from(ex)

    cdef _route_and_send(self, Exchange ex, SnapshotPlan snap):
        if ex.failure is not None:  # the protocol gave up on it already (a broken body)
            raise ex.failure
        headers = None
        wanted = snap.condition_headers
        if wanted:
            # Only the headers some route conditions on (their first field each), looked
            # up in the exchange's field block: only their values become objects (and
            # the dict, only when one is there).
            for name, key in (<dict>wanted).items():
                value = ex.header(name)
                if value is not None:
                    if headers is None:
                        headers = {}
                    headers[key] = value.decode("latin-1")
        cdef RouteMatch match = snap.router.match(ex.method, ex.host, ex.path, headers)
        if match is None:
            self.fail(ex, 404, "no route")
            self._finished(ex)
            return
        cdef RoutePlan route = match.target
        cdef Upstream upstream
        cdef Pool pool
        cdef UpstreamConnection conn
        if route is None:
            if ex.method == "OPTIONS" and self._preflight(ex, snap, headers):
                return
            allow = ", ".join(match.allowed).encode()
            self.fail(ex, 405, "method not allowed", [(b"allow", allow)])
            self._finished(ex)
            return
        ex.route_name = route.name
        ex.metrics = route.metrics
        if route.timeout:
            ex.deadline = ex.started + route.timeout
        cdef Chain chain = route.chain
        if chain.on_exchange:
            ex.chain = chain
        if chain.request_phase:
            self._run_policies(ex, route, match, 0)
        else:
            self._forward(ex, route, match)

    cdef bint _preflight(self, Exchange ex, SnapshotPlan snap, headers):
        """A CORS preflight on a path whose route leaves OPTIONS out of its methods: the
        route of the method it announces answers it, when that route has ``cors``."""
        announced = ex.header(b"access-control-request-method")
        method = announced.decode("latin-1").strip().upper() if announced is not None else ""
        if not method:
            return False
        cdef RouteMatch match = snap.router.match(method, ex.host, ex.path, headers)
        if match is None or match.target is None:
            return False
        cdef RoutePlan route = match.target
        if route.cors is None:
            return False
        ex.route_name = route.name
        ex.metrics = route.metrics
        if route.chain.on_exchange:
            ex.chain = route.chain
        if route.cors.request(ex) == ANSWERED:
            self._answer(ex)
            return True
        return False

    cdef _run_policies(self, Exchange ex, RoutePlan route, RouteMatch match, Py_ssize_t start):
        """The route's request phase from policy ``start`` on, then forward. A policy that
        answers ends it; one that waits goes on in a task (``_wait_then_go_on``)."""
        cdef tuple phase = route.chain.request_phase
        cdef Policy policy
        cdef Py_ssize_t i
        cdef int outcome
        for i in range(start, len(phase)):
            policy = phase[i]
            outcome = policy.request(ex)
            if outcome == CONTINUE:
                continue
            if outcome == ANSWERED:
                self._answer(ex)
            else:  # WAIT
                self.event_loop().create_task(self._wait_then_go_on(ex, route, match, i))
            return
        self._forward(ex, route, match)

    async def _wait_then_go_on(self, Exchange ex, RoutePlan route, RouteMatch match, Py_ssize_t i):
        """Policy ``i``'s async step, then the rest of the request phase (the body waits
        in the exchange meanwhile, as it does during a connect)."""
        cdef Policy policy = route.chain.request_phase[i]
        try:
            outcome = await policy.wait(ex)
            if ex.failure is not None:  # the client left (or broke a limit) meanwhile
                self._end(ex, None)
            elif outcome == ANSWERED:
                self._answer(ex)
            else:
                self._run_policies(ex, route, match, i + 1)
        except FastGWError as exc:
            self._end(ex, exc)
        except Exception:  # a bug (ours, or a plugin's): answer 500 and keep serving
            log.exception("request %s failed", ex.request_id)
            self._end(ex, None)

    cdef _answer(self, Exchange ex):
        """A policy answered: write its answer (``Exchange.answer``), end the exchange."""
        status, message, fields = ex.answer
        self.fail(ex, status, message, fields)
        self._finished(ex)

    cdef _forward(self, Exchange ex, RoutePlan route, RouteMatch match):
        """The request passed the route's policies: pick a target, send."""
        cdef Upstream upstream
        cdef Pool pool
        upstream = route.pick_upstream((<object>ex).header) if route.splits else route.upstream
        ex.upstream = upstream
        # (C calls; the params are made only for a rewrite, which reads them)
        ex.upstream_path = route.path_for(ex.path, match.param_dict() if route.rewrite is not None else None)
        if route.aggregate is not None:  # [routes.aggregate]: fastgw composes the answer
            adapter = self.adapters.get("aggregate")
            if adapter is None:
                self.fail(ex, 501, "aggregate routes are not served by this process")
                self._finished(ex)
            else:
                adapter(self, ex, route, match.param_dict())
            return
        if ex.upgrade is not None:
            mode = route.websocket
            if mode == "proxy":
                # Forwarded with its Upgrade; a tunnel once the upstream answers 101.
                ex.body_kind = BODY_TUNNEL
                ex.body_done = False
            elif mode is not None:  # "http": fastgw speaks WebSocket, the upstream HTTP
                adapter = self.adapters.get(mode)
                if adapter is None:
                    self.fail(ex, 501, f"websocket = {mode!r} is not served by this process")
                    self._finished(ex)
                else:
                    adapter(self, ex, route, upstream)
                return
            else:  # no switch on this route: plain HTTP, Upgrade not forwarded
                ex.upgrade = None
        pool = upstream.pick(ex)
        if pool is None:  # every target is unhealthy or its circuit open
            now = monotonic()
            why = upstream.unavailable(now)
            _log_upstream_failure(ex, why, "answered 503")
            self.fail(ex, 503, why, [(b"retry-after", str(upstream.retry_after(now)).encode())])
            self._finished(ex)
            return
        self._send(ex, pool)

    cdef _finished(self, Exchange ex, double now=0.0):
        """The exchange is over (answered, or cut): the chain's log phase (a concurrency
        count left), the access log line. Every exchange the proxy handles ends here, once.
        ``now``: when it ended, when the caller read the clock already (0: not)."""
        cdef Policy policy
        chain = ex.chain
        if chain is not None:
            for policy in (<Chain>chain).log_phase:
                try:
                    policy.log(ex)
                except Exception:  # one policy's bug must not keep the others from ending
                    log.exception("request %s: the log phase of %s failed", ex.request_id, policy.name)
        # The metrics (``_core.metrics``): a C call on the route's block, a few atomic adds.
        cdef RouteCounters counters = ex.metrics
        if counters is None:
            counters = unmatched()
        if now == 0.0:
            now = monotonic()
        counters.record(method_class(ex.method), ex.status, <int64_t>((now - ex.started) * 1e9),
                        ex.bytes_in, ex.bytes_out)
        if self._logs_access:
            self._access_log.write(ex)

    cdef _send(self, Exchange ex, Pool pool):
        """Send ``ex`` to ``pool``'s target: on an idle pooled connection, or a new one."""
        ex.upstream_addr = pool.address  # logged even when the connect fails, as nginx does
        head = self.upstream_head(ex, ex.upstream_path, pool.address)
        cdef UpstreamConnection conn = pool.take_idle()
        if conn is None:
            self.event_loop().create_task(self._connect_and_send(ex, pool, head))
        else:
            conn.start(ex, head, self)

    cdef bint _retry(self, Exchange ex, Pool failed, error):
        """Send ``ex`` to another target after ``failed`` failed it with ``error``, if
        ``retries`` allows and one is left; False otherwise (the failure is the answer)."""
        if ex.failure is not None or ex.response_started or ex.upstream is None:
            return False
        cdef Upstream upstream = ex.upstream
        tried = ex.tried
        if tried is None:
            tried = ex.tried = []
        tried.append(failed)
        if len(tried) > upstream.retries:
            return False
        pool = upstream.pick(ex, tried)
        if pool is None:
            return False
        _log_upstream_failure(ex, error, f"retrying on {pool.address}", logging.WARNING)
        _count(upstream, U_RETRIES)
        self._send(ex, pool)
        return True

    cpdef bint retry_status(self, Exchange ex, int status):
        """A 502/503 is worth another target for an idempotent request without a body
        (one with a body was streamed upstream and not kept), when one is left."""
        if (ex.body_kind != BODY_NONE and ex.body_kind != BODY_TUNNEL) or ex.method not in IDEMPOTENT \
                or ex.upstream is None:
            return False  # (a tunnel sends nothing after its head before the switch)
        cdef Upstream upstream = ex.upstream
        tried = ex.tried
        n = 1 if tried is None else len(tried) + 1
        return n <= upstream.retries and len(upstream.pools) > n

    cpdef upstream_done(self, Exchange ex, UpstreamConnection conn, error):
        cdef Pool pool = conn.pool
        if conn.tunnel:
            # A tunnel ended: one side closed (error None), the client left, or it was
            # idle too long. Its 101 is its status; the client is closed if still there.
            if error is not None:
                if ex.failure is None:
                    _log_upstream_failure(ex, error, "tunnel closed", logging.INFO)
                ex.downstream.abort(ex)
            self._finished(ex)
            return
        if error is None:
            pool.record(ex, ex.status < 500)
            self._finished(ex, conn.read_at)  # (the read that completed it)
        elif (isinstance(error, UpstreamError) and conn.reused and not conn.got_response_bytes
              and not ex.response_started and ex.failure is None
              and (ex.body_kind == BODY_NONE or ex.body_kind == BODY_TUNNEL or _hold_again(ex))):
            # A pooled connection the upstream closed while idle fails before any byte
            # comes back. That request never reached the application: send it again on a
            # new connection, once (a new connection is never "reused"), as nginx does.
            # (Not the target's failure: its circuit hears nothing of it.)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request %s: pooled connection to %s closed while idle; sent again on a new one",
                          ex.request_id, pool.address)
            self.event_loop().create_task(self._connect_and_send(ex, pool, conn.head))
        elif ex.failure is not None:  # the client left or broke a limit: no verdict
            pool.undecided(ex)
            self._end(ex, error)
        else:
            pool.record(ex, False)
            if isinstance(error, UpstreamTimeout):
                _count(ex.upstream, U_TIMEOUTS)
            if not (isinstance(error, UpstreamRetryable) and self._retry(ex, pool, error)):
                self._end(ex, error)

    cpdef object event_loop(self):
        """The worker's event loop (also for the aggregate adapter's timers)."""
        # PERF: asyncio.get_running_loop() makes a getpid() system call each time.
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return self.loop

    async def _connect_and_send(self, Exchange ex, Pool pool, bytes head):
        try:
            conn = await pool.connect()
        except FastGWError as exc:
            # Nothing of the request went anywhere: any method may try another target.
            _count(ex.upstream, U_CONNECT_FAILURES)
            if isinstance(exc, UpstreamTimeout):
                _count(ex.upstream, U_TIMEOUTS)
            pool.record(ex, False)
            if not self._retry(ex, pool, exc):
                self._end(ex, exc)
            return
        if ex.failure is not None:  # the client gave up (or broke a limit) while we connected
            pool.release(conn)
            pool.undecided(ex)
            self._end(ex, None)
            return
        conn.start(ex, head, self)

    # -- internal exchanges, and what an adapter answers ------------------------------------

    cpdef Exchange internal_exchange(self, Exchange parent, str path, bytes query, list headers,
                                     Collector collector):
        """A POST of ``collector.request_body`` to ``path`` (the upstream's path) with
        ``headers``, on behalf of ``parent``: its client, host, TLS, route and consumer
        (X-Consumer-* go upstream as on a proxied request), with a request id of its own."""
        cdef bytes body = collector.request_body
        cdef Exchange ex = new_exchange(collector, "POST", path, query, parent.host, parent.authority, headers,
                                        "1.1", True, parent.peer_ip, BODY_LENGTH, len(body), monotonic())
        ex.client_ip = parent.client_ip
        ex.trusted_peer = parent.trusted_peer
        ex.tls = parent.tls
        ex.route_name = parent.route_name
        ex.metrics = parent.metrics
        ex.consumer = parent.consumer
        ex.request_id_field = self.ids.next_field()
        ex.upstream_path = path
        if body:
            ex.feed_body(body)
        ex.end_body()
        return ex

    cpdef send_internal(self, Exchange ex, Upstream upstream, double timeout):
        """Send an internal exchange to ``upstream`` (``timeout``: the route's, or 0): a
        target picked, retried, timed out, logged as any request; its collector hears
        the end, a failure included."""
        cdef Pool pool
        ex.upstream = upstream
        if timeout:
            ex.deadline = ex.started + timeout
        try:
            pool = upstream.pick(ex)
            if pool is None:
                now = monotonic()
                why = upstream.unavailable(now)
                _log_upstream_failure(ex, why, "answered 503")
                self.fail(ex, 503, why, [(b"retry-after", str(upstream.retry_after(now)).encode())])
                self._finished(ex)
            else:
                self._send(ex, pool)
        except FastGWError as exc:
            self._end(ex, exc)
        except Exception:  # a bug of ours: the collector hears a 500
            log.exception("request %s failed", ex.request_id)
            self._end(ex, None)

    cpdef respond(self, Exchange ex, int status, list fields, bytes body):
        """Answer ``ex`` with a head of fastgw's making (the last fields of every head
        added: X-Request-Id, the route's response fields) and ``body``; or, with ``body``
        None, only the head of a switch (101), the connection going on."""
        cdef Downstream downstream = ex.downstream
        headers = head_fields(ex, status, fields)
        if body is None:
            if status == 101:  # a switch: the exchange is a tunnel from now on
                ex.body_kind = BODY_TUNNEL
                ex.body_done = False
            downstream.send_head(ex, status, headers, -1)
            downstream.flush()
            return
        downstream.send_head(ex, status, headers, len(body))
        if body:
            downstream.send_body(ex, body)
        downstream.send_end(ex)

    cpdef finish(self, Exchange ex):
        """An exchange served by someone else (an adapter) is over: its log phase and
        its access log line, as every exchange gets once."""
        self._finished(ex)

    cpdef bytes upstream_head(self, Exchange ex, str path, str target_address):
        """The request head for the upstream, built in one pass over the client's headers
        (two when a Connection header names other headers, which are hop-by-hop too)."""
        return _upstream_head(ex, path, target_address, None)


cdef bint _hold_again(Exchange ex):
    """An internal exchange keeps its whole body: held again, so that it can be sent
    again on a new connection (True), as a request without a body can."""
    if type(ex.downstream) is not Collector:
        return False
    cdef bytes body = (<Collector>ex.downstream).request_body
    ex.body_held = [body] if body else None
    ex.body_held_bytes = len(body)
    ex.body_done = True
    return True


cdef inline void _count(upstream, int counter):
    """One more of an upstream's counter (``_core.metrics``), when it has its counters."""
    if upstream is not None:
        counters = (<Upstream>upstream).metrics
        if counters is not None:
            (<UpstreamCounters>counters).count(counter)


cdef _log_upstream_failure(Exchange ex, error, str outcome, int level=logging.ERROR):
    """One error log line for an upstream failure: the detail the client is not told,
    under the request id, route, upstream and target that find it (nginx's error.log)."""
    if log.isEnabledFor(level):
        upstream = ex.upstream
        log.log(level, "request %s route %s upstream %s target %s: %s; %s", ex.request_id,
                ex.route_name or "-", upstream.name if upstream is not None else "-",
                ex.upstream_addr or "-", error, outcome)


cdef HeadWriter _head = HeadWriter()


cdef bytes _upstream_head(Exchange ex, str path, str target_address, set listed):
    # The client's fields are read where the protocol put them (``Exchange.field_at``:
    # HTTP/1's C block, no object per field), copied into the head as they are.
    cdef HeadWriter head = _head
    cdef bint trusted = ex.trusted_peer, passed_proto = False, passed_host = False
    cdef int ident
    cdef FieldView f
    cdef Py_ssize_t i
    cdef tuple field
    xff = None
    traceparent = None
    head.reset()  # whatever a build that raised may have left
    head.add_text(ex.method)
    head.add(b" ")
    head.add_text(path)
    if ex.query:
        head.add(b"?")
        head.add(ex.query)
    head.add(b" HTTP/1.1\r\n")
    for i in range(ex.field_total()):
        ex.field_at(i, &f)
        ident = f.ident
        if listed is not None and PyBytes_FromStringAndSize(f.name, f.name_length).lower() in listed:
            continue
        if ident == H_OTHER or ident == H_HOST:
            head.add_field_chars(f.name, f.name_length, f.value, f.value_length)
        elif ident == H_X_FORWARDED_FOR:
            if trusted:
                value = PyBytes_FromStringAndSize(f.value, f.value_length)
                xff = value if xff is None else xff + b", " + value
        elif ident == H_TRACEPARENT:
            traceparent = PyBytes_FromStringAndSize(f.value, f.value_length)
        elif ident == H_CONNECTION:
            if listed is None and _lists_other_fields(PyBytes_FromStringAndSize(f.value, f.value_length)):
                head.finish()  # start over, now knowing what to leave out
                return _upstream_head(ex, path, target_address, _connection_listed(ex))
        elif trusted and TRUSTED_FORWARDING_MASK & (1 << ident):
            head.add_field_chars(f.name, f.name_length, f.value, f.value_length)
            if ident == H_X_FORWARDED_PROTO:
                passed_proto = True
            elif ident == H_X_FORWARDED_HOST:
                passed_host = True
        # else: hop-by-hop, framing, or what we set ourselves: never forwarded as sent
    head.add(b"x-forwarded-for: ")
    if xff is not None:
        head.add(xff)
        head.add(b", ")
    head.add_text(ex.peer_ip)
    head.add(b"\r\n")
    if not passed_proto:
        head.add(b"x-forwarded-proto: https\r\n" if ex.tls else b"x-forwarded-proto: http\r\n")
    host = ex.authority
    if host is None:
        # An HTTP/1.0 client may send no Host; HTTP/1.1 upstream requests need one.
        head.add_field(b"host", target_address.encode())
    elif not passed_host:
        head.add_field(b"x-forwarded-host", host)
    head.add_field(b"x-request-id", ex.request_id_field)
    consumer = ex.consumer
    if consumer is not None:  # (a client's own X-Consumer-* were left out above)
        field = consumer.id_field
        head.add_field(field[0], field[1])
        field = consumer.groups_field
        if field is not None:
            head.add_field(field[0], field[1])
    if traceparent is None or not _TRACEPARENT.match(traceparent):
        traceparent = new_traceparent()
    head.add_field(b"traceparent", traceparent)
    ex.traceparent = traceparent
    if ex.body_kind == BODY_CHUNKED:
        head.add(b"transfer-encoding: chunked\r\n\r\n")
    elif ex.body_kind == BODY_LENGTH:
        head.add(b"content-length: ")
        head.add_decimal(ex.body_length)
        head.add(b"\r\n\r\n")
    elif ex.body_kind == BODY_TUNNEL:
        # the client's (and the upstream's) Connection and Upgrade were left out above
        head.add(b"connection: upgrade\r\nupgrade: ")
        head.add(ex.upgrade)
        head.add(b"\r\n\r\n")
    else:
        head.add(b"\r\n")
    return head.finish()


cdef bint _lists_other_fields(bytes connection):
    """Whether a Connection value names fields besides keep-alive (dropped anyway)."""
    for token in connection.split(b","):
        token = token.strip().lower()
        if token and token != b"keep-alive":
            return True
    return False


cdef set _connection_listed(Exchange ex):
    """The field names (lower-case) every Connection header of the request lists."""
    cdef FieldView f
    cdef Py_ssize_t i
    listed = set()
    for i in range(ex.field_total()):
        ex.field_at(i, &f)
        if f.ident == H_CONNECTION:
            value = PyBytes_FromStringAndSize(f.value, f.value_length)
            listed.update(t.strip().lower() for t in value.split(b","))
    listed.discard(b"")
    return listed


def status_line(int status):
    return b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Unknown").encode())

