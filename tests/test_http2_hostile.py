"""The HTTP/2 front end against hostile clients: frames built byte by byte
(tests/h2frames.py) on raw sockets to a real gateway process (h2c by prior knowledge),
with a real HTTP/1.1 backend behind it that records every byte it receives.

What it covers, and the expectation (RFC 9113, RFC 7541, and what nginx and Envoy do):

- Rapid Reset (CVE-2023-44487): HEADERS + RST_STREAM, many times -> GOAWAY
  ENHANCE_YOUR_CALM, closed, and fewer requests than streams reach the backend.
- CONTINUATION flood (CVE-2024-27983, CVE-2024-28182, CVE-2024-27316 and kin): endless
  empty or non-empty CONTINUATION frames -> connection closed, nothing forwarded; a
  header block interrupted by another frame or another stream -> PROTOCOL_ERROR.
- HPACK bomb (CVE-2016-6581): one dynamic-table entry referenced thousands of times ->
  refused, the worker's memory stays put.
- Header list over ``max_header_list_bytes`` -> 431 or RST_STREAM/GOAWAY, never forwarded.
- Floods of frames from a client that never reads: PING (CVE-2019-9512), SETTINGS
  (CVE-2019-9515), PRIORITY (CVE-2019-9513), WINDOW_UPDATE, RST_STREAM-soliciting requests
  (CVE-2019-9514), empty DATA and HEADERS frames (CVE-2019-9518) -> the connection is
  closed (the queue of answers is bounded), memory stays bounded; zero-length header
  fields (CVE-2019-9516) -> refused, memory stays bounded.
- Data dribble (CVE-2019-9511) and a zero window (CVE-2019-9517, internal data
  buffering): the gateway keeps to the windows the client grants, keeps serving PING and
  other streams, does not read the upstream unboundedly, and ends a stalled stream.
- Flow control abuse: WINDOW_UPDATE over 2^31-1 (connection, stream, and through
  SETTINGS_INITIAL_WINDOW_SIZE) -> FLOW_CONTROL_ERROR; an increment of 0 -> PROTOCOL_ERROR.
- Stream states: even, regressing, reused and zero stream ids; frames on idle, half-closed
  and reset streams -> PROTOCOL_ERROR / STREAM_CLOSED.
- Malformed requests (RFC 9113 §8.1.1, §8.2, §8.3; RFC 8441 §4): pseudo-header faults
  (``:protocol`` outside an extended CONNECT included), connection-specific fields, ``te``
  other than ``trailers``, uppercase or otherwise invalid names, CR/LF/NUL and surrounding
  whitespace in values, ``Host`` against ``:authority``, bad trailers -> RST_STREAM
  PROTOCOL_ERROR or 400, and the backend sees none of their bytes (no header injection,
  no request-line injection).
- H2.CL and H2.TE desync (James Kettle, "HTTP/2: The Sequel is Always Worse", 2021):
  ``content-length`` disagreeing with the DATA, ``transfer-encoding`` -> refused; the
  backend never receives a smuggled request nor a body that swallows the next request.
- SETTINGS with values out of range, frames over SETTINGS_MAX_FRAME_SIZE and control
  frames of the wrong length -> PROTOCOL_ERROR / FLOW_CONTROL_ERROR / FRAME_SIZE_ERROR.
- HPACK decoding errors (a table size update too large or misplaced, an index past the
  table, Huffman padding with EOS) -> COMPRESSION_ERROR.
- A bad connection preface -> closed, no crash; a good one sent a byte at a time works.
- ``Upgrade: h2c`` over HTTP/1.1 (h2c smuggling): the upgrade and HTTP2-Settings never
  reach the backend.
- More streams than SETTINGS_MAX_CONCURRENT_STREAMS -> REFUSED_STREAM for the extra ones,
  the others served; a stream depending on itself -> PROTOCOL_ERROR.

Where the RFC allows a stream error or a connection error, either is accepted (and a 4xx
answer where a malformed request is concerned); never accepted: the request forwarded, a
hang past the test's bound, the worker dying. After every case ``h2.verify()`` checks the
gateway's worker is the same live process, that a fresh HTTP/2 connection (httpx, prior
knowledge) is served 200, and that no byte marked by the case reached the backend.

One gateway (small ``[server.http2]`` limits, below) serves the whole module; each case
marks its requests with a token of its own. ``start_server`` is the one place that knows
the server is fastgw (a stand-in can replace it to try the catalogue on another server).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import struct
import time
from pathlib import Path

import httpx
import pytest

from tests import h2frames as f
from tests.backend import Backend
from tests.conftest import Gateway, free_port
from tests.h2frames import H2Conn

# The limits the module's gateway runs with (kept small so that the floods end fast).
MAX_CONCURRENT_STREAMS = 4
MAX_HEADER_LIST_BYTES = 4096
MAX_RESETS_PER_SECOND = 50
IDLE_STREAM_TIMEOUT = 2.0
# How much a worker's resident memory may grow during a flood or a stall.
RSS_GROWTH_LIMIT = 48 << 20

HTTP2_SERVER = f"""\
[server.http2]
max_concurrent_streams = {MAX_CONCURRENT_STREAMS}
max_header_list_bytes = {MAX_HEADER_LIST_BYTES}
max_resets_per_second = {MAX_RESETS_PER_SECOND}
stream_idle_timeout = "{IDLE_STREAM_TIMEOUT:g}s"
"""


# -- the backend: every byte it receives, every request it completes ------------------------------


class _Tap:
    """A socket whose received bytes are copied to ``sink``."""

    def __init__(self, sock, sink) -> None:
        self._sock = sock
        self._sink = sink

    def recv(self, n: int) -> bytes:
        chunk = self._sock.recv(n)
        self._sink(chunk)
        return chunk

    def __getattr__(self, name):
        return getattr(self._sock, name)


class RecordingBackend(Backend):
    """tests.backend.Backend that also keeps the raw bytes of every connection and the
    body of every complete request."""

    def __init__(self, name: str) -> None:
        self.raw: list[bytearray] = []        # one per upstream connection, in accept order
        self.records: list[dict] = []         # complete requests: method, target, headers, body
        super().__init__(name)

    def _serve(self, client) -> None:
        buf = bytearray()
        with self.lock:
            self.raw.append(buf)

        def sink(chunk: bytes) -> None:
            with self.lock:
                buf.extend(chunk)

        super()._serve(_Tap(client, sink))

    def _answer(self, conn, client, req, body) -> bool:
        with self.lock:
            self.records.append({"method": req.method.decode(), "target": req.target.decode(),
                                 "headers": [(k.decode(), v.decode(errors="replace")) for k, v in req.headers],
                                 "body": bytes(body)})
        return super()._answer(conn, client, req, body)

    def received(self) -> bytes:
        with self.lock:
            return b"\n--connection--\n".join(bytes(b) for b in self.raw)

    def targets(self, part: str) -> list[str]:
        with self.lock:
            return [r["target"] for r in self.records if part in r["target"]]


# -- the server under test ------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class FastgwTarget:
    """``fastgw run`` with one worker, h2c by prior knowledge on its plain listener."""

    name = "fastgw"

    def __init__(self, backend: RecordingBackend, folder: Path) -> None:
        self.port = free_port()
        toml = (f'[server]\nlisten = ["127.0.0.1:{self.port}"]\nidle_timeout = "10s"\n'
                f'{HTTP2_SERVER}\n'
                f'[log]\naccess = "off"\nlevel = "warning"\n\n'
                f'[upstreams.app]\ntargets = ["{backend.address}"]\nread_timeout = "5s"\n\n'
                f'[[routes]]\nname = "all"\npaths = ["/*"]\nupstream = "app"\n')
        self.gw = Gateway(folder, toml, self.port).start()
        self.supervisor = self.gw.proc.pid
        deadline = time.monotonic() + 5
        while not _children(self.supervisor) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.workers = _children(self.supervisor)
        self.stderr_seen = 0

    def alive(self) -> str | None:
        """None when the supervisor and the very same worker run and the error log has no
        new crash or traceback, else what went wrong (reported once: the next check starts
        from there, so one case's crash does not fail every case after it)."""
        if self.gw.proc.poll() is not None:
            return f"the gateway exited with {self.gw.proc.returncode}; stderr: {self.gw.stderr[-2000:]}"
        now = _children(self.supervisor)
        log = self.gw.stderr
        new, self.stderr_seen = log[self.stderr_seen:], len(log)
        if now != self.workers:
            before, self.workers = self.workers, now
            return f"worker(s) {before} replaced by {now}; stderr: {new[-3000:]}"
        for word in ("died with", "worker crashed", "Traceback"):
            if word in new:
                return f"stderr says {word!r}: {new[new.find(word) - 500:][:3000]}"
        return None

    def rss(self) -> int:
        return sum(_rss(pid) for pid in self.workers)

    def stop(self) -> None:
        self.gw.stop()


def start_server(backend: RecordingBackend, folder: Path):
    """The server under test, in front of ``backend``."""
    return FastgwTarget(backend, folder)


class H2Case:
    """What a test gets: the port, the backend, a token that marks every byte of its
    hostile requests, and ``verify()``, the checks every case ends with."""

    _ids = itertools.count(1)

    def __init__(self, target, backend: RecordingBackend, name: str) -> None:
        self.target = target
        self.port = target.port
        self.backend = backend
        self.n = next(self._ids)
        self.token = f"h2t{self.n}x{os.getpid()}q"
        self.forbidden: list[bytes] = [self.token.encode()]
        self.conns: list[H2Conn] = []

    def conn(self, *settings_pairs, handshake: bool = True, **kw) -> H2Conn:
        c = H2Conn(self.port, **kw)
        self.conns.append(c)
        if handshake:
            c.handshake(*settings_pairs)
        return c

    def path(self, suffix: str = "") -> str:
        return f"/echo/{self.token}{suffix}"

    def allow_forwarding(self) -> None:
        """This case's requests may reach the backend (only what ``forbid`` names may not)."""
        self.forbidden = []

    def forbid(self, marker: bytes | str) -> None:
        self.forbidden.append(marker if isinstance(marker, bytes) else marker.encode())

    def verify(self) -> None:
        for i, c in enumerate(self.conns):   # shown with pytest -rP: what the server did
            print(f"connection {i}: {c.describe()}")
            c.close()
        problem = self.target.alive()
        assert problem is None, problem
        with httpx.Client(http1=False, http2=True, timeout=5) as client:
            r = client.get(f"http://127.0.0.1:{self.port}/echo/after/{self.n}")
        assert r.status_code == 200 and r.http_version == "HTTP/2", (r.status_code, r.http_version, r.text)
        assert r.json()["target"] == f"/echo/after/{self.n}"
        got = self.backend.received()
        for marker in self.forbidden:
            at = got.find(marker)
            assert at < 0, f"the backend received {marker!r}: ...{got[max(0, at - 300):at + 200]!r}..."
        problem = self.target.alive()
        assert problem is None, problem


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backend = RecordingBackend("h2")
    target = start_server(backend, tmp_path_factory.mktemp("h2hostile"))
    yield target, backend
    target.stop()
    backend.close()


@pytest.fixture
def h2(server, request):
    target, backend = server
    problem = target.alive()
    assert problem is None, f"the server was already broken: {problem}"
    case = H2Case(target, backend, request.node.name)
    yield case
    for c in case.conns:
        c.close()


# -- expectations ---------------------------------------------------------------------------------


def conn_error(c: H2Conn, codes, timeout: float = 4.0, goaway_required: bool = True) -> None:
    """A connection error: a GOAWAY with one of ``codes``, then the server closes."""
    codes = (codes,) if isinstance(codes, int) else tuple(codes)
    closed = c.wait_closed(timeout)
    if goaway_required:
        assert c.goaway is not None, f"expected GOAWAY {[f.ERROR_NAMES[x] for x in codes]}: {c.describe()}"
    if c.goaway is not None:
        assert c.goaway.error_code in codes, (
            f"GOAWAY {f.ERROR_NAMES.get(c.goaway.error_code)} instead of {[f.ERROR_NAMES[x] for x in codes]}: "
            f"{c.describe()}")
    assert closed, f"the server kept the connection open {timeout}s after the error: {c.describe()}"


def refused(c: H2Conn, sid: int, codes=(f.PROTOCOL_ERROR,), statuses=(400,), timeout: float = 4.0) -> str:
    """A stream error (RST_STREAM with one of ``codes``), a connection error (GOAWAY with
    one of them), or an answer with one of ``statuses``: whichever came, never a hang."""
    codes = (codes,) if isinstance(codes, int) else tuple(codes)
    st = c.wait_stream(sid, timeout)
    if st.status is not None:  # an answer (perhaps followed by RST_STREAM NO_ERROR: stop sending)
        assert st.status in statuses, f"answered {st.status} instead of refusing: {st.body[:300]!r}"
        return "status"
    if st.reset is not None:
        assert st.reset in codes, (f"RST_STREAM {f.ERROR_NAMES.get(st.reset)} instead of "
                                   f"{[f.ERROR_NAMES[x] for x in codes]}: {c.describe()}")
        return "rst"
    if c.goaway is not None:
        conn_error(c, codes, timeout)
        return "goaway"
    raise AssertionError(f"stream {sid}: nothing within {timeout}s: {c.describe()}")


def served(c: H2Conn, sid: int, timeout: float = 5.0) -> f.Stream:
    st = c.wait_stream(sid, timeout)
    assert st.status == 200 and st.ended and st.reset is None, f"stream {sid}: {st} {c.describe()}"
    return st


def flood(c: H2Conn, unit: bytes, count: int, batch: int = 1000) -> int:
    """Send ``unit`` ``count`` times without reading; stop when the server stops taking
    bytes. Returns how many were sent."""
    sent = 0
    c.sock.settimeout(3)
    chunk = unit * batch
    while sent < count:
        if not c.send(chunk):
            break
        sent += batch
    return sent


def rss_guard(target):
    before = target.rss()

    def check(what: str) -> None:
        grown = target.rss() - before
        assert grown < RSS_GROWTH_LIMIT, f"{what}: the worker grew by {grown >> 20} MiB"
    return check


# -- controls: the frames here are right, and the gateway serves them ----------------------------


def test_control_raw_frames_are_served(h2):
    h2.allow_forwarding()
    c = h2.conn()
    c.request(1, h2.path("/get"), extra=[("x-h2t", h2.token)])
    c.request(3, h2.path("/post"), method="POST", extra=[("content-length", "5"), ("te", "trailers")],
              body=b"hello")
    for sid in (1, 3):
        served(c, sid)
    assert json.loads(bytes(c.stream(3).body))["body_len"] == 5
    bodies = [r["body"] for r in h2.backend.records if r["target"] == h2.path("/post")]
    assert bodies == [b"hello"]
    assert h2.backend.targets(h2.path("/get")) == [h2.path("/get")]
    assert c.ping_roundtrip()
    h2.verify()


def test_control_preface_sent_one_byte_at_a_time(h2):
    h2.allow_forwarding()
    c = h2.conn(handshake=False)
    for byte in f.PREFACE + f.settings():
        assert c.send(bytes([byte]))
        time.sleep(0.002)
    assert c.read(lambda c: c.server_settings_seen, 5), c.describe()
    c.request(1, h2.path())
    served(c, 1)
    h2.verify()


def test_control_unknown_frame_type_and_setting_are_ignored(h2):
    """RFC 9113 §4.1, §5.5, §6.5.2: an unknown frame type and an unknown setting are ignored."""
    h2.allow_forwarding()
    c = h2.conn()
    c.send(f.frame(0xFA, 0xFF, 0, b"whatever") + f.frame(0xFB, 0, 1, b"x" * 100) + f.settings((0x7777, 12345)))
    assert c.ping_roundtrip(), c.describe()
    c.request(1, h2.path())
    served(c, 1)
    h2.verify()


# -- Rapid Reset (CVE-2023-44487) and reset floods (CVE-2019-9514) -------------------------------


def test_rapid_reset_gets_goaway_enhance_your_calm(h2):
    n = 1000
    c = h2.conn()
    h2.allow_forwarding()  # some may be forwarded before their reset; fewer than n
    sent = 0
    for sid in range(1, 2 * n, 2):
        unit = f.headers(sid, f.block(f.request_fields(h2.path(f"/rr/{sid}")))) + f.rst_stream(sid, f.CANCEL)
        if not c.send(unit):
            break
        sent += 1
    conn_error(c, f.ENHANCE_YOUR_CALM, timeout=5)
    reached = len(h2.backend.targets(h2.path("/rr/")))
    print(f"{reached} of the {sent} streams sent (and reset) reached the backend")
    assert reached < n, f"all {n} reset streams reached the backend"
    assert reached < n // 2, f"{reached} of {n} reset streams reached the backend"
    h2.verify()


@pytest.mark.parametrize("kind", ["uppercase-name", "window-update-0-on-stream"])
def test_reset_flood_never_read_is_closed(h2, kind):
    """CVE-2019-9514: each request makes the server send RST_STREAM; the client reads none."""
    c = h2.conn(rcvbuf=4096)
    c.sock.settimeout(3)
    units = []
    for sid in range(1, 2 * 5000, 2):
        if kind == "uppercase-name":
            units.append(f.headers(sid, f.block(f.request_fields(h2.path(), extra=[("X-Bad", h2.token)]))))
        else:
            units.append(f.headers(sid, f.block(f.request_fields("/slow?ms=2000", extra=[("x-h2t", h2.token)])))
                         + f.window_update(sid, 0))
            h2.allow_forwarding()
    for i in range(0, len(units), 250):
        if not c.send(b"".join(units[i:i + 250])):
            break
    assert c.wait_closed(8), f"still open after 5000 RST_STREAM-soliciting streams: {c.describe()}"
    h2.verify()


# -- CONTINUATION (CVE-2024-27983, CVE-2024-28182, CVE-2024-27316) -----------------------------


@pytest.mark.parametrize("payload", ["empty", "one-field-each", "16KiB-each"])
def test_continuation_flood_is_a_connection_error(h2, payload):
    c = h2.conn()
    c.sock.settimeout(3)
    rss = rss_guard(h2.target)
    first = f.block(f.request_fields(h2.path()))
    c.send(f.headers(1, first, end_headers=False))
    if payload == "empty":
        unit, count = f.continuation(1, b""), 20000
    elif payload == "one-field-each":
        unit, count = f.continuation(1, f.literal(b"x-" + h2.token.encode(), b"v" * 60)), 20000
    else:
        unit, count = f.continuation(1, f.literal(b"x-big", b"a" * 16000)), 1000
    flood(c, unit, count, batch=100)
    assert c.wait_closed(5), f"still open after {count} CONTINUATION frames: {c.describe()}"
    if c.goaway is not None:
        assert c.goaway.error_code != f.NO_ERROR, c.describe()
    rss("CONTINUATION flood")
    h2.verify()


@pytest.mark.parametrize("interruption", ["ping", "data-same-stream", "headers-other-stream",
                                          "continuation-other-stream", "continuation-without-headers"])
def test_interrupted_header_block_is_protocol_error(h2, interruption):
    """RFC 9113 §6.10: a header block is contiguous: any other frame, or a CONTINUATION of
    another stream, is a connection error PROTOCOL_ERROR."""
    c = h2.conn()
    part = f.block(f.request_fields(h2.path()))
    if interruption == "continuation-without-headers":
        c.send(f.continuation(1, part, end_headers=True))
    else:
        c.send(f.headers(1, part[:10], end_headers=False, end_stream=True))
        c.send({"ping": f.ping(),
                "data-same-stream": f.data(1, b"x"),
                "headers-other-stream": f.headers(3, part),
                "continuation-other-stream": f.continuation(3, part[10:], end_headers=True)}[interruption])
        c.send(f.continuation(1, part[10:], end_headers=True))
    conn_error(c, f.PROTOCOL_ERROR)
    h2.verify()


# -- HPACK (CVE-2016-6581) and the header list limit ---------------------------------------------


def test_hpack_bomb_is_refused(h2):
    c = h2.conn()
    rss = rss_guard(h2.target)
    table = c.server_settings.get(f.HEADER_TABLE_SIZE, 4096)
    name = b"x-bomb"
    value = b"a" * (table - 32 - len(name))
    blk = f.block(f.request_fields(h2.path())) + f.literal_indexed(name, value) + f.indexed(62) * 8000
    max_frame = c.server_settings.get(f.MAX_FRAME_SIZE, 16384)
    assert len(blk) <= max_frame
    c.send(f.headers(1, blk))
    # ~32 MiB of header fields from 12 KiB: refused, as a stream or a connection error, or 431.
    refused(c, 1, codes=(f.PROTOCOL_ERROR, f.COMPRESSION_ERROR, f.ENHANCE_YOUR_CALM, f.REFUSED_STREAM,
                         f.INTERNAL_ERROR), statuses=(431, 400))
    rss("HPACK bomb")
    h2.verify()


@pytest.mark.parametrize("shape", ["one-large-field", "many-fields", "large-cookie-crumbs"])
def test_header_list_over_the_limit_is_refused(h2, shape):
    c = h2.conn()
    if shape == "one-large-field":
        extra = [("x-large", "v" * (MAX_HEADER_LIST_BYTES + 100))]
    elif shape == "many-fields":
        extra = [(f"x-f{i}", "v" * 40) for i in range(MAX_HEADER_LIST_BYTES // 40)]
    else:
        extra = [("cookie", f"c{i}=" + "v" * 60) for i in range(MAX_HEADER_LIST_BYTES // 60)]
    blk = f.block(f.request_fields(h2.path(), extra=extra))
    c.send(f.headers(1, blk[:12000], end_headers=len(blk) <= 12000))
    for i in range(12000, len(blk), 12000):
        c.send(f.continuation(1, blk[i:i + 12000], end_headers=i + 12000 >= len(blk)))
    refused(c, 1, codes=(f.PROTOCOL_ERROR, f.ENHANCE_YOUR_CALM, f.REFUSED_STREAM, f.INTERNAL_ERROR,
                         f.COMPRESSION_ERROR, f.CANCEL), statuses=(431, 400))
    h2.verify()


# -- control-frame floods the client never reads (CVE-2019-9512, -9515, -9518, -9516) -------------


@pytest.mark.parametrize("kind", ["ping", "settings", "window-update", "priority"])
def test_control_frame_flood_never_read_is_closed(h2, kind):
    """PING (CVE-2019-9512) and SETTINGS (CVE-2019-9515) each want an answer the client
    never reads; WINDOW_UPDATE and PRIORITY (CVE-2019-9513) cost work and want none."""
    c = h2.conn(rcvbuf=4096)
    rss = rss_guard(h2.target)
    if kind == "priority":
        units = b"".join(f.priority(sid, max(sid - 2, 0)) for sid in range(3, 4003, 2))
        flood(c, units, 150, batch=1)
    else:
        unit = {"ping": f.ping(b"12345678"), "settings": f.settings(),
                "window-update": f.window_update(0, 1)}[kind]
        flood(c, unit, 300_000, batch=2000)
    assert c.wait_closed(8), f"{kind} flood: the connection stayed open: {c.describe()}"
    if c.goaway is not None:
        assert c.goaway.error_code in (f.ENHANCE_YOUR_CALM, f.PROTOCOL_ERROR), c.describe()
    rss(f"{kind} flood")
    h2.verify()


def test_empty_data_frame_flood_is_closed(h2):
    """CVE-2019-9518: zero-length DATA frames without END_STREAM on an open stream."""
    h2.allow_forwarding()
    c = h2.conn()
    c.send(f.headers(1, f.block(f.request_fields(h2.path("/empty-data"), method="POST")), end_stream=False))
    flood(c, f.data(1, b""), 100_000, batch=2000)
    assert c.wait_closed(8), f"still open after 100000 empty DATA frames: {c.describe()}"
    if c.goaway is not None:
        assert c.goaway.error_code in (f.ENHANCE_YOUR_CALM, f.PROTOCOL_ERROR), c.describe()
    h2.verify()


def test_empty_headers_flood_is_closed(h2):
    """CVE-2019-9518: HEADERS frames with an empty header block on new streams."""
    c = h2.conn(rcvbuf=4096)
    units = b"".join(f.headers(sid, b"") for sid in range(1, 20001, 2))
    flood(c, units, 1, batch=1)
    assert c.wait_closed(8), f"still open after 10000 empty HEADERS: {c.describe()}"
    h2.verify()


@pytest.mark.parametrize("huffman", [False, True])
def test_zero_length_header_fields_are_refused_without_leaking(h2, huffman):
    """CVE-2019-9516: header fields with an empty name and an empty value."""
    c = h2.conn()
    rss = rss_guard(h2.target)
    empty = b"\x00\x80\x80" if huffman else b"\x00\x00\x00"   # literal, name "" and value "" (H bit)
    outcomes = []
    for sid in range(1, 401, 2):
        blk = f.block(f.request_fields(h2.path(), extra=[("x-h2t", h2.token)])) + empty * 1000
        if not c.send(f.headers(sid, blk)):
            break
        if sid == 1:
            outcomes.append(refused(c, 1, codes=(f.PROTOCOL_ERROR, f.COMPRESSION_ERROR, f.ENHANCE_YOUR_CALM)))
        if c.closed or c.goaway is not None:
            break
    c.read(lambda c: False, 1)
    assert outcomes, c.describe()
    rss("zero-length header fields")
    h2.verify()


# -- flow control: dribble (CVE-2019-9511), zero window (CVE-2019-9517) ---------------------------


def test_data_dribble_keeps_to_the_windows_and_memory(h2):
    h2.allow_forwarding()
    c = h2.conn((f.INITIAL_WINDOW_SIZE, 0), auto_window=False)
    rss = rss_guard(h2.target)
    sids = (1, 3, 5)
    for sid in sids:
        c.request(sid, "/big?bytes=" + str(48 << 20))
    granted = {sid: 0 for sid in sids}
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        for sid in sids:
            c.send(f.window_update(sid, 1))
            granted[sid] += 1
        c.read(lambda c: False, 0.01)
    assert c.ping_roundtrip(), c.describe()
    for sid in sids:
        got = len(c.stream(sid).body)
        assert c.stream(sid).status == 200, c.describe()
        assert got <= granted[sid], f"stream {sid}: {got} bytes sent with a window of {granted[sid]}"
    rss("three streams of 48 MiB, granted a byte at a time")
    h2.verify()


def test_zero_window_stall_stays_usable_and_bounded_then_times_out(h2):
    h2.allow_forwarding()
    c = h2.conn((f.INITIAL_WINDOW_SIZE, 0), auto_window=False)
    rss = rss_guard(h2.target)
    started = time.monotonic()
    c.request(1, "/big?bytes=" + str(96 << 20))
    assert c.read(lambda c: c.stream(1).status is not None, 5), c.describe()
    time.sleep(0.7)  # the backend pushes; the gateway must not read it all
    assert c.ping_roundtrip(), c.describe()
    c.request(3, h2.path("/other"))
    c.send(f.window_update(3, 65535))
    c.read(lambda c: c.stream(3).ended or c.stream(3).reset is not None, 5)
    assert c.stream(3).status == 200 and c.stream(3).ended, c.describe()
    assert len(c.stream(1).body) == 0
    rss("a stalled 96 MiB response")
    # A client that reads slowly is no error: the stream lives until the timeout.
    if time.monotonic() - started < IDLE_STREAM_TIMEOUT * 0.8:
        assert c.stream(1).reset is None and c.goaway is None, f"ended before its timeout: {c.describe()}"
    # The stalled stream is ended by the gateway's idle stream timeout.
    ended = c.read(lambda c: c.stream(1).reset is not None or c.goaway is not None or c.closed,
                   IDLE_STREAM_TIMEOUT + 5)
    assert ended, f"stream 1 still stalled {IDLE_STREAM_TIMEOUT + 5}s later: {c.describe()}"
    h2.verify()


@pytest.mark.parametrize("where", ["connection", "stream"])
def test_window_update_overflow_is_flow_control_error(h2, where):
    h2.allow_forwarding()
    c = h2.conn()
    if where == "connection":
        c.send(f.window_update(0, f.MAX_WINDOW))
        conn_error(c, f.FLOW_CONTROL_ERROR)
    else:
        c.request(1, "/slow?ms=1500")
        c.send(f.window_update(1, f.MAX_WINDOW))
        refused(c, 1, codes=f.FLOW_CONTROL_ERROR, statuses=())
    h2.verify()


@pytest.mark.parametrize("where", ["connection", "stream"])
def test_window_update_of_zero_is_protocol_error(h2, where):
    h2.allow_forwarding()
    c = h2.conn()
    if where == "connection":
        c.send(f.window_update(0, 0))
        conn_error(c, f.PROTOCOL_ERROR)
    else:
        c.request(1, "/slow?ms=1500")
        c.send(f.window_update(1, 0))
        refused(c, 1, codes=f.PROTOCOL_ERROR, statuses=())
    h2.verify()


def test_initial_window_size_change_overflowing_a_stream_is_flow_control_error(h2):
    """RFC 9113 §6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change that takes an open stream's
    window past 2^31-1 is a connection error FLOW_CONTROL_ERROR."""
    h2.allow_forwarding()
    c = h2.conn()
    c.request(1, "/slow?ms=1500")
    c.send(f.window_update(1, f.MAX_WINDOW - 65535))   # the stream's window is now 2^31-1
    c.send(f.settings((f.INITIAL_WINDOW_SIZE, 65536)))  # one more
    # RFC 9113 says a connection error; libnghttp2 (so Envoy) and nginx reset the stream
    # (FLOW_CONTROL_ERROR) and keep the connection: both contain the overflow, both pass.
    refused(c, 1, codes=f.FLOW_CONTROL_ERROR, statuses=())
    h2.verify()


# -- stream identifiers and states (RFC 9113 §5.1) ------------------------------------------------


@pytest.mark.parametrize("case", ["even", "zero", "lower-than-last", "reuse-of-closed"])
def test_bad_stream_id_is_connection_error(h2, case):
    h2.allow_forwarding()
    c = h2.conn()
    hostile = f.block(f.request_fields(h2.path("/hostile"), extra=[("x-h2t", "bad-" + h2.token)]))
    h2.forbid("bad-" + h2.token)
    if case == "even":
        c.send(f.headers(2, hostile))
    elif case == "zero":
        c.send(f.headers(0, hostile))
    elif case == "lower-than-last":
        c.request(5, h2.path("/five"))
        served(c, 5)
        c.send(f.headers(3, hostile))
    else:
        c.request(1, h2.path("/one"))
        served(c, 1)
        c.send(f.headers(1, hostile))
    conn_error(c, (f.PROTOCOL_ERROR, f.STREAM_CLOSED))
    h2.verify()


def test_data_after_end_stream_is_stream_closed(h2):
    """Half-closed (remote): DATA -> STREAM_CLOSED, as a stream or connection error."""
    h2.allow_forwarding()
    h2.forbid("late-" + h2.token)
    c = h2.conn()
    c.request(1, "/slow?ms=1500")
    c.send(f.data(1, ("late-" + h2.token).encode()))
    refused(c, 1, codes=(f.STREAM_CLOSED, f.PROTOCOL_ERROR), statuses=())
    h2.verify()


@pytest.mark.parametrize("frame", ["data", "rst_stream", "window_update", "continuation"])
def test_frame_on_idle_stream_is_protocol_error(h2, frame):
    c = h2.conn()
    c.send({"data": f.data(7, h2.token.encode(), end_stream=True),
            "rst_stream": f.rst_stream(7, f.CANCEL),
            "window_update": f.window_update(7, 100),
            "continuation": f.continuation(7, f.block(f.request_fields(h2.path())), end_headers=True)}[frame])
    conn_error(c, f.PROTOCOL_ERROR)
    h2.verify()


def test_headers_on_a_reset_stream_is_refused(h2):
    h2.allow_forwarding()
    h2.forbid("again-" + h2.token)
    c = h2.conn()
    c.request(1, "/slow?ms=1000", end_stream=False)
    c.send(f.rst_stream(1, f.CANCEL))
    c.send(f.headers(1, f.block(f.request_fields(h2.path(), extra=[("x-h2t", "again-" + h2.token)]))))
    conn_error(c, (f.STREAM_CLOSED, f.PROTOCOL_ERROR))
    h2.verify()


def test_push_promise_from_a_client_is_protocol_error(h2):
    c = h2.conn()
    c.request(1, "/slow?ms=500")
    h2.allow_forwarding()
    c.send(f.frame(f.PUSH_PROMISE, f.END_HEADERS, 1, struct.pack(">I", 2) + f.block(f.request_fields(h2.path()))))
    h2.forbid(h2.token)
    conn_error(c, f.PROTOCOL_ERROR)
    h2.verify()


# -- malformed requests (RFC 9113 §8.1.1, §8.2, §8.3.1) -------------------------------------------

GOOD = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", "@PATH")]

PSEUDO_CASES = {
    "missing-method": [(":scheme", "http"), (":authority", "127.0.0.1"), (":path", "@PATH")],
    "missing-path": [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1")],
    "missing-scheme": [(":method", "GET"), (":authority", "127.0.0.1"), (":path", "@PATH")],
    "duplicate-path": GOOD + [(":path", "/other")],
    "duplicate-method": GOOD + [(":method", "POST")],
    "pseudo-after-regular": GOOD[:3] + [("x-a", "1"), (":path", "@PATH")],
    "unknown-pseudo": GOOD + [(":foo", "bar")],
    "status-in-request": GOOD + [(":status", "200")],
    "empty-path": GOOD[:3] + [(":path", ""), ("x-p", "@PATH")],
    "path-without-slash": GOOD[:3] + [(":path", "echo/@TOKEN")],
    "asterisk-path-on-get": GOOD[:3] + [(":path", "*"), ("x-p", "@PATH")],
    "method-with-space": [(":method", "GET /admin"), *GOOD[1:]],
    "empty-method": [(":method", ""), *GOOD[1:]],
    "path-with-space": GOOD[:3] + [(":path", "@PATH HTTP/1.1\r\nx: y")],
    "path-with-space-only": GOOD[:3] + [(":path", "/a b/@TOKEN")],
    "path-with-crlf": GOOD[:3] + [(":path", "@PATH\r\nx-injected: 1")],
    "authority-with-crlf": GOOD[:2] + [(":authority", "a\r\nx-injected: @TOKEN"), (":path", "/echo/ok")],
    "authority-with-userinfo": GOOD[:2] + [(":authority", "user:pw@127.0.0.1"), (":path", "@PATH")],
    "scheme-with-space": [GOOD[0], (":scheme", "http x"), *GOOD[2:]],
    "connect-with-path": [(":method", "CONNECT"), (":authority", "127.0.0.1:1"), (":path", "@PATH")],
    # RFC 8441 §4: :protocol only on an (extended) CONNECT, which carries :scheme and :path too
    "protocol-on-get": GOOD + [(":protocol", "websocket")],
    "extended-connect-without-path": [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                      (":authority", "127.0.0.1"), ("x-p", "@PATH")],
}


def _fields(template, h2case, extra=()):
    out = []
    for k, v in [*template, *extra]:
        out.append((k, v.replace("@PATH", h2case.path()).replace("@TOKEN", h2case.token)))
    return out + [("x-h2t", h2case.token)]


@pytest.mark.parametrize("case", list(PSEUDO_CASES))
def test_malformed_pseudo_headers_are_refused(h2, case):
    c = h2.conn()
    c.send(f.headers(1, f.block(_fields(PSEUDO_CASES[case], h2))))
    refused(c, 1)
    h2.verify()


FIELD_CASES = {
    "connection": [("connection", "keep-alive")],
    "transfer-encoding": [("transfer-encoding", "chunked")],
    "keep-alive": [("keep-alive", "timeout=5")],
    "upgrade": [("upgrade", "websocket")],
    "proxy-connection": [("proxy-connection", "keep-alive")],
    "te-gzip": [("te", "gzip")],
    "te-trailers-and-gzip": [("te", "trailers, gzip")],
    "uppercase-name": [("X-Upper", "1")],
    "name-with-colon": [("x:colon", "1")],
    "name-with-space": [("x space", "1")],
    "empty-name": [("", "1")],
    "name-with-nul": [("x-\x00", "1")],
    "value-with-crlf": [("x-a", "1\r\ntransfer-encoding: chunked")],
    "value-with-lf": [("x-a", "1\nx-injected: 1")],
    "value-with-cr": [("x-a", "1\rx-injected: 1")],
    "value-with-nul": [("x-a", "1\x00x")],
    "value-leading-space": [("x-a", " 1")],
    "value-trailing-space": [("x-a", "1 ")],
    "value-trailing-tab": [("x-a", "1\t")],
    "host-with-crlf": [("host", "a\r\nx-injected: 1")],
    "host-differs-from-authority": [("host", "admin.internal")],
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_forbidden_fields_are_refused(h2, case):
    c = h2.conn()
    c.send(f.headers(1, f.block(_fields(GOOD, h2, FIELD_CASES[case]))))
    refused(c, 1)
    h2.forbid(b"x-injected")
    h2.verify()


def test_trailers_with_a_pseudo_header_or_without_end_stream_are_refused(h2):
    """RFC 9113 §8.1: trailers carry no pseudo-header and end the stream. The body has no
    content-length, so a gateway that streams it upstream cannot have finished the
    request before the trailers: the backend must never see it complete."""
    c = h2.conn()
    for sid, trailer, es in ((1, [(":path", "/x")], True), (3, [("x-t", "1")], False)):
        c.send(f.headers(sid, f.block(_fields(GOOD, h2)), end_stream=False))
        c.send(f.data(sid, b"ok"))
        c.send(f.headers(sid, f.block(trailer), end_stream=es))
        if es is False:
            c.send(f.data(sid, b"", end_stream=True))
        h2.allow_forwarding()  # the head may go before the trailers come; the request must not complete
        refused(c, sid)
        if c.goaway is not None:
            break
        assert not [r for r in h2.backend.records if h2.token in r["target"]], h2.backend.records[-1:]
    assert not [r for r in h2.backend.records if h2.token in r["target"]], h2.backend.records[-1:]
    h2.verify()


# -- H2.CL / H2.TE desync -------------------------------------------------------------------------


SMUGGLED = "GET /echo/smuggled-{token} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-h2t: smuggled-{token}\r\n\r\n"


@pytest.mark.parametrize("case", ["cl0-with-body", "cl-smaller-one-frame", "cl-smaller-two-frames",
                                  "te-chunked", "cl-not-a-number", "cl-two-values", "cl-list",
                                  "cl0-body-after-a-pause"])
def test_h2_cl_te_desync_is_refused(h2, case):
    """The H2.CL / H2.TE downgrade smuggle: a body that its content-length (or a
    transfer-encoding) says is something else. A first request leaves an idle pooled
    upstream connection, so that a gateway that sends a request upstream at once is
    caught doing it. The hostile frames go in one write: the gateway has them all before
    it decides, so the stream is refused and the backend completes nothing for it; the
    smuggled request's bytes never reach it; and a request sent next (a new connection:
    the pooled upstream connection) is answered as itself, never as the rest of a body.

    ``cl0-body-after-a-pause``: content-length 0, and the DATA comes 0.3 s later. The
    gateway may have answered by then: RFC 9113 §8.1 lets a server send a complete
    response to a request whose rest it has not read, then RST_STREAM NO_ERROR. Either
    that or a refusal; the backend may have the bodiless request, never the smuggled one."""
    smuggled = SMUGGLED.format(token=h2.token).encode()
    h2.allow_forwarding()
    h2.forbid(b"smuggled-" + h2.token.encode())
    c = h2.conn()
    c.request(1, h2.path("/warm"))
    served(c, 1)
    path = h2.path("/desync")
    cl = {"cl0-with-body": "0", "cl-smaller-one-frame": "5", "cl-smaller-two-frames": "5",
          "te-chunked": None, "cl-not-a-number": "5x", "cl-two-values": None, "cl-list": "5, 5",
          "cl0-body-after-a-pause": "0"}[case]
    extra = [("content-length", cl)] if cl is not None else []
    if case == "te-chunked":
        extra = [("transfer-encoding", "chunked")]
        body = b"0\r\n\r\n" + smuggled
    elif case == "cl-two-values":
        extra = [("content-length", "5"), ("content-length", "6")]
        body = b"hello" + smuggled
    else:
        body = b"hello" + smuggled
    head = f.headers(3, f.block(f.request_fields(path, method="POST", extra=extra)), end_stream=False)
    if case == "cl-smaller-two-frames":
        c.send(head + f.data(3, b"hel") + f.data(3, b"lo" + smuggled, end_stream=True))
    elif case == "cl0-body-after-a-pause":
        c.send(head)
        time.sleep(0.3)
        c.send(f.data(3, body, end_stream=True))
    else:
        c.send(head + f.data(3, body, end_stream=True))
    st = c.wait_stream(3, 4)
    if case == "cl0-body-after-a-pause" and st.status is not None:
        c.read(lambda c: c.stream(3).reset is not None, 1)
        assert st.ended and st.reset in (None, f.NO_ERROR), c.describe()
    else:
        refused(c, 3)
    victim = h2.conn()
    victim.request(1, h2.path("/victim"), method="POST", extra=[("content-length", "90")], body=b"v" * 90)
    info = json.loads(bytes(served(victim, 1).body))
    assert info["target"] == h2.path("/victim") and info["body_len"] == 90, info
    time.sleep(0.2)  # what the backend may still be reading
    for r in h2.backend.records:
        if h2.token in r["target"]:
            assert b"HTTP/1.1" not in r["body"], f"a body swallowed a request: {r}"
            assert r["target"] != path or (case == "cl0-body-after-a-pause" and r["body"] == b""), (
                f"the backend completed the malformed request: {r}")
    h2.verify()


def test_h2_cl_larger_than_data_never_swallows_the_next_request(h2):
    """content-length: 100 with 10 bytes then END_STREAM: refused, and the next requests
    (same connection and a new one) reach the backend as requests of their own, never as
    the rest of that body."""
    h2.allow_forwarding()
    path = h2.path("/long")
    c = h2.conn()
    c.send(f.headers(1, f.block(f.request_fields(path, method="POST", extra=[("content-length", "100")])),
                     end_stream=False))
    c.send(f.data(1, b"0123456789", end_stream=True))
    refused(c, 1)
    victims = []
    if c.goaway is None and not c.closed:
        c.request(3, h2.path("/victim-same"), method="POST", extra=[("content-length", "90")], body=b"v" * 90)
        victims.append((c, 3, h2.path("/victim-same")))
    c2 = h2.conn()
    c2.request(1, h2.path("/victim-new"), method="POST", extra=[("content-length", "90")], body=b"w" * 90)
    victims.append((c2, 1, h2.path("/victim-new")))
    for conn, sid, vpath in victims:
        st = served(conn, sid)
        info = json.loads(bytes(st.body))
        assert info["target"] == vpath and info["body_len"] == 90, info
    for r in h2.backend.records:
        if h2.token in r["target"]:
            assert r["target"] != path, f"the backend completed the desynchronised request: {r}"
            assert b"HTTP/1.1" not in r["body"], f"a body swallowed a request: {r}"
    h2.verify()


# -- SETTINGS, frame sizes, preface ---------------------------------------------------------------


@pytest.mark.parametrize("frame,code", [
    (f.settings((f.ENABLE_PUSH, 2)), f.PROTOCOL_ERROR),
    (f.settings((f.INITIAL_WINDOW_SIZE, 2**31)), f.FLOW_CONTROL_ERROR),
    (f.settings((f.MAX_FRAME_SIZE, 16383)), f.PROTOCOL_ERROR),
    (f.settings((f.MAX_FRAME_SIZE, 2**24)), f.PROTOCOL_ERROR),
    (f.settings((f.MAX_FRAME_SIZE, 0)), f.PROTOCOL_ERROR),
    (f.settings(sid=1), f.PROTOCOL_ERROR),
    (f.frame(f.SETTINGS, f.ACK, 0, b"\0" * 6), f.FRAME_SIZE_ERROR),
], ids=["enable-push-2", "initial-window-2^31", "max-frame-16383", "max-frame-2^24", "max-frame-0",
        "settings-on-stream-1", "ack-with-payload"])
def test_bad_settings_are_connection_errors(h2, frame, code):
    c = h2.conn()
    c.send(frame)
    conn_error(c, code)
    h2.verify()


@pytest.mark.parametrize("case", ["settings-len-7", "ping-len-7", "ping-len-9", "window-update-len-3",
                                  "rst-stream-len-3", "goaway-len-7", "priority-len-4", "data-over-max",
                                  "headers-over-max", "length-field-2^24-1"])
def test_frame_size_errors(h2, case):
    c = h2.conn()
    max_frame = c.server_settings.get(f.MAX_FRAME_SIZE, 16384)
    stream_level = False
    if max_frame >= 2**24 - 1 and case in ("data-over-max", "headers-over-max", "length-field-2^24-1"):
        # Nothing can be over the largest size a frame header can say (nginx advertises it):
        # the server must then take what it advertised, a frame over the default 16384.
        h2.allow_forwarding()
        c.request(1, h2.path(), method="POST", extra=[("content-length", "20000")], body=b"y" * 20000)
        assert json.loads(bytes(served(c, 1).body))["body_len"] == 20000
        h2.verify()
        return
    if case == "settings-len-7":
        c.send(f.frame(f.SETTINGS, 0, 0, b"\0\x03\0\0\0\x01\0"))
    elif case == "ping-len-7":
        c.send(f.frame(f.PING, 0, 0, b"\0" * 7))
    elif case == "ping-len-9":
        c.send(f.frame(f.PING, 0, 0, b"\0" * 9))
    elif case == "window-update-len-3":
        c.send(f.frame(f.WINDOW_UPDATE, 0, 0, b"\0\0\1"))
    elif case == "rst-stream-len-3":
        c.request(1, "/slow?ms=1000")
        h2.allow_forwarding()
        c.send(f.frame(f.RST_STREAM, 0, 1, b"\0\0\1"))
    elif case == "goaway-len-7":
        c.send(f.frame(f.GOAWAY, 0, 0, b"\0" * 7))
    elif case == "priority-len-4":
        c.send(f.frame(f.PRIORITY, 0, 1, b"\0\0\0\0"))   # RFC 9113 §6.3: a stream error
        stream_level = True
    elif case == "data-over-max":
        c.send(f.headers(1, f.block(f.request_fields(h2.path(), method="POST")), end_stream=False))
        h2.allow_forwarding()
        h2.forbid(b"Z" * 64)
        c.send(f.data(1, b"Z" * (max_frame + 1), end_stream=True))
        stream_level = True
    elif case == "headers-over-max":
        big = f.block(f.request_fields(h2.path(), extra=[("x-pad", "p" * (max_frame + 10))]))
        c.send(f.headers(1, big))
    else:
        c.send(struct.pack(">I", 2**24 - 1)[1:] + bytes([f.DATA, 0]) + struct.pack(">I", 1) + b"x" * 100)
    if stream_level:
        refused(c, 1, codes=f.FRAME_SIZE_ERROR, statuses=())
    else:
        conn_error(c, f.FRAME_SIZE_ERROR)
    h2.verify()


@pytest.mark.parametrize("case", ["garbage-after-pri", "no-settings-first", "truncated-magic-then-junk",
                                  "tls-hello-after-magic", "nul-flood"])
def test_bad_preface_is_closed_without_a_crash(h2, case):
    c = h2.conn(handshake=False)
    junk = {
        "garbage-after-pri": b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + os.urandom(200),
        "no-settings-first": f.PREFACE + f.ping() + f.settings(),
        "truncated-magic-then-junk": b"PRI * HTTP/2.0\r\n\r\nS" + b"\xff" * 64,
        "tls-hello-after-magic": f.PREFACE + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(100),
        "nul-flood": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\0" * 100_000,
    }[case]
    c.send(junk)
    assert c.wait_closed(5), f"{case}: still open 5s later: {c.describe()} {bytes(c.buf[:200])!r}"
    if c.goaway is not None:
        assert c.goaway.error_code in (f.PROTOCOL_ERROR, f.FRAME_SIZE_ERROR), c.describe()
    h2.verify()


# -- concurrency and priority ---------------------------------------------------------------------


def test_streams_over_max_concurrent_streams_are_refused(h2):
    h2.allow_forwarding()
    c = h2.conn()
    assert c.server_settings.get(f.MAX_CONCURRENT_STREAMS) == MAX_CONCURRENT_STREAMS, c.server_settings
    extra_n = 3
    sids = [1 + 2 * i for i in range(MAX_CONCURRENT_STREAMS + extra_n)]
    c.send(b"".join(f.headers(sid, f.block(f.request_fields(f"/slow?ms=700&t={h2.token}-{sid}")))
                    for sid in sids))
    c.read(lambda c: all(c.stream(s).ended or c.stream(s).reset is not None for s in sids) or c.closed, 6)
    first, rest = sids[:MAX_CONCURRENT_STREAMS], sids[MAX_CONCURRENT_STREAMS:]
    for sid in rest:
        st = c.stream(sid)
        assert st.status is None, f"stream {sid} over the limit was served: {c.describe()}"
    reached = len(h2.backend.targets(f"t={h2.token}-"))
    assert reached <= MAX_CONCURRENT_STREAMS, reached
    # RFC 9113 §5.1.2: a stream error (REFUSED_STREAM or PROTOCOL_ERROR) for each extra
    # stream, which §5.4 lets an endpoint treat as a connection error. libnghttp2 does
    # that once its SETTINGS are acknowledged (and fastgw keeps it, docs/config.md): then
    # a GOAWAY PROTOCOL_ERROR whose last stream id excludes the extra streams, and the
    # connection ends. Either way no extra stream reaches the backend (checked above).
    if c.goaway is not None:
        assert c.goaway.last_sid <= first[-1], c.describe()
        assert c.goaway.error_code in (f.PROTOCOL_ERROR, f.NO_ERROR), c.describe()
        return h2.verify()
    for sid in rest:
        assert c.stream(sid).reset in (f.REFUSED_STREAM, f.PROTOCOL_ERROR), c.describe()
    for sid in first:
        assert c.stream(sid).status == 200 and c.stream(sid).ended, f"stream {sid} within the limit: {c.describe()}"
    assert reached == MAX_CONCURRENT_STREAMS, reached
    h2.verify()


@pytest.mark.parametrize("how", ["priority-frame", "headers-priority"])
def test_stream_depending_on_itself_is_protocol_error(h2, how):
    c = h2.conn()
    if how == "priority-frame":
        c.send(f.priority(1, 1))
        c.send(f.headers(1, f.block(f.request_fields(h2.path()))))
    else:
        c.send(f.headers(1, f.block(f.request_fields(h2.path())), depends_on=1))
    refused(c, 1, statuses=())
    h2.verify()


def test_priority_on_stream_zero_is_protocol_error(h2):
    c = h2.conn()
    c.send(f.priority(0, 1))
    conn_error(c, f.PROTOCOL_ERROR)
    h2.verify()


def test_padding_longer_than_the_frame_is_protocol_error(h2):
    c = h2.conn()
    blk = f.block(f.request_fields(h2.path()))
    c.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM | f.PADDED, 1, bytes([255]) + blk))
    conn_error(c, f.PROTOCOL_ERROR)
    h2.verify()


def test_h2c_upgrade_headers_never_reach_the_backend(h2):
    """HTTP/1.1 ``Upgrade: h2c`` (h2c smuggling): answered 101 and served as HTTP/2, or
    served as HTTP/1.1, or refused; the backend never sees the upgrade nor HTTP2-Settings
    (hop-by-hop), so it can never be talked into HTTP/2 through the gateway."""
    h2.allow_forwarding()
    h2.forbid(b"HTTP2-Settings")
    h2.forbid(b"http2-settings")
    h2.forbid(b"h2c")
    for i, settings_value in enumerate([base64.urlsafe_b64encode(f.settings((f.ENABLE_PUSH, 0))[9:]).rstrip(b"="),
                                        b"!!not-base64!!"]):
        c = h2.conn(handshake=False)
        c.send(b"GET " + h2.path(f"/upgrade{i}").encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: " + settings_value
               + b"\r\n\r\n")
        c.sock.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.sock.recv(65536)
            if not chunk:
                break
            head += chunk
        if not head.startswith(b"HTTP/1.1 "):
            # Not answered as HTTP/1.1 (nginx's "listen ... http2" port speaks HTTP/2 only).
            assert c.wait_closed(5), head
            continue
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            c.buf += head.split(b"\r\n\r\n", 1)[1]
            c.send(f.PREFACE + f.settings())
            c._parse()
            served(c, 1)
        else:
            assert status in (200, 400), head
    h2.verify()


@pytest.mark.parametrize("case", ["table-size-update-over-the-setting", "table-size-update-after-a-field",
                                  "index-past-the-table", "index-zero", "huffman-eos-padding"])
def test_hpack_errors_are_compression_errors(h2, case):
    """RFC 7541 §4.2, §6.1, §5.2; RFC 9113 §4.3: a header block that cannot be decoded is
    a connection error COMPRESSION_ERROR."""
    c = h2.conn()
    table = c.server_settings.get(f.HEADER_TABLE_SIZE, 4096)
    fields = f.block(f.request_fields(h2.path()))
    blk = {
        "table-size-update-over-the-setting": f.table_size_update(table + 1) + fields,
        "table-size-update-after-a-field": fields + f.table_size_update(0),
        "index-past-the-table": fields + f.indexed(61 + 5),
        "index-zero": fields + f.indexed(0),
        # a Huffman string whose padding is longer than 7 bits (a whole 0xff byte: EOS)
        "huffman-eos-padding": fields + b"\x00\x81\xff" + f.hpack_str(b"v"),
    }[case]
    c.send(f.headers(1, blk))
    conn_error(c, f.COMPRESSION_ERROR)
    h2.verify()
