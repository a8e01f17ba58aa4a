# C-level declarations of fastgw/exchange.pyx, cimported by the protocols, the proxy and
# the upstream side so that their calls on an exchange are C calls, not attribute lookups.

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastgw._core.metrics cimport RouteCounters
from fastgw._core.wire cimport HeadWriter


cdef inline double monotonic() noexcept nogil:
    """time.monotonic() as a C call: the clock of every deadline and ``started``."""
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9

cdef enum:
    BODY_NONE = 0
    BODY_LENGTH = 1
    BODY_CHUNKED = 2
    BODY_TUNNEL = 3     # the client's bytes after a protocol switch: no end until close


ctypedef struct HeaderField:
    # One request header field as HTTP/1 read it, in its exchange's ``field_bytes``: the
    # name at offset ``name``, the value right after it; ``ident`` the name's
    # ``_core.wire.header_id``, found once when the field was read.
    unsigned int name
    unsigned int name_length
    unsigned int value_length
    int ident

ctypedef struct FieldView:
    # One header field as ``Exchange.field_at`` shows it, whichever form the exchange
    # holds (C block or list): pointers into bytes the exchange keeps alive.
    const char* name
    const char* value
    Py_ssize_t name_length
    Py_ssize_t value_length
    int ident


cdef class Downstream:
    cpdef send_head(self, Exchange ex, int status, list headers, Py_ssize_t length)
    cpdef send_head_lines(self, Exchange ex, int status, bytes lines, Py_ssize_t length)
    cpdef send_response(self, Exchange ex, int status, HeadWriter lines, bytes data, Py_ssize_t start,
                        Py_ssize_t length)
    cpdef send_body(self, Exchange ex, bytes data)
    cpdef send_end(self, Exchange ex)
    cpdef flush(self)
    cpdef abort(self, Exchange ex)
    cpdef bint retract_head(self, Exchange ex)
    cpdef pause_reading(self, Exchange ex)
    cpdef resume_reading(self, Exchange ex)


cdef class UpstreamSide:
    cpdef client_writable(self, bint writable)
    cpdef cancel(self, error)


cdef class ResponseEdit:
    # what a route's policies do to every response head written for it (policy.Chain)
    cdef readonly tuple drop_names      # lower-case names removed from the head, or None
    cdef readonly list static_fields    # (name, value) added to every head
    cdef readonly bytes static_lines    # the same as "name: value" CRLF lines
    cdef readonly bint dynamic          # response_head hooks that read the head

    cpdef list edit(self, Exchange ex, int status, list fields)


cdef class Exchange:
    cdef public Downstream downstream
    cdef public str method, path, host, version, peer_ip, client_ip
    # The request id as its X-Request-Id fields carry it (ASCII bytes); the ``request_id``
    # property is its str, made when first asked (PERF: with the access log off, never).
    cdef public bytes request_id_field
    cdef str _request_id
    cdef public str route_name, upstream_addr
    cdef public bytes query
    cdef public object authority
    # The request's header fields. HTTP/1 hands them over as one C block (``field_bytes``,
    # a ``HeaderField`` each in ``fields``): no Python object per field. The ``headers``
    # property makes the (name, value) list of them when first asked; from then on that
    # list (``header_list``) is the truth, edits included. HTTP/2 and internal
    # exchanges give the list. C readers go through ``field_total``/``field_at``.
    cdef char* field_bytes
    cdef HeaderField* fields
    cdef Py_ssize_t field_count
    cdef list header_list
    cdef public bint keep_alive, trusted_peer, body_done, response_started, is_head
    cdef public bint tls                # it came over TLS (X-Forwarded-Proto: https)
    cdef public double started, deadline
    cdef public int body_kind, status
    cdef public Py_ssize_t body_length, body_held_bytes, bytes_in, bytes_out
    cdef public list body_held          # the body chunks held until sent (None: none)
    cdef public object body_sink, body_end, failure
    # the upstream side's bookkeeping: the upstream picked, the path sent to it, the
    # targets tried so far (for retries), and the target whose circuit trial it is
    cdef public object upstream
    cdef public str upstream_path
    cdef public list tried
    cdef public object trial
    # the policies' bookkeeping: the route's chain when it acts on the response head or
    # at the end (None otherwise); fields its request phase adds to the response head
    # (RateLimit-*, CORS); a policy's answer (status, message or None, fields); the
    # route's concurrency guard to leave when the exchange ends; the per-request state
    # of policies and plugins (None until one needs it)
    cdef public ResponseEdit chain
    cdef public list response_fields
    cdef public tuple answer
    cdef public object guard
    cdef public dict state
    # who is calling, once the route's auth proved it (fastgw.policies.auth.Consumer)
    cdef public object consumer
    cdef public UpstreamSide upstream_side
    # the protocol's own state of this exchange (HTTP/2: its stream), or None
    cdef public object stream
    # the protocol the client asks to switch to (b"websocket"), or None: set by the
    # protocol front end, cleared by the proxy when the route does not switch
    cdef public bytes upgrade
    # for the access log: the traceparent sent upstream, and when the request went to the
    # upstream and its response head came back (monotonic; 0 when it did not)
    cdef public bytes traceparent
    cdef public double upstream_sent, upstream_answered
    # the counters of its route (``_core.metrics``), set when it is routed; None: "(none)"
    cdef public RouteCounters metrics

    cdef void take_fields(self, char* data, HeaderField* fields, Py_ssize_t count) noexcept
    cdef Py_ssize_t field_total(self)
    cdef int field_at(self, Py_ssize_t i, FieldView* view) except -1
    cpdef bytes header(self, bytes name)
    cpdef drop_fields(self, tuple names)
    cdef list _headers(self)
    cpdef feed_body(self, bytes data)
    cpdef end_body(self)
    cpdef list take_held_body(self)
    cpdef attach_body(self, sink, end)
    cpdef detach_body(self)
    cpdef fail(self, error)


cdef list head_fields(Exchange ex, int status, list fields, list extra=*)
cdef int add_head_lines(Exchange ex, HeadWriter lines) except -1
cdef object host_name(host)


cdef Exchange new_exchange(Downstream downstream, str method, str path, bytes query, str host,
                           object authority, list headers, str version, bint keep_alive,
                           str peer_ip, int body_kind, Py_ssize_t body_length, double started)
