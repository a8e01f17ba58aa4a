"""WebSocket adapted to HTTP (``websocket = "http"``), end to end: the ``websockets`` client
(or a raw socket) → a real gateway process → a plain HTTP backend that records every POST
(tests/ws_backends.py ``MessageBackend``). And the connection registry, driven from this
test process against a gateway with two workers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import struct
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fastgw import websocket_registry
from tests.conftest import Gateway, free_port
from tests.test_websocket_proxy import ws_connect
from tests.ws_backends import MessageBackend

ID = re.compile(r"[0-9]+-[0-9a-f]{16}\Z")


def config(port: int, backend_address: str, route_extra: str = "", server: str = "") -> str:
    return f"""
[server]
listen = ["127.0.0.1:{port}"]
{server}

[log]
access = "stdout"

[upstreams.app]
targets = ["{backend_address}"]
read_timeout = "5s"

[consumers.alice]
api_keys = ["alice-key"]
groups = ["staff"]

[[routes]]
name = "chat"
paths = ["/chat/*"]
upstream = "app"
strip_prefix = "/chat"
websocket = "http"
{route_extra}

[[routes]]
name = "keyed"
paths = ["/keyed/*"]
upstream = "app"
websocket = "http"
[routes.auth]
methods = ["key"]
"""


@pytest.fixture
def app():
    backend = MessageBackend()
    yield backend
    backend.close()


@pytest.fixture
def start(tmp_path, app):
    """``start(route_extra=..., server=...)``: a gateway in front of ``app``."""
    started: list[Gateway] = []

    def run(route_extra: str = "", server: str = "", address: str | None = None) -> Gateway:
        port = free_port()
        gw = Gateway(tmp_path, config(port, address or app.address, route_extra, server), port).start()
        gw.ws = f"ws://127.0.0.1:{port}"
        started.append(gw)
        return gw

    yield run
    for gw in started:
        gw.stop()
        assert "Traceback" not in gw.stderr, gw.stderr


# -- the contract: $connect, messages, $disconnect --------------------------------------------------


def test_connect_then_messages_then_disconnect(start, app):
    gw = start()
    with ws_connect(gw.ws + "/chat/room1?user=ann", additional_headers={"X-Client": "yes",
                                                                          "X-Connection-Id": "forged"}) as ws:
        conn_id = ws.response.headers["X-Connection-Id"]
        assert ID.match(conn_id)
        connect = app.wait_for("/$connect")[0]
        assert (connect["path"], connect["query"]) == ("/room1/$connect", "user=ann")  # rewritten; the query
        assert connect["headers"]["x-connection-id"] == conn_id  # never the client's own
        assert connect["headers"]["x-client"] == "yes"
        assert "sec-websocket-key" not in connect["headers"] and "upgrade" not in connect["headers"]
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\xffbytes")
        assert ws.recv(timeout=5) == b"\x00\xffbytes"
    text, binary = app.wait_for("/room1", 2)
    assert text["body"] == b"hello" and binary["body"] == b"\x00\xffbytes"
    assert text["headers"]["content-type"] == "text/plain; charset=utf-8"
    assert binary["headers"]["content-type"] == "application/octet-stream"
    for posted in (text, binary):
        assert posted["headers"]["x-connection-id"] == conn_id
        assert posted["headers"]["host"] == gw.ws.removeprefix("ws://")
        assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", posted["headers"]["x-request-id"])
    assert text["headers"]["x-request-id"] != binary["headers"]["x-request-id"]
    disconnect = app.wait_for("/$disconnect")[0]
    assert disconnect["headers"]["x-connection-id"] == conn_id
    assert disconnect["headers"]["x-websocket-close-code"] == "1000"
    assert app.requests()[-1] is disconnect  # after every message's POST


def test_replies_are_messages_of_the_type_that_caused_them(start, app):
    app.reply = lambda req: (204, b"") if req["body"] == b"quiet" else \
        (200, {b"text": "réponse".encode(), b"not-utf8": b"\xff\xfe", b"empty": b"", b"bin": b"abc"}[req["body"]])
    gw = start()
    with ws_connect(gw.ws + "/chat/types") as ws:
        ws.send("text")
        assert ws.recv(timeout=5) == "réponse"
        ws.send("not-utf8")
        assert ws.recv(timeout=5) == b"\xff\xfe"  # a text message's answer that is not UTF-8: binary
        ws.send("quiet")  # 204: no message
        ws.send("empty")  # 200 with an empty body: an empty message
        assert ws.recv(timeout=5) == ""
        ws.send(b"bin")
        assert ws.recv(timeout=5) == b"abc"


def test_many_messages_are_posted_one_at_a_time_and_answered_in_order(start, app):
    gw = start('websocket_message_rate = "1000/s"')
    with ws_connect(gw.ws + "/chat/order") as ws:
        for i in range(200):
            ws.send(f"m{i}")
        assert [ws.recv(timeout=5) for _ in range(200)] == [f"m{i}" for i in range(200)]
    assert [r["body"] for r in app.requests("/order")] == [f"m{i}".encode() for i in range(200)]


def test_a_large_message_and_a_fragmented_one_are_posted_whole(start, app):
    gw = start('websocket_max_message = "4MiB"')
    payload = os.urandom(3 * 1024 * 1024)
    with ws_connect(gw.ws + "/chat/large") as ws:
        ws.send(payload)
        assert ws.recv(timeout=20) == payload
        ws.send(iter(["frag", "ment", "ed ✓"]))
        assert ws.recv(timeout=5) == "fragmented ✓"
    assert app.requests("/large")[1]["body"] == "fragmented ✓".encode()


def test_the_consumer_and_its_groups_go_with_every_post(start, app):
    gw = start()
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(gw.ws + "/keyed/x")
    assert refused.value.response.status_code == 401
    assert app.requests() == []  # refused by the route's auth: no $connect
    with ws_connect(gw.ws + "/keyed/x", additional_headers={"apikey": "alice-key"}) as ws:
        ws.send("who am i")
        ws.recv(timeout=5)
    for posted in app.wait_for("/keyed/x/$disconnect") and app.requests():
        assert posted["headers"]["x-consumer-id"] == "alice", posted
        assert posted["headers"]["x-consumer-groups"] == "staff"
        assert "apikey" not in posted["headers"]


# -- refusals and failures ---------------------------------------------------------------------


def test_a_refused_connect_is_the_handshakes_answer(start, app):
    app.connect_status = 403
    gw = start()
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(gw.ws + "/chat/closed-room")
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b'{"connect": "answered"}'
    assert len(app.requests()) == 1  # $connect only: no $disconnect for a connection never opened


def test_an_invalid_handshake_is_refused_before_any_upstream_hears_of_it(start, app):
    gw = start()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /chat/x HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")  # no Sec-WebSocket-Key
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"Sec-WebSocket-Key" in answer
    assert app.requests() == []


def test_an_upstream_that_is_down_refuses_the_handshake_with_502(start, app):
    gw = start(address=f"127.0.0.1:{free_port()}")
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(gw.ws + "/chat/nobody")
    assert refused.value.response.status_code == 502
    assert json.loads(refused.value.response.body)["error"] == "upstream unavailable"


def test_an_upstream_that_fails_a_message_closes_with_1011(start, app):
    gw = start()
    with ws_connect(gw.ws + "/chat/failing") as ws:
        ws.send("fine")
        assert ws.recv(timeout=5) == "fine"
        app.reply = lambda req: (500, b"broken")
        ws.send("breaks it")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd.code == 1011
    assert "POST /failing answered 500; closing with 1011" in gw.stderr
    assert app.wait_for("/$disconnect")[0]["headers"]["x-websocket-close-code"] == "1011"


def test_an_upstream_gone_after_the_connect_closes_with_1011(start, app):
    gw = start()
    with ws_connect(gw.ws + "/chat/vanishing") as ws:
        app.close()
        ws.send("anyone?")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1011


def test_a_4xx_answer_drops_the_message_and_the_connection_goes_on(start, app):
    app.reply = lambda req: (422, b"no") if req["body"] == b"bad" else (200, req["body"])
    gw = start()
    with ws_connect(gw.ws + "/chat/picky") as ws:
        ws.send("bad")
        ws.send("good")
        assert ws.recv(timeout=5) == "good"
    assert "POST /picky answered 422; message dropped" in gw.stderr


# -- limits ---------------------------------------------------------------------------------------


def test_a_message_over_the_size_limit_closes_with_1009(start, app):
    gw = start('websocket_max_message = "1KiB"')
    with ws_connect(gw.ws + "/chat/big") as ws:
        ws.send("x" * 1024)
        assert ws.recv(timeout=5) == "x" * 1024
        ws.send("x" * 1025)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd.code == 1009
    assert [len(r["body"]) for r in app.requests("/big")] == [1024]


def test_messages_beyond_the_rate_close_with_1008(start, app):
    gw = start('websocket_message_rate = "5/s"')
    with ws_connect(gw.ws + "/chat/chatty") as ws:
        for i in range(20):
            ws.send(f"m{i}")
        answers = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                answers.append(ws.recv(timeout=5))
    assert closed.value.rcvd.code == 1008
    assert answers == [f"m{i}" for i in range(5)]  # the burst: one second's worth


def test_pings_keep_a_connection_and_an_unanswered_one_closes_it(start, app):
    gw = start('websocket_ping_interval = "300ms"')
    with ws_connect(gw.ws + "/chat/alive") as ws:  # (the client answers pings by itself)
        time.sleep(2.5)
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"GET /chat/deaf HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        started = time.monotonic()
        while b"keepalive ping timeout" not in data:  # (until the close frame is in)
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    waited = time.monotonic() - started
    frames = server_frames(data.partition(b"\r\n\r\n")[2])
    assert [op for op, _ in frames] == [0x9, 0x8]  # a ping, never answered; then the close
    assert struct.unpack("!H", frames[1][1][:2])[0] == 1011 and frames[1][1][2:] == b"keepalive ping timeout"
    assert waited < 3.5  # a ping within a second, its timeout within the next (the clock ticks per second)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each frame a server sent (unmasked, short ones)."""
    frames = []
    while data:
        length = data[1] & 0x7F
        assert length < 126 and not data[1] & 0x80
        frames.append((data[0] & 0x0F, data[2:2 + length]))
        data = data[2 + length:]
    return frames


# -- drain ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_drain_closes_adapted_connections_with_1001(start, app):
    gw = start(server='drain_timeout = "10s"')
    with ws_connect(gw.ws + "/chat/leaving") as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        gw.signal(signal.SIGTERM)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd.code == 1001
    assert time.monotonic() - started < 3.0  # not the 10 s drain_timeout
    assert gw.proc.wait(10) == 0
    assert app.wait_for("/$disconnect")[0]["headers"]["x-websocket-close-code"] == "1001"


# -- the registry: any process reaches any connection --------------------------------------------------


@pytest.mark.slow
def test_the_registry_pushes_to_and_closes_connections_of_either_worker(start, app):
    gw = start(server="workers = 2")
    pid = gw.proc.pid
    clients = {}
    with contextlib.ExitStack() as stack:
        for _ in range(24):  # SO_REUSEPORT spreads them: until both workers hold some
            ws = stack.enter_context(ws_connect(gw.ws + "/chat/registry"))
            clients[ws.response.headers["X-Connection-Id"]] = ws
            if {conn_id.split("-")[0] for conn_id in clients} == {"0", "1"}:
                break
        assert {conn_id.split("-")[0] for conn_id in clients} == {"0", "1"}, list(clients)
        for conn_id, ws in clients.items():
            assert websocket_registry.push(conn_id, f"to {conn_id}", supervisor_pid=pid)
            assert ws.recv(timeout=5) == f"to {conn_id}"
            assert websocket_registry.push(conn_id, b"\x01\x02", supervisor_pid=pid)
            assert ws.recv(timeout=5) == b"\x01\x02"
        closing = list(clients)[-1]
        assert websocket_registry.close(closing, 4000, "kicked", supervisor_pid=pid)
        with pytest.raises(ConnectionClosed) as closed:
            clients[closing].recv(timeout=5)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "kicked")
        disconnect = app.wait_for("/$disconnect")[0]
        assert disconnect["headers"]["x-connection-id"] == closing
        assert disconnect["headers"]["x-websocket-close-code"] == "4000"
        # a closed connection, and ids no worker holds, are refused
        assert not websocket_registry.push(closing, "late", supervisor_pid=pid)
        assert not websocket_registry.push("0-0000000000000000", "nobody", supervisor_pid=pid)
        assert not websocket_registry.push("7-0000000000000000", "no such worker", supervisor_pid=pid)
        assert not websocket_registry.push("not an id", "x", supervisor_pid=pid)
