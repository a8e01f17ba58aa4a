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

Protocol switches (WebSocket): a protocol sets ``upgrade`` (b"websocket") on an
exchange whose client asks to switch. When the route switches it, the proxy makes it a
tunnel (``BODY_TUNNEL``): an exchange whose request body never ends until the client
closes. The switch is announced with ``downstream.send_head(ex, 101, fields, -1)`` (HTTP/1
writes the 101 and goes raw; HTTP/2 would answer 200 on the stream); from then on the
client's bytes come in through ``feed_body`` (``end_body`` when it closes or half-closes)
and the bytes for it go out through ``send_body``, the end through ``send_end``. The sink
is the upstream connection (a relayed tunnel) or the WebSocket adapter; backpressure
rides the same paths as a body's.

Compiled (Cython): ``exchange.pxd`` declares both classes so that the protocols, the
proxy and the upstream side reach an exchange's fields and a downstream's methods as C
struct reads and C calls (PERF: the attribute traffic of ~20 field reads per request was
the largest part of the per-request Python cost). A pure-Python protocol front end
subclasses ``Downstream`` and overrides its methods.

Every response head fastgw writes for an exchange (the upstream's, relayed by the
plain-head shortcut or read by llhttp, and fastgw's own answers) gets its last fields
in one place: ``head_fields`` for a list of fields, ``add_head_lines`` for the
shortcut's lines. They add ``X-Request-Id``, the fields the route's policies decided
in the request phase (``response_fields``), and apply the route's ``ResponseEdit``
(``exchange.chain``): fields dropped and added as the config says, then the policies'
``response_head`` hooks, which need the head as a list and so keep the shortcut off.

May import: the standard library, fastgw._core.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free

from fastgw._core.wire cimport HeadWriter, header_id_chars, named_in

# Bytes of request body held while no upstream is attached before the client is paused.
cdef Py_ssize_t BODY_BUFFER_HIGH = 64 * 1024


cdef class Downstream:
    """What a protocol front end offers the proxy for one connection (each protocol
    subclasses it and implements every method)."""

    cpdef send_head(self, Exchange ex, int status, list headers, Py_ssize_t length):
        """Start the response. ``length`` is the body size, or -1 when unknown
        (the protocol chooses chunked or close-delimited framing)."""
        raise NotImplementedError

    cpdef send_head_lines(self, Exchange ex, int status, bytes lines, Py_ssize_t length):
        """``send_head`` with the fields as ``name: value`` CRLF lines, as an HTTP/1
        upstream sent them; this default splits them for ``send_head``."""
        headers = []
        for line in lines.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b": ")
                headers.append((name, value))
        self.send_head(ex, status, headers, length)

    cpdef send_response(self, Exchange ex, int status, HeadWriter lines, bytes data, Py_ssize_t start,
                        Py_ssize_t length):
        """A whole response that came in one upstream read: its fields as CRLF lines in
        ``lines`` (taken: the writer starts over), its body the ``length`` bytes of
        ``data`` from ``start`` (Content-Length framing). ``send_end`` follows. This
        default is ``send_head_lines`` and ``send_body``; HTTP/1 writes it with one copy."""
        self.send_head_lines(ex, status, lines.finish(), length)
        if length:
            self.send_body(ex, data if start == 0 and length == len(data) else data[start:start + length])

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

    cpdef bint retract_head(self, Exchange ex):
        """The response cannot be completed, and nothing of it has reached the client yet
        (its head is still held back, ``flush``): forget it and return True, so that an
        error answer can take its place. False (this default): something went out, or
        the protocol cannot tell; the caller aborts."""
        return False

    cpdef pause_reading(self, Exchange ex):
        """Stop taking ``ex``'s request body for now (its upstream cannot take more):
        HTTP/1 stops reading the connection, HTTP/2 withholds the stream's window."""

    cpdef resume_reading(self, Exchange ex):
        pass


cdef class UpstreamSide:
    """What the upstream side relaying an exchange's request offers its protocol."""

    cpdef client_writable(self, bint writable):
        """The client can take more bytes (True) or cannot (False): backpressure."""

    cpdef cancel(self, error):
        """Abandon the request in flight: the protocol gave up on it."""


cdef class ResponseEdit:
    """What a route's policies do to its response heads: ``drop_names`` (lower-case
    bytes) removed, ``static_fields`` added (both known at config time, so the plain-head
    shortcut applies them to its lines), and, when ``dynamic``, ``edit`` called on the
    head as a list. ``policy.Chain`` is the one implementation."""

    def __init__(self, drop_names=(), static_fields=(), bint dynamic=False):
        self.drop_names = tuple(name.lower() for name in drop_names) or None
        self.static_fields = list(static_fields)
        self.static_lines = b"".join(name + b": " + value + b"\r\n" for name, value in self.static_fields)
        self.dynamic = dynamic

    cpdef list edit(self, Exchange ex, int status, list fields):
        """The head's fields after the route's response hooks (only when ``dynamic``)."""
        return fields


cdef list head_fields(Exchange ex, int status, list fields, list extra=None):
    """``fields`` (the upstream's, or fastgw's own answer's) made the head the client
    gets: the route's dropped names out, then X-Request-Id, ``extra`` (the fields of an
    answer of fastgw's: a 429's RateLimit fields, a preflight's CORS fields), the
    policies' response fields, the route's static fields, and its response hooks."""
    cdef ResponseEdit edit = ex.chain
    cdef tuple field
    if edit is not None and edit.drop_names is not None:
        drop = edit.drop_names
        fields = [field for field in fields if (<bytes>field[0]).lower() not in drop]
    fields.append((b"x-request-id", ex.request_id_field))
    if extra:
        fields.extend(extra)
    if ex.response_fields is not None:
        fields.extend(ex.response_fields)
    if edit is not None:
        if edit.static_fields:
            fields.extend(edit.static_fields)
        if edit.dynamic:
            fields = edit.edit(ex, status, fields)
    return fields


cdef int add_head_lines(Exchange ex, HeadWriter lines) except -1:
    """``head_fields`` for the plain-head shortcut, whose upstream fields are lines in
    ``lines`` already (the route's dropped names left out by the scan). Only for a
    route whose edit is not ``dynamic``."""
    cdef tuple field
    cdef ResponseEdit edit = ex.chain
    lines.add_field(b"x-request-id", ex.request_id_field)
    if ex.response_fields is not None:
        for field in ex.response_fields:
            lines.add_field(<bytes>field[0], <bytes>field[1])
    if edit is not None and edit.static_lines:
        lines.add(edit.static_lines)
    return 0


@cython.freelist(64)
cdef class Exchange:
    """Per-request state: one of these per request, its fields typed (exchange.pxd).
    Protocols make them with ``new_exchange``; the fields:

    - ``method``; ``path``, the normalised path (what routes, policies and the upstream
      see); ``query``, the raw query string without "?", b"" when absent;
    - ``host``, lower-cased, without port ("" when the client sent none); ``authority``,
      the Host header as received (None when absent), forwarded as it came;
    - ``headers``, the raw (name, value) pairs as received, names in their original case
      (made on first use from the C block HTTP/1 reads them into; ``header(name)`` and
      ``field_at`` read that block without making it);
    - ``trusted_peer``: the peer is in trusted_proxies, its X-Forwarded-* are believed;
    - ``upstream_side``: set by the upstream side while it relays this request, told of
      the client's backpressure and of the protocol giving up (``fail``);
    - ``failure``: why the protocol gave up on this request (body too large, too slow);
    - ``upgrade``: the protocol the client asks to switch to (b"websocket"), or None;
    - ``request_id`` (str) and ``request_id_field``, the same as the ASCII bytes that
      X-Request-Id carries up and back: set by the proxy when the head is complete.
    """

    def __dealloc__(self):
        free(self.field_bytes)
        free(self.fields)

    @property
    def request_id(self):
        if self._request_id is None:
            self._request_id = self.request_id_field.decode("ascii")
        return self._request_id

    @request_id.setter
    def request_id(self, str value):
        self.request_id_field = value.encode("ascii")
        self._request_id = value

    # -- request header fields ----------------------------------------------------------

    cdef void take_fields(self, char* data, HeaderField* fields, Py_ssize_t count) noexcept:
        """The protocol hands over the head's fields (both blocks malloc'd; the exchange
        frees them)."""
        self.field_bytes = data
        self.fields = fields
        self.field_count = count

    @property
    def headers(self):
        return self._headers()

    @headers.setter
    def headers(self, list value):
        self.header_list = value

    cdef list _headers(self):
        cdef list made
        cdef Py_ssize_t i
        cdef HeaderField* f
        if self.header_list is None:
            made = []
            for i in range(self.field_count):
                f = &self.fields[i]
                made.append((PyBytes_FromStringAndSize(self.field_bytes + f.name, f.name_length),
                             PyBytes_FromStringAndSize(self.field_bytes + f.name + f.name_length,
                                                       f.value_length)))
            self.header_list = made
        return self.header_list

    cpdef drop_fields(self, tuple names):
        """Remove every header field named in ``names`` (lower-case bytes): from the C
        block without making the list (its ``HeaderField`` entries go; PERF), else from
        the list."""
        cdef Py_ssize_t i, kept = 0
        cdef HeaderField* f
        if self.header_list is not None:
            self.header_list = [field for field in self.header_list if (<bytes>field[0]).lower() not in names]
            return
        for i in range(self.field_count):
            f = &self.fields[i]
            if not named_in(<const unsigned char*>self.field_bytes + f.name, f.name_length, names):
                if kept != i:
                    self.fields[kept] = self.fields[i]
                kept += 1
        self.field_count = kept

    cdef Py_ssize_t field_total(self):
        """How many header fields ``field_at`` shows."""
        if self.header_list is not None:
            return len(self.header_list)
        return self.field_count

    cdef int field_at(self, Py_ssize_t i, FieldView* view) except -1:
        """Field ``i`` (< ``field_total()``) as pointers, no object made; valid while
        the exchange's headers are not replaced."""
        cdef HeaderField* f
        cdef tuple field
        cdef bytes name, value
        if self.header_list is None:
            f = &self.fields[i]
            view.name = self.field_bytes + f.name
            view.name_length = f.name_length
            view.value = view.name + f.name_length
            view.value_length = f.value_length
            view.ident = f.ident
        else:
            field = self.header_list[i]
            name = <bytes?>field[0]
            value = <bytes?>field[1]
            view.name = PyBytes_AS_STRING(name)
            view.name_length = PyBytes_GET_SIZE(name)
            view.value = PyBytes_AS_STRING(value)
            view.value_length = PyBytes_GET_SIZE(value)
            view.ident = header_id_chars(view.name, view.name_length)
        return 0

    cpdef bytes header(self, bytes name):
        """The value of the first field named ``name`` (lower-case bytes), any case; None
        when there is none. Reads the C block without making the list."""
        cdef FieldView view
        cdef Py_ssize_t i, j, n = len(name)
        cdef const unsigned char* wanted = <const unsigned char*>PyBytes_AS_STRING(name)
        cdef unsigned char c
        for i in range(self.field_total()):
            self.field_at(i, &view)
            if view.name_length != n:
                continue
            for j in range(n):
                c = (<const unsigned char*>view.name)[j]
                if 65 <= c <= 90:  # A-Z
                    c += 32
                if c != wanted[j]:
                    break
            else:
                return PyBytes_FromStringAndSize(view.value, view.value_length)
        return None

    # -- request body, pushed by the protocol ---------------------------------------------

    cpdef feed_body(self, bytes data):
        self.bytes_in += len(data)
        sink = self.body_sink
        if sink is not None:
            sink(data)
            return
        if self.body_held is None:
            self.body_held = [data]
        else:
            self.body_held.append(data)
        self.body_held_bytes += len(data)
        if self.body_held_bytes > BODY_BUFFER_HIGH:
            self.downstream.pause_reading(self)

    cpdef end_body(self):
        self.body_done = True
        if self.body_end is not None:
            self.body_end()

    cpdef list take_held_body(self):
        """The chunks held so far, handed over to be sent with the request head (the
        rest streams through ``attach_body``)."""
        held = self.body_held
        if held is None:
            return []
        self.body_held = None
        self.body_held_bytes = 0
        self.downstream.resume_reading(self)
        return held

    cpdef attach_body(self, sink, end):
        """Send the held chunks to ``sink`` and stream the rest; ``end`` runs once the
        whole body went through."""
        held = self.body_held
        if held is not None:
            self.body_held = None
            self.body_held_bytes = 0
            for chunk in held:
                sink(chunk)
            self.downstream.resume_reading(self)
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
        if self.upstream_side is not None:
            self.upstream_side.cancel(error)


cdef Exchange new_exchange(Downstream downstream, str method, str path, bytes query, str host,
                           object authority, list headers, str version, bint keep_alive,
                           str peer_ip, int body_kind, Py_ssize_t body_length, double started):
    """A new exchange (PERF: a C call and direct field stores, no argument parsing)."""
    cdef Exchange ex = Exchange.__new__(Exchange)
    ex.downstream = downstream
    ex.method = method
    ex.is_head = method == "HEAD"
    ex.path = path
    ex.query = query
    ex.host = host
    ex.authority = authority
    ex.header_list = headers  # (None: HTTP/1's C block follows, ``take_fields``)
    ex.version = version
    ex.keep_alive = keep_alive
    ex.peer_ip = peer_ip
    ex.client_ip = peer_ip
    ex.request_id_field = b""
    ex.started = started
    ex.body_kind = body_kind
    ex.body_length = body_length
    ex.body_held = None  # (a list once a body chunk is held)
    ex.body_done = body_kind == BODY_NONE
    ex.route_name = ""
    ex.upstream_addr = ""
    return ex


cdef dict _host_names = {}


cdef object host_name(host):
    """The name part of a Host header (or of HTTP/2's :authority), lower-cased, without
    port; "" when absent; None when it is not a host. Memoised: a gateway sees few
    distinct hosts (bounded all the same)."""
    if host is None:
        return ""
    name = _host_names.get(host, False)
    if name is False:
        name = _parse_hostname(host)
        if len(_host_names) < 4096:
            _host_names[host] = name
    return name


def _parse_hostname(bytes host):
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1:]
        if rest and not (rest[0] == ":" and rest[1:].isdigit()):
            return None
        return text[:end + 1]
    name, sep, port = text.partition(":")
    if sep and not port.isdigit():
        return None
    if not name or any(c in name for c in " /\\@?#"):
        return None
    return name
