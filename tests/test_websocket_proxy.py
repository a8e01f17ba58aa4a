"""WebSocket tunnels (``websocket = "proxy"``), end to end: a real gateway process between
the ``websockets`` client and a ``websockets`` echo server (tests/ws_backends.py), and raw
sockets where the bytes themselves are the point.

One gateway serves most of the module; the tests of timeouts, reload and drain start
their own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.backend import Backend
from tests.conftest import Gateway, free_port
from tests.ws_backends import WsEcho

HANDSHAKE = (b"GET /ws/%s HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def ws_connect(url: str, **kwargs):
    """The test client: no proxy from the environment, no compression, no pings of its own
    (they would keep an idle tunnel busy), no message size limit, bounded waits."""
    options = dict(proxy=None, compression=None, ping_interval=None, max_size=None, open_timeout=5,
                   close_timeout=5)
    options.update(kwargs)
    return connect(url, **options)


def world_config(port: int, echo: WsEcho, plain: Backend, extra: str = "", read_timeout: str = "30s",
                 server: str = "") -> str:
    return f"""
[server]
listen = ["127.0.0.1:{port}"]
{server}

[log]
access = "stdout"

[upstreams.ws]
targets = ["{echo.address}"]
read_timeout = "{read_timeout}"

[upstreams.plain]
targets = ["{plain.address}"]

[consumers.alice]
api_keys = ["alice-key"]

[[routes]]
name = "ws"
paths = ["/ws/*"]
upstream = "ws"
strip_prefix = "/ws"
websocket = "proxy"

[[routes]]
name = "no-ws"
paths = ["/nows/*"]
upstream = "ws"
strip_prefix = "/nows"

[[routes]]
name = "denied"
paths = ["/denied/*"]
upstream = "ws"
websocket = "proxy"
[routes.ip]
deny = ["127.0.0.1"]

[[routes]]
name = "keyed"
paths = ["/keyed/*"]
upstream = "ws"
strip_prefix = "/keyed"
websocket = "proxy"
[routes.auth]
methods = ["key"]

[[routes]]
name = "plain"
paths = ["/*"]
upstream = "plain"
{extra}"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    echo, plain = WsEcho(), Backend("plain")
    port = free_port()
    gw = Gateway(tmp_path_factory.mktemp("gw"), world_config(port, echo, plain), port).start()
    yield {"gw": gw, "echo": echo, "plain": plain, "url": f"ws://127.0.0.1:{port}"}
    gw.stop()
    echo.close()
    plain.close()


# -- the tunnel carries messages both ways, unchanged ------------------------------------------


def test_text_and_binary_messages_echo_through_the_tunnel(world):
    with ws_connect(world["url"] + "/ws/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01\xffbinary")
        assert ws.recv(timeout=5) == b"\x00\x01\xffbinary"
        ws.send("héllo ✓")
        assert ws.recv(timeout=5) == "héllo ✓"
    assert world["echo"].count("/echo") == 1  # strip_prefix applied to the handshake's path


def test_large_message_goes_through_whole(world):
    payload = os.urandom(4 * 1024 * 1024 + 7)
    with ws_connect(world["url"] + "/ws/large") as ws:
        ws.send(payload)
        assert ws.recv(timeout=20) == payload


def test_many_messages_keep_their_order(world):
    with ws_connect(world["url"] + "/ws/many") as ws:
        for i in range(500):
            ws.send(f"message {i}")
        assert [ws.recv(timeout=5) for _ in range(500)] == [f"message {i}" for i in range(500)]


def test_handshake_fields_reach_the_upstream_and_its_answer_the_client(world):
    with ws_connect(world["url"] + "/ws/headers", subprotocols=None,
                    additional_headers={"X-Client": "yes"}) as ws:
        fields = {name.lower(): value for name, value in json.loads(ws.recv(timeout=5))}
        assert ws.response.status_code == 101
        assert ws.response.headers["Upgrade"].lower() == "websocket"
        assert ws.response.headers.get("X-Request-Id")  # fastgw's last fields, as on every answer
    assert fields["upgrade"] == "websocket" and fields["connection"].lower() == "upgrade"
    assert fields["sec-websocket-version"] == "13" and fields["sec-websocket-key"]
    assert fields["x-client"] == "yes"
    assert fields["x-forwarded-for"] == "127.0.0.1"
    assert fields["x-request-id"] == ws.response.headers["X-Request-Id"]


def test_bytes_sent_right_after_the_handshake_are_the_tunnels_first(world):
    # A client may send its first frame with the handshake, before the 101: the gateway
    # holds it until the upstream switched, then relays it.
    frame = bytes([0x81, 0x82, 1, 2, 3, 4]) + bytes(b ^ k for b, k in zip(b"hi", b"\x01\x02"))
    with socket.create_connection(("127.0.0.1", world["gw"].port), timeout=5) as s:
        s.sendall(HANDSHAKE % b"early" + frame)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 4:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head  # the upstream's, relayed
    assert rest[:4] == b"\x81\x02hi"  # the echo, unmasked, from the upstream


# -- no switch: the answer is relayed and the connection stays HTTP -------------------------


def test_an_answer_other_than_101_is_relayed_and_the_connection_goes_on_as_http(world):
    with socket.create_connection(("127.0.0.1", world["gw"].port), timeout=5) as s:
        # (the next request, pipelined right after the upgrade request, must not be tunnelled)
        s.sendall(HANDSHAKE % b"deny" + b"GET /echo/after HTTP/1.1\r\nHost: gw\r\n\r\n")
        reader = s.makefile("rb")
        status = reader.readline()
        assert status.startswith(b"HTTP/1.1 403 "), status
        length = 0
        while (line := reader.readline()) != b"\r\n":
            assert not line.lower().startswith(b"upgrade:"), line
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        assert reader.read(length) == b"no WebSocket for you\n"
        status = reader.readline()
        assert status.startswith(b"HTTP/1.1 200 "), status
        while (line := reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        assert json.loads(reader.read(length))["path"] == "/echo/after"
    assert world["plain"].count("/echo/after") == 1


def test_a_route_without_websocket_serves_the_request_as_plain_http(world):
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(world["url"] + "/nows/echo")
    # forwarded without Upgrade: the websockets server answers a plain GET with 426
    assert refused.value.response.status_code == 426
    sent = [c for c in world["echo"].connections if c["path"] == "/echo"]
    assert all("Upgrade" not in dict(c["headers"]) for c in sent)


# -- the route's policies run at the handshake ----------------------------------------------------


def test_policies_refuse_the_handshake_before_the_upstream_hears_of_it(world):
    before = len(world["echo"].connections)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(world["url"] + "/denied/x")
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(world["url"] + "/keyed/x")
    assert refused.value.response.status_code == 401
    assert len(world["echo"].connections) == before
    with ws_connect(world["url"] + "/keyed/with-key", additional_headers={"apikey": "alice-key"}) as ws:
        ws.send("let in")
        assert ws.recv(timeout=5) == "let in"
    sent = [c for c in world["echo"].connections if c["path"] == "/with-key"][-1]
    fields = {k.lower(): v for k, v in sent["headers"]}
    assert fields["x-consumer-id"] == "alice" and "apikey" not in fields


# -- either side closes ---------------------------------------------------------------------------


def test_the_upstream_closing_closes_the_client(world):
    with ws_connect(world["url"] + "/ws/close") as ws:
        ws.send("one")
        assert ws.recv(timeout=5) == "one"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")


def test_the_client_closing_reaches_the_upstream(world):
    with ws_connect(world["url"] + "/ws/client-closes") as ws:
        ws.send("x")
        ws.recv(timeout=5)
        ws.close(4002, "done here")
    assert world["echo"].closed_with("/client-closes") == 4002


def test_a_client_that_vanishes_closes_the_upstream_side(world):
    with socket.create_connection(("127.0.0.1", world["gw"].port), timeout=5) as s:
        s.sendall(HANDSHAKE % b"vanish")
        assert s.recv(4096).startswith(b"HTTP/1.1 101 ")
    # no close frame: the upstream sees the TCP close (websockets reports 1006)
    assert world["echo"].closed_with("/vanish") == 1006


def test_the_access_log_has_one_line_per_tunnel_with_its_101(world):
    with ws_connect(world["url"] + "/ws/logged") as ws:
        ws.send("12345")
        ws.recv(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in world["gw"].access_lines]
        found = [line for line in lines if line["path"] == "/ws/logged"]
        if found:
            break
        time.sleep(0.1)
    assert len(found) == 1, lines
    assert found[0]["status"] == 101 and found[0]["route"] == "ws"
    assert found[0]["bytes_in"] > 5 and found[0]["bytes_out"] > 5


# -- timeouts, reload, drain: gateways of their own ---------------------------------------------------


@pytest.mark.slow
def test_an_idle_tunnel_is_closed_after_the_upstreams_read_timeout(tmp_path):
    echo, plain = WsEcho(), Backend("plain")
    port = free_port()
    gw = Gateway(tmp_path, world_config(port, echo, plain, read_timeout="1s"), port).start()
    try:
        with ws_connect(f"ws://127.0.0.1:{port}/ws/busy") as ws:
            for i in range(6):  # traffic every 0.3 s keeps it open past the 1 s timeout
                if i:
                    time.sleep(0.3)
                ws.send("tick")
                assert ws.recv(timeout=5) == "tick"
            # measured from the last traffic, which set the deadline (a pause after it
            # counted here once, and made the close look early)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            idle = time.monotonic() - started
        assert 0.8 < idle < 2.5, idle
        assert echo.closed_with("/busy") == 1006
    finally:
        gw.stop()
        echo.close()
        plain.close()


@pytest.mark.slow
def test_a_reload_leaves_open_tunnels_alone(tmp_path):
    echo, plain = WsEcho(), Backend("plain")
    port = free_port()
    gw = Gateway(tmp_path, world_config(port, echo, plain), port).start()
    try:
        with ws_connect(f"ws://127.0.0.1:{port}/ws/through-reload") as ws:
            ws.send("before")
            assert ws.recv(timeout=5) == "before"
            # the upstream's settings change: it is replaced, its pools retired
            gw.reload(world_config(port, echo, plain, read_timeout="20s"))
            deadline = time.monotonic() + 10
            while "reloaded" not in gw.stderr and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "reloaded" in gw.stderr
            for i in range(3):
                ws.send(f"after {i}")
                assert ws.recv(timeout=5) == f"after {i}"
        with ws_connect(f"ws://127.0.0.1:{port}/ws/new-after-reload") as ws:
            ws.send("new")
            assert ws.recv(timeout=5) == "new"
    finally:
        gw.stop()
        echo.close()
        plain.close()


@pytest.mark.slow
def test_drain_keeps_a_tunnel_until_drain_timeout_then_closes_it(tmp_path):
    echo, plain = WsEcho(), Backend("plain")
    port = free_port()
    gw = Gateway(tmp_path, world_config(port, echo, plain, server='drain_timeout = "1500ms"'), port).start()
    try:
        with ws_connect(f"ws://127.0.0.1:{port}/ws/draining") as ws:
            ws.send("before")
            assert ws.recv(timeout=5) == "before"
            gw.signal(signal.SIGTERM)
            started = time.monotonic()
            time.sleep(0.5)
            ws.send("during drain")  # still a working tunnel
            assert ws.recv(timeout=5) == "during drain"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            closed_after = time.monotonic() - started
        assert 1.2 < closed_after < 4.0, closed_after
        assert gw.proc.wait(10) == 0
        assert echo.closed_with("/draining") == 1006
    finally:
        gw.stop()
        echo.close()
        plain.close()
