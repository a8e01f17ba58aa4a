# cython: boundscheck=True, wraparound=True
# (Python semantics for indexing: this module is the request path, not the numeric core.)
"""The HTTP/2 front end: libnghttp2 (the system library, through fastgw's own binding in
``nghttp2.pxd``) driven as a server session, each stream an ``Exchange`` served by the
same proxy, policies and upstream pools as an HTTP/1 request.

How a connection gets here. Cleartext h2c by prior knowledge: the HTTP/1 front end sees
the connection preface as its first bytes and hands the socket over (``take_over``).
h2c by ``Upgrade: h2c``: the HTTP/1 front end answers 101 and hands over the request,
which becomes stream 1. TLS: ALPN chose ``h2``, and the HTTP/1 front end hands the
socket over at once.

Theory of operation. Bytes read go into ``nghttp2_session_mem_recv``; its callbacks land
here as typed calls: a stream's fields are collected (``_field``), and when its head is
complete (``_head_complete``) it is checked and becomes an exchange, which runs once the
bytes read are processed (``_dispatch``: never from inside the library). Request body DATA
goes into the exchange (``feed_body``). Responses are submitted with a data provider
reading from the stream's own buffer (``_take_body``); ``_flush`` asks the library for
the frames to send and writes them in one call.

What libnghttp2 checks by itself (its HTTP messaging rules, left on): the preface, frame
sizes and states, HPACK, pseudo-header presence, order and repetition, lower-case names
without forbidden characters, values without CR/LF/NUL or surrounding spaces,
connection-specific fields, ``TE`` other than ``trailers``, ``content-length`` against
the DATA received, CONTINUATION floods, SETTINGS and PING acknowledgements left unread.
What it leaves to us, checked here: ``:method`` a token, ``:path`` in origin form with
nothing HTTP/1 would read as framing, ``Host`` agreeing with ``:authority``, the header
list size (431), the body size (413), Rapid Reset (resets per second and resets of
streams not yet answered: GOAWAY ENHANCE_YOUR_CALM), floods of frames that cost us work
but no answer (PING, SETTINGS, PRIORITY, empty DATA, WINDOW_UPDATE beyond what the DATA we
send explains), and a count of malformed requests per connection.

Flow control per exchange. The library's automatic WINDOW_UPDATE is off: the connection
window is given back as DATA arrives, a stream's only when its bytes went on upstream, so a
slow upstream holds back its own stream's window, never the connection's. Response bytes
wait in the stream's buffer until the client's window takes them; past ``OUT_HIGH`` bytes
the stream's upstream read is paused (``UpstreamSide.client_writable``), never another's.

WebSocket (RFC 8441): a CONNECT stream with ``:protocol websocket`` becomes an exchange
asking to upgrade (``Exchange.upgrade``), a GET with a ``Sec-WebSocket-Key`` of ours; when
the route tunnels it and the upstream's 101 answers that key (``send_head``), the stream is
answered 200 and its DATA frames are the tunnel's bytes both ways.

Timeouts are deadlines checked by the worker's sweeper (``check``): the connection closes
(GOAWAY) after ``idle_timeout`` with no stream; a stream whose request body or whose
client's window stalls longer than ``stream_idle_timeout`` is answered 408 or reset.
Drain, and a reload that changes ``[server.http2]``: streams in flight finish, then GOAWAY
(the last stream id) and close, HTTP/1's ``Connection: close`` in HTTP/2's words.

May import: the standard library, fastgw.proxy, fastgw.exchange, fastgw.errors,
fastgw._core (path normalisation).
"""

import base64
import binascii
from collections import deque
import hashlib
import logging
import os

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.string cimport memcmp, memcpy


from fastgw._core.metrics cimport P_HTTP2, connection_closed, connection_opened
from fastgw._core.router cimport normalize_path
from fastgw.errors import ClientClosedRequest, PayloadTooLarge, RequestTimeout
from fastgw.exchange cimport (
    BODY_CHUNKED, BODY_LENGTH, BODY_NONE, BODY_TUNNEL, Downstream, Exchange, host_name, monotonic,
    new_exchange)
from fastgw.protocols.nghttp2 cimport *
from fastgw.proxy cimport Proxy
from fastgw.proxy import error_body

log = logging.getLogger("fastgw")

#: what an HTTP/2 client sends first (RFC 9113 §3.4)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2C_SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
# RFC 6455 §1.3: what Sec-WebSocket-Accept is made of.
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
cdef list STATUS_CODES = [str(status).encode() for status in range(600)]
# Response bytes a stream holds for a slow client before its upstream is paused, and the
# level below which it is resumed.
cdef Py_ssize_t OUT_HIGH = 64 * 1024
cdef Py_ssize_t OUT_LOW = 16 * 1024
WRITE_HIGH_WATER = 64 * 1024
# Streams we reset whose late HEADERS (trailers on their way) are ignored, not an error.
RESETS_REMEMBERED = 64
cdef dict METHOD_NAMES = {m.encode(): m for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")}
# RFC 9110 token characters (a method).
cdef bytes TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
cdef unsigned char _TOKEN[256]
for _c in TCHAR:
    _TOKEN[_c] = 1


cdef bint _is_token(bytes value):
    # (PERF: C loops over the bytes; a Python loop made an int object per byte)
    cdef const unsigned char *p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(value)
    if n == 0:
        return False
    for i in range(n):
        if not _TOKEN[p[i]]:
            return False
    return True


cdef bint _is_origin_form(bytes path):
    """A path (and query) as HTTP/1 would carry it in a request line: "/" first, then
    visible ASCII only (no space, control, DEL, 8-bit byte or fragment)."""
    cdef const unsigned char *p = <const unsigned char*>PyBytes_AS_STRING(path)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(path)
    if n == 0 or p[0] != 47:  # "/"
        return False
    for i in range(n):
        if p[i] <= 32 or p[i] >= 127 or p[i] == 35:  # SP and controls, DEL and 8-bit, "#"
            return False
    return True


@cython.final
cdef class H2Stream:
    """One stream's state: its request head while it arrives, its exchange, and the
    response bytes waiting for the client's window."""
    cdef int32_t id
    cdef Exchange ex
    cdef list fields, cookies, out
    cdef bytes method, path, scheme, authority, protocol, host, request_id, content_length
    cdef Py_ssize_t field_bytes, out_offset, out_bytes
    cdef int refusal
    cdef str refusal_message
    # the response: submitted; its last byte handed to the library; nothing more will
    # come (end, or no body); the provider waits for bytes; the upstream is paused
    cdef bint answered, finished, out_end, deferred, upstream_paused
    # the request body: complete; its window withheld (the upstream cannot take more);
    # the stream is gone from the session
    cdef bint request_done, reading_paused, closed
    cdef Py_ssize_t unconsumed
    cdef double deadline

    def __cinit__(self, int32_t stream_id):
        self.id = stream_id
        self.fields = []
        self.cookies = []
        self.out = []


cdef class Http2Limits:
    """``[server.http2]`` and the server limits an HTTP/2 connection applies, typed."""
    cdef public int max_concurrent_streams, max_resets_per_second, max_continuation_frames
    cdef public int max_control_frames_per_second, max_queued_control_frames
    cdef public int max_window_updates_per_data_frame, max_malformed_per_connection
    cdef public Py_ssize_t max_header_list_bytes, max_header_table_bytes, max_body_bytes
    cdef public Py_ssize_t stream_window_bytes, connection_window_bytes
    cdef public double idle_timeout, stream_idle_timeout

    def __init__(self, server):
        h2 = server.http2
        self.max_concurrent_streams = h2.max_concurrent_streams
        self.max_header_list_bytes = h2.max_header_list_bytes
        self.max_header_table_bytes = h2.max_header_table_bytes
        self.max_continuation_frames = h2.max_continuation_frames
        self.max_resets_per_second = h2.max_resets_per_second
        self.max_control_frames_per_second = h2.max_control_frames_per_second
        self.max_queued_control_frames = h2.max_queued_control_frames
        self.max_window_updates_per_data_frame = h2.max_window_updates_per_data_frame
        self.max_malformed_per_connection = h2.max_malformed_per_connection
        self.stream_window_bytes = h2.stream_window_bytes
        self.connection_window_bytes = h2.connection_window_bytes
        self.stream_idle_timeout = h2.stream_idle_timeout
        self.idle_timeout = server.idle_timeout
        self.max_body_bytes = server.max_body_bytes


# -- the library's callbacks: each lands in a typed method of the connection --------------
# (A callback never lets a Python exception into C: a bug of ours fails the session, which
# closes the connection, and is logged.)

cdef int _on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
                           void *user_data) noexcept:
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    try:
        (<HTTP2Connection>user_data)._begin_stream(frame.hd.stream_id)
    except BaseException:
        log.exception("HTTP/2 stream %d failed", frame.hd.stream_id)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                    void *user_data) noexcept:
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0  # trailers: not forwarded (HTTP/1.1 upstreams get no trailers from us)
    try:
        (<HTTP2Connection>user_data)._field(frame.hd.stream_id, name, namelen, value, valuelen)
    except BaseException:
        log.exception("HTTP/2 stream %d failed", frame.hd.stream_id)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                        void *user_data) noexcept:
    try:
        (<HTTP2Connection>user_data)._frame_received(frame)
    except BaseException:
        log.exception("HTTP/2 frame on stream %d failed", frame.hd.stream_id)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_invalid_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                                int lib_error_code, void *user_data) noexcept:
    try:
        (<HTTP2Connection>user_data)._glitch()
    except BaseException:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_invalid_header(nghttp2_session *session, const nghttp2_frame *frame,
                            const uint8_t *name, size_t namelen, const uint8_t *value,
                            size_t valuelen, uint8_t flags, void *user_data) noexcept:
    # A field the messaging rules refuse: the stream is malformed (RST_STREAM
    # PROTOCOL_ERROR), never forwarded without it.
    try:
        (<HTTP2Connection>user_data)._glitch()
    except BaseException:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame.hd.stream_id, NGHTTP2_PROTOCOL_ERROR)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE


cdef int _on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                        const uint8_t *data, size_t length, void *user_data) noexcept:
    try:
        (<HTTP2Connection>user_data)._body(stream_id, data, length)
    except BaseException:
        log.exception("HTTP/2 stream %d failed", stream_id)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                          void *user_data) noexcept:
    try:
        (<HTTP2Connection>user_data)._stream_closed(stream_id, error_code)
    except BaseException:
        log.exception("HTTP/2 stream %d failed", stream_id)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *user_data) noexcept:
    if hd.type != NGHTTP2_HEADERS:
        return 0
    try:
        if (<HTTP2Connection>user_data)._stale_headers(hd.stream_id):
            return NGHTTP2_ERR_CALLBACK_FAILURE  # (the GOAWAY is queued: the connection ends)
    except BaseException:
        log.exception("HTTP/2 frame on stream %d failed", hd.stream_id)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_send(nghttp2_session *session, const nghttp2_frame *frame,
                        void *user_data) noexcept:
    try:
        (<HTTP2Connection>user_data)._frame_sent(frame)
    except BaseException:
        log.exception("HTTP/2 frame on stream %d failed", frame.hd.stream_id)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef ssize_t _read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept:
    try:
        return (<HTTP2Connection>user_data)._take_body(stream_id, buf, length, data_flags)
    except BaseException:
        log.exception("HTTP/2 stream %d failed", stream_id)
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef nghttp2_session_callbacks *CALLBACKS = NULL


cdef _make_callbacks():
    global CALLBACKS
    nghttp2_session_callbacks_new(&CALLBACKS)
    nghttp2_session_callbacks_set_on_begin_headers_callback(CALLBACKS, _on_begin_headers)
    nghttp2_session_callbacks_set_on_header_callback(CALLBACKS, _on_header)
    nghttp2_session_callbacks_set_on_invalid_header_callback(CALLBACKS, _on_invalid_header)
    nghttp2_session_callbacks_set_on_frame_recv_callback(CALLBACKS, _on_frame_recv)
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(CALLBACKS, _on_invalid_frame_recv)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(CALLBACKS, _on_data_chunk)
    nghttp2_session_callbacks_set_on_stream_close_callback(CALLBACKS, _on_stream_close)
    nghttp2_session_callbacks_set_on_frame_send_callback(CALLBACKS, _on_frame_send)
    nghttp2_session_callbacks_set_on_begin_frame_callback(CALLBACKS, _on_begin_frame)


_make_callbacks()


cdef inline void _nv(nghttp2_nv *nv, bytes name, bytes value):
    nv.name = <uint8_t*>PyBytes_AS_STRING(name)
    nv.namelen = PyBytes_GET_SIZE(name)
    nv.value = <uint8_t*>PyBytes_AS_STRING(value)
    nv.valuelen = PyBytes_GET_SIZE(value)
    nv.flags = NGHTTP2_NV_FLAG_NONE


# Fields of an HTTP/1.1 101 that say nothing over HTTP/2 (the switch is the 200 itself).
_SWITCH_FIELDS = (b"sec-websocket-accept", b"upgrade", b"connection")


cdef bint _accepts(list response_fields, list request_fields):
    """Whether a 101's Sec-WebSocket-Accept answers the key we sent (RFC 6455 §4.1)."""
    key = accept = None
    for name, value in request_fields:
        if name == b"sec-websocket-key":
            key = value
    for name, value in response_fields:
        if name.lower() == b"sec-websocket-accept":
            accept = value.strip()
    if key is None or accept is None:
        return False
    return accept == base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())


def take_over(worker, transport, bint tls, bytes data=b"", upgrade=None):
    """Serve ``transport`` as HTTP/2 from now on: ``data`` are the bytes read so far (the
    preface first), ``upgrade`` the ``(HTTP2-Settings payload, Exchange)`` of an ``Upgrade:
    h2c`` request, which becomes stream 1. Returns the new connection."""
    conn = HTTP2Connection(worker, tls)
    conn.start(transport, data, upgrade)
    return conn


def decode_settings(bytes value):
    """An ``HTTP2-Settings`` field's value (base64url, unpadded) as bytes, or None when it
    is not a valid SETTINGS payload."""
    value = value.strip()
    try:
        payload = base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return payload if len(payload) % 6 == 0 else None


cdef class HTTP2Connection(Downstream):
    """One client connection speaking HTTP/2 (an asyncio protocol from ``start`` on)."""

    cdef nghttp2_session *session
    cdef object worker, loop
    cdef Http2Limits limits
    cdef bint counted          # in the open-connections gauge (``_core.metrics``)
    cdef Proxy proxy
    cdef public object transport
    cdef dict streams
    cdef list ready  # exchanges whose heads completed in the bytes being processed
    cdef str peer_ip
    cdef bint tls, closing, write_paused, in_session, retiring, calmed
    cdef double deadline, window_start
    # abuse accounting: resets and control frames in the current one-second window,
    # resets of streams not yet answered, streams opened, malformed requests, WINDOW_UPDATE
    # frames received against DATA frames sent
    cdef int resets, control_frames, premature_resets, opened, glitches
    # the highest stream id the client opened, and the streams we reset lately (a client
    # may still send their trailers, unaware)
    cdef int32_t last_stream_id
    cdef object reset_by_us
    cdef long window_updates, data_frames_sent

    def __init__(self, worker, bint tls=False):
        self.worker = worker
        self.tls = tls
        self.proxy = worker.proxy
        self.loop = worker.loop
        self.limits = Http2Limits(worker.limits)
        self.transport = None
        self.streams = {}
        self.ready = []
        self.peer_ip = ""
        self.session = NULL
        self.reset_by_us = deque(maxlen=RESETS_REMEMBERED)

    def __dealloc__(self):
        if self.session is not NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    cpdef start(self, transport, bytes data, upgrade):
        """Take ``transport`` over (from the HTTP/1 front end, which found the preface, an
        h2c upgrade or ALPN h2), send our SETTINGS, and serve ``data``."""
        cdef nghttp2_option *option
        cdef Http2Limits limits = self.limits
        self.transport = transport
        transport.set_protocol(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.worker.connections.add(self)
        if not self.counted:
            self.counted = True
            connection_opened(P_HTTP2)
        self.deadline = monotonic() + limits.idle_timeout
        nghttp2_option_new(&option)
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_no_closed_streams(option, 1)
        nghttp2_option_set_max_outbound_ack(option, limits.max_queued_control_frames)
        nghttp2_option_set_max_continuations(option, limits.max_continuation_frames)
        nghttp2_option_set_max_deflate_dynamic_table_size(option, 4096)
        # The library's own reset limiter as a backstop; ours (``_reset_received``) acts
        # first and says ENHANCE_YOUR_CALM.
        nghttp2_option_set_stream_reset_rate_limit(
            option, 2 * limits.max_resets_per_second + 100, 2 * limits.max_resets_per_second)
        rv = nghttp2_session_server_new2(&self.session, CALLBACKS, <void*>self, option)
        nghttp2_option_del(option)
        if rv != 0:
            raise MemoryError("cannot make an HTTP/2 session")
        cdef nghttp2_settings_entry settings[6]
        settings[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        settings[0].value = limits.max_concurrent_streams
        settings[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        settings[1].value = limits.stream_window_bytes
        settings[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        settings[2].value = limits.max_header_list_bytes
        settings[3].settings_id = NGHTTP2_SETTINGS_HEADER_TABLE_SIZE
        settings[3].value = limits.max_header_table_bytes
        settings[4].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        settings[4].value = 0
        settings[5].settings_id = NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL  # WebSocket (RFC 8441)
        settings[5].value = 1
        # (No SETTINGS_NO_RFC7540_PRIORITIES: with it the library skips PRIORITY frames
        # unread, and a malformed or flooding one would go unseen.)
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, settings, 6)
        if limits.connection_window_bytes > 65535:
            nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0,
                                                  limits.connection_window_bytes)
        if upgrade is not None:
            self._upgraded(upgrade[0], upgrade[1])
        if data:
            self.data_received(data)
        else:
            self._dispatch()
            self._flush()

    cdef _upgraded(self, bytes payload, Exchange ex):
        """The request of an ``Upgrade: h2c`` becomes stream 1, half-closed (its body, if
        any, came over HTTP/1.1: the HTTP/1 front end upgrades only bodiless requests)."""
        cdef H2Stream stream = H2Stream(1)
        if nghttp2_session_upgrade2(self.session, <const uint8_t*>PyBytes_AS_STRING(payload), len(payload),
                                    ex.is_head, NULL) != 0:
            self._close()
            return
        stream.request_done = True
        stream.ex = ex
        stream.path = ex.path.encode("latin-1")
        ex.headers = [field for field in ex.headers
                      if field[0].lower() not in (b"upgrade", b"http2-settings", b"connection")]
        ex.downstream = self
        ex.stream = stream
        ex.version = "2"
        self.streams[1] = stream
        self.last_stream_id = 1
        self.ready.append(stream.ex)
        self.opened += 1

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport):  # (never: connections come through ``start``)
        self.transport = transport

    def data_received(self, bytes data):
        if self.closing or self.session is NULL:
            return
        self.in_session = True
        cdef ssize_t rv = nghttp2_session_mem_recv(self.session, <const uint8_t*>PyBytes_AS_STRING(data),
                                                   len(data))
        self.in_session = False
        if rv < 0:
            # Fatal for the session (a bad preface, a flood, a callback failure): the
            # library queued its GOAWAY when it could.
            if rv == NGHTTP2_ERR_FLOODED or rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
                log.warning("HTTP/2 client %s: %s; connection closed", self.peer_ip,
                            nghttp2_strerror(<int>rv).decode())
            self._flush()
            self._close()
            return
        if self.ready:
            # What the library queued while reading goes first: a stream it found malformed
            # in these same bytes (a DATA frame breaking its content-length) is reset and
            # closed by that, and so never dispatched to an upstream.
            self._flush()
            self._dispatch()
        self._flush()

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        cdef H2Stream stream
        self.closing = True
        self.worker.connections.discard(self)
        if self.counted:
            self.counted = False
            connection_closed(P_HTTP2)
        self.ready = []
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.closed = True
            ex = stream.ex
            stream.ex = None
            if ex is not None and not stream.finished:
                stream.finished = True
                ex.fail(ClientClosedRequest("client closed the connection"))

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        self._flush()

    # -- what the callbacks call ------------------------------------------------------------

    cdef _begin_stream(self, int32_t stream_id):
        cdef H2Stream stream = H2Stream(stream_id)
        if stream_id > self.last_stream_id:
            self.last_stream_id = stream_id
        # The head must complete in time too (a CONTINUATION dribble).
        stream.deadline = monotonic() + self.limits.stream_idle_timeout
        self.streams[stream_id] = stream
        self.opened += 1

    cdef bint _stale_headers(self, int32_t stream_id):
        """HEADERS on a stream that can only be closed: a lower id than one the client
        opened, not open now, and not one we reset (whose trailers may be under way). The
        library ignores such a block (it keeps no closed streams); RFC 9113 §5.1 makes it a
        connection error, and so do we: GOAWAY PROTOCOL_ERROR."""
        if stream_id > self.last_stream_id or stream_id in self.streams or stream_id in self.reset_by_us:
            return False
        log.info("HTTP/2 client %s: HEADERS on closed stream %d; GOAWAY PROTOCOL_ERROR", self.peer_ip, stream_id)
        nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE, self.last_stream_id, NGHTTP2_PROTOCOL_ERROR,
                              NULL, 0)
        return True

    cdef _field(self, int32_t stream_id, const uint8_t *name, size_t namelen,
                const uint8_t *value, size_t valuelen):
        cdef H2Stream stream = self.streams.get(stream_id)
        if stream is None or stream.refusal:
            return
        # RFC 9113 §6.5.2: a field's size is its name, its value and 32.
        stream.field_bytes += namelen + valuelen + 32
        if stream.field_bytes > self.limits.max_header_list_bytes:
            stream.refusal = 431
            stream.refusal_message = "request head too large"
            stream.fields = None
            return
        v = PyBytes_FromStringAndSize(<const char*>value, valuelen)
        if name[0] == 58:  # ":" (PERF: told apart in C, no bytes object per pseudo-header name)
            if namelen == 7 and memcmp(name, b":method", 7) == 0:
                stream.method = v
            elif namelen == 5 and memcmp(name, b":path", 5) == 0:
                stream.path = v
            elif namelen == 10 and memcmp(name, b":authority", 10) == 0:
                stream.authority = v
            elif namelen == 7 and memcmp(name, b":scheme", 7) == 0:
                stream.scheme = v
            elif namelen == 9 and memcmp(name, b":protocol", 9) == 0:
                stream.protocol = v
            return
        n = PyBytes_FromStringAndSize(<const char*>name, namelen)
        if n == b"cookie":
            stream.cookies.append(v)  # crumbs, joined into one field (RFC 9113 §8.2.3)
        elif n == b"host":
            if stream.host is not None:
                stream.refusal = 400
                stream.refusal_message = "more than one Host header"
            stream.host = v
        else:
            stream.fields.append((n, v))
            if n == b"x-request-id":
                if stream.request_id is None:
                    stream.request_id = v
            elif n == b"content-length":
                stream.content_length = v

    cdef _frame_received(self, const nghttp2_frame *frame):
        cdef uint8_t kind = frame.hd.type
        cdef int32_t stream_id = frame.hd.stream_id
        cdef H2Stream stream
        if kind == NGHTTP2_HEADERS:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            if frame.headers.cat == NGHTTP2_HCAT_REQUEST:
                self._head_complete(stream, frame.hd.flags & NGHTTP2_FLAG_END_STREAM)
            elif frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
                self._request_ended(stream)  # trailers end the body
        elif kind == NGHTTP2_DATA:
            if frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    self._request_ended(stream)
            elif frame.hd.length == 0:
                self._control_frame()  # an empty DATA frame: work for nothing (CVE-2019-9518)
        elif kind == NGHTTP2_RST_STREAM:
            self._reset_received(stream_id)
        elif kind == NGHTTP2_WINDOW_UPDATE:
            self.window_updates += 1
            # (Envoy's rule: so many per DATA frame we sent, beyond a first hundred)
            if self.window_updates > 100 + self.limits.max_window_updates_per_data_frame * self.data_frames_sent:
                self._calm("too many WINDOW_UPDATE frames")
        elif kind == NGHTTP2_PING or kind == NGHTTP2_SETTINGS or kind == NGHTTP2_PRIORITY:
            self._control_frame()

    cdef _control_frame(self):
        """A frame that costs us work and answers nothing the client needs: counted per
        second (PING, SETTINGS, PRIORITY floods, CVE-2019-9512/9515)."""
        self._window()
        self.control_frames += 1
        if self.control_frames > self.limits.max_control_frames_per_second:
            self._calm("too many control frames")

    cdef _window(self):
        cdef double now = monotonic()
        if now - self.window_start >= 1.0:
            self.window_start = now
            self.resets = 0
            self.control_frames = 0

    cdef _reset_received(self, int32_t stream_id):
        """RST_STREAM from the client: Rapid Reset (CVE-2023-44487) is many of them per
        second, or most streams reset before their answer."""
        cdef H2Stream stream = self.streams.get(stream_id)
        self._window()
        self.resets += 1
        if stream is not None and not stream.answered:
            self.premature_resets += 1
        if self.resets > self.limits.max_resets_per_second:
            self._calm("too many stream resets")
        elif (self.premature_resets >= self.limits.max_resets_per_second
              and 2 * self.premature_resets > self.opened):
            self._calm("most streams reset before their answer")

    cdef _glitch(self):
        self.glitches += 1
        if self.glitches > self.limits.max_malformed_per_connection:
            self._calm("too many malformed requests or frames")

    cdef _calm(self, str why):
        """GOAWAY ENHANCE_YOUR_CALM and close: the client abuses the protocol."""
        if self.calmed:
            return
        self.calmed = True
        log.warning("HTTP/2 client %s: %s; GOAWAY ENHANCE_YOUR_CALM", self.peer_ip, why)
        nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(self.session),
                              NGHTTP2_ENHANCE_YOUR_CALM, NULL, 0)
        # Written, then closed, once the bytes read are processed (``_flush``).
        self.loop.call_soon(self._close_after_flush)

    def _close_after_flush(self):
        self._flush()
        self._close()

    cdef _head_complete(self, H2Stream stream, bint end_stream):
        """The request head of ``stream`` is whole: check it and make it an exchange, to
        run once the bytes read are processed."""
        cdef Py_ssize_t length = 0
        cdef int body_kind = BODY_NONE
        cdef Exchange ex
        stream.request_done = end_stream
        if stream.refusal:
            self._refuse(stream, stream.refusal, stream.refusal_message)
            return
        method = stream.method
        target = stream.path
        upgrade = None
        if method == b"CONNECT":
            if stream.protocol is None or stream.protocol.lower() != b"websocket":
                self._refuse(stream, 405 if stream.protocol is None else 501,
                             "CONNECT is not supported" if stream.protocol is None
                             else "only the websocket protocol is tunnelled")
                return
            # RFC 8441: a WebSocket over this stream. Upstream it is an HTTP/1.1 GET asking
            # to upgrade, with a key of ours (the client sends none); its DATA frames are
            # the tunnel's bytes both ways.
            method = b"GET"
            upgrade = b"websocket"
            stream.fields.append((b"sec-websocket-key", base64.b64encode(os.urandom(16))))
        if not _is_token(method):
            self._refuse(stream, 400, "invalid method")
            return
        if not _is_origin_form(target):
            self._refuse(stream, 400, "request target must be a path")
            return
        authority = stream.authority
        if authority is None:
            authority = stream.host
        elif stream.host is not None and stream.host != authority:
            self._refuse(stream, 400, "Host differs from :authority")
            return
        hostname = host_name(authority)
        if hostname is None:
            self._refuse(stream, 400, "invalid :authority")
            return
        fields = stream.fields
        if authority is not None:
            fields.append((b"host", authority))
        if stream.cookies:
            fields.append((b"cookie", b"; ".join(stream.cookies)))
        if upgrade is not None:
            pass  # (the proxy makes it a tunnel when the route says so)
        elif not end_stream:
            if stream.content_length is not None:
                length = int(stream.content_length)  # (the library checked it is a number)
                if length:
                    body_kind = BODY_LENGTH
            else:
                body_kind = BODY_CHUNKED  # the upstream gets it chunked
            if length > self.limits.max_body_bytes:
                self._refuse(stream, 413, "request body too large")
                return
        path, _, query = target.partition(b"?")
        npath = normalize_path(path.decode("latin-1"))
        if npath is None:
            self._refuse(stream, 400, "invalid request path")
            return
        method_name = METHOD_NAMES.get(method)
        if method_name is None:
            method_name = method.decode()
        ex = new_exchange(self, method_name, npath, query, hostname, authority, fields, "2", True,
                          self.peer_ip, body_kind, length, monotonic())
        ex.tls = self.tls
        ex.stream = stream
        ex.upgrade = upgrade
        stream.ex = ex
        stream.fields = stream.cookies = None
        self.proxy.prepare(ex, stream.request_id)
        if not end_stream:
            stream.deadline = ex.started + self.limits.stream_idle_timeout
        self.ready.append(stream.ex)

    cdef _dispatch(self):
        """Run the exchanges whose heads completed in the bytes just processed (outside the
        library's callbacks, so that answering one never re-enters it)."""
        cdef Exchange ex
        ready = self.ready
        if not ready:
            return
        self.ready = []
        for ex in ready:
            self.proxy.handle(ex)  # (one reset meanwhile has its failure: logged 499)

    cdef _body(self, int32_t stream_id, const uint8_t *data, size_t length):
        cdef H2Stream stream = self.streams.get(stream_id)
        # The connection's window is given back at once; the stream's when its bytes went on.
        nghttp2_session_consume_connection(self.session, length)
        if stream is None or stream.ex is None or stream.finished or stream.closed:
            nghttp2_session_consume_stream(self.session, stream_id, length)
            return
        cdef Exchange ex = stream.ex
        if ex.bytes_in + <Py_ssize_t>length > self.limits.max_body_bytes and ex.body_kind != BODY_TUNNEL:
            nghttp2_session_consume_stream(self.session, stream_id, length)
            if ex.failure is None:
                ex.fail(PayloadTooLarge("request body too large"))
            return
        stream.deadline = monotonic() + self.limits.stream_idle_timeout
        ex.feed_body(PyBytes_FromStringAndSize(<const char*>data, length))
        if stream.reading_paused:
            stream.unconsumed += length
        else:
            nghttp2_session_consume_stream(self.session, stream_id, length)

    cdef _request_ended(self, H2Stream stream):
        stream.request_done = True
        if stream.ex is not None and not stream.ex.body_done:
            stream.ex.end_body()

    cdef _stream_closed(self, int32_t stream_id, uint32_t error_code):
        cdef H2Stream stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        stream.closed = True
        if not self.streams:
            self.deadline = monotonic() + self.limits.idle_timeout
        ex = stream.ex
        stream.ex = None  # (no cycle left for the garbage collector to find)
        if ex is not None and not stream.finished:
            # Reset by the client, or malformed (a content-length the DATA broke): its
            # request is abandoned upstream.
            stream.finished = True
            ex.fail(ClientClosedRequest(
                "client reset the stream" if error_code != NGHTTP2_NO_ERROR else "stream closed"))

    cdef _frame_sent(self, const nghttp2_frame *frame):
        cdef H2Stream stream
        if frame.hd.type == NGHTTP2_DATA:
            self.data_frames_sent += 1
        elif frame.hd.type == NGHTTP2_RST_STREAM:
            self.reset_by_us.append(frame.hd.stream_id)
        if (frame.hd.flags & NGHTTP2_FLAG_END_STREAM
                and (frame.hd.type == NGHTTP2_DATA or frame.hd.type == NGHTTP2_HEADERS)):
            stream = self.streams.get(frame.hd.stream_id)
            if stream is not None and not stream.request_done:
                # Answered before the request body ended (an error, a 413): the rest of it
                # is not wanted (RFC 9113 §8.1).
                nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream.id, NGHTTP2_NO_ERROR)

    cdef ssize_t _take_body(self, int32_t stream_id, uint8_t *buf, size_t length,
                            uint32_t *data_flags) except? -1:
        """The data provider: up to ``length`` response bytes of the stream, for a DATA frame."""
        cdef H2Stream stream = self.streams.get(stream_id)
        if stream is None:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            return 0
        cdef size_t copied = 0, n
        cdef bytes chunk
        cdef list out = stream.out
        while copied < length and out:
            chunk = out[0]
            n = PyBytes_GET_SIZE(chunk) - stream.out_offset
            if n > length - copied:
                n = length - copied
            memcpy(buf + copied, PyBytes_AS_STRING(chunk) + stream.out_offset, n)
            copied += n
            stream.out_offset += n
            if stream.out_offset == PyBytes_GET_SIZE(chunk):
                del out[0]
                stream.out_offset = 0
        stream.out_bytes -= copied
        if not out:
            if stream.out_end:
                data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            elif copied == 0:
                stream.deferred = True
                return NGHTTP2_ERR_DEFERRED
        stream.deadline = monotonic() + self.limits.stream_idle_timeout
        if stream.upstream_paused and stream.out_bytes < OUT_LOW:
            stream.upstream_paused = False
            if stream.ex is not None and stream.ex.upstream_side is not None:
                stream.ex.upstream_side.client_writable(True)
        return copied

    # -- writing ----------------------------------------------------------------------------------

    cdef _flush(self):
        """Write every frame the library has to send, in one write."""
        cdef const uint8_t *data
        cdef ssize_t n
        if self.in_session or self.closing or self.write_paused or self.session is NULL:
            return  # (within the library's own call: the caller flushes after it)
        parts = []
        self.in_session = True
        while True:
            n = nghttp2_session_mem_send(self.session, &data)
            if n <= 0:
                break
            parts.append(PyBytes_FromStringAndSize(<const char*>data, n))
        self.in_session = False
        if parts:
            self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        if n < 0 or (not nghttp2_session_want_read(self.session)
                     and not nghttp2_session_want_write(self.session)):
            self._close()

    cdef _close(self):
        if not self.closing:
            self.closing = True
            self.transport.close()

    cdef _respond(self, H2Stream stream, int status, list fields, Py_ssize_t length, bint body):
        """Submit the response head of ``stream``; its body, when ``body``, comes from the
        stream's buffer."""
        cdef Py_ssize_t count = len(fields) + 2, i = 1
        cdef nghttp2_nv *nva = <nghttp2_nv*>PyMem_Malloc(count * sizeof(nghttp2_nv))
        cdef nghttp2_data_provider provider
        cdef bytes name, value
        if nva is NULL:
            raise MemoryError()
        keep = []  # the bytes the nv array points into, alive until the library copied them
        status_code = STATUS_CODES[status] if 0 <= status < 600 else str(status).encode()
        _nv(&nva[0], b":status", status_code)
        for name, value in fields:
            name = name.lower()
            keep.append(name)
            _nv(&nva[i], name, value)
            i += 1
        if length >= 0 and status != 204 and status != 304:
            value = b"%d" % length
            keep.append(value)
            _nv(&nva[i], b"content-length", value)
            i += 1
        provider.source.ptr = NULL
        provider.read_callback = _read_body
        stream.answered = True
        if not body:
            stream.out_end = True
        rv = nghttp2_submit_response(self.session, stream.id, nva, i, &provider if body else NULL)
        PyMem_Free(nva)
        if rv != 0:
            stream.out_end = True

    cdef _refuse(self, H2Stream stream, int status, str message):
        """Answer a stream refused before it became an exchange (malformed, too large)."""
        self._glitch()
        rid = self.proxy.ids.next()
        body = error_body(status, message, rid)
        stream.out.append(body)
        stream.out_bytes = len(body)
        stream.out_end = stream.finished = True
        self._respond(stream, status, [(b"content-type", b"application/json"),
                                       (b"x-request-id", rid.encode())], len(body), True)
        self.proxy.access_log.write_refusal(self.peer_ip, rid, status, stream.path or b"")

    # -- Downstream: what the proxy and the upstream call -----------------------------------

    cpdef send_head(self, Exchange ex, int status, list headers, Py_ssize_t length):
        cdef H2Stream stream = ex.stream
        ex.response_started = True
        ex.status = status
        if stream.closed or stream.answered:
            return
        if status == 101:
            # The upstream switched to WebSocket: over HTTP/2 that is a 200 on the CONNECT
            # stream (RFC 8441), once its accept answers our key.
            if not _accepts(headers, ex.headers):
                stream.finished = stream.out_end = True
                nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream.id, NGHTTP2_INTERNAL_ERROR)
                if ex.upstream_side is not None:
                    ex.upstream_side.cancel(ClientClosedRequest("the upstream's WebSocket accept is wrong"))
                return
            self._respond(stream, 200, [f for f in headers if f[0].lower() not in _SWITCH_FIELDS], -1, True)
            return
        self._respond(stream, status, headers, length,
                      not (ex.is_head or length == 0 or status == 204 or status == 304))

    cpdef send_head_lines(self, Exchange ex, int status, bytes lines, Py_ssize_t length):
        fields = []
        for line in lines.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                fields.append((name, value.strip()))
        self.send_head(ex, status, fields, length)

    cpdef send_body(self, Exchange ex, bytes data):
        cdef H2Stream stream = ex.stream
        if stream.out_end or stream.closed or not data:
            return
        ex.bytes_out += len(data)
        stream.out.append(data)
        stream.out_bytes += len(data)
        if stream.deferred:
            stream.deferred = False
            nghttp2_session_resume_data(self.session, stream.id)
        if stream.out_bytes > OUT_HIGH and not stream.upstream_paused and ex.upstream_side is not None:
            # This client's window is slower than its upstream: pause that upstream only.
            stream.upstream_paused = True
            ex.upstream_side.client_writable(False)

    cpdef send_end(self, Exchange ex):
        cdef H2Stream stream = ex.stream
        stream.finished = True
        if not stream.out_end:
            stream.out_end = True
            if stream.deferred and not stream.closed:
                stream.deferred = False
                nghttp2_session_resume_data(self.session, stream.id)
        self._flush()

    cpdef flush(self):
        self._flush()

    cpdef abort(self, Exchange ex):
        """The response cannot be completed: reset its stream (a truncated body never looks
        complete), the connection and its other streams go on."""
        cdef H2Stream stream = ex.stream
        stream.finished = True
        stream.out_end = True
        if not stream.closed and self.session is not NULL:
            nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream.id, NGHTTP2_INTERNAL_ERROR)
            self._flush()

    cpdef pause_reading(self, Exchange ex):
        (<H2Stream>ex.stream).reading_paused = True

    cpdef resume_reading(self, Exchange ex):
        cdef H2Stream stream = ex.stream
        stream.reading_paused = False
        if stream.unconsumed and not stream.closed and self.session is not NULL:
            nghttp2_session_consume_stream(self.session, stream.id, stream.unconsumed)
            stream.unconsumed = 0
            self._flush()

    # -- the sweeper and drain ----------------------------------------------------------------

    def check(self, double now):
        """Called by the sweeper: the idle connection and the stalled streams."""
        cdef H2Stream stream
        if self.closing:
            return
        if not self.streams:
            if now >= self.deadline or self.retiring:
                self.go_away()
            return
        for stream in list(self.streams.values()):
            if now < stream.deadline:
                continue
            ex = stream.ex
            if ex is not None and stream.request_done and stream.out_bytes == 0:
                continue  # waiting for its upstream, whose own timeouts hold
            if ex is not None and ex.body_kind == BODY_TUNNEL and ex.response_started and stream.out_bytes == 0:
                continue  # a tunnel's idle time is its upstream side's to judge (read_timeout)
            if ex is not None and not stream.request_done and not ex.response_started:
                stream.deadline = now + self.limits.stream_idle_timeout
                ex.fail(RequestTimeout("request body not received in time"))  # answered 408
                continue
            # The head never completed, or the client stopped sending its body or taking
            # the response once it began: the stream is reset, its upstream abandoned.
            answering = not stream.finished
            stream.finished = stream.out_end = True
            nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream.id, NGHTTP2_CANCEL)
            if ex is not None and answering:
                ex.fail(RequestTimeout("client stalled the stream"))
        self._flush()

    cpdef go_away(self):
        """GOAWAY naming the last stream taken, and close: the HTTP/2 form of HTTP/1's
        ``Connection: close`` after the last response. Called when no stream is in flight
        (the idle timeout, a drain, a retired connection). No early notice (GOAWAY with
        every stream id) goes before it: clients built on the Python ``h2`` library (httpx)
        fail every stream in flight on any GOAWAY, so one is sent only when none is."""
        if self.closing or self.session is NULL:
            return
        nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(self.session),
                              NGHTTP2_NO_ERROR, NULL, 0)
        self._flush()
        self._close()

    def retire(self):
        """A reload changed ``[server.http2]``: GOAWAY as soon as no stream is in flight
        (now, or when the sweeper finds it so), so that the client opens a new connection
        and hears the new SETTINGS."""
        self.retiring = True
        if not self.streams and not self.ready:
            self.go_away()

    def close_if_idle(self):
        """Draining (called every 50 ms): GOAWAY and close once no stream is in flight;
        until then streams finish (and new ones are served) within ``drain_timeout``."""
        if not self.closing and not self.streams and not self.ready:
            self.go_away()