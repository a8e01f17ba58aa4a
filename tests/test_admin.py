"""The admin API (fastgw.admin) against a real gateway: its own process, the token, every
endpoint, and one config per reload (the workers run the text the supervisor validated).

Each test starts ``fastgw run`` with an ``[admin]`` table and talks to it with httpx;
every wait is bounded.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import textwrap
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import config_for, free_port, raw_request, wait_port
from tests.test_server import children, run_fastgw, wait_for

TOKEN = "admin-test-token-0123456789"


def admin_config(backend, admin_port: int, workers: int = 2, token: str = 'token = "env:FASTGW_TEST_ADMIN_TOKEN"',
                 routes: str = "") -> tuple[str, int]:
    toml, port = config_for(backend, server=f"workers = {workers}", routes=routes)
    return toml + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n{token}\n', port


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def admin_gateway(backend, gateway, monkeypatch):
    """``start(workers=2, routes="")`` → (gateway, admin client)."""
    monkeypatch.setenv("FASTGW_TEST_ADMIN_TOKEN", TOKEN)
    clients: list[httpx.Client] = []

    def start(workers: int = 2, routes: str = ""):
        admin_port = free_port()
        toml, port = admin_config(backend, admin_port, workers, routes=routes)
        gw = gateway(toml, port)
        wait_port(admin_port, proc=gw.proc)
        client = httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=40.0,
                              headers={"Authorization": f"Bearer {TOKEN}"})
        clients.append(client)
        gw.admin_port = admin_port
        wait_for(lambda: all(w.get("running") for w in client.get("/status").json()["workers"]),
                 timeout=10, what="every worker's status")
        return gw, client

    yield start
    for client in clients:
        client.close()


ROUTES = """
[[routes]]
name = "users"
paths = ["/users/*"]
methods = ["GET"]
upstream = "app"
timeout = "5s"
[routes.ip]
allow = ["127.0.0.0/8"]

[[routes]]
name = "all"
paths = ["/*"]
upstream = "app"
"""


def test_status_routes_and_upstreams_need_the_token_and_say_what_runs(admin_gateway):
    gw, client = admin_gateway(routes=ROUTES)
    url = f"http://127.0.0.1:{gw.admin_port}/"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.get(f"{url}status", headers=headers, timeout=5)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json() == {"error": "a valid bearer token is required", "status": 401}

    status = client.get("/status").json()
    assert status["supervisor_pid"] == gw.proc.pid
    assert status["digest"] == sha(gw.config.read_text()) and status["generation"] == 1
    assert status["last_reload"] is None and status["uptime_s"] >= 0
    workers = status["workers"]
    assert [w["slot"] for w in workers] == [0, 1]
    # Its children: the two workers and the admin process.
    kids = children(gw.proc.pid)
    assert len(kids) == 3 and {w["pid"] for w in workers} < kids
    assert all(w["digest"] == status["digest"] and w["running"] for w in workers)

    routes = client.get("/routes").json()["routes"]
    assert [r["name"] for r in routes] == ["users", "all"]
    users = routes[0]
    assert users["paths"] == ["/users/*"] and users["methods"] == ["GET", "HEAD"]
    assert users["upstream"] == "app" and users["timeout"] == 5.0 and users["websocket"] is None
    assert [(p["name"], p["owner"]) for p in users["policies"]] == [("ip", "users")]
    assert isinstance(users["policies"][0]["priority"], int) and users["chain"] == "ip allow 127.0.0.0/8"
    assert routes[1]["policies"] == [] and routes[1]["methods"] == []

    httpx.get(f"{gw.url}/users/1", timeout=5)
    upstreams = client.get("/upstreams").json()["upstreams"]
    assert [u["name"] for u in upstreams] == ["app"] and upstreams[0]["balance"] == "round_robin"
    target = upstreams[0]["targets"][0]
    assert target["address"] == gw_backend_address(gw) and target["health"] == "off"
    assert target["circuit"] == "off" and "in_flight" in target

    assert client.get("/nothing").status_code == 404
    r = client.post("/status")
    assert r.status_code == 405 and r.headers["allow"] == "GET" and r.json()["status"] == 405
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    users = [s for s in families["fastgw_requests"].samples
             if s.name == "fastgw_requests_total" and s.labels["route"] == "users"]
    assert sum(s.value for s in users) == 1  # the GET /users/1 above


def gw_backend_address(gw) -> str:
    for line in gw.config.read_text().splitlines():
        if line.startswith("targets = "):
            return line.split('"')[1]
    raise AssertionError("no target")


def test_keep_alive_and_what_the_admin_server_refuses(admin_gateway):
    gw, client = admin_gateway(workers=1)
    port = gw.admin_port
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    # Two requests on one connection (pipelined), answered in order.
    reply = raw_request(port, b"GET /status HTTP/1.1\r\nHost: a\r\n" + auth + b"\r\n"
                        b"GET /nope HTTP/1.1\r\nHost: a\r\n" + auth + b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 404 " in reply
    assert reply.index(b"HTTP/1.1 200 ") < reply.index(b"HTTP/1.1 404 ")
    assert raw_request(port, b"GET /status HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 20000 + b"\r\n\r\n"
                       ).startswith(b"HTTP/1.1 431 ")
    assert raw_request(port, b"NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_request(port, b"POST /reload HTTP/1.1\r\nHost: a\r\n" + auth +
                       b"Content-Length: 99999999\r\n\r\n").startswith(b"HTTP/1.1 413 ")


def test_admin_answers_while_workers_are_stopped_and_is_restarted_when_it_dies(admin_gateway):
    gw, client = admin_gateway()
    workers = [w["pid"] for w in client.get("/status").json()["workers"]]
    admin_pid = (children(gw.proc.pid) - set(workers)).pop()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        r = client.get("/status", timeout=5)
        assert r.status_code == 200 and {w["pid"] for w in r.json()["workers"]} == set(workers)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    os.kill(admin_pid, signal.SIGKILL)
    assert wait_for(lambda: _status_code(client) == 200, timeout=10, what="a new admin process")
    new_kids = children(gw.proc.pid)
    assert admin_pid not in new_kids and len(new_kids) == 3
    assert "the admin process (pid %d) died with signal SIGKILL" % admin_pid in gw.stderr


def _status_code(client) -> int:
    try:
        return client.get("/status", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_admin_process_never_outlives_its_supervisor(admin_gateway):
    gw, client = admin_gateway(workers=1)
    kids = children(gw.proc.pid)
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(5)
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and _not_zombie(pid) for pid in kids),
             timeout=10, what="the children to go")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.admin_port), timeout=1).close()


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_post_reload_waits_for_every_worker_or_answers_every_error(admin_gateway):
    gw, client = admin_gateway(routes=ROUTES)
    old = gw.config.read_text()
    new = old.replace('name = "users"', 'name = "people"')
    gw.config.write_text(new)
    r = client.post("/reload")
    assert r.status_code == 200 and r.json() == {"digest": sha(new), "generation": 2}
    # At once, with no further wait: every worker runs it.
    status = client.get("/status").json()
    assert status["digest"] == sha(new) and all(w["digest"] == sha(new) for w in status["workers"])
    last = status["last_reload"]
    assert last["outcome"] == "ok" and last["workers"] == [0, 1] and last["errors"] == []
    assert [r["name"] for r in client.get("/routes").json()["routes"]] == ["people", "all"]

    broken = new.replace('upstream = "app"\ntimeout', 'upstream = "nope"\ntimeout').replace(
        'timeout = "5s"', 'timeout = "soon"')
    gw.config.write_text(broken)
    r = client.post("/reload")
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "reload refused: the running config stays" and body["status"] == 400
    assert len(body["errors"]) == 2 and all(e.startswith(str(gw.config)) for e in body["errors"])
    assert any("timeout" in e for e in body["errors"]) and any('"nope"' in e for e in body["errors"])
    status = client.get("/status").json()
    assert status["digest"] == sha(new) and status["last_reload"]["outcome"] == "refused"
    assert status["last_reload"]["errors"] == body["errors"] and status["last_reload"]["workers"] == []
    assert httpx.get(f"{gw.url}/echo", timeout=5).status_code == 200


def test_workers_run_the_text_the_supervisor_validated_not_the_file_edited_since(admin_gateway):
    """A worker that handles the SIGHUP late (stopped here) runs the text validated when
    the supervisor reloaded, not what the file says by then (each worker read the file
    itself before)."""
    gw, client = admin_gateway(routes=ROUTES)
    workers = [w["pid"] for w in client.get("/status").json()["workers"]]
    b = gw.config.read_text().replace('name = "users"', 'name = "b"')
    c = b.replace('name = "b"', 'name = "c"')
    os.kill(workers[1], signal.SIGSTOP)
    try:
        gw.config.write_text(b)
        os.kill(gw.proc.pid, signal.SIGHUP)
        wait_for(lambda: client.get("/status").json()["workers"][0]["digest"] == sha(b), timeout=10,
                 what="worker 0 on b")
        gw.config.write_text(c)  # edited after the supervisor validated b
    finally:
        os.kill(workers[1], signal.SIGCONT)
    wait_for(lambda: client.get("/status").json()["workers"][1]["generation"] == 2, timeout=10,
             what="worker 1 on generation 2")
    status = client.get("/status").json()
    assert [w["digest"] for w in status["workers"]] == [sha(b), sha(b)] and status["digest"] == sha(b)


def test_admin_config_errors_and_a_taken_admin_port(backend, tmp_path):
    admin_port = free_port()
    toml, _ = admin_config(backend, admin_port, token="")
    (tmp_path / "fastgw.toml").write_text(toml.replace("127.0.0.1:%d" % admin_port, "0.0.0.0:%d" % admin_port))
    result = run_fastgw(["run"], cwd=tmp_path)
    assert result.returncode == 1
    assert f"admin.listen: 0.0.0.0:{admin_port} is not a loopback address: set [admin].token" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", admin_port))
        taken.listen(1)
        (tmp_path / "fastgw.toml").write_text(toml)
        result = run_fastgw(["run"], cwd=tmp_path)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1] == (
        f"fastgw: cannot listen on 127.0.0.1:{admin_port}: Address already in use")


def test_without_admin_no_admin_process(backend, gateway):
    toml, port = config_for(backend, server="workers = 2")
    gw = gateway(toml, port)
    wait_for(lambda: len(children(gw.proc.pid)) == 2, timeout=10, what="2 workers")
    time.sleep(0.5)
    assert len(children(gw.proc.pid)) == 2
    assert "admin" not in textwrap.dedent(gw.stderr)


def test_connections_endpoints_push_to_and_close_adapted_websockets(tmp_path, monkeypatch):
    """Through the admin process, to a connection held by a worker: text, binary, close."""
    import contextlib

    from websockets.exceptions import ConnectionClosed

    from tests.conftest import Gateway
    from tests.test_websocket_http import config as ws_config
    from tests.test_websocket_proxy import ws_connect
    from tests.ws_backends import MessageBackend

    monkeypatch.setenv("FASTGW_TEST_ADMIN_TOKEN", TOKEN)
    app = MessageBackend()
    port, admin_port = free_port(), free_port()
    toml = ws_config(port, app.address, server="workers = 2") + (
        f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\ntoken = "env:FASTGW_TEST_ADMIN_TOKEN"\n')
    gw = Gateway(tmp_path, toml, port).start()
    try:
        wait_port(admin_port, proc=gw.proc)
        with contextlib.ExitStack() as stack, httpx.Client(
                base_url=f"http://127.0.0.1:{admin_port}", timeout=10,
                headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            ws = stack.enter_context(ws_connect(f"ws://127.0.0.1:{port}/chat/admin"))
            conn_id = ws.response.headers["X-Connection-Id"]
            r = client.post(f"/connections/{conn_id}", content="héllo",
                            headers={"Content-Type": "text/plain; charset=utf-8"})
            assert r.status_code == 200 and r.json()["binary"] is False
            assert ws.recv(timeout=5) == "héllo"
            r = client.post(f"/connections/{conn_id}", content='{"a":1}', headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and ws.recv(timeout=5) == '{"a":1}'
            r = client.post(f"/connections/{conn_id}", content=b"\x00\xff",
                            headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 200 and r.json()["binary"] is True and ws.recv(timeout=5) == b"\x00\xff"
            assert client.delete(f"/connections/{conn_id}?code=99").status_code == 400
            r = client.delete(f"/connections/{conn_id}", params={"code": "4001", "reason": "kicked"})
            assert r.status_code == 200
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "kicked")
            wait_for(lambda: client.post(f"/connections/{conn_id}", content="late").status_code == 404,
                     timeout=5, what="the closed connection to be gone")
            r = client.post("/connections/0-0000000000000000", content="x")
            assert r.status_code == 404 and r.json()["status"] == 404
            assert client.delete("/connections/not-an-id").status_code == 404
            r = client.get(f"/connections/{conn_id}")
            assert r.status_code == 405 and r.headers["allow"] == "POST, DELETE"
    finally:
        gw.stop()
        app.close()


def test_metrics_count_every_request_of_both_workers(admin_gateway):
    """GET /metrics from the admin process: the counts every worker added, summed from
    shared memory, equal the requests this test sent (fresh connections: both workers)."""
    gw, client = admin_gateway(routes=ROUTES)
    before = {w["pid"] for w in client.get("/status").json()["workers"]}
    assert len(before) == 2
    sent: dict[tuple[str, str, str], int] = {}
    for i in range(60):
        with httpx.Client(timeout=5) as fresh:  # a new connection each: the kernel spreads them
            if i % 3 == 0:
                key, r = ("users", "GET"), fresh.get(f"{gw.url}/users/{i}")
            elif i % 3 == 1:
                key, r = ("all", "POST"), fresh.post(f"{gw.url}/echo/{i}", content=b"x" * 100)
            else:
                key, r = ("all", "DELETE"), fresh.delete(f"{gw.url}/users/{i}")  # ("users" is GET only)
            sent[(*key, str(r.status_code))] = sent.get((*key, str(r.status_code)), 0) + 1
    assert sent[("all", "POST", "200")] == 20 and sum(sent.values()) == 60
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counted = {}
    for sample in families["fastgw_requests"].samples:
        if sample.name == "fastgw_requests_total":
            key = (sample.labels["route"], sample.labels["method"], sample.labels["code"])
            counted[key] = counted.get(key, 0) + sample.value
    assert counted == sent
    durations = [s for s in families["fastgw_request_duration_seconds"].samples
                 if s.name == "fastgw_request_duration_seconds_count" and s.labels["route"] == "users"]
    assert [s.value for s in durations] == [20]
    request_bytes = [s.value for s in families["fastgw_request_bytes"].samples if s.labels["route"] == "all"]
    assert request_bytes == [20 * 100]
