# cython: boundscheck=True, wraparound=True
# (Python semantics for indexing: this module is the request path, not the numeric core.)
"""One request and its response, whatever the wire: the contract between a protocol
front end (``protocols/``) and the proxy.

A protocol builds an ``Exchange`` when a request head is complete, pushes request
body chunks into it, and implements ``Downstream`` so the proxy and upstream can
answer. The proxy never sees sockets or parsers; the protocol never sees routes or
upstreams.

Request body flow, with backpressure: the protocol calls ``feed_body`` per chunk and
``end_body`` once. Until the upstream side attaches a sink (``attach_body``), chunks
are held, and the protocol is asked to stop reading once ``BODY_BUFFER_HIGH`` bytes
are held, so a client that sends faster than we connect cannot grow memory.

Compiled (Cython): ``exchange.pxd`` declares both classes so that the protocols, the
proxy and the upstream side reach an exchange's fields and a downstream's methods as C
struct reads and C calls (PERF: the attribute traffic of ~20 field reads per request was
the largest part of the per-request Python cost). A pure-Python protocol front end
subclasses ``Downstream`` and overrides its methods.

May import: the standard library only.
"""

cimport cython

# Bytes of request body held while no upstream is attached before the client is paused.
cdef Py_ssize_t BODY_BUFFER_HIGH = 64 * 1024


cdef class Downstream:
    """What a protocol front end offers the proxy for one connection (each protocol
    subclasses it and implements every method)."""

    cpdef send_head(self, Exchange ex, int status, list headers, Py_ssize_t length):
        """Start the response. ``length`` is the body size, or -1 when unknown
        (the protocol chooses chunked or close-delimited framing)."""
        raise NotImplementedError

    cpdef send_body(self, Exchange ex, bytes data):
        raise NotImplementedError

    cpdef send_end(self, Exchange ex):
        """The response is complete."""
        raise NotImplementedError

    cpdef flush(self):
        """Write what ``send_head`` may have held back to join it with body bytes."""

    cpdef abort(self, Exchange ex):
        """The response cannot be completed (upstream died mid-body): close the client
        connection so a truncated body can never look complete."""
        raise NotImplementedError

    cpdef pause_reading(self):
        pass

    cpdef resume_reading(self):
        pass


@cython.freelist(64)
cdef class Exchange:
    """Per-request state: one of these per request, its fields typed (exchange.pxd)."""

    def __init__(self, Downstream downstream, str method, str path, bytes query, str host,
                 authority, list headers, str version, bint keep_alive, str peer_ip,
                 int body_kind, Py_ssize_t body_length, double started):
        self.downstream = downstream
        self.method = method
        self.is_head = method == "HEAD"
        #: the normalised path (what routes, policies and the upstream see)
        self.path = path
        #: the raw query string without "?", b"" when absent
        self.query = query
        #: lower-cased, without port ("" when the client sent none)
        self.host = host
        #: the Host header as received (None when absent), forwarded as it came
        self.authority = authority
        #: raw (name, value) pairs as received; names in their original case
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.peer_ip = peer_ip
        self.client_ip = peer_ip
        #: the peer is in trusted_proxies: its X-Forwarded-* are believed and passed on
        self.trusted_peer = False
        self.request_id = ""
        self.started = started
        self.deadline = 0.0
        self.body_kind = body_kind
        self.body_length = body_length
        self.body_held = []
        self.body_held_bytes = 0
        self.body_done = body_kind == BODY_NONE
        self.body_sink = None
        self.body_end = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.response_started = False
        self.status = 0
        self.route_name = ""
        self.upstream_addr = ""
        #: set by the upstream side while it relays a response: called with True when the
        #: client can take more bytes and False when it cannot (backpressure).
        self.on_writable = None
        #: why the protocol gave up on this request (body too large, too slow), if it did
        self.failure = None
        #: set by the upstream side while a request is in flight: abandons it
        self.on_cancel = None

    # -- request body, pushed by the protocol ---------------------------------------------

    cpdef feed_body(self, bytes data):
        self.bytes_in += len(data)
        sink = self.body_sink
        if sink is not None:
            sink(data)
            return
        self.body_held.append(data)
        self.body_held_bytes += len(data)
        if self.body_held_bytes > BODY_BUFFER_HIGH:
            self.downstream.pause_reading()

    cpdef end_body(self):
        self.body_done = True
        if self.body_end is not None:
            self.body_end()

    cpdef attach_body(self, sink, end):
        """Send the held chunks to ``sink`` and stream the rest; ``end`` runs once the
        whole body went through."""
        held = self.body_held
        if held:
            self.body_held = []
            self.body_held_bytes = 0
            for chunk in held:
                sink(chunk)
            self.downstream.resume_reading()
        if self.body_done:
            end()
        else:
            self.body_sink = sink
            self.body_end = end

    cpdef detach_body(self):
        self.body_sink = None
        self.body_end = None

    cpdef fail(self, error):
        """The protocol gives up on this request: the upstream side abandons it and the
        proxy answers ``error.status``."""
        self.failure = error
        self.detach_body()
        if self.on_cancel is not None:
            self.on_cancel(error)
