"""Raw HTTP/2 for hostile tests: frames built byte by byte, an HPACK encoder that
writes exactly what it is given, and a blocking client connection that reads what the
server answers until a deadline.

Nothing here normalises or checks anything a server should check: a frame can carry
any type, flags, stream id and length, a header block any name and value (uppercase,
CR/LF, NUL, an empty name). The ``h2`` state machine would refuse to send most of the
hostile cases, so it is not used for sending; ``hpack.Decoder`` decodes the server's
header blocks (it keeps the dynamic table in step with the server's encoder).

Every read is bounded by a deadline; a closed or reset socket is an outcome, never an
exception.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
TYPE_NAMES = {DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
              SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
              WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION"}

# Flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (RFC 9113 §7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC
HTTP_1_1_REQUIRED = 0xD
ERROR_NAMES = {v: k for k, v in dict(
    NO_ERROR=0, PROTOCOL_ERROR=1, INTERNAL_ERROR=2, FLOW_CONTROL_ERROR=3, SETTINGS_TIMEOUT=4,
    STREAM_CLOSED=5, FRAME_SIZE_ERROR=6, REFUSED_STREAM=7, CANCEL=8, COMPRESSION_ERROR=9,
    CONNECT_ERROR=10, ENHANCE_YOUR_CALM=11, INADEQUATE_SECURITY=12, HTTP_1_1_REQUIRED=13).items()}

# SETTINGS identifiers (RFC 9113 §6.5.2)
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

MAX_WINDOW = 2**31 - 1


# -- frames ---------------------------------------------------------------------------------------


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """One frame. ``length`` overrides the length field (a lie about the payload)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + struct.pack(">BBI", ftype, flags, sid & 0xFFFFFFFF) + payload


def settings(*pairs: tuple[int, int], ack: bool = False, sid: int = 0) -> bytes:
    return frame(SETTINGS, ACK if ack else 0, sid, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def ping(opaque: bytes = b"\0" * 8, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, opaque)


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def rst_stream(sid: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def goaway(last_sid: int, code: int = NO_ERROR, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_sid, code) + debug)


def priority(sid: int, depends_on: int, weight: int = 16, exclusive: bool = False) -> bytes:
    return frame(PRIORITY, 0, sid, struct.pack(">IB", depends_on | (0x80000000 if exclusive else 0), weight - 1))


def data(sid: int, payload: bytes = b"", end_stream: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, sid, payload)


def headers(sid: int, block: bytes, end_stream: bool = True, end_headers: bool = True,
            depends_on: int | None = None) -> bytes:
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    if depends_on is not None:
        flags |= PRIORITY_FLAG
        block = struct.pack(">IB", depends_on, 15) + block
    return frame(HEADERS, flags, sid, block)


def continuation(sid: int, block: bytes, end_headers: bool = False) -> bytes:
    return frame(CONTINUATION, END_HEADERS if end_headers else 0, sid, block)


# -- HPACK, written exactly (RFC 7541) -------------------------------------------------------------


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(s: bytes) -> bytes:
    """A string literal, never Huffman-coded: the bytes go on the wire as given."""
    return hpack_int(len(s), 7) + s


def literal(name: bytes, value: bytes) -> bytes:
    """Literal field without indexing, new name (§6.2.2)."""
    return b"\x00" + hpack_str(name) + hpack_str(value)


def literal_indexed(name: bytes, value: bytes) -> bytes:
    """Literal field with incremental indexing, new name (§6.2.1): enters the dynamic table."""
    return b"\x40" + hpack_str(name) + hpack_str(value)


def indexed(index: int) -> bytes:
    """Indexed field (§6.1): 62 is the newest dynamic table entry."""
    return hpack_int(index, 7, 0x80)


def table_size_update(size: int) -> bytes:
    return hpack_int(size, 5, 0x20)


def _b(x) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode("latin-1")


def block(fields) -> bytes:
    """A header block of literals without indexing, in the order given, unchanged."""
    return b"".join(literal(_b(k), _b(v)) for k, v in fields)


def request_fields(path="/", method="GET", authority="127.0.0.1", scheme="http", extra=()) -> list:
    return [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path), *extra]


# -- reading the server --------------------------------------------------------------------------


@dataclass
class Frame:
    type: int
    flags: int
    sid: int
    payload: bytes

    @property
    def error_code(self) -> int:
        if self.type == RST_STREAM:
            return struct.unpack(">I", self.payload[:4])[0]
        if self.type == GOAWAY:
            return struct.unpack(">I", self.payload[4:8])[0]
        raise ValueError("no error code in " + self.name)

    @property
    def last_sid(self) -> int:
        return struct.unpack(">I", self.payload[:4])[0] & 0x7FFFFFFF

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type{self.type}")

    def __repr__(self) -> str:
        extra = ""
        if self.type in (RST_STREAM, GOAWAY) and len(self.payload) >= 4:
            code = self.error_code
            extra = f" {ERROR_NAMES.get(code, hex(code))}"
            if self.type == GOAWAY:
                extra += f" last={self.last_sid} debug={self.payload[8:80]!r}"
        elif self.type in (DATA, HEADERS):
            extra = f" len={len(self.payload)}"
        return f"<{self.name} sid={self.sid} flags={self.flags:#x}{extra}>"


@dataclass
class Stream:
    status: int | None = None
    headers: list = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None   # the server's RST_STREAM error code


class H2Conn:
    """A client connection that sends anything and records everything the server sends.

    ``handshake()`` sends the preface and SETTINGS, then reads until the server's SETTINGS
    (every SETTINGS from the server is acknowledged as it is read). ``read(until, timeout)`` reads frames until ``until(self)`` is
    true, the server closes, or the deadline; it returns whether ``until`` became true.
    Window updates are sent for received DATA when ``auto_window`` is set.
    """

    def __init__(self, port: int, timeout: float = 5.0, rcvbuf: int | None = None,
                 auto_window: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()
        self.frames: list[Frame] = []
        self.streams: dict[int, Stream] = {}
        self.server_settings: dict[int, int] = {}
        self.server_settings_seen = False
        self.settings_acked = 0
        self.ping_acks: list[bytes] = []
        self.goaway: Frame | None = None
        self.closed = False          # EOF or reset seen while reading
        self.send_failed = False     # the peer stopped taking bytes (closed, reset, or stalled)
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 65536
        self.decoder.max_header_list_size = 1 << 24
        self.auto_window = auto_window
        self._block: tuple[int, int, bytearray] | None = None

    # sending

    def send(self, payload: bytes) -> bool:
        """Send all of ``payload``; False (and ``send_failed``) when the peer closed,
        reset, or did not take the bytes within the timeout."""
        try:
            self.sock.sendall(payload)
            return True
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            self.send_failed = True
            return False

    def handshake(self, *pairs: tuple[int, int], preface: bytes = PREFACE) -> H2Conn:
        self.send(preface + settings(*pairs))
        ok = self.read(lambda c: bool(c.server_settings_seen), self.timeout)
        assert ok, f"no SETTINGS from the server after the preface: {self.frames} closed={self.closed}"
        return self

    def request(self, sid: int, path: str = "/", method: str = "GET", extra=(), body: bytes | None = None,
                end_stream: bool | None = None) -> None:
        """HEADERS (and DATA when ``body`` is given); ``end_stream=False`` leaves the stream open."""
        fields = request_fields(path, method, extra=extra)
        es = True if end_stream is None else end_stream
        self.send(headers(sid, block(fields), end_stream=es and body is None))
        if body is not None:
            self.send(data(sid, body, end_stream=es))

    # reading

    def read(self, until, timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if until(self):
                return True
            if self.closed:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(262144)
            except socket.timeout:
                continue
            except (ConnectionResetError, OSError):
                self.closed = True
                continue
            if not chunk:
                self.closed = True
                continue
            self.buf += chunk
            self._parse()

    def _parse(self) -> None:
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                return
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self.buf[9:9 + n])
            del self.buf[:9 + n]
            f = Frame(ftype, flags, sid, payload)
            self.frames.append(f)
            self._on_frame(f)

    def _on_frame(self, f: Frame) -> None:
        if f.type == SETTINGS:
            if f.flags & ACK:
                self.settings_acked += 1
            else:
                for i in range(0, len(f.payload) - 5, 6):
                    k, v = struct.unpack(">HI", f.payload[i:i + 6])
                    self.server_settings[k] = v
                self.server_settings_seen = True
                self.send(settings(ack=True))
        elif f.type == PING:
            if f.flags & ACK:
                self.ping_acks.append(f.payload)
        elif f.type == GOAWAY:
            self.goaway = f
        elif f.type == RST_STREAM:
            self.streams.setdefault(f.sid, Stream()).reset = f.error_code
        elif f.type in (HEADERS, CONTINUATION):
            payload = f.payload
            if f.type == HEADERS:
                if f.flags & PADDED:
                    pad = payload[0]
                    payload = payload[1:len(payload) - pad]
                if f.flags & PRIORITY_FLAG:
                    payload = payload[5:]
                self._block = (f.sid, f.flags, bytearray(payload))
            elif self._block is not None:
                self._block[2].extend(payload)
            if f.flags & END_HEADERS and self._block is not None:
                sid, hflags, blk = self._block
                self._block = None
                fields = self.decoder.decode(bytes(blk), raw=True)
                st = self.streams.setdefault(sid, Stream())
                for k, v in fields:
                    if k == b":status":
                        if st.status is None or 100 <= st.status < 200:
                            st.status = int(v)
                    st.headers.append((k, v))
                if hflags & END_STREAM:
                    st.ended = True
        elif f.type == DATA:
            payload = f.payload
            if f.flags & PADDED and payload:
                payload = payload[1:len(payload) - payload[0]]
            st = self.streams.setdefault(f.sid, Stream())
            st.body += payload
            if f.flags & END_STREAM:
                st.ended = True
            if self.auto_window and len(f.payload):
                self.send(window_update(0, len(f.payload)) + window_update(f.sid, len(f.payload)))

    # outcomes

    def stream(self, sid: int) -> Stream:
        return self.streams.setdefault(sid, Stream())

    def wait_stream(self, sid: int, timeout: float | None = None) -> Stream:
        """Read until stream ``sid`` ends (END_STREAM or RST_STREAM), a GOAWAY, or close."""
        self.read(lambda c: c.stream(sid).ended or c.stream(sid).reset is not None or c.goaway is not None,
                  timeout)
        return self.stream(sid)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Read (and drop) until the server closes; True when it did within ``timeout``."""
        return self.read(lambda c: False, timeout) or self.closed

    def wait_goaway_or_close(self, timeout: float | None = None) -> None:
        self.read(lambda c: c.goaway is not None, timeout)

    def ping_roundtrip(self, opaque: bytes = b"liveness", timeout: float = 3.0) -> bool:
        if not self.send(ping(opaque)):
            return False
        return self.read(lambda c: opaque in c.ping_acks, timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> H2Conn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        return f"frames={self.frames[-12:]} closed={self.closed} send_failed={self.send_failed}"
