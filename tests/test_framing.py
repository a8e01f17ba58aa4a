"""The HTTP/1.1 front end against hostile and broken clients: raw bytes on a real socket
to a real gateway process, with a real backend behind it.

Covers the refusals of the README and docs/routing.md (ambiguous framing is refused,
never guessed; paths are normalised; the status table): what llhttp refuses and what it
leaves to us, slowloris, idle and connection limits, and paths. Every refusal is
checked for its exact status line, the JSON error body, the connection being closed, and
the backend never having seen the request: the backend records every request *head* it
parses (``SniffingBackend.heads``), so even a head forwarded without its body is caught.

One gateway serves the module (short timeouts keep it fast); the connection limit has a
gateway of its own.
"""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h11
import httptools
import pytest

from tests.backend import Backend
from tests.conftest import Gateway, closed_by_peer, config_for, mutated
from tests.test_server import children

ROOT = Path(__file__).resolve().parent.parent

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.0
SERVER = f"""\
max_body_bytes = "1KiB"
max_header_bytes = "16KiB"
header_timeout = "{HEADER_TIMEOUT:g}s"
idle_timeout = "{IDLE_TIMEOUT:g}s"
"""
# No catch-all: a path that normalises out of its route must find no route at all.
ROUTES = """\
[[routes]]
name = "echo"
paths = ["/echo", "/echo/*"]
upstream = "app"

[[routes]]
name = "slow"
paths = ["/slow"]
upstream = "app"

[[routes]]
name = "public"
paths = ["/public/*"]
upstream = "app"
"""

REASONS = {
    400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 417: b"Expectation Failed",
    431: b"Request Header Fields Too Large", 505: b"HTTP Version Not Supported",
}


# -- the backend and gateways -----------------------------------------------------------------


class SniffingBackend(Backend):
    """The h11 backend, also recording the target of every request head it parses, before
    its body (``seen`` only holds requests that completed)."""

    def __init__(self, name: str) -> None:
        self.heads: list[str] = []
        super().__init__(name)

    def _next(self, conn: h11.Connection, client: socket.socket):  # type: ignore[override]
        event = Backend._next(conn, client)
        if isinstance(event, h11.Request):
            with self.lock:
                self.heads.append(event.target.decode("latin-1"))
        return event

    def saw(self, mark: str) -> bool:
        with self.lock:
            return any(mark in target for target in self.heads)

    def completed(self, mark: str) -> list[dict]:
        with self.lock:
            return [r for r in self.seen if mark in r["target"]]


def _start(folder: Path, toml: str, port: int) -> Gateway:
    return Gateway(folder, toml, port).start()


def _stop(gw: Gateway) -> None:
    try:
        gw.stop()
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture(scope="module")
def app():
    b = SniffingBackend("framing")
    yield b
    b.close()


@pytest.fixture(scope="module")
def gw(app, tmp_path_factory):
    toml, port = config_for(app, routes=ROUTES, server=SERVER)
    g = _start(tmp_path_factory.mktemp("framing"), toml, port)
    yield g
    _stop(g)


@pytest.fixture(scope="module")
def limited_gw(app, tmp_path_factory):
    toml, port = config_for(app, routes=ROUTES,
                            server='max_connections = 5\nheader_timeout = "10s"\nidle_timeout = "10s"')
    g = _start(tmp_path_factory.mktemp("limited"), toml, port)
    yield g
    _stop(g)


# -- a strict little HTTP/1.1 response reader ---------------------------------------------------


class Response:
    def __init__(self, status_line: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_line = status_line
        self.status = int(status_line.split(b" ", 2)[1])
        self.headers = headers
        self.body = body

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]

    def header(self, name: bytes) -> bytes | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name!r} repeated: {values}"
        return values[0] if values else None

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status_line!r} {self.headers!r} {self.body[:300]!r}>"


class Reader:
    """Reads responses one after another off one socket (pipelining keeps leftovers)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; unparsed: {self.buf[:300]!r}")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def response(self, head: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 "), lines[0]
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep, line
            headers.append((name.lower(), value.strip()))
        resp = Response(lines[0], headers, b"")
        if head or resp.status < 200 or resp.status in (204, 304):
            return resp
        length = resp.header(b"content-length")
        if length is not None:
            resp.body = self._take(int(length))
        elif resp.header(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    self._line()
                    break
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            resp.body = body
        else:
            while True:
                try:
                    self._fill()
                except EOFError:
                    break
            resp.body, self.buf = self.buf, b""
        return resp


def connect(port: int, timeout: float = 3.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def marker() -> str:
    return "m" + uuid.uuid4().hex[:12]


def assert_refusal(resp: Response, status: int) -> dict:
    """Our own error answer: exact status line, JSON body with exactly the documented
    members, matching request id, and the connection announced closed."""
    assert resp.status_line == b"HTTP/1.1 %d %s" % (status, REASONS[status]), resp
    assert resp.header(b"content-type") == b"application/json", resp
    assert resp.header(b"connection") == b"close", resp
    assert int(resp.header(b"content-length") or -1) == len(resp.body), resp
    body = resp.json()
    assert set(body) == {"error", "status", "request_id"}, body
    assert body["status"] == status, body
    assert isinstance(body["error"], str) and body["error"], body
    assert body["request_id"] and resp.header(b"x-request-id") == body["request_id"].encode(), resp
    assert resp.header(b"x-backend") is None, "the backend answered, not the gateway"
    return body


def assert_closed(reader: Reader, timeout: float = 3.0) -> None:
    """The gateway closes the connection after its answer, and sends nothing more."""
    assert reader.buf == b"", f"bytes after the last response: {reader.buf[:300]!r}"
    reader.sock.settimeout(timeout)
    try:
        extra = reader.sock.recv(65536, socket.MSG_PEEK)
    except ConnectionResetError:
        return
    except socket.timeout:
        pytest.fail(f"connection still open {timeout}s after the answer")
    assert extra == b"", f"bytes after the last response: {extra[:300]!r}"
    assert closed_by_peer(reader.sock, timeout)


def assert_unseen(app: SniffingBackend, mark: str) -> None:
    """The backend never saw a head carrying ``mark`` (given a moment to arrive)."""
    time.sleep(0.1)
    assert not app.saw(mark), f"the backend saw the request: {[t for t in app.heads if mark in t]}"


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: gw.test\r\n" + extra + b"\r\n"


# -- ambiguous or malformed requests: refused, closed, never forwarded ----------------------------

H = b"Host: gw.test\r\n"
POST = b"POST /echo/{M} HTTP/1.1\r\n" + H
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
BIG = b"a" * 20 * 1024

REFUSED = [
    # Content-Length / Transfer-Encoding ambiguity (llhttp refuses, we answer 400 + close)
    ("cl_and_te", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_and_cl", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("cl_differing", POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl_repeated_same", POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("cl_list", POST + b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    ("cl_plus", POST + b"Content-Length: +3\r\n\r\nabc", 400),
    ("cl_minus", POST + b"Content-Length: -3\r\n\r\nabc", 400),
    ("cl_hex", POST + b"Content-Length: 0x3\r\n\r\nabc", 400),
    ("cl_inner_space", POST + b"Content-Length: 1 2\r\n\r\nabc", 400),
    ("cl_empty", POST + b"Content-Length: \r\n\r\nabc", 400),
    ("cl_overflow", POST + b"Content-Length: 99999999999999999999999\r\n\r\nabc", 400),
    ("te_not_final_chunked", POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te_unknown_gzip", POST + b"Transfer-Encoding: gzip\r\n\r\nabc", 400),
    ("te_identity", POST + b"Transfer-Encoding: identity\r\n\r\nabc", 400),
    ("te_chunkedx", POST + b"Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n", 400),
    ("te_gzip_then_chunked", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_chunked_twice_in_list", POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_duplicate_header",
     POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("http10_with_te", b"POST /echo/{M} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    # header syntax
    ("bare_lf_in_headers", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\nX-A: b\r\n\r\n", 400),
    ("bare_lf_everywhere", b"GET /echo/{M} HTTP/1.1\nHost: gw.test\n\n", 400),
    ("bare_cr_in_headers", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\rX-A: b\r\n\r\n", 400),
    ("obs_fold", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("leading_whitespace_line", b"GET /echo/{M} HTTP/1.1\r\n X-A: b\r\nHost: gw.test\r\n\r\n", 400),
    ("space_before_colon", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\r\nX-A : b\r\n\r\n", 400),
    ("space_before_colon_te",
     POST + b"Transfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("nul_in_value", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\r\nX-A: b\x00c\r\n\r\n", 400),
    ("empty_header_name", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\r\n: c\r\n\r\n", 400),
    # chunked framing
    ("chunk_size_invalid", CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk_size_overflow", CHUNKED + b"fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk_size_trailing_space", CHUNKED + b"3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk_size_bare_lf", CHUNKED + b"3\nabc\r\n0\r\n\r\n", 400),
    ("chunk_extension_invalid", CHUNKED + b"3;\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk_length_mismatch", CHUNKED + b"3\r\nabcdef\r\n0\r\n\r\n", 400),
    ("chunk_data_without_crlf", CHUNKED + b"3\r\nabc0\r\n\r\n", 400),
    # Host
    ("missing_host_http11", b"GET /echo/{M} HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two_hosts", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\r\nHost: other.test\r\n\r\n", 400),
    ("two_hosts_same", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\r\nHost: gw.test\r\n\r\n", 400),
    ("host_with_slash", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test/x\r\n\r\n", 400),
    ("host_bad_port", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test:8o\r\n\r\n", 400),
    # request line and version
    ("http09_request_line", b"GET /echo/{M}\r\n\r\n", 400),
    ("http20_request_line", b"GET /echo/{M} HTTP/2.0\r\nHost: gw.test\r\n\r\n", 505),
    ("http_version_1_32", b"GET /echo/{M} HTTP/1.32\r\nHost: gw.test\r\n\r\n", 400),
    ("lowercase_method", b"get /echo/{M} HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("space_in_target", b"GET /echo/{M} x HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    # targets and paths (docs/routing.md)
    ("fragment", b"GET /echo/{M}#frag HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("backslash", b"GET /public\\..\\echo\\{M} HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("encoded_slash", b"GET /public/..%2Fecho/{M} HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("encoded_slash_lower", b"GET /echo%2f{M} HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("encoded_nul", b"GET /echo/{M}%00.json HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("encoded_backslash", b"GET /echo%5C{M} HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("encoded_hash", b"GET /echo/{M}%23x HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("semicolon_in_segment", b"GET /echo;x=1/{M} HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("bad_percent_escape", b"GET /echo/{M}%zz HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("asterisk_form", b"OPTIONS * HTTP/1.1\r\nHost: gw.test\r\nX-M: {M}\r\n\r\n", 400),
    ("authority_form", b"GET {M}.test:80 HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("absolute_form_userinfo", b"GET http://u@gw.test/echo/{M} HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    ("absolute_form_other_scheme", b"GET ftp://gw.test/echo/{M} HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    # methods and expectations
    ("connect_authority_form", b"CONNECT {M}.test:443 HTTP/1.1\r\nHost: {M}.test:443\r\n\r\n", 405),
    ("connect_origin_form", b"CONNECT /echo/{M} HTTP/1.1\r\nHost: gw.test\r\n\r\n", 405),
    ("expect_unknown", POST + b"Content-Length: 3\r\nExpect: something-else\r\n\r\nabc", 417),
    # sizes
    ("content_length_over_max_body", POST + b"Content-Length: 2000\r\n\r\n", 413),
    ("expect_continue_over_max_body", POST + b"Content-Length: 2000\r\nExpect: 100-continue\r\n\r\n", 413),
    ("url_20k", b"GET /echo/{M}/" + BIG + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n", 414),
    ("query_20k", b"GET /echo/{M}?q=" + BIG + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n", 414),
    ("header_20k", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\r\nX-Big: " + BIG + b"\r\n\r\n", 431),
    ("header_20k_before_host", b"GET /echo/{M} HTTP/1.1\r\nX-Big: " + BIG + b"\r\nHost: gw.test\r\n\r\n", 431),
    ("headers_200", b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\r\n"
     + b"".join(b"X-H%03d: %s\r\n" % (i, b"v" * 100) for i in range(200)) + b"\r\n", 431),
    # a hidden Content-Length past the limit must not frame anything (Node.js CVE-2026-58044)
    ("headers_then_hidden_cl", b"POST /echo/{M} HTTP/1.1\r\nHost: gw.test\r\n"
     + b"".join(b"X-H%03d: %s\r\n" % (i, b"v" * 100) for i in range(200))
     + b"Content-Length: 3\r\n\r\nabc", 431),
]


@pytest.mark.parametrize("raw,status", [pytest.param(r, s, id=i) for i, r, s in REFUSED])
def test_refused_closed_and_never_forwarded(gw, app, raw, status):
    mark = marker()
    with connect(gw.port) as sock:
        started = time.monotonic()
        sock.sendall(raw.replace(b"{M}", mark.encode()))
        reader = Reader(sock)
        resp = reader.response()
        elapsed = time.monotonic() - started
        assert_refusal(resp, status)
        # Refused on what was read, not after a timeout ran out.
        assert elapsed < 0.5 * HEADER_TIMEOUT, elapsed
        assert_closed(reader)
    assert_unseen(app, mark)


@pytest.mark.parametrize("first", [
    pytest.param(b"GET /echo/{M} HTTP/1.1\r\nX-Big: ", id="first_header"),
    pytest.param(b"GET /echo/{M} HTTP/1.1\r\nHost: gw.test\r\nX-Big: ", id="after_host"),
])
def test_header_over_limit_in_pieces_is_431(gw, app, first):
    """A head cut across reads: a header still arriving when the limit passes is 431,
    whether or not a header came before it (not 414: the target is short)."""
    mark = marker()
    with connect(gw.port) as sock:
        sock.sendall(first.replace(b"{M}", mark.encode()) + b"a" * 9000)
        time.sleep(0.15)
        sock.sendall(b"a" * 9000)
        reader = Reader(sock)
        assert_refusal(reader.response(), 431)
        assert_closed(reader)
    assert_unseen(app, mark)


def test_url_over_limit_in_pieces_is_414(gw, app):
    mark = marker()
    with connect(gw.port) as sock:
        sock.sendall(f"GET /echo/{mark}/".encode() + b"a" * 9000)
        time.sleep(0.15)
        sock.sendall(b"a" * 9000)
        reader = Reader(sock)
        assert_refusal(reader.response(), 414)
        assert_closed(reader)
    assert_unseen(app, mark)


def test_headers_under_the_limit_all_reach_the_backend(gw, app):
    """The other side of 431: below max_header_bytes nothing is dropped."""
    mark = marker()
    extra = b"".join(b"X-H%03d: %s\r\n" % (i, b"v" * 100) for i in range(100))
    with connect(gw.port) as sock:
        sock.sendall(get(f"/echo/{mark}", extra))
        resp = Reader(sock).response()
    assert resp.status == 200, resp
    names = [n for n, _ in resp.json()["headers"] if n.startswith("x-h")]
    assert names == ["x-h%03d" % i for i in range(100)]


def test_fields_reach_the_backend_as_sent_in_order(gw, app):
    """The head's fields live in one C block of the exchange (no Python object per
    field): what goes upstream is each field as sent, repeats and order kept, names in
    any case, a value with spaces inside and an empty one, minus the hop-by-hop ones
    (Connection, and the fields it names) and with our own forwarding fields."""
    mark = marker()
    sent = [(b"X-Dup", b"1"), (b"accept", b"*/*"), (b"x-DUP", b"2"), (b"X-Empty", b""),
            (b"Cookie", b"a=1; b=2"), (b"X-Named", b"dropped"), (b"X-Dup", b"3 three")]
    extra = b"".join(n + b": " + v + b"\r\n" for n, v in sent) + b"Connection: keep-alive, X-Named\r\n"
    with connect(gw.port) as sock:
        sock.sendall(get(f"/echo/{mark}", extra))
        resp = Reader(sock).response()
    assert resp.status == 200, resp
    seen = [(n, v) for n, v in resp.json()["headers"]
            if n in {"x-dup", "accept", "x-empty", "cookie", "x-named", "connection"}]
    assert seen == [("x-dup", "1"), ("accept", "*/*"), ("x-dup", "2"), ("x-empty", ""),
                    ("cookie", "a=1; b=2"), ("x-dup", "3 three")]


def test_request_trickled_in_small_pieces_arrives_whole(gw, app):
    """llhttp hands a target, a header name or value, and a body over in as many pieces
    as the reads cut them into: each is put together again (an empty value, a value
    longer than the first buffer, a chunked body with a trailer), and the next request
    on the connection starts clean."""
    mark = marker()
    long_value = b"v" * 700
    first = (f"POST /echo/{mark}?q=a%20b HTTP/1.1\r\nHost: gw.test\r\nX-Empty:\r\n".encode()
             + b"X-Long: " + long_value + b"\r\nX-Spaced:   a b  \r\nTransfer-Encoding: chunked\r\n\r\n"
             + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n")
    second = get(f"/echo/{mark}/2", b"X-Second: 2\r\n")
    with connect(gw.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(first), 5):
            sock.sendall(first[i:i + 5])
            time.sleep(0.002)
        reader = Reader(sock)
        resp = reader.response()
        sock.sendall(second)
        again = reader.response()
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["target"] == f"/echo/{mark}?q=a%20b"
    assert echo["body_len"] == 7
    headers = dict(echo["headers"])
    assert headers["x-empty"] == ""
    assert headers["x-long"] == long_value.decode()
    assert headers["x-spaced"] == "a b"
    assert again.status == 200, again
    second_echo = again.json()
    assert second_echo["target"] == f"/echo/{mark}/2"
    second_headers = dict(second_echo["headers"])
    assert second_headers["x-second"] == "2"
    assert not {"x-empty", "x-long", "x-spaced", "x-trailer"} & set(second_headers)


def test_refusal_is_logged_with_its_request_id(gw):
    with connect(gw.port) as sock:
        sock.sendall(b"GET /echo/logged HTTP/1.1\r\nHost: gw.test\r\nX-A : b\r\n\r\n")
        body = assert_refusal(Reader(sock).response(), 400)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in gw.access_lines]
        mine = [line for line in lines if line["request_id"] == body["request_id"]]
        if mine:
            assert mine[0]["status"] == 400 and mine[0]["route"] is None, mine
            return
        time.sleep(0.1)
    pytest.fail(f"no access log line for {body['request_id']}")


# -- what is accepted, and how it is forwarded ------------------------------------------------------


@pytest.mark.parametrize("te", [b"chunked", b"CHUNKED", b" chunked ", b",chunked"])
def test_chunked_request_is_reframed(gw, app, te):
    """Any spelling llhttp takes as chunked alone is dechunked and sent on with framing
    we write (one Transfer-Encoding, ours), never the client's header copied."""
    mark = marker()
    with connect(gw.port) as sock:
        sock.sendall(f"POST /echo/{mark} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: ".encode()
                     + te + b"\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n")
        resp = Reader(sock).response()
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["body_len"] == 7
    framing = [(n, v) for n, v in echo["headers"] if n in ("transfer-encoding", "content-length")]
    assert framing == [("transfer-encoding", "chunked")]


@pytest.mark.parametrize("target,forwarded", [
    ("/a/../../echo/{M}", "/echo/{M}"),
    ("/echo/./x/../{M}", "/echo/{M}"),
    ("//echo///{M}", "/echo/{M}"),
    ("/public/%2e%2E/echo/{M}", "/echo/{M}"),
    ("/%65%63ho/{M}", "/echo/{M}"),
    ("/echo/{M}/a/../../../../..", "/"),
    ("/echo/{M}?q=/../x%2F", "/echo/{M}?q=/../x%2F"),
])
def test_path_normalised_before_routing_and_forwarding(gw, app, target, forwarded):
    mark = marker()
    target, forwarded = target.replace("{M}", mark), forwarded.replace("{M}", mark)
    with connect(gw.port) as sock:
        sock.sendall(get(target))
        resp = Reader(sock).response()
    if forwarded == "/":  # climbed to the root, which no route serves
        assert resp.status == 404 and resp.header(b"x-backend") is None, resp
        assert_unseen(app, mark)
        return
    assert resp.status == 200, resp
    assert resp.json()["target"] == forwarded


@pytest.mark.parametrize("target", [
    "/public/../admin/{M}", "/public/%2e%2e/admin/{M}", "/public/./../../admin/{M}", "/a/../../etc/{M}",
])
def test_dot_segments_never_escape_into_another_path(gw, app, target):
    """``/public/*`` is routed; ``..`` out of it lands on a path no route serves (404 from
    the gateway), and the backend never sees the escaped spelling."""
    mark = marker()
    with connect(gw.port) as sock:
        sock.sendall(get(target.replace("{M}", mark)))
        resp = Reader(sock).response()
    assert resp.status_line == b"HTTP/1.1 404 Not Found", resp
    assert resp.header(b"x-backend") is None and resp.json()["status"] == 404, resp
    assert_unseen(app, mark)


def test_absolute_form_authority_replaces_host(gw, app):
    """RFC 9112 §3.2.2: the authority wins over Host, and the Host forwarded is the one
    routed on (never the client's other Host)."""
    mark = marker()
    with connect(gw.port) as sock:
        sock.sendall(f"GET http://Api.Example:8080/echo/{mark}?x=1 HTTP/1.1\r\nHost: other.test\r\n\r\n"
                     .encode())
        resp = Reader(sock).response()
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["target"] == f"/echo/{mark}?x=1"
    assert [v for n, v in echo["headers"] if n == "host"] == ["Api.Example:8080"]
    assert [v for n, v in echo["headers"] if n == "x-forwarded-host"] == ["Api.Example:8080"]


# -- pipelining ----------------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(gw, app):
    mark = marker()
    with connect(gw.port) as sock:
        sock.sendall(get(f"/slow?ms=200&m={mark}") + get(f"/echo/{mark}?i=2")
                     + get(f"/echo/{mark}?i=3", b"Connection: close\r\n"))
        reader = Reader(sock)
        first, second, third = reader.response(), reader.response(), reader.response()
        assert (first.status, first.body) == (200, b"slow done"), first
        assert second.status == 200 and second.json()["target"] == f"/echo/{mark}?i=2", second
        assert third.status == 200 and third.json()["target"] == f"/echo/{mark}?i=3", third
        assert first.header(b"connection") is None and second.header(b"connection") is None
        assert third.header(b"connection") == b"close"
        assert_closed(reader)


BAD_FOLLOWERS = [
    ("space_before_colon", b"GET /echo/{M}-bad HTTP/1.1\r\nHost: gw.test\r\nX-A : b\r\n\r\n", 400),
    ("missing_host", b"GET /echo/{M}-bad HTTP/1.1\r\n\r\n", 400),
    ("cl_and_te", b"POST /echo/{M}-bad HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("http20", b"GET /echo/{M}-bad HTTP/2.0\r\nHost: gw.test\r\n\r\n", 505),
    ("invalid_chunk_size", b"POST /echo/{M}-bad HTTP/1.1\r\nHost: gw.test\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("header_20k", b"GET /echo/{M}-bad HTTP/1.1\r\nHost: gw.test\r\nX-Big: " + BIG + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize("bad,status", [pytest.param(b, s, id=i) for i, b, s in BAD_FOLLOWERS])
@pytest.mark.parametrize("good", [
    pytest.param("slow", id="after_slow_get"),
    pytest.param("post", id="after_post"),
    pytest.param("two", id="after_two_gets"),
])
def test_pipelined_malformed_after_good(gw, app, good, bad, status):
    """The good requests are answered first (keep-alive framing), then the refusal, then
    the close; the malformed one never reaches the backend, not even as a head."""
    mark = marker()
    goods = {
        "slow": [get(f"/slow?ms=200&m={mark}")],
        "post": [f"POST /echo/{mark}-ok HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\r\nabc".encode()],
        "two": [get(f"/slow?ms=100&m={mark}"), get(f"/echo/{mark}-ok")],
    }[good]
    with connect(gw.port) as sock:
        sock.sendall(b"".join(goods) + bad.replace(b"{M}", mark.encode()))
        reader = Reader(sock)
        for _ in goods:
            resp = reader.response()
            assert resp.status == 200 and resp.header(b"x-backend") == b"framing", resp
            assert resp.header(b"connection") is None, resp
        assert_refusal(reader.response(), status)
        assert_closed(reader)
    assert_unseen(app, f"{mark}-bad")
    assert len(app.completed(mark)) == len(goods)


# -- bodies: limits, expectations, deadlines -----------------------------------------------------


def test_chunked_body_over_max_body_bytes_mid_stream(gw, app):
    """413 when the chunks pass max_body_bytes (1 KiB), not a hang, and a close; the
    backend may have had part of the body but never a whole request."""
    mark = marker()
    with connect(gw.port) as sock:
        sock.sendall(f"POST /echo/{mark} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     .encode())
        started = time.monotonic()
        for _ in range(3):  # 3 x 512 bytes > 1 KiB
            time.sleep(0.05)
            sock.sendall(b"200\r\n" + b"x" * 512 + b"\r\n")
        reader = Reader(sock)
        assert_refusal(reader.response(), 413)
        assert time.monotonic() - started < IDLE_TIMEOUT, "answered by a timeout, not the limit"
        assert_closed(reader)
    time.sleep(0.1)
    assert app.completed(mark) == []


def test_content_length_body_exactly_at_the_limit_passes(gw, app):
    body = b"b" * 1024
    with connect(gw.port) as sock:
        sock.sendall(b"POST /echo/at-limit HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1024\r\n\r\n" + body)
        resp = Reader(sock).response()
    assert resp.status == 200 and resp.json()["body_len"] == 1024, resp


def test_expect_100_continue(gw, app):
    mark = marker()
    with connect(gw.port) as sock:
        sock.sendall(f"POST /echo/{mark} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        reader = Reader(sock)
        interim = reader.response()
        assert interim.status_line == b"HTTP/1.1 100 Continue" and interim.headers == [], interim
        assert reader.buf == b""
        sock.sendall(b"abc")
        resp = reader.response()
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["body_len"] == 3
    assert "expect" not in [n for n, _ in echo["headers"]]


def test_body_not_received_in_time_is_408(gw, app):
    mark = marker()
    with connect(gw.port) as sock:
        sock.sendall(f"POST /echo/{mark} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n0123456789"
                     .encode())
        started = time.monotonic()
        reader = Reader(sock)
        assert_refusal(reader.response(), 408)
        assert IDLE_TIMEOUT - 0.1 <= time.monotonic() - started <= IDLE_TIMEOUT + 1.0
        assert_closed(reader)
    assert app.completed(mark) == []


# -- slowloris, idle and the connection limit ------------------------------------------------


def test_slowloris_head_trickled_is_408_within_header_timeout(gw, app):
    mark = marker()
    head = get(f"/echo/{mark}", b"X-Slow: " + b"s" * 200 + b"\r\n")
    with connect(gw.port) as sock:
        sock.settimeout(0.05)
        started = time.monotonic()
        got = b""
        for byte in head[:-2]:  # one byte every 50 ms, never complete
            if time.monotonic() - started > HEADER_TIMEOUT + 2:
                break
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            try:
                got = sock.recv(65536)
            except socket.timeout:
                continue
            break
        elapsed = time.monotonic() - started
        assert got, "nothing answered while the head trickled"
        sock.settimeout(3.0)
        reader = Reader(sock)
        reader.buf = got
        assert_refusal(reader.response(), 408)
        assert HEADER_TIMEOUT - 0.1 <= elapsed <= HEADER_TIMEOUT + 1.0, elapsed
        assert_closed(reader)
    assert_unseen(app, mark)


def test_connection_sending_nothing_is_closed_silently(gw):
    with connect(gw.port) as sock:
        started = time.monotonic()
        reader = Reader(sock)
        assert_closed(reader, timeout=HEADER_TIMEOUT + 1.0)
        assert time.monotonic() - started >= HEADER_TIMEOUT - 0.1


def test_idle_keepalive_connection_closed_after_idle_timeout(gw, app):
    with connect(gw.port) as sock:
        reader = Reader(sock)
        sock.sendall(get("/echo/idle-1"))
        assert reader.response().status == 200
        time.sleep(IDLE_TIMEOUT / 2)  # still within idle_timeout: kept alive
        sock.sendall(get("/echo/idle-2"))
        resp = reader.response()
        assert resp.status == 200 and resp.header(b"connection") is None, resp
        started = time.monotonic()
        assert_closed(reader, timeout=IDLE_TIMEOUT + 1.0)
        assert time.monotonic() - started >= IDLE_TIMEOUT - 0.1


def test_max_connections_closes_the_extra_one_at_once(limited_gw, app):
    port = limited_gw.port
    socks = [connect(port) for _ in range(5)]
    readers = [Reader(s) for s in socks]
    try:
        for i, (s, r) in enumerate(zip(socks, readers)):
            s.sendall(get(f"/echo/conn-{i}"))
            assert r.response().status == 200
        with connect(port) as extra:
            started = time.monotonic()
            assert_closed(Reader(extra), timeout=1.0)
            assert time.monotonic() - started < 0.5
        for i, (s, r) in enumerate(zip(socks, readers)):  # the first five still work
            s.sendall(get(f"/echo/conn-{i}-again"))
            assert r.response().status == 200
        socks.pop().close()
        readers.pop()
        # A freed slot is taken again (once the gateway has seen the close).
        deadline = time.monotonic() + 2.0
        while True:
            with connect(port) as again:
                again.sendall(get("/echo/conn-freed"))
                try:
                    resp = Reader(again).response()
                    break
                except (EOFError, ConnectionResetError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        assert resp.status == 200, resp
    finally:
        for s in socks:
            s.close()


# -- llhttp: never loosened, and its defaults pinned ---------------------------------------------


def test_vendored_llhttp_is_the_release_httptools_carries():
    """The front end parses with vendor/llhttp, the upstream side and the admin server with
    httptools' copy: one release, so that the pins below hold for both. Upgrading
    httptools means vendoring its llhttp again (vendor/llhttp/README.md)."""
    from importlib.metadata import version

    header = (ROOT / "vendor" / "llhttp" / "include" / "llhttp.h").read_text()
    vendored = ".".join(re.search(rf"#define LLHTTP_VERSION_{part} (\d+)", header).group(1)
                        for part in ("MAJOR", "MINOR", "PATCH"))
    assert (version("httptools"), vendored) == ("0.9.0", "9.4.3")


def test_no_llhttp_leniency_is_ever_set():
    """Each llhttp leniency flag re-opens a request smuggling class; fastgw sets none
    (neither through httptools nor on its own parser: ``llhttp_set_lenient_*``)."""
    offenders = []
    for path in sorted((ROOT / "fastgw").rglob("*")):
        if path.suffix in (".py", ".pyx", ".pxd") and (
                b"set_dangerous_leniencies" in path.read_bytes() or b"set_lenient" in path.read_bytes()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


class _Sink:
    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


LLHTTP_REFUSES = [
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x00\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.32\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
]
# What llhttp lets through and fastgw must refuse itself (so the checks above are ours).
LLHTTP_ACCEPTS = [
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X%d: v\r\n" % i for i in range(2001)) + b"\r\n",
]


@pytest.mark.parametrize("raw", LLHTTP_REFUSES, ids=range(len(LLHTTP_REFUSES)))
def test_llhttp_still_refuses(raw):
    """Pinned: a httptools upgrade that loosens any of these fails here."""
    parser = httptools.HttpRequestParser(_Sink())
    with pytest.raises(httptools.HttpParserError):
        parser.feed_data(raw)


@pytest.mark.parametrize("raw", LLHTTP_ACCEPTS, ids=range(len(LLHTTP_ACCEPTS)))
def test_llhttp_still_accepts_what_we_check(raw):
    sink = _Sink()
    httptools.HttpRequestParser(sink).feed_data(raw)
    assert sink.complete == 1


# -- mutated requests: whatever the bytes, answers or a close, never a crash ----------------------

FUZZ_BASES = [
    b"GET /echo/f?x=1&y=%20 HTTP/1.1\r\nHost: gw.test\r\nUser-Agent: f\r\nAccept: */*\r\n\r\n",
    b"POST /echo/f HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo/f HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\n\r\n",
    b"GET http://gw.test/public/f HTTP/1.1\r\nHost: other.test\r\nCookie: a=1; b=2\r\n\r\n",
    b"GET /echo/f HTTP/1.0\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\r\n",
    b"POST /echo/f HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /public/a/../b/./c//d HTTP/1.1\r\nHost: gw.test:80\r\nConnection: keep-alive\r\n\r\n",
]
FUZZ_PIECES = [
    b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x7f", b"\x80", b"\xff", b"\xc3\xa9", b"%", b"%00",
    b"%2e%2e/", b"//", b"?", b"#", b";", b"X" * 300, b"Content-Length: 3\r\n", b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n", b"Host: second.test\r\n",
    b"Connection: close\r\n", b"Connection: Upgrade\r\nUpgrade: websocket\r\n", b"Expect: 100-continue\r\n",
    b" folded\r\n", b"0\r\n\r\n", b"ffffffffffffffffff\r\n", b"x-long: " + b"v" * 5000 + b"\r\n",
    b"GET /echo/p HTTP/1.1\r\nHost: gw.test\r\n\r\n", b"HTTP/1.1",
]
# every status a request can get here: 100 to an Expect; forwarded (200 from /echo, 404
# for a path the backend or the table lacks); refused by llhttp or by us (the table at
# the top of this module); 408 for a head still arriving. Never a 500, nor a 502: the
# backend (h11, stricter than llhttp) must accept whatever the gateway forwards.
FUZZ_STATUSES = {100, 200, 400, 404, 405, 408, 413, 414, 417, 431, 501, 505}
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def _send_and_read(port: int, data: bytes, cuts: list[int]) -> bytes:
    """``data`` in pieces at ``cuts``; then what comes back until the gateway closes, or
    0.3 s pass quietly after an answer, or 3 s (past header_timeout) without one."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
        try:
            start = 0
            for cut in [*cuts, len(data)]:
                sock.sendall(data[start:cut])
                start = cut
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused part-way: what it answered is still read below
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                if got:
                    break
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return got


def test_mutated_requests_get_answers_never_a_crash(gw, app):
    """300 requests made from valid ones by bytes inserted, deleted and changed, lines
    repeated and requests pipelined, sent whole or in pieces, 10 at a time; seeded, so a
    failure replays. Each gets well-formed HTTP/1.1 answers with a status of the table
    above, or a close, never a 500 or a 502; the worker serving the first serves the last
    (the request side in C never crashed it); and a plain request still works after."""
    rng = random.Random(20261201)
    cases = []
    for _ in range(300):
        base = rng.choice(FUZZ_BASES)
        data = mutated(rng, base, FUZZ_PIECES, followers=FUZZ_BASES) if rng.random() < 0.9 else base
        cuts = sorted(rng.sample(range(len(data) + 1), min(2, len(data) + 1))) if rng.random() < 0.3 else []
        cases.append((data, cuts))
    workers = children(gw.proc.pid)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda case: _send_and_read(gw.port, *case), cases))
    seen = set()
    for (data, _), got in zip(cases, answers):
        assert got == b"" or got.startswith(b"HTTP/1.1 "), (data, got[:300])
        statuses = {int(s) for s in STATUS_LINE.findall(got)}
        assert statuses <= FUZZ_STATUSES, (data, got[:600])
        seen |= statuses
    assert {200, 400} <= seen, seen  # the mutations left some requests whole, and broke others
    assert children(gw.proc.pid) == workers
    with connect(gw.port) as sock:
        sock.sendall(get("/echo/after-the-mutations"))
        assert Reader(sock).response().status == 200


def test_no_internal_error_was_logged(gw):
    """After everything above, the gateway logged no traceback (no 500 from a bug)."""
    assert "Traceback" not in gw.stderr, gw.stderr[-4000:]


def test_an_idle_connection_keeps_little_state():
    """`make bench-memory` measures ~1.5 KiB per idle keep-alive connection, ~1.2 of it
    uvloop's own (its transport and libuv's handle). fastgw's part is the connection
    object: what a request being read needs (llhttp's state, the head's fields, the
    target) lives in a reader dropped between requests, and what every connection of a
    worker shares (the proxy, the limits) in one context. A field added to the
    connection shows here before it shows in RSS."""
    import gc

    from fastgw.protocols.http1 import HTTP1Connection, _RequestReader

    assert HTTP1Connection.__basicsize__ <= 224, HTTP1Connection.__basicsize__
    assert _RequestReader.__basicsize__ >= 96 + 64  # llhttp's state and the field blocks
    assert not gc.is_tracked(_RequestReader.__new__(_RequestReader))  # made per request: no GC work
