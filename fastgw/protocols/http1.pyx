# cython: boundscheck=True, wraparound=True
# (Python semantics for indexing: this module is the request path, not the numeric core.)
"""The HTTP/1.1 front end: an ``asyncio.Protocol`` on llhttp's request parser.

Theory of operation. Bytes go into llhttp (vendored in vendor/llhttp, bound by
``llhttp.pxd``: the release httptools 0.9.0 carries, so that it refuses what httptools'
parser refuses). Its callbacks are C functions landing in this connection's typed
handlers, no Python call per callback: a head's header fields are put together in one C
block however the reads cut them, each found by a ``HeaderField`` (offset, lengths, the
name's id) in a second block, and both are handed to the exchange whole: no Python
object per field (the exchange makes its ``headers`` list only if something asks for
it). The method and version are read off the parser's state.

What a connection keeps is split by how long it is needed. A request being read (its
head, then its body) has a ``_RequestReader``: llhttp's state, the fields being put
together, the target; it is made at the request's first byte and dropped when the bytes
read end with a keep-alive request (a fresh llhttp is in the state it would be in). What
every connection of a worker shares (the worker, proxy and limits) is one
``ServerContext``. An idle keep-alive connection is the connection object alone, 216
bytes (`make bench-memory`: ~1.5 KiB per idle connection in all, ~1.2 of them uvloop's).

One ``Exchange`` is built per request head. The first exchange runs
once the bytes read are parsed (``Proxy.handle``, in callbacks, no task); pipelined ones
wait in ``queue`` and start, in order, when the one before has sent its whole response,
so responses leave in request order. Request body chunks go into the exchange whose body
is being read (``reading``); the exchange streams them upstream or holds a bounded
amount.

What llhttp refuses by itself (in its strict mode: no leniency flag is set) becomes 400
and a close. A handler's refusal stops llhttp the same way: the exception cannot cross
llhttp's C frames, so it is kept on the connection and answered once llhttp has
returned. What llhttp leaves to us is checked here: HTTP/1.0 with Transfer-Encoding, any
transfer coding but chunked alone, missing or repeated Host (and the authority of an
absolute-form target replacing Host), HTTP/0.9 and HTTP/2.0 request lines, fragments and
non-origin-form targets, path normalisation, header and URL size (431/414, never
dropping headers silently), body size (413, at once for a Content-Length, mid-stream for
chunks), Upgrade and CONNECT. Whatever can be judged on the head is refused in
``_headers_complete``, before an exchange exists, so nothing of such a request reaches
an upstream. No leniency flag of llhttp is ever set.

Errors we answer ourselves close the connection lingering: we stop reading requests, send
the answer, half-close, and discard what the client still sends for a moment, so that it
reads the answer instead of a reset (nginx's lingering close). The responses owed to the
requests before the refused one go first, with keep-alive framing; then the refusal, which
says close. When it is a body that breaks (a bad chunk, over the limit, too slow), its
request is abandoned upstream and the refusal is its response; a pipelined request whose
body broke before its turn is dropped and never forwarded.

Protocol switches (WebSocket). llhttp stops after a request that asks to upgrade. A GET
without a body asking for ``Upgrade: websocket`` gets ``Exchange.upgrade``; the bytes the
client sends after it are held here (bounded: reading pauses beyond ``STASH_HIGH``) until
its answer says what they are. A 101 (``send_head``) switches the connection to raw mode,
a tunnel: every byte read goes into the exchange (``feed_body``), every byte sent for it
goes out as it is, the client's EOF is the exchange's ``end_body``, and ``send_end`` closes
the connection. Any other answer leaves the connection HTTP: a new parser reads the held
bytes as the next request. Any other upgrade (another protocol, a body, HTTP/1.0) is
served as plain HTTP and the connection closes after it.

Timeouts are deadlines checked by the worker's sweeper (``check(now)``): the request head
within ``header_timeout`` of its first byte (408 when part of it came, else a silent
close), ``idle_timeout`` between keep-alive requests and between body reads.

Compiled (Cython): a connection's state is typed, and its calls into the proxy and the
exchange are C calls; it is the ``Downstream`` (exchange.pxd) of its exchanges.

May import: the standard library, fastgw.proxy, fastgw.exchange, fastgw.errors,
fastgw.socket_writes, fastgw.protocols (http2 for the hand-over, the llhttp declarations), fastgw._core (path
normalisation, header ids, the head writer, the counters).
"""


cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcpy

from fastgw._core.metrics cimport P_HTTP1, P_WEBSOCKET, connection_closed, connection_opened
from fastgw._core.router cimport normalize_path
from fastgw._core.wire cimport (
    H_CONTENT_LENGTH, H_EXPECT, H_HOST, H_OTHER, H_TRANSFER_ENCODING, H_UPGRADE, H_X_REQUEST_ID,
    HeadWriter, header_id, header_id_chars)
from fastgw.errors import BadRequest, ClientClosedRequest, FastGWError, PayloadTooLarge, RequestTimeout
from fastgw.exchange cimport (
    BODY_CHUNKED, BODY_LENGTH, BODY_NONE, Downstream, Exchange, HeaderField, host_name, monotonic, new_exchange)
from fastgw.proxy cimport Proxy
from fastgw.proxy import error_body, status_line
from fastgw.protocols.http2 import H2C_SWITCH, PREFACE, decode_settings, take_over
from fastgw.socket_writes cimport dup_socket, release_socket, send_bytes, send_now
from fastgw.protocols.llhttp cimport (
    HPE_OK, HPE_PAUSED_UPGRADE, HPE_USER, HTTP_CONNECT, HTTP_GET, HTTP_REQUEST, llhttp_errno_t,
    llhttp_execute, llhttp_get_error_pos, llhttp_get_error_reason, llhttp_init, llhttp_method_name,
    llhttp_method_t, llhttp_resume_after_upgrade, llhttp_settings_init, llhttp_settings_t,
    llhttp_should_keep_alive, llhttp_t)

cdef list STATUS_LINES = [status_line(status) for status in range(600)]
# One writer builds every response head of this process (a head is built without yielding).
cdef HeadWriter _head = HeadWriter()
# When the read that data_received is handling arrived: one clock read per read (PERF),
# for its deadlines and for llhttp's callbacks during it (``started``, the idle deadline).
cdef double _read_at = 0.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 2.0
cdef Py_ssize_t LINGER_MAX_BYTES = 1024 * 1024
cdef Py_ssize_t MAX_PIPELINE = 16
WRITE_HIGH_WATER = 64 * 1024
# Bytes held after an upgrade request, until its answer, before reading pauses.
cdef Py_ssize_t STASH_HIGH = 64 * 1024
# What a request line holds besides its target: method, two spaces, "HTTP/1.1", CRLF,
# with room for llhttp's longest method. Used to tell 414 from 431 while a head is cut.
cdef Py_ssize_t REQUEST_LINE_SLACK = 32
# Method names as str by llhttp's method number, each decoded once (llhttp_method_name
# aborts on a number it does not know, so only those a parsed request carried are asked).
cdef list METHOD_NAMES = [None] * 256
# The fields ``_headers_complete`` reads the value of (as bytes; every other field stays
# in the C block it was read into).
cdef unsigned int HEAD_CHECKED = (1 << H_HOST | 1 << H_TRANSFER_ENCODING | 1 << H_X_REQUEST_ID
                                  | 1 << H_UPGRADE | 1 << H_EXPECT)
# The errors a refusal becomes when it is answered as the response of a started exchange.
REFUSAL_ERRORS = {400: BadRequest, 408: RequestTimeout, 413: PayloadTooLarge}


class _Refuse(Exception):
    """Raised from a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status, message):
        self.status = status
        self.message = message


# Peer addresses seen lately, each string kept once: the connections from one address
# (a load balancer, a NAT, a client's pool) share it, not 58 bytes each. Emptied when
# it grows past PEER_ADDRESSES_KEPT, so a flood of addresses cannot grow it.
cdef dict PEER_ADDRESSES = {}
cdef Py_ssize_t PEER_ADDRESSES_KEPT = 4096


cdef str _shared_address(str address):
    cdef object kept = PEER_ADDRESSES.get(address)
    if kept is not None:
        return <str>kept
    if len(PEER_ADDRESSES) >= PEER_ADDRESSES_KEPT:
        PEER_ADDRESSES.clear()
    PEER_ADDRESSES[address] = address
    return address


@cython.final
cdef class ServerContext:
    """What every connection a worker accepts under one config shares: the worker, its
    loop and proxy, and the [server] limits, typed. One reference per connection instead
    of eight fields; a reload that changes the limits makes a new one, and connections
    accepted before keep theirs."""

    cdef readonly object worker, loop, limits
    cdef readonly Proxy proxy
    cdef readonly Py_ssize_t max_header_bytes, max_body_bytes
    cdef readonly double header_timeout, idle_timeout

    def __init__(self, worker):
        self.worker = worker
        self.loop = worker.loop
        self.proxy = worker.proxy
        limits = self.limits = worker.limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_body_bytes = limits.max_body_bytes
        self.header_timeout = limits.header_timeout
        self.idle_timeout = limits.idle_timeout


cdef ServerContext _last_context = None


cdef ServerContext _server_context(worker):
    """The context of a connection ``worker`` accepts now: the last one made, unless the
    worker, its proxy or its limits changed since."""
    global _last_context
    cdef ServerContext context = _last_context
    if (context is None or context.worker is not worker or context.limits is not worker.limits
            or context.proxy is not worker.proxy or context.loop is not worker.loop):
        context = _last_context = ServerContext(worker)
    return context


@cython.no_gc  # (no field can hold a cycle: bytes, and C state)
@cython.freelist(64)
cdef class _RequestReader:
    """What a connection holds while it reads a request, its head and then its body, and
    drops between keep-alive requests: an idle connection holds none (these ~200 bytes
    were the largest part of its own state).

    ``parser``: llhttp's state, its callbacks landing in the connection (``parser.data``).
    The head's header fields being read: their bytes in one growing block (each name, then
    its value; either may come in several pieces, across reads), the field being read from
    ``field_start`` on, its name ``name_length`` long; one ``HeaderField`` per field read
    whole. Both blocks go to the exchange at the head's end. ``head_bytes``: the fields'
    bytes counted against max_header_bytes (a trailer's too); ``url``: the target."""

    cdef llhttp_t parser
    cdef char* field_bytes
    cdef Py_ssize_t bytes_length, bytes_capacity, field_start, name_length
    cdef HeaderField* fields
    cdef Py_ssize_t field_count, fields_capacity
    cdef Py_ssize_t head_bytes
    cdef bytes url

    def __dealloc__(self):
        free(self.field_bytes)
        free(self.fields)


cdef _RequestReader _new_reader(object connection):
    """A fresh llhttp request parser (strict: no leniency flag is set, as httptools sets
    none), its callbacks ``connection``'s handlers. A new request on a keep-alive
    connection gets a new one: llhttp between two messages is in the state a new one
    starts in (only an ``on_reset`` callback, which we do not set, tells them apart)."""
    cdef _RequestReader reader = _RequestReader.__new__(_RequestReader)
    llhttp_init(&reader.parser, HTTP_REQUEST, &REQUEST_CALLBACKS)
    reader.parser.data = <void*>connection
    reader.url = b""
    return reader


cdef class HTTP1Connection(Downstream):
    """One client connection speaking HTTP/1.x (an asyncio protocol)."""

    # the worker, its proxy and the limits this connection was accepted under (shared)
    cdef ServerContext server
    # per-connection state
    cdef public object transport
    cdef list queue
    cdef object refusal
    # the request being read (llhttp's state, its head's fields, its target), or None
    # between keep-alive requests; the exception a handler raised, kept for
    # ``data_received`` once llhttp has stopped
    cdef _RequestReader reader
    cdef object parse_error
    cdef str peer_ip
    cdef Exchange current, reading, deferred
    # an upgrade request waiting for its answer (the bytes after it held in ``stash``),
    # and the exchange this connection is a tunnel of, once switched
    cdef Exchange upgrading, tunnel
    cdef list stash
    cdef Py_ssize_t stash_bytes
    # (flags: a byte each, where a bint takes four; 10,000 idle connections add up)
    cdef unsigned char paused, closing, lingering, in_head, chunked_out, close_after, tls
    # the socket's descriptor of our own for writing at once (``fastgw.socket_writes``;
    # -1: none, TLS), and whether the transport may hold bytes, written after them
    cdef int sock
    cdef unsigned char buffered
    # the last request ended with the bytes read so far, keep-alive: its reader can go
    cdef unsigned char between
    # the first bytes of a plain connection are looked at for HTTP/2's preface
    cdef unsigned char sniffing
    # body bytes still due of an Upgrade request served as plain HTTP
    cdef Py_ssize_t upgrade_body_left
    cdef bytes sniffed
    cdef Py_ssize_t linger_bytes, raw_head_bytes
    cdef double deadline
    cdef bytes held_head, feeding
    # the open-connections gauge it counts in (``_core.metrics``: P_HTTP1, P_WEBSOCKET), or -1
    cdef int gauge

    def __cinit__(self):
        self.sock = -1  # (before __init__: __dealloc__ closes what is not -1)

    def __init__(self, worker, bint tls=False):
        self.server = _server_context(worker)
        self.gauge = -1
        self.tls = tls
        self.transport = None
        self.reader = None  # made at a request's first byte (data_received)
        self.parse_error = None
        self.peer_ip = ""
        # Pipelined requests waiting their turn, and the bytes held after an upgrade
        # request: lists made when needed, None otherwise (an idle keep-alive connection
        # keeps no empty list: 2 x 72 bytes; not a deque: an empty one is 600)
        self.queue = None
        self.current = None
        self.reading = None
        self.paused = False
        self.closing = False
        self.lingering = False
        self.linger_bytes = 0
        self.deadline = 0.0
        self.in_head = False
        self.raw_head_bytes = 0
        self.chunked_out = False
        self.close_after = False
        self.refusal = None
        #: a response head not yet written: it goes out with the first body bytes
        self.held_head = b""
        self.sniffed = b""
        #: an exchange whose head completed during this data_received: started after it, so that
        #: a refusal later in the same bytes (a broken body) is known before anything is sent
        self.deferred = None
        self.upgrading = None
        self.tunnel = None
        self.stash = None
        self.stash_bytes = 0

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        connections = self.server.worker.connections
        if len(connections) >= self.server.limits.max_connections:
            # Over the limit: closed at once, no answer, no parsing (max_connections); the
            # worker's sweeper reports how many, at most once a second.
            self.server.worker.refused_connections += 1
            self.closing = True
            transport.close()
            return
        connections.add(self)
        self.gauge = P_HTTP1
        connection_opened(P_HTTP1)
        peer = transport.get_extra_info("peername")
        self.peer_ip = _shared_address(peer[0]) if peer else ""
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        # The first request's head is due within header_timeout of the connection.
        self.deadline = monotonic() + self.server.header_timeout
        self.in_head = True
        if self.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._to_http2(b"", None)
        else:
            self.sniffing = True
            self.sock = dup_socket(transport)

    cdef _to_http2(self, bytes data, upgrade):
        """Hand the connection to the HTTP/2 front end (ALPN h2, the preface, or an h2c
        upgrade), with the bytes read so far."""
        self.closing = True  # this protocol is done with it
        self.sock = release_socket(self.sock)
        self.server.worker.connections.discard(self)
        self._uncount()  # (HTTP/2 counts it from now on)
        take_over(self.server.worker, self.transport, self.tls, data, upgrade)

    def data_received(self, bytes data):
        if self.sniffing:
            # HTTP/2 by prior knowledge starts with its preface, which llhttp would refuse;
            # a part of it is held until the rest tells.
            if self.sniffed:
                data = self.sniffed + data
                self.sniffed = b""
            if len(data) < len(PREFACE) and PREFACE.startswith(data):
                self.sniffed = data
                return
            self.sniffing = False
            if data.startswith(PREFACE):
                self._to_http2(data, None)
                return
        if self.lingering:
            self.linger_bytes += len(data)
            if self.linger_bytes > LINGER_MAX_BYTES:
                self.transport.abort()
            return
        if self.closing:
            return
        if self.tunnel is not None:
            self.tunnel.feed_body(data)
            return
        if self.upgrading is not None:
            self._hold(data)
            return
        if self.upgrade_body_left:
            self._upgrade_body(data)
            return
        global _read_at
        _read_at = monotonic()
        if self.in_head:
            if self.raw_head_bytes == 0:
                # First byte of a head: from now on it must complete within header_timeout.
                self.deadline = _read_at + self.server.header_timeout
            self.raw_head_bytes += len(data)
        elif self.reading is not None:
            self.deadline = _read_at + self.server.idle_timeout
        if self.reader is None:
            self.reader = _new_reader(self)
        cdef _RequestReader reader = self.reader
        self.feeding = data
        cdef llhttp_errno_t error = llhttp_execute(&reader.parser, <const char*>data, len(data))
        if error != HPE_OK:
            self._parse_stopped(error, data)
        elif self.between and self.reader is reader:
            # The bytes ended with a keep-alive request, nothing of the next one read:
            # the reader goes (a fresh one reads the next request as this one would).
            self.reader = None
        else:
            if self.in_head and self.raw_head_bytes > self.server.max_header_bytes:
                # Everything since the head began is head: over the limit, whatever llhttp
                # is still buffering of a line. llhttp hands a header over only when it is
                # whole, so "no header yet" does not mean "still in the request line": when
                # the head holds clearly more than the target and its line, a first header
                # is what is too large (431); only a target that is most of it is 414.
                if reader.field_count or self.raw_head_bytes > len(reader.url) + REQUEST_LINE_SLACK:
                    self.refuse(431, "request head too large")
                else:
                    self.refuse(414, "request target too long")
        self.feeding = None
        cdef Exchange ex = self.deferred
        if ex is not None:
            self.deferred = None
            if ex is self.current and not self.closing:
                self.server.proxy.handle(ex)

    cdef _parse_stopped(self, llhttp_errno_t error, bytes data):
        """llhttp stopped before the end of ``data``: an upgrade, a handler's refusal, or
        a request it refuses itself (as httptools' ``feed_data`` reads the same states)."""
        cdef Py_ssize_t offset
        cdef const char* reason
        raised = self.parse_error
        self.parse_error = None
        cdef llhttp_t* parser = &self.reader.parser
        if error == HPE_PAUSED_UPGRADE and parser.upgrade == 1:
            offset = llhttp_get_error_pos(parser) - <const char*>data
            # Out of the paused state at once, as httptools does: what follows the head is
            # ours to read (held, tunnelled, or the connection closes after the answer).
            llhttp_resume_after_upgrade(parser)
            self._upgrade_requested(offset)
        elif raised is not None:
            if isinstance(raised, _Refuse):
                self.refuse(raised.status, raised.message)
            else:
                raise raised
        else:
            reason = llhttp_get_error_reason(parser)
            text = reason.decode("latin-1") if reason is not NULL else "invalid request"
            self.refuse(400, f"malformed request: {_parser_reason(text)}")

    def eof_received(self):
        # The client shut its side: as nginx does, that ends the connection, and a request
        # in flight is abandoned (logged 499) rather than finished for nobody. A tunnel is
        # half-closed instead: the other side may still have bytes for the client.
        cdef Exchange ex = self.tunnel
        if ex is not None and not self.closing:
            ex.end_body()
            return True
        self.sock = release_socket(self.sock)  # the transport closes now
        return None

    def connection_lost(self, exc):
        self.closing = True
        self.sock = release_socket(self.sock)
        self.tunnel = None
        self.upgrading = None
        self.stash = None
        self.server.worker.connections.discard(self)
        self._uncount()
        if self.reading is not None:
            self.reading.detach_body()
        self.queue = None
        cdef Exchange ex = self.current
        if ex is not None:
            # The client is gone: abandon its request upstream rather than relay a
            # response nobody reads (and never pool that half-read connection).
            self.current = None
            ex.fail(ClientClosedRequest("client closed the connection"))

    def pause_writing(self):
        cdef Exchange ex = self.current
        if ex is not None and ex.upstream_side is not None:
            ex.upstream_side.client_writable(False)

    def resume_writing(self):
        cdef Exchange ex = self.current
        if ex is not None and ex.upstream_side is not None:
            ex.upstream_side.client_writable(True)

    # -- flow control asked by the exchange or the upstream --------------------------------

    cpdef pause_reading(self, Exchange ex):
        self._pause()

    cpdef resume_reading(self, Exchange ex):
        self._resume()

    cdef _pause(self):
        # (one connection reads one request body at a time: pausing the exchange is
        # pausing the connection)
        if not self.paused and not self.closing:
            self.paused = True
            self.transport.pause_reading()

    cdef _resume(self):
        if self.paused and not self.closing and (self.queue is None or len(self.queue) < MAX_PIPELINE):
            self.paused = False
            self.transport.resume_reading()

    # -- llhttp's callbacks (through the trampolines at the end of the module) -------------

    cdef int _message_begin(self) except -1:
        cdef _RequestReader r = self.reader
        self.in_head = True
        self.between = False
        r.url = b""
        r.head_bytes = 0
        r.bytes_length = r.field_start = r.name_length = r.field_count = 0
        return 0

    cdef int _url_piece(self, const char* at, size_t length) except -1:
        cdef _RequestReader r = self.reader
        piece = PyBytes_FromStringAndSize(at, length)
        r.url = r.url + piece if r.url else piece
        if len(r.url) > self.server.max_header_bytes:
            raise _Refuse(414, "request target too long")
        return 0

    cdef int _field_piece(self, const char* at, size_t length, bint is_value) except -1:
        cdef _RequestReader r = self.reader
        cdef Py_ssize_t needed = r.bytes_length + <Py_ssize_t>length
        cdef Py_ssize_t capacity
        cdef char* grown
        if needed - r.field_start > self.server.max_header_bytes:
            # (the head would be refused as too large anyway; this bounds the block for a
            # trailer too, which the head's byte count sees only once it is whole)
            raise _Refuse(431, "request head too large")
        if needed > r.bytes_capacity:
            capacity = max(needed, 2 * r.bytes_capacity, 256)
            grown = <char*>realloc(r.field_bytes, capacity)
            if grown is NULL:
                raise MemoryError()
            r.field_bytes = grown
            r.bytes_capacity = capacity
        memcpy(r.field_bytes + r.bytes_length, at, length)
        r.bytes_length = needed
        if not is_value:
            r.name_length = needed - r.field_start
        return 0

    cdef int _field_complete(self) except -1:
        """A header field (or a trailer) read whole: a ``HeaderField`` of the head (a
        trailer is counted against the limit and dropped: the head went upstream)."""
        cdef _RequestReader r = self.reader
        cdef Py_ssize_t field_length = r.bytes_length - r.field_start
        cdef Py_ssize_t capacity
        cdef HeaderField* grown
        cdef HeaderField* field
        r.head_bytes += field_length + 4
        if r.head_bytes + len(r.url) > self.server.max_header_bytes:
            raise _Refuse(431, "request head too large")
        if not self.in_head:
            r.bytes_length = r.field_start
            r.name_length = 0
            return 0
        if r.field_count == r.fields_capacity:
            capacity = max(2 * r.fields_capacity, 16)
            grown = <HeaderField*>realloc(r.fields, capacity * sizeof(HeaderField))
            if grown is NULL:
                raise MemoryError()
            r.fields = grown
            r.fields_capacity = capacity
        field = &r.fields[r.field_count]
        field.name = <unsigned int>r.field_start
        field.name_length = <unsigned int>r.name_length
        field.value_length = <unsigned int>(field_length - r.name_length)
        field.ident = header_id_chars(r.field_bytes + r.field_start, r.name_length)
        r.field_count += 1
        r.field_start = r.bytes_length
        r.name_length = 0
        return 0

    cdef int _headers_complete(self) except -1:
        cdef Py_ssize_t hosts = 0, length = 0
        cdef int body_kind = BODY_NONE
        cdef bint expect_continue = False
        cdef Exchange ex
        cdef _RequestReader r = self.reader
        self.in_head = False
        self.raw_head_bytes = 0
        cdef int method = r.parser.method
        version = _version(r.parser.http_major, r.parser.http_minor)
        if version != "1.1" and version != "1.0":
            if version.startswith("2"):
                raise _Refuse(505, f"HTTP/{version} is not spoken on this port as HTTP/1")
            raise _Refuse(400, f"HTTP/{version} is not supported")
        if method == HTTP_CONNECT:
            # Refused here, before an exchange exists: llhttp reports CONNECT (as an
            # upgrade) only after this callback, and a CONNECT with an origin-form target
            # would otherwise be routed and forwarded like any request.
            raise _Refuse(405, "CONNECT is not supported")
        host = None
        request_id = None
        upgrade = None
        cdef int ident
        cdef Py_ssize_t i
        cdef HeaderField* field
        for i in range(r.field_count):
            field = &r.fields[i]
            ident = field.ident
            if ident == H_CONTENT_LENGTH:
                # llhttp already refused anything but one decimal number, and read it
                length = <Py_ssize_t>r.parser.content_length
                if length:
                    body_kind = BODY_LENGTH
                continue
            if not HEAD_CHECKED & (1 << ident):
                continue
            value = PyBytes_FromStringAndSize(r.field_bytes + field.name + field.name_length,
                                              field.value_length)
            if ident == H_HOST:
                hosts += 1
                host = value
            elif ident == H_TRANSFER_ENCODING:
                if version == "1.0":
                    raise _Refuse(400, "Transfer-Encoding in an HTTP/1.0 request")
                # llhttp refuses a coding list not ending in chunked only after this
                # callback (the exchange would already be under way), and accepts
                # "gzip, chunked". We decode no coding and forward under our own framing,
                # so anything but chunked alone would reach the upstream mislabelled.
                if [c for c in (t.strip().lower() for t in value.split(b",")) if c] != [b"chunked"]:
                    raise _Refuse(400, "unsupported Transfer-Encoding")
                body_kind = BODY_CHUNKED
            elif ident == H_X_REQUEST_ID:
                if request_id is None:
                    request_id = value
            elif ident == H_UPGRADE:
                upgrade = value if upgrade is None else upgrade + b"," + value
            elif ident == H_EXPECT:
                if value.lower() != b"100-continue":
                    raise _Refuse(417, "unsupported Expect")
                expect_continue = True
        if hosts > 1:
            raise _Refuse(400, "more than one Host header")
        if hosts == 0 and version == "1.1":
            raise _Refuse(400, "missing Host header")
        url = r.url
        absolute_form = PyBytes_GET_SIZE(url) == 0 or PyBytes_AS_STRING(url)[0] != b"/"
        if absolute_form:
            url, host = self._absolute_form(url, host)
        # the path (as latin-1 text) and the query, split in C (PERF)
        cdef const char* target = PyBytes_AS_STRING(url)
        cdef Py_ssize_t target_length = PyBytes_GET_SIZE(url)
        cdef const char* mark = <const char*>memchr(target, 63, target_length)  # "?"
        if mark == NULL:
            path = PyUnicode_DecodeLatin1(target, target_length, NULL)
            query = b""
        else:
            path = PyUnicode_DecodeLatin1(target, mark - target, NULL)
            query = PyBytes_FromStringAndSize(mark + 1, target_length - (mark - target) - 1)
        npath = normalize_path(path)
        if npath is None:
            raise _Refuse(400, "invalid request path")
        hostname = host_name(host)
        if hostname is None:
            raise _Refuse(400, "invalid Host header")
        if body_kind == BODY_LENGTH and length > self.server.max_body_bytes:
            raise _Refuse(413, "request body too large")
        method_name = METHOD_NAMES[method]
        if method_name is None:
            method_name = METHOD_NAMES[method] = llhttp_method_name(<llhttp_method_t>method).decode()
        ex = new_exchange(self, method_name, npath, query, hostname, host, None,
                      version, llhttp_should_keep_alive(&r.parser) != 0, self.peer_ip, body_kind,
                      length, _read_at)
        # The head's fields go to the exchange as they are: both blocks, no copy.
        ex.take_fields(r.field_bytes, r.fields, r.field_count)
        r.field_bytes = NULL
        r.fields = NULL
        r.bytes_capacity = r.fields_capacity = 0
        r.bytes_length = r.field_start = r.field_count = 0
        if absolute_form:
            # RFC 9112 §3.2.2: the target's authority replaces Host, and a proxy forwards a
            # Host made from it. Routed on one host and forwarded with another, a request
            # could reach a virtual host whose route policies it never passed.
            ex.headers = [(n, v) for n, v in ex.headers if header_id(n) != H_HOST] + [(b"host", host)]
        ex.tls = self.tls
        if (upgrade is not None and body_kind == BODY_NONE and version == "1.1" and method == HTTP_GET
                and r.parser.upgrade and _asks_websocket(upgrade)):
            ex.upgrade = b"websocket"
        self.server.proxy.prepare(ex, request_id)
        if body_kind != BODY_NONE:
            self.reading = ex
            self.deadline = ex.started + self.server.idle_timeout
            if expect_continue:
                self._write(CONTINUE)
        if self.current is None:
            self.current = ex
            self.deferred = ex  # handled when llhttp_execute returns (data_received)
        else:
            if self.queue is None:
                self.queue = []
            self.queue.append(ex)
            if len(self.queue) >= MAX_PIPELINE:
                self._pause()
        return 0

    @staticmethod
    def _absolute_form(bytes url, host):
        """``http://authority/path``: the authority replaces Host (RFC 9112 §3.2.2).
        Authority-form, asterisk-form and other schemes are refused."""
        scheme, sep, rest = url.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise _Refuse(400, "request target must be a path or an http URL")
        authority, slash, path = rest.partition(b"/")
        if not authority or b"@" in authority:
            raise _Refuse(400, "invalid authority in request target")
        return slash + path if slash else b"/", authority

    cdef int _body_piece(self, const char* at, size_t length) except -1:
        cdef Exchange ex = self.reading
        if ex is None:
            return 0
        if ex.bytes_in + <Py_ssize_t>length > self.server.max_body_bytes:
            raise _Refuse(413, "request body too large")
        cdef bytes data = self.feeding
        if data is not None and at == <const char*>data and <Py_ssize_t>length == len(data):
            # PERF: a read that is all body (an upload's reads after its head) goes on as
            # it is, not copied
            ex.feed_body(data)
        else:
            ex.feed_body(PyBytes_FromStringAndSize(at, length))
        return 0

    cdef int _message_complete(self) except -1:
        cdef Exchange ex = self.reading
        if ex is not None:
            self.reading = None
            ex.end_body()
        # A keep-alive connection drops its reader once the bytes read end here
        # (data_received); one that closes after this request keeps it, and llhttp
        # refuses what the client sends after it.
        self.between = llhttp_should_keep_alive(&self.reader.parser) != 0
        self.in_head = True
        self.deadline = _read_at + self.server.idle_timeout
        return 0

    # -- Downstream: what the proxy and the upstream call -----------------------------------

    cpdef send_head(self, Exchange ex, int status, list headers, Py_ssize_t length):
        cdef HeadWriter head = self._begin_head(ex, status)
        cdef tuple field
        if head is not None:
            for field in headers:
                head.add_field(<bytes?>field[0], <bytes?>field[1])
            self._end_head(ex, status, length)

    cpdef send_head_lines(self, Exchange ex, int status, bytes lines, Py_ssize_t length):
        cdef HeadWriter head = self._begin_head(ex, status)
        if head is not None:
            head.add(lines)
            self._end_head(ex, status, length)

    cdef HeadWriter _begin_head(self, Exchange ex, int status):
        """The response starts: its status line written, or None when we are closing."""
        ex.response_started = True
        ex.status = status
        if self.closing:
            return None
        cdef HeadWriter head = _head
        head.reset()  # whatever a build that raised may have left
        head.add(STATUS_LINES[status] if 0 <= status < 600 else status_line(status))
        return head

    cpdef send_response(self, Exchange ex, int status, HeadWriter lines, bytes data, Py_ssize_t start,
                        Py_ssize_t length):
        # PERF: the status line, the fields, the framing and the body copied once, into
        # one write (instead of a head, a body slice, and both joined)
        if start < 0 or length < 0 or start + length > len(data):
            raise ValueError("the body is not within data")
        if status < 200 or status == 204 or status == 304 or ex.is_head:  # (no body goes)
            Downstream.send_response(self, ex, status, lines, data, start, length)
            return
        cdef HeadWriter head = self._begin_head(ex, status)
        if head is None:
            lines.reset()
            return
        head.add_chars(lines.data, lines.length)
        lines.reset()
        self._add_framing(ex, status, length)
        head.add_chars(PyBytes_AS_STRING(data) + start, length)
        ex.bytes_out += length
        # PERF: from the writer's buffer to the socket, no bytes object in between
        self.buffered = send_now(self.sock, self.transport, self.buffered, None, head.data, head.length)
        head.reset()

    cdef _end_head(self, Exchange ex, int status, Py_ssize_t length):
        """The framing and connection lines after the fields, then the head is held."""
        cdef HeadWriter head = _head
        if status == 101 and ex is self.upgrading:
            # The switch: the fields that say so are this protocol's to write.
            self.chunked_out = False
            head.add(b"connection: upgrade\r\nupgrade: ")
            head.add(ex.upgrade)
            head.add(b"\r\n\r\n")
            self.held_head = head.finish()
            self.close_after = False
            self._switch(ex)
            return
        self._add_framing(ex, status, length)
        # PERF: held back and written together with the first body bytes or the end, when
        # they come in the same upstream read (one send() per small response instead of
        # two); ``flush`` writes it after that read otherwise, so a head is never delayed.
        self.held_head = head.finish()

    cdef _add_framing(self, Exchange ex, int status, Py_ssize_t length):
        """The framing and connection lines that end a head (the blank line included)."""
        cdef HeadWriter head = _head
        self.chunked_out = False
        if status == 204 or status == 304 or status < 200:
            pass
        elif length >= 0:
            head.add(b"content-length: ")
            head.add_decimal(length)
            head.add(b"\r\n")
        elif not ex.is_head:
            if ex.version == "1.1":
                head.add(b"transfer-encoding: chunked\r\n")
                self.chunked_out = True
            else:
                ex.keep_alive = False  # HTTP/1.0: the close marks the end of the body
        # Close after this response when the client asked, when draining, or when the
        # request body was not read to its end (we cannot find the next request). A
        # refusal owed to a later pipelined request does not close here: that answer
        # follows this one on the connection (``_finished``), and it says close.
        cdef bint close = not ex.keep_alive or self.server.proxy.draining or ex is self.reading
        self.close_after = close
        if close:
            head.add(b"connection: close\r\n\r\n")
        elif ex.version == "1.0":
            head.add(b"connection: keep-alive\r\n\r\n")
        else:
            head.add(b"\r\n")

    cdef _write(self, bytes data):
        """Every write to the client but a whole response's (``send_response``), in order."""
        self.buffered = send_bytes(self.sock, self.transport, self.buffered, data)

    cdef _close(self):
        self.closing = True
        self.sock = release_socket(self.sock)
        self.transport.close()

    def __dealloc__(self):
        release_socket(self.sock)  # (a connection dropped without connection_lost: the loop closed)

    cpdef flush(self):
        head = self.held_head
        if head:
            self.held_head = b""
            if not self.closing:
                self._write(head)

    cpdef send_body(self, Exchange ex, bytes data):
        if ex.is_head or not data or self.closing:
            return
        ex.bytes_out += len(data)
        head = self.held_head
        if head:
            self.held_head = b""
        if self.chunked_out:
            self._write(b"".join((head, b"%x\r\n" % len(data), data, b"\r\n")))
        elif head:
            self._write(head + data if len(data) < 65536 else head)
            if len(data) >= 65536:
                self._write(data)  # a large chunk: no copy just to save a syscall
        else:
            self._write(data)

    cpdef send_end(self, Exchange ex):
        head = self.held_head
        if head:
            self.held_head = b""
        if ex is self.tunnel:
            # The other side of the tunnel closed: what it sent goes out, then the close.
            if head and not self.closing:
                self._write(head)
            self.tunnel = None
            self.current = None
            if not self.closing:
                self._close()
            return
        if self.chunked_out:
            self._write(head + b"0\r\n\r\n")
            self.chunked_out = False
        elif head and not self.closing:
            self._write(head)
        self._finished(ex)

    cpdef bint retract_head(self, Exchange ex):
        # A head is held until the first body bytes, the end, or the end of the upstream
        # read that brought it (``flush``): an upstream whose body broke in that same read
        # (a bad chunk right after a good head) gets its 502 answered, not an empty reply.
        if ex is not self.current or ex is self.tunnel or not self.held_head or self.closing:
            return False
        self.held_head = b""
        self.chunked_out = False
        return True

    cpdef abort(self, Exchange ex):
        self.current = None
        self.tunnel = None
        self._close()

    # -- request sequencing -------------------------------------------------------------------

    cdef _start(self, Exchange ex):
        if self.closing or self.lingering:
            return  # we said we close (or the client left): no more requests on this one
        self.current = ex
        self.server.proxy.handle(ex)

    cdef _finished(self, Exchange ex):
        if self.current is not ex:
            return
        self.current = None
        if self.closing:
            return
        if ex is self.upgrading:
            # Answered without a switch: the connection goes on as HTTP/1.1.
            self.upgrading = None
            if not self.close_after:
                self._resume_http()
                return
        if self.close_after:
            self._close_lingering()
            return
        if self.refusal is not None and not self.queue:
            self._write_refusal()
            return
        if self.queue:
            ex = self.queue.pop(0)
            if not self.queue:
                self.queue = None
            self._start(ex)
            self._resume()
        elif self.reading is None:
            self.deadline = monotonic() + self.server.idle_timeout

    # -- our own answers -------------------------------------------------------------------------

    cpdef refuse(self, int status, str message):
        """Answer ``status`` and close lingering, after the responses already owed."""
        cdef Exchange ex
        if self.refusal is not None or self.closing:
            return
        self.refusal = (status, message)
        self.in_head = False
        self._pause()
        ex = self.reading
        if ex is not None:
            # The request whose body was arriving broke (bad chunk, too large, too slow):
            # it must never complete upstream.
            self.reading = None
            ex.detach_body()
            if ex is self.current:
                if not ex.response_started:
                    # The upstream may have part of it: abandon that request; the refusal
                    # is its response (and closes, as keep_alive is off).
                    ex.keep_alive = False
                    ex.fail(REFUSAL_ERRORS.get(status, BadRequest)(message))
                # else its response is under way and send_head saw the body unread: the
                # connection closes after it, with no answer of ours.
                return
            # A pipelined request still waiting its turn: drop it; the refusal answers it.
            self.queue.remove(ex)
            if not self.queue:
                self.queue = None
        if self.current is None:
            self._write_refusal()

    cdef _write_refusal(self):
        status, message = self.refusal
        rid = self.server.proxy.ids.next()
        body = error_body(status, message, rid)
        self._write(b"".join((
            STATUS_LINES[status],
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"x-request-id: ", rid.encode(), b"\r\nconnection: close\r\n\r\n", body)))
        self.server.proxy.access_log.write_refusal(self.peer_ip, rid, status,
                                            self.reader.url if self.reader is not None else b"")
        self._close_lingering()

    cdef _close_lingering(self):
        self.lingering = True
        self.in_head = False
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self.sock = release_socket(self.sock)  # (nothing more is written)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.server.loop.call_later(LINGER_SECONDS, self.transport.close)

    cdef _upgrade_requested(self, Py_ssize_t offset):
        # llhttp stops after a request carrying Upgrade (or CONNECT, which never gets here:
        # _headers_complete refuses it); ``offset`` is where the bytes after its head
        # begin in those being fed. h2c (a bodiless first request on a plain connection)
        # switches to HTTP/2. A WebSocket request waits for its answer, the bytes after it
        # held. Any other upgrade is served as plain HTTP (Upgrade is hop-by-hop and not
        # forwarded) and the connection closes after it, since llhttp will not parse what
        # follows.
        cdef Exchange ex = self.deferred
        rest = self.feeding[offset:] if self.feeding is not None else b""
        if (ex is not None and ex is self.current and not self.queue and not self.tls
                and ex.body_kind == BODY_NONE and self.feeding is not None):
            settings = _h2c_settings(ex.headers)
            if settings is not None:
                self.deferred = self.current = None
                self._write(H2C_SWITCH)
                self._to_http2(rest, (settings, ex))
                return
        ex = self.current if not self.queue else self.queue[-1]
        self.in_head = False
        if ex is not None and ex.upgrade is not None:
            self.upgrading = ex
            self.stash = None
            self.stash_bytes = 0
            if rest:
                self._hold(rest)
            return
        if ex is not None:
            ex.keep_alive = False
        if ex is not None and ex.body_kind != BODY_NONE and ex.bytes_in == 0:
            # llhttp ends the message at the head and leaves the body to the upgraded
            # protocol: a Content-Length body is read here, as it comes; a chunked one
            # cannot be (we do not parse chunks ourselves).
            ex.body_done = False
            self.reading = ex
            if ex.body_kind == BODY_CHUNKED:
                self.refuse(400, "Upgrade with a chunked body")
                return
            self.upgrade_body_left = ex.body_length
            if rest:
                self._upgrade_body(rest)
            return
        self._pause()

    cdef _upgrade_body(self, bytes data):
        """The Content-Length body of an Upgrade request served as plain HTTP."""
        cdef Exchange ex = self.reading
        cdef Py_ssize_t take = min(len(data), self.upgrade_body_left)
        if ex is None or take == 0:
            return
        self.upgrade_body_left -= take
        self.deadline = monotonic() + self.server.idle_timeout
        ex.feed_body(data[:take] if take < len(data) else data)
        if self.upgrade_body_left == 0:
            self.reading = None
            ex.end_body()
            self._pause()  # nothing after it is read: the connection closes after the response

    cdef _hold(self, bytes data):
        """Bytes after an upgrade request, kept until its answer says what they are."""
        if self.stash is None:
            self.stash = []
        self.stash.append(data)
        self.stash_bytes += len(data)
        if self.stash_bytes > STASH_HIGH:
            self._pause()

    cdef void _uncount(self) noexcept:
        """Leave the open-connections gauge it counts in (once)."""
        if self.gauge >= 0:
            connection_closed(self.gauge)
            self.gauge = -1

    cdef _switch(self, Exchange ex):
        """The 101 is written: from now on this connection is ``ex``'s tunnel, and the
        bytes held since the request are its first."""
        self.tunnel = ex
        self.upgrading = None
        if ex.upgrade is not None and ex.upgrade.lower() == b"websocket" and self.gauge == P_HTTP1:
            self._uncount()
            self.gauge = P_WEBSOCKET
            connection_opened(P_WEBSOCKET)
        held = self.stash or ()
        self.stash = None
        self.stash_bytes = 0
        self._resume()
        for chunk in held:
            ex.feed_body(chunk)

    cdef _resume_http(self):
        """An upgrade request answered without a switch: a new parser reads what the
        client sent after it as the next request."""
        self.reader = None
        self.in_head = True
        self.raw_head_bytes = 0
        self.deadline = monotonic() + self.server.idle_timeout
        held = self.stash or ()
        self.stash = None
        self.stash_bytes = 0
        self._resume()
        for chunk in held:
            self.data_received(chunk)

    def check(self, double now):
        cdef Exchange ex
        """Called by the sweeper: enforce header, body and idle deadlines (a tunnel's
        idle time is its other side's to judge)."""
        if now < self.deadline or self.closing or self.lingering or self.tunnel is not None:
            return
        if self.in_head and self.current is None and not self.queue:
            if self.raw_head_bytes:
                self.refuse(408, "request head not received in time")
            else:
                self._close()  # idle keep-alive connection: a silent close
        elif self.reading is not None:
            ex = self.reading
            if self.current is ex and ex.response_started:
                self.abort(ex)
            else:
                self.refuse(408, "request body not received in time")

    def close_if_idle(self):
        """Draining: close now when no request is in flight or arriving."""
        if self.current is None and not self.queue and self.reading is None and not self.raw_head_bytes:
            self._close()


cdef object _h2c_settings(list headers):
    """The decoded HTTP2-Settings of a request asking ``Upgrade: h2c`` (RFC 7540 §3.2), or
    None when it does not ask, or asks without one valid HTTP2-Settings field."""
    asks = False
    settings = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"upgrade":
            asks = asks or b"h2c" in [t.strip().lower() for t in value.split(b",")]
        elif lower == b"http2-settings":
            settings.append(value)
    if not asks or len(settings) != 1:
        return None
    return decode_settings(settings[0])


cdef bint _asks_websocket(bytes upgrade):
    """Whether an Upgrade value (a list of protocols) names websocket."""
    for token in upgrade.split(b","):
        if token.strip().lower() == b"websocket":
            return True
    return False


cdef str _version(int major, int minor):
    """The request line's HTTP version as httptools' ``get_http_version()`` spelled it."""
    if major == 1:
        if minor == 1:
            return "1.1"
        if minor == 0:
            return "1.0"
    return f"{major}.{minor}"


cdef str _parser_reason(str text):
    return text.split(":", 1)[-1].strip() if "HPE_" in text else text


# -- llhttp's callbacks: C functions that land in the connection's typed handlers ----------
#
# A handler's exception cannot cross llhttp's C frames: it is kept on the connection and
# the callback returns an error, which stops llhttp_execute; ``_parse_stopped`` raises or
# answers it. Returning 1 from on_headers_complete when the request asks to upgrade tells
# llhttp there is no body to read and to pause after the message (HPE_PAUSED_UPGRADE),
# as httptools does.

cdef enum:
    # what a callback hands over (``_piece``) or announces (``_event``)
    _URL, _FIELD, _VALUE, _BODY
    _MESSAGE_BEGIN, _VALUE_COMPLETE, _HEADERS_COMPLETE, _MESSAGE_COMPLETE


cdef int _piece(llhttp_t* parser, int kind, const char* at, size_t length) noexcept:
    """A span of the request (target, field name or value, body) into its handler."""
    cdef HTTP1Connection connection = <HTTP1Connection>parser.data
    try:
        if kind == _BODY:
            connection._body_piece(at, length)
        elif kind == _URL:
            connection._url_piece(at, length)
        else:
            connection._field_piece(at, length, kind == _VALUE)
    except BaseException as exc:
        connection.parse_error = exc
        return HPE_USER
    return 0


cdef int _event(llhttp_t* parser, int kind) noexcept:
    """A point of the message (begun, a field whole, the head whole, ended) to its handler."""
    cdef HTTP1Connection connection = <HTTP1Connection>parser.data
    try:
        if kind == _VALUE_COMPLETE:
            connection._field_complete()
        elif kind == _HEADERS_COMPLETE:
            connection._headers_complete()
            return 1 if parser.upgrade else 0
        elif kind == _MESSAGE_BEGIN:
            connection._message_begin()
        else:
            connection._message_complete()
    except BaseException as exc:
        connection.parse_error = exc
        return -1
    return 0


cdef int _on_url(llhttp_t* parser, const char* at, size_t length) noexcept:
    return _piece(parser, _URL, at, length)

cdef int _on_header_field(llhttp_t* parser, const char* at, size_t length) noexcept:
    return _piece(parser, _FIELD, at, length)

cdef int _on_header_value(llhttp_t* parser, const char* at, size_t length) noexcept:
    return _piece(parser, _VALUE, at, length)

cdef int _on_body(llhttp_t* parser, const char* at, size_t length) noexcept:
    return _piece(parser, _BODY, at, length)

cdef int _on_message_begin(llhttp_t* parser) noexcept:
    return _event(parser, _MESSAGE_BEGIN)

cdef int _on_header_value_complete(llhttp_t* parser) noexcept:
    return _event(parser, _VALUE_COMPLETE)

cdef int _on_headers_complete(llhttp_t* parser) noexcept:
    return _event(parser, _HEADERS_COMPLETE)

cdef int _on_message_complete(llhttp_t* parser) noexcept:
    return _event(parser, _MESSAGE_COMPLETE)


# One settings table for every connection (llhttp keeps a pointer to it: it must outlive
# them all, so it is the module's).
cdef llhttp_settings_t REQUEST_CALLBACKS
llhttp_settings_init(&REQUEST_CALLBACKS)
REQUEST_CALLBACKS.on_message_begin = _on_message_begin
REQUEST_CALLBACKS.on_url = _on_url
REQUEST_CALLBACKS.on_header_field = _on_header_field
REQUEST_CALLBACKS.on_header_value = _on_header_value
REQUEST_CALLBACKS.on_header_value_complete = _on_header_value_complete
REQUEST_CALLBACKS.on_headers_complete = _on_headers_complete
REQUEST_CALLBACKS.on_body = _on_body
REQUEST_CALLBACKS.on_message_complete = _on_message_complete
