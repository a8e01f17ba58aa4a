"""HTTP/2 clients end to end: h2c by prior knowledge and by ``Upgrade: h2c`` on the plain
listener, h2 by ALPN on the TLS one; each stream served by the same routes, policies and
upstream pools as HTTP/1; what the front end checks before any upstream byte (pseudo-headers,
``:path`` and ``:method`` as HTTP/1 would read them, Host against ``:authority``, the
header list and body limits); flow control per stream (a stalled stream never stalls its
neighbours); GOAWAY on drain; and ``[server.http2]`` config errors.

Real clients: httpx with ``http2=True``, curl ``--http2-prior-knowledge`` / ``--http2``,
h2load; and the ``h2`` library over a raw socket where a request must be one that a
well-behaved client would never send. The hostile catalogue (floods, resets, HPACK bombs)
is tests/test_http2_hostile.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import hyperframe.frame
import pytest

from tests.conftest import config_for, free_port
from tests.test_server import wait_for
from tests.test_tls import CA, _connectable, tls_config


def h2_client(**kwargs) -> httpx.Client:
    """An httpx client speaking HTTP/2 by prior knowledge (no HTTP/1.1 at all)."""
    return httpx.Client(http1=False, http2=True, timeout=10, **kwargs)


class RawH2:
    """A raw socket speaking HTTP/2 through the ``h2`` library with its own checks of what
    it sends turned off, so that a test can send a request no polite client sends."""

    def __init__(self, port: int, settings: dict | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                           normalize_outbound_headers=False, validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.send()
        self.events: list = []

    def send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, headers: list[tuple[str, str]], body: bytes | None = None, end: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=body is None and end)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=end)
        self.send()
        return stream_id

    def read(self, until, timeout: float = 5.0) -> list:
        """Read events until ``until(events)`` holds, the peer closes, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not until(self.events) and time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not data:
                break
            self.events.extend(self.conn.receive_data(data))
            self.send()
        return self.events

    def response(self, stream_id: int, timeout: float = 5.0) -> tuple[int | None, bytes]:
        """The status and body of ``stream_id`` (None when it was reset or never answered)."""
        def ended(events):
            return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == stream_id
                       for e in events)
        events = self.read(ended, timeout)
        status, body, ended_cleanly = None, b"", False
        for event in events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamReset):
                # (a reset after a whole answer only says the rest of the request body is
                # not wanted)
                return (status, body) if status is not None and ended_cleanly else (None, body)
            elif isinstance(event, h2.events.StreamEnded):
                ended_cleanly = True
        self.send()
        return status, body

    def close(self) -> None:
        self.sock.close()


def request_headers(port: int, path: str = "/echo/raw", method: str = "GET", extra=()) -> list:
    return [(":method", method), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"), (":path", path),
            *extra]


@pytest.fixture
def h2_gateway(backend, gateway):
    toml, port = config_for(backend)
    return gateway(toml, port)


def test_prior_knowledge_get_and_post_reach_the_upstream_as_http1(h2_gateway, backend):
    with h2_client() as client:
        r = client.get(f"{h2_gateway.url}/echo/a?x=1", headers={"cookie": "a=1", "x-custom": "yes"})
        assert r.http_version == "HTTP/2" and r.status_code == 200
        seen = r.json()
        headers = dict(seen["headers"])
        assert seen["target"] == "/echo/a?x=1" and seen["method"] == "GET"
        assert headers["host"] == f"127.0.0.1:{h2_gateway.port}"  # :authority becomes Host
        assert headers["x-custom"] == "yes" and headers["x-forwarded-proto"] == "http"
        assert r.headers["x-request-id"] == headers["x-request-id"]
        # A body with its length, and one without (streamed: chunked upstream).
        r = client.post(f"{h2_gateway.url}/echo/post", content=b"x" * 100_000)
        assert r.json()["body_len"] == 100_000 and r.json()["method"] == "POST"

        def pieces():
            for _ in range(10):
                yield b"y" * 5000
        r = client.post(f"{h2_gateway.url}/echo/stream", content=pieces())
        assert r.json()["body_len"] == 50_000
        # Large and chunked responses come whole.
        assert len(client.get(f"{h2_gateway.url}/big?bytes=2000000").content) == 2_000_000
        assert len(client.get(f"{h2_gateway.url}/chunked?n=7&size=1000").content) == 7000
        r = client.head(f"{h2_gateway.url}/big?bytes=1000")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "1000"


def test_cookie_crumbs_are_joined_into_one_field(h2_gateway):
    raw = RawH2(h2_gateway.port)
    try:
        sid = raw.request(request_headers(h2_gateway.port, extra=[("cookie", "a=1"), ("cookie", "b=2")]))
        status, body = raw.response(sid)
        assert status == 200
        cookies = [v for n, v in json.loads(body)["headers"] if n == "cookie"]
        assert cookies == ["a=1; b=2"]
    finally:
        raw.close()


def test_many_concurrent_streams_on_one_connection(h2_gateway, backend):
    async def run():
        async with httpx.AsyncClient(http1=False, http2=True, timeout=20) as client:
            responses = await asyncio.gather(*[client.get(f"{h2_gateway.url}/echo/{i}") for i in range(60)])
            return responses
    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 60
    assert sorted(r.json()["path"] for r in responses) == sorted(f"/echo/{i}" for i in range(60))


def test_curl_prior_knowledge_and_upgrade_and_http1_on_the_same_port(h2_gateway):
    url = f"{h2_gateway.url}/echo/curl"
    out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", url], capture_output=True,
                         timeout=10).stdout
    assert out.startswith(b"HTTP/2 200"), out[:200]
    # Upgrade: h2c: 101, then the response on stream 1.
    out = subprocess.run(["curl", "-s", "-i", "--http2", url + "?up=1"], capture_output=True, timeout=10).stdout
    assert out.startswith(b"HTTP/1.1 101"), out[:200]
    assert b"HTTP/2 200" in out and b'"target": "/echo/curl?up=1"' in out
    # An upgrade with a body stays HTTP/1.1 (only a bodiless request is upgraded).
    out = subprocess.run(["curl", "-s", "-i", "--http2", "--data", "abc", url], capture_output=True,
                         timeout=10).stdout
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    with httpx.Client(timeout=5) as client:
        assert client.get(url).http_version == "HTTP/1.1"


def test_h2load_completes_every_request(h2_gateway):
    out = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "10", f"{h2_gateway.url}/echo/load"],
                         capture_output=True, text=True, timeout=60).stdout
    assert "400 succeeded, 0 failed, 0 errored, 0 timeout" in out, out[-800:]
    assert "status codes: 400 2xx" in out


def test_tls_alpn_h2(backend, gateway, tmp_path):
    ca = CA(tmp_path)
    ca.leaf("default", ["api.example.com"])
    tls_port = free_port()
    toml, port = tls_config(backend, tls_port, """
        [[server.tls.certificates]]
        cert = "default.pem"
        key = "default.key"
    """)
    gateway(toml, port)
    wait_for(lambda: _connectable(tls_port), what="the TLS listener")
    out = subprocess.run(["curl", "-s", "-i", "--http2", "--cacert", str(ca.path), "--resolve",
                          f"api.example.com:{tls_port}:127.0.0.1", f"https://api.example.com:{tls_port}/echo/tls"],
                         capture_output=True, timeout=10).stdout
    assert out.startswith(b"HTTP/2 200"), out[:300]
    assert b'["x-forwarded-proto", "https"]' in out
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(ca.path)), timeout=10) as client:
        r = client.get(f"https://127.0.0.1:{tls_port}/echo/tls", headers={"host": "api.example.com"},
                       extensions={"sni_hostname": "api.example.com"})
        assert r.http_version == "HTTP/2" and r.status_code == 200
    # A client offering only http/1.1 gets it.
    out = subprocess.run(["curl", "-s", "-i", "--http1.1", "--cacert", str(ca.path), "--resolve",
                          f"api.example.com:{tls_port}:127.0.0.1", f"https://api.example.com:{tls_port}/echo/tls"],
                         capture_output=True, timeout=10).stdout
    assert out.startswith(b"HTTP/1.1 200"), out[:300]


def test_errors_and_policies_answer_on_the_stream(backend, gateway):
    toml, port = config_for(backend, routes="""
        [[routes]]
        name = "open"
        paths = ["/echo/*"]
        upstream = "app"
        methods = ["GET"]
        [[routes]]
        name = "closed"
        paths = ["/closed/*"]
        upstream = "app"
        [routes.ip]
        deny = ["127.0.0.0/8"]
        [[routes]]
        name = "dead"
        paths = ["/dead/*"]
        upstream = "dead"
        """, upstream_extra="")
    dead = free_port()
    toml += f'\n[upstreams.dead]\ntargets = ["127.0.0.1:{dead}"]\nretries = 0\n'
    gateway(toml, port)
    with h2_client() as client:
        url = f"http://127.0.0.1:{port}"
        r = client.get(f"{url}/nothing")
        assert r.status_code == 404 and r.json()["error"] == "no route"
        r = client.post(f"{url}/echo/x", content=b"abc")
        assert r.status_code == 405 and r.headers["allow"].startswith("GET")
        r = client.get(f"{url}/closed/x")
        assert r.status_code == 403
        r = client.get(f"{url}/dead/x")
        assert r.status_code == 502 and r.json()["error"] == "upstream unavailable"
        # The connection goes on serving after all of these.
        assert client.get(f"{url}/echo/after").status_code == 200
    assert backend.count("/closed") == 0


@pytest.mark.parametrize("headers, why", [
    ([(":method", "GET /admin")], "a method that is not a token"),
    ([(":path", "/a b HTTP/1.1")], "a space in the path"),
    ([(":path", "/a\tb")], "a control character in the path"),
    ([(":path", "/a#frag")], "a fragment"),
    ([(":path", "a/b")], "a path not starting with /"),
    ([("host", "other.example")], "a Host differing from :authority"),
    ([(":method", "CONNECT")], "CONNECT"),
])
def test_requests_http1_would_misread_are_refused_before_any_upstream_byte(h2_gateway, backend, headers, why):
    raw = RawH2(h2_gateway.port)
    try:
        base = dict(request_headers(h2_gateway.port, path="/echo/bad"))
        extra = []
        for name, value in headers:
            if name in base:
                base[name] = value
            else:
                extra.append((name, value))
        sid = raw.request([*base.items(), *extra])
        status, body = raw.response(sid)
        assert status in (400, 405) or status is None, (why, status)  # an answer or a reset, never forwarded
        # The connection still serves a good request.
        good = raw.request(request_headers(h2_gateway.port, path="/echo/good"))
        assert raw.response(good)[0] == 200, why
    finally:
        raw.close()
    assert backend.count("/echo/bad") == 0 and backend.count("/../") == 0, why


def test_header_list_and_body_limits(backend, gateway):
    toml, port = config_for(backend, server="""
        max_body_bytes = "40KiB"
        [server.http2]
        max_header_list_bytes = "4KiB"
        max_concurrent_streams = 5
        """)
    gateway(toml, port)
    raw = RawH2(port)
    try:
        # The SETTINGS say what we allow.
        raw.read(lambda events: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events))
        settings = raw.conn.remote_settings
        assert settings.max_concurrent_streams == 5 and settings.max_header_list_size == 4096
        sid = raw.request(request_headers(port, path="/echo/big-head", extra=[("x-big", "a" * 5000)]))
        assert raw.response(sid)[0] == 431
        # A declared length over the limit: 413 at once; an undeclared one: 413 mid-stream.
        sid = raw.request(request_headers(port, "/echo/cl", "POST", [("content-length", "100000")]), end=False)
        assert raw.response(sid)[0] == 413
        sid = raw.request(request_headers(port, "/echo/stream", "POST"), end=False)
        for _ in range(4):  # (within the stream's first window)
            raw.conn.send_data(sid, b"z" * 16000)
            raw.send()
        status, body = raw.response(sid)
        assert status == 413 or status is None
        good = raw.request(request_headers(port, path="/echo/good"))
        assert raw.response(good)[0] == 200
    finally:
        raw.close()
    assert backend.count("/echo/big-head") == 0 and backend.count("/echo/cl") == 0


def test_a_stalled_stream_never_stalls_its_neighbours(h2_gateway):
    # The client never opens stream 1's window beyond 64 KiB, but opens the connection's:
    # stream 1's big response waits, stream 3 is served on the same connection meanwhile.
    raw = RawH2(h2_gateway.port)
    try:
        raw.conn.increment_flow_control_window(50_000_000)
        raw.send()
        slow = raw.request(request_headers(h2_gateway.port, path="/big?bytes=5000000"))
        time.sleep(0.3)
        fast = raw.request(request_headers(h2_gateway.port, path="/echo/fast"))

        def fast_done(events):
            return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == fast for e in events)
        events = raw.read(fast_done, timeout=5)
        assert fast_done(events)
        slow_bytes = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == slow)
        assert slow_bytes <= 65535  # stream 1 got exactly what its window allowed
    finally:
        raw.close()


def read_frames(sock: socket.socket, until, timeout: float = 5.0) -> list:
    """Frames (hyperframe objects) read from ``sock`` until ``until(frames)`` holds, the
    peer closes, or ``timeout``: a reader with no state machine of its own, so that it keeps
    reading whatever comes after a GOAWAY."""
    frames, buffer = [], b""
    deadline = time.monotonic() + timeout
    while not until(frames) and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            break
        buffer += data
        while len(buffer) >= 9:
            frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            frame.parse_body(memoryview(buffer[9:9 + length]))
            frames.append(frame)
            buffer = buffer[9 + length:]
    return frames


def test_drain_sends_goaway_and_finishes_streams_in_flight(h2_gateway):
    raw = RawH2(h2_gateway.port)
    try:
        slow = raw.request(request_headers(h2_gateway.port, path="/slow?ms=800"))
        time.sleep(0.2)
        h2_gateway.signal(signal.SIGTERM)

        def answered(frames):
            return any(f.stream_id == slow and "END_STREAM" in f.flags for f in frames)
        frames = read_frames(raw.sock, answered)
        assert answered(frames)
        heads = [f for f in frames if isinstance(f, hyperframe.frame.HeadersFrame) and f.stream_id == slow]
        assert heads, "the stream in flight was answered"
        assert not [f for f in frames if isinstance(f, hyperframe.frame.GoAwayFrame)], \
            "no GOAWAY while a stream is in flight (httpx fails every stream on one)"
        # Then, idle: GOAWAY naming the last stream taken, and the close.
        frames = read_frames(raw.sock, lambda frames: False, timeout=3)
        goaways = [f for f in frames if isinstance(f, hyperframe.frame.GoAwayFrame)]
        assert len(goaways) == 1 and goaways[0].last_stream_id == slow and goaways[0].error_code == 0
    finally:
        raw.close()
    assert h2_gateway.proc.wait(10) == 0


def test_access_log_has_http2_requests(h2_gateway):
    with h2_client() as client:
        rid = client.get(f"{h2_gateway.url}/echo/logged").headers["x-request-id"]
    h2_gateway.stop()
    lines = [json.loads(line) for line in h2_gateway.access_lines if rid in line]
    assert lines and lines[0]["path"] == "/echo/logged" and lines[0]["status"] == 200
    assert lines[0]["protocol"] == "HTTP/2" and lines[0]["user_agent"].startswith("python-httpx/")


def test_http2_config_errors(tmp_path):
    from fastgw.config import load_config
    from fastgw.errors import ConfigError
    path = tmp_path / "fastgw.toml"
    path.write_text("""
[server]
listen = ["127.0.0.1:8080"]
[server.http2]
max_concurrent_streams = 0
stream_window_bytes = "1KiB"
connection_window_bytes = "4GiB"
max_resets_per_second = "many"
max_streams = 5
[upstreams.a]
targets = ["127.0.0.1:9000"]
[[routes]]
name = "r"
paths = ["/*"]
upstream = "a"
""")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    text = str(info.value)
    for needle in ("server.http2.max_concurrent_streams", "server.http2.stream_window_bytes",
                   "server.http2.connection_window_bytes", "server.http2.max_resets_per_second",
                   "max_streams"):
        assert needle in text, (needle, text)


def websocket_round_trip(raw: RawH2, sid: int, client, text: str) -> str | None:
    """Send ``text`` as a WebSocket message (``client``: websockets' sans-I/O protocol) in
    DATA frames of stream ``sid``, and return the first message that comes back."""
    from websockets.frames import Frame
    client.send_text(text.encode())
    for chunk in client.data_to_send():
        raw.conn.send_data(sid, chunk)
    raw.send()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        raw.events.clear()
        events = raw.read(lambda ev: any(isinstance(e, h2.events.DataReceived) for e in ev), timeout=1)
        for e in events:
            if isinstance(e, h2.events.DataReceived) and e.stream_id == sid:
                raw.conn.acknowledge_received_data(e.flow_controlled_length, sid)
                client.receive_data(e.data)
        raw.send()
        frames = [f for f in client.events_received() if isinstance(f, Frame)]
        if frames:
            return frames[0].data.decode()
    return None


def test_websocket_over_http2_extended_connect(gateway):
    """RFC 8441: a CONNECT stream with :protocol websocket becomes an HTTP/1.1 Upgrade to
    the upstream (with a key of fastgw's), answered 200 once the upstream's 101 accepts
    that key; the stream's DATA frames carry the WebSocket bytes both ways."""
    from websockets.protocol import Protocol, Side, State
    from tests.ws_backends import WsEcho

    echo = WsEcho()
    try:
        port = free_port()
        gateway(f"""
[server]
listen = ["127.0.0.1:{port}"]
[upstreams.ws]
targets = ["{echo.address}"]
[[routes]]
name = "ws"
paths = ["/ws/*"]
upstream = "ws"
websocket = "proxy"
[[routes]]
name = "plain"
paths = ["/plain/*"]
upstream = "ws"
""", port)
        raw = RawH2(port)
        try:
            raw.read(lambda events: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events))
            assert raw.conn.remote_settings.enable_connect_protocol == 1
            sid = raw.request(request_headers(port, "/ws/echo", "CONNECT",
                                              [(":protocol", "websocket"), ("sec-websocket-version", "13")]),
                              end=False)
            events = raw.read(lambda events: any(isinstance(e, h2.events.ResponseReceived) for e in events))
            heads = [e for e in events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
            assert heads and dict(heads[0].headers)[b":status"] == b"200"
            assert b"sec-websocket-accept" not in dict(heads[0].headers)
            client = Protocol(Side.CLIENT, state=State.OPEN)
            for text in ("hello", "over", "h2" * 5000):
                assert websocket_round_trip(raw, sid, client, text) == text
            assert echo.count("/ws/echo") == 1
            # The same CONNECT on a route without websocket is not tunnelled.
            sid = raw.request(request_headers(port, "/plain/x", "CONNECT",
                                              [(":protocol", "websocket"), ("sec-websocket-version", "13")]),
                              end=False)
            status, _ = raw.response(sid)
            assert status != 200
        finally:
            raw.close()
    finally:
        echo.close()


def test_a_slow_upstream_holds_back_only_its_own_stream(backend, gateway):
    """The request direction: an upstream that reads nothing fills its connection's
    buffers; then that stream's window stays shut, while the connection's window and the
    other streams go on."""
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (fills sooner)
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(8)
    held = []
    threading.Thread(target=lambda: held.append(stuck.accept()), daemon=True).start()
    toml, port = config_for(backend, routes="""
        [[routes]]
        name = "stuck"
        paths = ["/stuck/*"]
        upstream = "stuck"
        [[routes]]
        name = "all"
        paths = ["/*"]
        upstream = "app"
        """, server='max_body_bytes = "1GiB"')
    toml += f'\n[upstreams.stuck]\ntargets = ["127.0.0.1:{stuck.getsockname()[1]}"]\nread_timeout = "30s"\n'
    gateway(toml, port)
    raw = RawH2(port)
    try:
        sid = raw.request(request_headers(port, "/stuck/upload", "POST", [("content-length", str(1 << 30))]),
                          end=False)
        sent, shut_since = 0, None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            window = raw.conn.local_flow_control_window(sid)
            if window > 0:
                shut_since = None
                chunk = min(window, 16384)
                raw.conn.send_data(sid, b"u" * chunk)
                raw.send()
                sent += chunk
                continue
            shut_since = shut_since or time.monotonic()
            if time.monotonic() - shut_since > 1.5:
                break  # shut for good: the upstream takes nothing more
            raw.events.clear()
            raw.read(lambda events: any(isinstance(e, h2.events.WindowUpdated) for e in events), timeout=0.3)
        assert shut_since is not None, f"the stream's window never shut ({sent} bytes sent)"
        assert sent < 64 * 1024 * 1024  # bounded: the windows and the socket buffers, not the body
        # The connection is not stalled: another stream is served at once.
        good = raw.request(request_headers(port, path="/echo/meanwhile"))
        assert raw.response(good)[0] == 200
        assert raw.conn.outbound_flow_control_window > 0
    finally:
        raw.close()
        stuck.close()
        for conn, _ in held:
            conn.close()


def test_a_reload_changing_the_limits_sends_goaway_and_new_connections_hear_them(backend, gateway):
    toml, port = config_for(backend, server="[server.http2]\nmax_concurrent_streams = 50\n")
    gw = gateway(toml, port)
    raw = RawH2(port)
    try:
        sid = raw.request(request_headers(port, path="/slow?ms=700"))
        time.sleep(0.2)
        gw.reload(toml.replace("max_concurrent_streams = 50", "max_concurrent_streams = 7"))

        def answered(frames):
            return any(f.stream_id == sid and "END_STREAM" in f.flags for f in frames)
        frames = read_frames(raw.sock, answered)
        assert answered(frames), "the stream in flight finished"
        frames += read_frames(raw.sock, lambda frames: any(isinstance(f, hyperframe.frame.GoAwayFrame)
                                                           for f in frames), timeout=3)
        goaways = [f for f in frames if isinstance(f, hyperframe.frame.GoAwayFrame)]
        assert goaways and goaways[-1].last_stream_id == sid and goaways[-1].error_code == 0
    finally:
        raw.close()
    fresh = RawH2(port)
    try:
        fresh.read(lambda events: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events))
        assert fresh.conn.remote_settings.max_concurrent_streams == 7
    finally:
        fresh.close()
    # A reload that leaves them alone sends nothing.
    keep = RawH2(port)
    try:
        keep.read(lambda events: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events))
        gw.reload(toml.replace("max_concurrent_streams = 50", "max_concurrent_streams = 7") + "\n# touched\n")
        time.sleep(1.0)
        frames = read_frames(keep.sock, lambda frames: False, timeout=0.5)
        assert not [f for f in frames if isinstance(f, hyperframe.frame.GoAwayFrame)]
        sid = keep.request(request_headers(port, path="/echo/after-reload"))
        assert keep.response(sid)[0] == 200
    finally:
        keep.close()


def test_websocket_over_http2_to_an_http_upstream(gateway):
    """An extended CONNECT on a ``websocket = "http"`` route: fastgw speaks WebSocket on
    the stream, each message a POST to the upstream, its answer a message back."""
    from websockets.protocol import Protocol, Side, State
    from tests.ws_backends import MessageBackend

    backend = MessageBackend()
    try:
        port = free_port()
        gateway(f"""
[server]
listen = ["127.0.0.1:{port}"]
[upstreams.app]
targets = ["{backend.address}"]
[[routes]]
name = "chat"
paths = ["/chat/*"]
upstream = "app"
websocket = "http"
""", port)
        raw = RawH2(port)
        try:
            sid = raw.request(request_headers(port, "/chat/room", "CONNECT",
                                              [(":protocol", "websocket"), ("sec-websocket-version", "13")]),
                              end=False)
            events = raw.read(lambda events: any(isinstance(e, h2.events.ResponseReceived) for e in events))
            heads = [e for e in events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
            assert heads and dict(heads[0].headers)[b":status"] == b"200", events
            connection_id = dict(heads[0].headers)[b"x-connection-id"].decode()
            raw.events.clear()
            client = Protocol(Side.CLIENT, state=State.OPEN)
            assert websocket_round_trip(raw, sid, client, "ping over h2") == "ping over h2"
            posts = backend.wait_for("/chat/room")
            assert posts[-1]["body"] == b"ping over h2"
            assert posts[-1]["headers"]["x-connection-id"] == connection_id
        finally:
            raw.close()
        assert backend.wait_for("/chat/room/$disconnect")
    finally:
        backend.close()


def test_malformed_requests_beyond_the_limit_end_the_connection(backend, gateway):
    toml, port = config_for(backend, server="[server.http2]\nmax_malformed_per_connection = 3\n")
    gateway(toml, port)
    raw = RawH2(port)
    try:
        for i in range(3):  # within the limit: each refused alone, the connection goes on
            sid = raw.request(request_headers(port, path=f"/bad {i}"))
            assert raw.response(sid)[0] in (400, None)  # (answered, or reset by libnghttp2)
        sid = raw.request(request_headers(port, path="/echo/still-fine"))
        assert raw.response(sid)[0] == 200
        raw.request(request_headers(port, path="/bad again"))
        frames = read_frames(raw.sock, lambda frames: any(isinstance(f, hyperframe.frame.GoAwayFrame)
                                                          for f in frames))
        goaways = [f for f in frames if isinstance(f, hyperframe.frame.GoAwayFrame)]
        assert goaways and goaways[-1].error_code == 0xb  # ENHANCE_YOUR_CALM
    finally:
        raw.close()
    assert backend.count("/bad") == 0
    with h2_client() as client:  # the gateway serves others
        assert client.get(f"http://127.0.0.1:{port}/echo/next").status_code == 200
