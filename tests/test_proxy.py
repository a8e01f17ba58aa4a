"""End to end through a real gateway process: what reaches the upstream, what comes
back, and the error answers (the README's "What it does with a request" and its refusals).

One gateway serves the whole module (routes below); the tests that need other settings
start their own.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.backend import Backend
from tests.conftest import Gateway, config_for, free_port, mutated, raw_request
from tests.test_server import children

ROUTES = """
[[routes]]
name = "users"
paths = ["/users", "/users/{id}"]
methods = ["GET", "POST"]
upstream = "main"

[[routes]]
name = "profile"
paths = ["/profile/{id}/{part}"]
upstream = "main"
rewrite = "/echo/users/{id}/{part}"

[[routes]]
name = "api"
paths = ["/api/*"]
upstream = "main"
strip_prefix = "/api"

[[routes]]
name = "v2"
paths = ["/api/*"]
headers = { "x-api-version" = "2" }
upstream = "other"
strip_prefix = "/api"

[[routes]]
name = "admin"
hosts = ["admin.example.com"]
paths = ["/*"]
upstream = "other"

[[routes]]
name = "wild"
hosts = ["*.tenants.example.com"]
paths = ["/*"]
upstream = "other"

[[routes]]
name = "weighted"
paths = ["/weighted/*"]
upstream = "pair"
strip_prefix = "/weighted"

[[routes]]
name = "dead"
paths = ["/dead/*"]
upstream = "dead"

[[routes]]
name = "deadline"
paths = ["/deadline/*"]
upstream = "main"
strip_prefix = "/deadline"
timeout = "500ms"

[[routes]]
name = "rest"
paths = ["/*"]
upstream = "main"
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    main, other, a, b = Backend("main"), Backend("other"), Backend("a"), Backend("b")
    dead_port = free_port()
    port = free_port()
    toml = f"""
[server]
listen = ["127.0.0.1:{port}"]
trusted_proxies = ["10.0.0.0/8"]

[log]
access = "stdout"

[upstreams.main]
targets = ["{main.address}"]
read_timeout = "1s"

[upstreams.other]
targets = ["{other.address}"]

[upstreams.pair]
targets = ["{a.address}", {{ address = "{b.address}", weight = 3 }}]

[upstreams.dead]
targets = ["127.0.0.1:{dead_port}"]
{ROUTES}"""
    gw = Gateway(tmp_path_factory.mktemp("gw"), toml, port).start()
    client = httpx.Client(base_url=gw.url, timeout=10)
    yield {"gw": gw, "main": main, "other": other, "a": a, "b": b, "client": client}
    client.close()
    gw.stop()
    for backend in (main, other, a, b):
        backend.close()


def echo(world, path: str, **kw) -> tuple[httpx.Response, dict]:
    r = world["client"].request(kw.pop("method", "GET"), path, **kw)
    assert r.status_code == 200, r.text
    return r, r.json()


def headers_of(info: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in info["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


# -- routing ------------------------------------------------------------------------------------


def test_param_route_and_methods(world):
    r = world["client"].get("/users/7")
    assert r.status_code == 404 and r.headers["x-backend"] == "main"  # reached the backend
    assert world["main"].seen[-1]["target"] == "/users/7"
    # DELETE is not allowed on "users", so the request falls to the less specific
    # catch-all "rest", which takes any method (405 only when no route takes it).
    r = world["client"].delete("/users/7")
    assert r.status_code == 404 and r.headers["x-backend"] == "main"


def test_rewrite_with_params_keeps_query(world):
    _, info = echo(world, "/profile/42/avatar?size=big&x=%20y")
    assert info["target"] == "/echo/users/42/avatar?size=big&x=%20y"


def test_strip_prefix(world):
    _, info = echo(world, "/api/echo/orders?id=3")
    assert info["target"] == "/echo/orders?id=3"


def test_header_condition_picks_the_more_specific_route(world):
    r, _ = echo(world, "/api/echo/x", headers={"x-api-version": "2"})
    assert r.headers["x-backend"] == "other"
    r, _ = echo(world, "/api/echo/x", headers={"x-api-version": "3"})
    assert r.headers["x-backend"] == "main"


def test_host_routes_exact_and_wildcard(world):
    r, _ = echo(world, "/echo/h", headers={"host": "ADMIN.example.com:8080"})
    assert r.headers["x-backend"] == "other"
    r, _ = echo(world, "/echo/h", headers={"host": "acme.tenants.example.com"})
    assert r.headers["x-backend"] == "other"
    r, _ = echo(world, "/echo/h", headers={"host": "tenants.example.com"})
    assert r.headers["x-backend"] == "main"


def test_404_and_405_when_nothing_takes_the_request(backend, gateway):
    toml, port = config_for(backend, routes='''
        [[routes]]
        name = "only"
        paths = ["/only/{id}"]
        methods = ["GET", "POST"]
        upstream = "app"
        [[routes]]
        name = "put"
        paths = ["/only/{id}"]
        methods = ["PUT"]
        upstream = "app"
        ''')
    gw = gateway(toml, port)
    r = httpx.delete(gw.url + "/only/7")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD, POST, PUT"  # HEAD wherever GET is
    assert r.json() == {"error": "method not allowed", "status": 405, "request_id": r.headers["x-request-id"]}
    r = httpx.get(gw.url + "/elsewhere")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "no route", "status": 404, "request_id": r.headers["x-request-id"]}
    assert backend.requests == 0


def test_head_is_served_wherever_get_is(backend, gateway):
    # As nginx: a route for GET takes HEAD too, and the upstream gets it as HEAD; a route
    # without GET still answers HEAD with 405, its Allow unchanged.
    toml, port = config_for(backend, routes='''
        [[routes]]
        name = "read"
        paths = ["/read/*"]
        methods = ["GET"]
        upstream = "app"
        strip_prefix = "/read"
        [[routes]]
        name = "write"
        paths = ["/write/*"]
        methods = ["POST"]
        upstream = "app"
        ''')
    gw = gateway(toml, port)
    answer = raw_request(port, b"HEAD /read/big?bytes=123 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, sep, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    fields = {name.lower(): value for name, _, value in (f.partition(": ") for f in fields)}
    assert (status_line, sep, body) == ("HTTP/1.1 200 OK", b"\r\n\r\n", b""), answer
    assert (fields["content-length"], fields["x-backend"]) == ("123", "b1")  # the upstream's length, no body
    assert [(seen["method"], seen["target"]) for seen in backend.seen] == [("HEAD", "/big?bytes=123")]
    r = httpx.head(gw.url + "/write/echo")
    assert (r.status_code, r.headers["allow"]) == (405, "POST")
    r = httpx.get(gw.url + "/read/echo")
    assert r.status_code == 200 and r.json()["method"] == "GET"
    assert backend.requests == 2  # the 405 never went upstream


def test_normalised_path_is_what_routes_and_what_goes_upstream(world):
    _, info = echo(world, "/api/x/../echo/./a//b/%7Euser")
    assert info["target"] == "/echo/a/b/~user"


def test_weighted_round_robin_honours_weights(world):
    seen = {"a": 0, "b": 0}
    for _ in range(40):
        r = world["client"].get("/weighted/echo")
        seen[r.headers["x-backend"]] += 1
    assert seen == {"a": 10, "b": 30}


# -- what the upstream receives -------------------------------------------------------------------


def test_forwarded_headers_replace_untrusted_ones(world):
    _, info = echo(world, "/echo", headers={
        "x-forwarded-for": "6.6.6.6", "x-forwarded-proto": "https", "x-forwarded-host": "evil",
        "forwarded": "for=6.6.6.6", "x-real-ip": "6.6.6.6"})
    h = headers_of(info)
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == [f"127.0.0.1:{world['gw'].port}"]
    assert "forwarded" not in h and "x-real-ip" not in h


def test_hop_by_hop_headers_are_not_forwarded(world):
    raw = raw_request(world["gw"].port, (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: basic x\r\n"
        b"Upgrade: websocket\r\nX-Kept: yes\r\n\r\n"))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    h = headers_of(json.loads(body))
    for name in ("connection", "x-secret", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in h, name
    assert h["x-kept"] == ["yes"]


def test_request_id_kept_when_sane_made_when_not(world):
    r, info = echo(world, "/echo", headers={"x-request-id": "client-abc.123"})
    assert r.headers["x-request-id"] == "client-abc.123"
    assert headers_of(info)["x-request-id"] == ["client-abc.123"]
    r, info = echo(world, "/echo", headers={"x-request-id": "bad id with spaces"})
    made = r.headers["x-request-id"]
    assert made != "bad id with spaces" and re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", made)
    assert headers_of(info)["x-request-id"] == [made]


def test_traceparent_passed_on_or_started(world):
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    _, info = echo(world, "/echo", headers={"traceparent": tp})
    assert headers_of(info)["traceparent"] == [tp]
    _, info = echo(world, "/echo", headers={"traceparent": "garbage"})
    started = headers_of(info)["traceparent"][0]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", started)


def test_framing_is_written_by_the_gateway(world):
    # A chunked request body is re-framed, never copied: the upstream sees one coding.
    raw = raw_request(world["gw"].port, (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"))
    info = json.loads(raw.partition(b"\r\n\r\n")[2])
    h = headers_of(info)
    assert info["body_len"] == 11
    assert h["transfer-encoding"] == ["chunked"] and "content-length" not in h


# -- bodies both ways ---------------------------------------------------------------------------------


def test_large_bodies_stream_both_ways(world):
    payload = bytes(range(256)) * 8192  # 2 MiB
    _, info = echo(world, "/echo", method="POST", content=payload)
    import hashlib
    assert info["body_len"] == len(payload)
    assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()

    def gen():
        for i in range(64):
            yield bytes([i]) * 4096
    _, info = echo(world, "/echo", method="PUT", content=gen())
    assert info["body_len"] == 64 * 4096
    r = world["client"].get("/big", params={"bytes": 5_000_000})
    assert r.status_code == 200 and len(r.content) == 5_000_000
    assert r.headers["content-length"] == "5000000"


def test_chunked_and_close_delimited_responses(world):
    r = world["client"].get("/chunked", params={"n": 4, "size": 3})
    assert r.content == b"aaabbbcccddd"
    assert r.headers["transfer-encoding"] == "chunked"
    r = world["client"].get("/eof", params={"bytes": 7000})
    assert r.content == b"e" * 7000


def test_head_and_no_body_statuses(world):
    r = world["client"].head("/big", params={"bytes": 123})
    assert r.status_code == 200 and r.headers["content-length"] == "123" and r.content == b""
    r = world["client"].get("/status/204")
    assert r.status_code == 204 and r.content == b""
    # The connection is still usable after both (the HEAD response had no body).
    r = world["client"].get("/echo")
    assert r.status_code == 200


def test_slow_client_reading_does_not_break_the_stream(world):
    """Backpressure: a client that reads slowly still gets every byte, in order."""
    with socket.create_connection(("127.0.0.1", world["gw"].port), timeout=10) as s:
        s.sendall(b"GET /big?bytes=4000000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = 0
        chunks = []
        while True:
            data = s.recv(16384)
            if not data:
                break
            chunks.append(data)
            got += len(data)
            if got < 1_000_000:
                time.sleep(0.005)  # ~1 s of slow reading: the gateway must pause the upstream
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == 4_000_000


def dechunk(raw: bytes) -> tuple[list[bytes], bytes]:
    """The chunks of a chunked body at the start of ``raw``, and the bytes after it."""
    chunks = []
    while True:
        line, _, raw = raw.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            assert raw.startswith(b"\r\n"), raw[:40]
            return chunks, raw[2:]
        chunks.append(raw[:size])
        assert raw[size:size + 2] == b"\r\n", (len(chunks), raw[size:size + 40])
        raw = raw[size + 2:]


def test_responses_after_a_slowly_read_one_wait_their_turn(world):
    """Bytes are written to the socket at once, but never ahead of bytes a slow client
    left in the transport: a response of many pieces read in small bites, then the
    responses pipelined after it, each whole and in order."""
    n, size = 8000, 997
    smalls = b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(4))
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills and opens often
        s.settimeout(10)
        s.connect(("127.0.0.1", world["gw"].port))
        s.sendall(b"GET /chunked?n=%d&size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (n, size) + smalls
                  + b"GET /echo/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = bytearray()
        while data := s.recv(2048):
            raw += data
    head, _, rest = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
    chunks, after = dechunk(rest)
    body = b"".join(chunks)
    assert body == b"".join(bytes([97 + i % 26]) * size for i in range(n))
    assert after.startswith(b"HTTP/1.1 200"), after[:200]
    assert re.findall(rb'"path": "([^"]+)"', after) == [b"/echo/0", b"/echo/1", b"/echo/2", b"/echo/3", b"/echo/last"]


ONE_ONE = b"GET /chunked?n=2&size=4 HTTP/1.1\r\nHost: x\r\n\r\n"
ONE_ZERO = b"GET /chunked?n=2&size=4 HTTP/1.0\r\n\r\n"


@pytest.mark.parametrize("reads", [
    [ONE_ONE + ONE_ZERO],                  # pipelined in the same bytes
    [ONE_ONE + ONE_ZERO[:-2], b"\r\n"],    # the second head ends in the next read
    [ONE_ONE, ONE_ZERO],                   # each in its own read
])
def test_each_request_has_its_own_version(world, reads):
    """HTTP/1.1 is read from the request line of a head that begins the bytes read, as a
    shortcut; an HTTP/1.0 request after an HTTP/1.1 one with the same line otherwise is
    still HTTP/1.0: served without Host, without chunking, and closed after."""
    with socket.create_connection(("127.0.0.1", world["gw"].port), timeout=5) as sock:
        for data in reads:
            sock.sendall(data)
            time.sleep(0.1)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert raw.count(b"HTTP/1.1 200") == 2, raw
    first, _, last = raw.partition(b"HTTP/1.1 200")[2].partition(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in first.lower()
    head, _, body = last.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower() and b"transfer-encoding" not in head.lower()
    assert body == b"aaaabbbb"


def test_bytes_beyond_content_length_are_dropped_with_the_connection(make_backend, gateway):
    """An upstream that sends more than its Content-Length (here a forged second response
    in the same bytes): the client gets what was announced and nothing of the rest, and
    the next request is served on a connection of its own."""
    backend = make_backend("extra")
    toml, port = config_for(backend)
    gw = gateway(toml, port)
    with httpx.Client(base_url=gw.url) as c:
        first = c.get("/extra")
        assert (first.status_code, first.content) == (200, b"ok")
        second = c.get("/echo/next")
        assert second.status_code == 200 and second.json()["path"] == "/echo/next"
    assert backend.connections == 2


def test_http10_client(world):
    raw = raw_request(world["gw"].port, b"GET /chunked?n=2&size=4 HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"aaaabbbb"


def test_keepalive_and_pooling(world):
    before = world["other"].connections
    with httpx.Client(base_url=world["gw"].url) as c:
        for _ in range(20):
            assert c.get("/echo", headers={"host": "admin.example.com"}).status_code == 200
    # 20 requests over one pooled upstream connection (maybe one more, never twenty).
    assert world["other"].connections - before <= 2


def test_pipelined_requests_answered_in_order(world):
    reqs = b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    raw = raw_request(world["gw"].port, reqs + b"GET /echo/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    paths = re.findall(rb'"path": "([^"]+)"', raw)
    assert paths == [b"/echo/0", b"/echo/1", b"/echo/2", b"/echo/3", b"/echo/4", b"/echo/last"]


# -- upstream failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path, status", [
    ("/dead/x", 502),            # nothing listens
    ("/garbage", 502),           # not HTTP
    ("/reset", 502),             # closed without answering
    ("/badchunk", 502),          # a good head, then a broken chunk in the same read: nothing had gone out
    ("/hang", 504),              # read_timeout = 1s
    ("/deadline/slow?ms=3000", 504),  # route timeout = 500ms
])
def test_upstream_failures_map_to_json_errors(world, path, status):
    r = world["client"].get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == status and body["request_id"] == r.headers["x-request-id"]


RESPONSE_BASES = [
    b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n5;x=y\r\nhello\r\n3\r\nabc\r\n0\r\nT: t\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclose-delimited body",
    b"HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 1\r\n\r\nx",
]
RESPONSE_PIECES = [
    b"\r\n", b"\n", b"\r", b" ", b":", b"\x00", b"\xff", b"Content-Length: 3\r\n", b"Content-Length: 99\r\n",
    b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n", b"Upgrade: x\r\n", b"0\r\n\r\n", b"fffffffffffff\r\n", b"X" * 300,
    b"h: " + b"v" * 9000 + b"\r\n", b"HTTP/1.1 200 OK\r\n",
]


class MutatingBackend:
    """A raw backend answering each request head with the next of ``answers`` (bytes;
    whether to close after it; whether to write it in two pieces)."""

    def __init__(self, answers: list[tuple[bytes, bool, bool]]) -> None:
        self.answers, self.next = answers, 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf.split(b"\r\n\r\n", 1)[1]
                with self.lock:
                    answer, close, in_two = self.answers[self.next % len(self.answers)]
                    self.next += 1
                if in_two and len(answer) > 1:
                    cut = len(answer) // 2
                    conn.sendall(answer[:cut])
                    time.sleep(0.005)
                    answer = answer[cut:]
                conn.sendall(answer)
                if close:
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_mutated_upstream_responses_get_relayed_or_a_502(gateway):
    """300 requests to a backend answering responses made from valid ones by bytes
    inserted, deleted and changed and lines repeated, whole or in two writes, keeping the
    connection or closing it; seeded, so a failure replays. Every client gets a
    well-formed HTTP/1.1 answer, never an empty reply for a broken one; fastgw's own
    errors are only 502 and 504, never a 500 of a bug; the same worker serves throughout
    (the response-head scan in C never crashed it)."""
    rng = random.Random(20261201)
    answers = []
    for _ in range(300):
        base = rng.choice(RESPONSE_BASES)
        answers.append((mutated(rng, base, RESPONSE_PIECES, edits=3) if rng.random() < 0.9 else base,
                        rng.random() < 0.5, rng.random() < 0.3))
    backend = MutatingBackend(answers)
    try:
        toml, port = config_for({"app": backend}, log='access = "off"', upstream_extra='read_timeout = "1s"\n')
        gw = gateway(toml, port)
        workers = children(gw.proc.pid)

        def one(method: bytes) -> bytes:
            return raw_request(port, method + b" /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3)

        methods = [b"HEAD" if rng.random() < 0.1 else b"GET" for _ in range(300)]
        with ThreadPoolExecutor(10) as pool:
            replies = list(pool.map(one, methods))
        errors = set()
        for got in replies:
            assert re.match(rb"HTTP/1\.1 \d{3} ", got), got[:300]
            if b'"request_id":' in got:  # one of fastgw's own JSON errors
                errors.add(int(re.search(rb'"status":(\d+)', got).group(1)))
        assert errors <= {502, 504}, errors
        assert 502 in errors  # the mutations did break some responses
        assert sum(got.startswith(b"HTTP/1.1 200 ") for got in replies) > 30  # and left others whole
        assert children(gw.proc.pid) == workers, gw.stderr[-3000:]
        assert "Traceback" not in gw.stderr
    finally:
        backend.close()


def test_truncated_upstream_body_cuts_the_client(world):
    raw = raw_request(world["gw"].port, b"GET /truncate?bytes=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 2000" in head.lower()
    assert len(body) == 1000  # and then the connection closed: never a body that looks complete


def test_stale_pooled_connection_is_retried_transparently(make_backend, gateway):
    backend = make_backend("stale")
    toml, port = config_for(backend)
    gw = gateway(toml, port)
    with httpx.Client(base_url=gw.url) as c:
        assert c.get("/echo").status_code == 200
        # The backend closes its side of every kept-alive connection.
        for s in list(backend.clients):
            s.shutdown(socket.SHUT_RDWR)
        time.sleep(0.1)
        assert c.get("/echo").status_code == 200


def test_concurrent_clients(world):
    errors = []

    def run():
        try:
            with httpx.Client(base_url=world["gw"].url) as c:
                for i in range(30):
                    r = c.get(f"/echo/{i}")
                    if r.status_code != 200 or r.json()["path"] != f"/echo/{i}":
                        errors.append(r.status_code)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def test_client_leaving_abandons_the_upstream_request(make_backend, gateway):
    backend = make_backend("hang")
    toml, port = config_for(backend, upstream_extra='read_timeout = "30s"\n')
    gw = gateway(toml, port)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    s.close()
    # The gateway gives up on the upstream at once (not after read_timeout) and logs 499.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in gw.access_lines]
        if lines:
            break
        time.sleep(0.05)
    assert [(x["path"], x["status"]) for x in lines] == [("/hang", 499)]
    # ... and closed that upstream connection: the backend's reader saw EOF.
    assert backend.connections == 1
    deadline = time.monotonic() + 3
    while any(c.fileno() != -1 for c in backend.clients) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(c.fileno() == -1 for c in backend.clients)


def test_trusted_proxy_forwarding_is_believed_and_appended(backend, gateway):
    toml, port = config_for(backend, server='trusted_proxies = ["127.0.0.0/8", "10.0.0.0/8"]\n')
    gw = gateway(toml, port)
    r = httpx.get(gw.url + "/echo", headers={
        "x-forwarded-for": "203.0.113.9, 10.1.2.3", "x-forwarded-proto": "https",
        "x-forwarded-host": "api.example.com", "x-real-ip": "203.0.113.9"})
    h = headers_of(r.json())
    assert h["x-forwarded-for"] == ["203.0.113.9, 10.1.2.3, 127.0.0.1"]
    assert h["x-forwarded-proto"] == ["https"]
    assert h["x-forwarded-host"] == ["api.example.com"]
    assert h["x-real-ip"] == ["203.0.113.9"]
    # The client is the right-most address that is not a trusted proxy.
    deadline = time.monotonic() + 3
    while not gw.access_lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(gw.access_lines[-1])["client_ip"] == "203.0.113.9"


def _worker_rss_kib(gateway_pid: int) -> int:
    # The supervisor listens before it forks: the port answers before the worker exists.
    deadline = time.monotonic() + 5
    while not (children := open(f"/proc/{gateway_pid}/task/{gateway_pid}/children").read().split()):
        assert time.monotonic() < deadline, "the gateway started no worker"
        time.sleep(0.02)
    for line in open(f"/proc/{children[0]}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_upload_to_a_slow_upstream_is_not_buffered(gateway):
    """Backpressure on the request side: a client uploading 64 MiB to an upstream that
    reads 256 KiB every 10 ms is slowed down; the gateway never holds the body."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    upstream_port = listener.getsockname()[1]
    received = []

    def slow_upstream():
        conn, _ = listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        total, head = 0, b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        total = len(head.partition(b"\r\n\r\n")[2])
        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
        while total < length:
            data = conn.recv(262144)
            if not data:
                break
            total += len(data)
            time.sleep(0.01)
        received.append(total)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        conn.close()

    threading.Thread(target=slow_upstream, daemon=True).start()
    port = free_port()
    gw = gateway(f"""
[server]
listen = ["127.0.0.1:{port}"]
max_body_bytes = "100MiB"
[log]
access = "off"
[upstreams.slow]
targets = ["127.0.0.1:{upstream_port}"]
read_timeout = "30s"
[[routes]]
name = "upload"
paths = ["/*"]
upstream = "slow"
""", port)
    before = _worker_rss_kib(gw.proc.pid)
    size = 64 * 1024 * 1024
    peak = [before]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _worker_rss_kib(gw.proc.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"u" * 1048576
        for _ in range(64):
            s.sendall(chunk)
        answer = s.recv(65536)
    done.set()
    watcher.join(2)
    listener.close()
    assert answer.startswith(b"HTTP/1.1 200") and received == [size]
    # A held body would be 64 MiB; socket buffers and one read's worth are all we allow.
    assert (peak[0] - before) < 16 * 1024, f"worker RSS grew by {(peak[0] - before) // 1024} MiB"


def test_keepalive_zero_keeps_no_upstream_connection(make_backend, gateway):
    backend = make_backend("nokeep")
    toml, port = config_for(backend, upstream_extra="keepalive = 0\n")
    gw = gateway(toml, port)
    with httpx.Client(base_url=gw.url) as c:
        for _ in range(5):
            assert c.get("/echo").status_code == 200
    assert backend.connections == 5  # one upstream connection per request, none pooled


def test_idle_connections_beyond_keepalive_are_closed_once_unused(make_backend, gateway):
    """keepalive = 2: a burst of 8 concurrent requests opens 8 upstream connections; once
    they stay unused, the sweeper closes all but the 2 most recently used (and the next
    requests reuse those two, opening nothing)."""
    backend = make_backend("trim")
    toml, port = config_for(backend, upstream_extra="keepalive = 2\n")
    gw = gateway(toml, port)

    def fetch(_):
        with httpx.Client(base_url=gw.url) as c:
            return c.get("/slow?ms=300").status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(fetch, range(8))) == [200] * 8
    assert backend.connections == 8
    deadline = time.monotonic() + 5
    while backend.open > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.open == 2
    with httpx.Client(base_url=gw.url) as c:
        for _ in range(3):
            assert c.get("/echo").status_code == 200
    assert backend.connections == 8  # the two kept were reused


def test_connect_timeout_is_504(gateway):
    """An upstream whose accept queue is full never completes the handshake (loopback
    SYNs are dropped): connect_timeout ends the wait with 504."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill the backlog; the rest of the SYNs go unanswered
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(full.getsockname())
            fillers.append(f)
        time.sleep(0.2)
        port = free_port()
        gw = gateway(f"""
[server]
listen = ["127.0.0.1:{port}"]
[upstreams.full]
targets = ["127.0.0.1:{full.getsockname()[1]}"]
connect_timeout = "500ms"
[[routes]]
name = "all"
paths = ["/*"]
upstream = "full"
""", port)
        started = time.monotonic()
        r = httpx.get(gw.url + "/x", timeout=10)
        assert r.status_code == 504, r.text
        assert "timed out" in r.json()["error"]
        assert time.monotonic() - started < 5
    finally:
        for f in fillers:
            f.close()
        full.close()


def test_header_condition_ignores_the_name_case_and_takes_the_first_value(world):
    raw = raw_request(world["gw"].port, b"GET /api/echo/x HTTP/1.1\r\nHost: x\r\nX-API-Version: 2\r\n"
                      b"x-api-version: 3\r\nConnection: close\r\n\r\n")
    assert b"x-backend: other" in raw.lower()
