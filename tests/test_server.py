"""The process layer end to end: ``fastgw run`` as a real process (supervisor and workers),
real h11 backends, real clients (httpx, raw sockets), all on 127.0.0.1.

Covered: several workers sharing the port and a killed worker replaced; SIGHUP reload
under concurrent load (keep-alive and new-connection clients) with zero failed requests;
an invalid reload refused with every error while the old config serves; SIGTERM drain
(in-flight requests finish, new connections refused, exit 0; a request longer than
drain_timeout is cut); the access log (fields and values, off, a file relative to the
config, switched on and off by a reload, a stdout pipe nobody reads); and ``fastgw run`` refusing a bad config, a port in use
and an access log it cannot open.

Every wait is a bounded poll (``wait_for``), every load loop bounded in count and time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, closed_by_peer, config_for, free_port, wait_port


# -- helpers ---------------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def children(pid: int) -> set[int]:
    """The live child pids of ``pid`` (the supervisor's workers), from /proc."""
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    return kids


def prefix(request_id: str) -> str:
    """Request ids are ``<random prefix per process>-<counter hex>``."""
    head, sep, counter = request_id.rpartition("-")
    assert sep and re.fullmatch(r"[0-9a-f]{12}", head) and re.fullmatch(r"[0-9a-f]+", counter), request_id
    return head


# No kept-alive connections: every request on a new one. Shared (httpx clients are
# thread-safe) because building a client, with its TLS context, costs ~35 ms of CPU.
_FRESH = httpx.Client(timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0))


def fresh_get(url: str, **kwargs) -> httpx.Response:
    """One request on a new connection (so the kernel spreads it over the workers)."""
    return _FRESH.get(url, **kwargs)


def digest(toml: str) -> str:
    """What a worker logs on reload: the first 12 hex digits of the file's sha256."""
    return hashlib.sha256(toml.encode()).hexdigest()[:12]


def reloaded_pids(gw, toml: str) -> set[int]:
    """The pids that logged "reloaded ... (digest D" for this config text."""
    pattern = re.compile(r"fastgw\[(\d+)\] INFO reloaded .* \(digest " + digest(toml))
    return {int(m.group(1)) for m in pattern.finditer(gw.stderr)}


def access_records(gw) -> list[dict]:
    return [json.loads(line) for line in gw.access_lines]


def run_fastgw(args: list[str], cwd: Path, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """``python -m fastgw ARGS`` expected to exit by itself within ``timeout``."""
    return subprocess.run([sys.executable, "-m", "fastgw", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


ACCESS_FIELDS = ["time", "request_id", "trace_id", "client_ip", "method", "path", "protocol", "route", "consumer",
                 "upstream", "upstream_ms", "status", "bytes_in", "bytes_out", "duration_ms", "user_agent"]


# -- workers ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_serve_and_a_killed_worker_is_replaced(backend, gateway):
    toml, port = config_for(backend, server="workers = 2")
    gw = gateway(toml, port)
    workers = wait_for(lambda: len(children(gw.proc.pid)) == 2 and children(gw.proc.pid), what="2 workers")

    # New connections are spread over both workers' SO_REUSEPORT sockets: two id prefixes.
    seen: set[str] = set()
    for _ in range(200):
        r = fresh_get(gw.url + "/echo")
        assert r.status_code == 200
        seen.add(prefix(r.headers["x-request-id"]))
        if len(seen) == 2:
            break
    assert len(seen) == 2

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    line = wait_for(lambda: re.search(rf"worker ([01]) \(pid {victim}\) died with signal SIGKILL; starting another",
                                      gw.stderr), what="the death logged")
    assert line
    # Requests keep succeeding while the successor starts: connections the kernel queues
    # on the dead worker's socket (the supervisor keeps it) wait for the new worker.
    new_prefixes: set[str] = set()
    deadline = time.monotonic() + 10
    for _ in range(300):
        r = fresh_get(gw.url + "/echo")
        assert r.status_code == 200
        p = prefix(r.headers["x-request-id"])
        if p not in seen:
            new_prefixes.add(p)
        now = children(gw.proc.pid)
        if new_prefixes and len(now) == 2 and victim not in now or time.monotonic() > deadline:
            break
    now = children(gw.proc.pid)
    assert victim not in now and len(now) == 2 and len(now & workers) == 1, (workers, now)
    assert len(new_prefixes) == 1  # the successor serves, with a prefix of its own
    assert gw.stderr.count("died with") == 1
    assert gw.stop() == 0


def test_sighup_to_a_starting_worker_reloads_and_does_not_kill_it(backend, gateway):
    """A SIGHUP that reaches a worker before its event loop has handlers must wait (it is
    blocked, then pending), not kill the worker with SIGHUP's default action."""
    toml, port = config_for(backend)
    gw = gateway(toml, port, wait=False)
    # Poll /proc tightly: the worker is signalled within a few ms of its fork.
    worker = wait_for(lambda: children(gw.proc.pid), timeout=10, interval=0.001, what="the worker")
    (worker,) = worker
    os.kill(worker, signal.SIGHUP)
    wait_port(port, proc=gw.proc)
    assert wait_for(lambda: worker in reloaded_pids(gw, toml), what="the worker's reload")
    assert "died" not in gw.stderr
    assert children(gw.proc.pid) == {worker}
    assert fresh_get(gw.url + "/echo").status_code == 200


def test_supervisor_waits_for_its_own_workers_only():
    """``fastgw demo`` forks its backends before the supervisor runs in the same process:
    the supervisor must not reap them (waitpid(-1) did, and the demo's own wait failed)."""
    from fastgw.server import Supervisor

    foreign = os.fork()
    if foreign == 0:
        os._exit(7)
    worker = os.fork()
    if worker == 0:
        time.sleep(5)
        os._exit(0)
    sup = Supervisor.__new__(Supervisor)
    sup.workers, sup.started, sup.stopping = {worker: 0}, {worker: time.monotonic()}, True
    try:
        time.sleep(0.2)  # the foreign child has exited by now
        sup.reap()
        assert sup.workers == {worker: 0}  # alive: still there
        pid, status = os.waitpid(foreign, 0)  # the foreign child is still ours to wait for
        assert (pid, os.WEXITSTATUS(status)) == (foreign, 7)
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: (sup.reap(), not sup.workers)[1], what="the worker reaped")
    finally:
        for pid in (foreign, worker):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


# -- reload ----------------------------------------------------------------------------------


def reload_config(port: int, a, b, step: int) -> str:
    """Config versions for the reload test. Route "load" (what the load clients call) is
    in every version; the others change around it."""
    app = a if step in (0, 1, 2, 6) else b
    ups = f'[upstreams.app]\ntargets = ["{app.address}"]\n'
    if step == 4:
        ups += f'[upstreams.other]\ntargets = ["{a.address}"]\n'
    load = '[[routes]]\nname = "load"\npaths = ["/load/*"]\nupstream = "app"\nstrip_prefix = "/load"\n'
    if step >= 5:
        load += 'methods = ["GET"]\n'
    routes = load
    if step == 1:
        routes += '[[routes]]\nname = "added"\npaths = ["/added/*"]\nupstream = "app"\nstrip_prefix = "/added"\n'
    elif step in (2, 3, 4):
        up = "other" if step == 4 else "app"
        routes += (f'[[routes]]\nname = "added"\npaths = ["/renamed/*"]\nupstream = "{up}"\n'
                   'strip_prefix = "/renamed"\n')
    return (f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\n\n[log]\naccess = "off"\n\n'
            f'{ups}\n{routes}')


@pytest.mark.slow
def test_reload_under_concurrent_load_fails_no_request(make_backend, gateway):
    a, b = make_backend("a"), make_backend("b")
    port = free_port()
    toml = reload_config(port, a, b, 0)
    gw = gateway(toml, port)
    workers = wait_for(lambda: len(children(gw.proc.pid)) == 2 and children(gw.proc.pid), what="2 workers")

    stop = threading.Event()
    lock = threading.Lock()
    failures: list[str] = []
    counts = {"keepalive": 0, "fresh": 0}
    keepalive_backends: list[set[str]] = []

    def record(kind: str, r: httpx.Response) -> None:
        with lock:
            counts[kind] += 1
            if r.status_code != 200 or r.json()["path"] != "/echo":
                failures.append(f"{kind}: {r.status_code} {r.text[:200]}")

    def keepalive_client() -> None:
        backends: set[str] = set()
        keepalive_backends.append(backends)
        with httpx.Client(base_url=gw.url, timeout=5.0) as client:
            for _ in range(3000):
                if stop.is_set():
                    return
                try:
                    r = client.get("/load/echo")
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(f"keepalive: {exc!r}")
                    continue
                backends.add(r.headers.get("x-backend", "?"))
                record("keepalive", r)

    def fresh_client() -> None:
        for _ in range(1500):
            if stop.is_set():
                return
            try:
                r = fresh_get(gw.url + "/load/echo")
            except httpx.HTTPError as exc:
                with lock:
                    failures.append(f"fresh: {exc!r}")
                continue
            record("fresh", r)

    threads = [threading.Thread(target=keepalive_client) for _ in range(4)]
    threads += [threading.Thread(target=fresh_client) for _ in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        def step_to(step: int) -> None:
            text = reload_config(port, a, b, step)
            gw.reload(text)
            # Bounded poll: both workers logged the reload of exactly this file.
            wait_for(lambda: reloaded_pids(gw, text) == workers, timeout=10, what=f"reload {step}")

        def backend_of(path: str) -> list[tuple[int, str | None]]:
            out = []
            for _ in range(4):  # fresh connections: both workers answer some
                r = fresh_get(gw.url + path)
                out.append((r.status_code, r.headers.get("x-backend")))
            return out

        time.sleep(0.3)
        assert backend_of("/added/echo") == [(404, None)] * 4
        step_to(1)  # a route added
        assert backend_of("/added/echo") == [(200, "a")] * 4
        step_to(2)  # its path changed
        assert backend_of("/renamed/echo") == [(200, "a")] * 4
        assert backend_of("/added/echo") == [(404, None)] * 4
        time.sleep(0.3)
        step_to(3)  # upstream "app" moved from a to b
        assert backend_of("/load/echo") == [(200, "b")] * 4
        assert backend_of("/renamed/echo") == [(200, "b")] * 4
        step_to(4)  # a new upstream, and the route moved onto it
        assert backend_of("/renamed/echo") == [(200, "a")] * 4
        time.sleep(0.3)
        step_to(5)  # route removed, methods restricted
        assert backend_of("/renamed/echo") == [(404, None)] * 4
        r = _FRESH.post(gw.url + "/load/echo")
        assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD"), (r.headers, r.text)
        step_to(6)  # "app" back on a
        assert backend_of("/load/echo") == [(200, "a")] * 4
        time.sleep(max(0.3, 3.0 - (time.monotonic() - started)))
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert counts["keepalive"] >= 100 and counts["fresh"] >= 20, counts
    # Kept-alive connections see the new config too: each went from a to b and back.
    assert all(seen == {"a", "b"} for seen in keepalive_backends), keepalive_backends
    assert "died" not in gw.stderr and "refused" not in gw.stderr and "Traceback" not in gw.stderr
    assert children(gw.proc.pid) == workers  # no worker was lost on the way
    assert gw.stop() == 0


def test_invalid_reload_logs_every_error_and_keeps_the_old_config(backend, gateway):
    toml, port = config_for(backend, routes='[[routes]]\nname = "old"\npaths = ["/old/*"]\nupstream = "app"\n'
                                             'strip_prefix = "/old"\n')
    gw = gateway(toml, port)
    (worker,) = wait_for(lambda: children(gw.proc.pid), what="the worker")
    bad = (f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkerz = 2\n\n'
           f'[upstreams.app]\ntargets = ["{backend.address}", "127.0.0.1:99999"]\n\n'
           '[[routes]]\nname = "new"\npaths = ["/new/*"]\nupstream = "ap"\n')
    gw.reload(bad)
    wait_for(lambda: "reload refused" in gw.stderr, what="the refusal")
    time.sleep(0.3)  # a worker told to reload would have logged by now
    stderr = gw.stderr
    source = str(gw.config)
    for error in (f'{source}: server: unknown key "workerz" (did you mean "workers"?)',
                  f'{source}: upstreams.app.targets[1]: "127.0.0.1:99999" is not host:port (port > 65535)',
                  f'{source}: routes[0] "new": upstream "ap" is not defined (did you mean "app"?)'):
        assert error in stderr
    # Refused once, by the supervisor: the workers were never told to reload.
    assert stderr.count("reload refused") == 1
    assert re.search(rf"fastgw\[{gw.proc.pid}\] ERROR reload refused, the running config stays", stderr)
    assert "reloaded" not in stderr
    assert fresh_get(gw.url + "/old/echo").status_code == 200
    assert fresh_get(gw.url + "/new/echo").status_code == 404
    assert children(gw.proc.pid) == {worker}

    # The same file fixed: it loads.
    good = bad.replace("workerz", "workers").replace(', "127.0.0.1:99999"', "").replace('"ap"', '"app"')
    good = good.replace('upstream = "app"', 'upstream = "app"\nstrip_prefix = "/new"')
    gw.reload(good)
    wait_for(lambda: worker in reloaded_pids(gw, good), what="the good reload")
    assert "server.workers is now 2, but 1 keep running until the next restart" in gw.stderr  # logged, not applied
    assert fresh_get(gw.url + "/new/echo").status_code == 200
    assert fresh_get(gw.url + "/old/echo").status_code == 404
    assert children(gw.proc.pid) == {worker}
    # A worker started after the reload (a restart) starts from the latest valid config.
    os.kill(worker, signal.SIGKILL)
    (successor,) = wait_for(lambda: children(gw.proc.pid) - {worker}, what="the successor")
    wait_port(port)
    assert fresh_get(gw.url + "/new/echo").status_code == 200
    assert fresh_get(gw.url + "/old/echo").status_code == 404
    assert children(gw.proc.pid) == {successor}
    assert gw.stop() == 0


# -- drain -----------------------------------------------------------------------------------


def slow_targets(backend) -> int:
    with backend.lock:
        return sum(1 for s in backend.seen if s["target"].startswith("/slow"))


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_refuses_new_connections(backend, gateway):
    toml, port = config_for(backend, server='drain_timeout = "4s"')
    gw = gateway(toml, port)
    # An idle keep-alive connection: closed at once by the drain.
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    idle.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    head = idle.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 ")

    results: list[object] = [None, None]

    def slow(i: int) -> None:
        try:
            with httpx.Client(timeout=10.0) as client:
                results[i] = client.get(gw.url + "/slow?ms=1500")
        except httpx.HTTPError as exc:
            results[i] = exc

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: slow_targets(backend) == 2, what="both slow requests upstream")
    sent = time.monotonic()
    gw.signal(signal.SIGTERM)

    assert closed_by_peer(idle, timeout=1.0)
    idle.close()

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, timeout=1.0, what="new connections refused")
    rc = gw.proc.wait(4 + 3)
    elapsed = time.monotonic() - sent
    for t in threads:
        t.join(5)
    assert rc == 0
    for r in results:
        assert isinstance(r, httpx.Response), r
        assert (r.status_code, r.text, r.headers["connection"]) == (200, "slow done", "close")
    # Done when the requests were, not at the end of drain_timeout.
    assert 1.0 < elapsed < 3.0, elapsed
    assert refused()
    stderr = gw.stderr
    assert "draining (up to 4.0s)" in stderr and stderr.rstrip().endswith("INFO stopped")
    assert "Traceback" not in stderr
    assert [rec["status"] for rec in access_records(gw)] == [200, 200, 200]


@pytest.mark.slow
def test_drain_cuts_a_request_longer_than_drain_timeout_and_exits_0(backend, gateway):
    toml, port = config_for(backend, server='drain_timeout = "1s"')
    gw = gateway(toml, port)
    outcome: list[object] = []

    def slow() -> None:
        try:
            outcome.append(httpx.get(gw.url + "/slow?ms=8000", timeout=15.0))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    wait_for(lambda: slow_targets(backend) == 1, what="the slow request upstream")
    sent = time.monotonic()
    gw.signal(signal.SIGTERM)
    rc = gw.proc.wait(1 + 4)
    elapsed = time.monotonic() - sent
    thread.join(5)
    assert rc == 0
    assert 0.9 < elapsed < 2.5, elapsed
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError), outcome
    assert "Traceback" not in gw.stderr and "Task was destroyed" not in gw.stderr


# -- access log ------------------------------------------------------------------------------


def test_access_log_line_has_exactly_the_fields_and_right_values(backend, gateway):
    routes = '[[routes]]\nname = "echo-route"\npaths = ["/api/*"]\nupstream = "app"\nstrip_prefix = "/api"\n'
    toml, port = config_for(backend, routes=routes)
    gw = gateway(toml, port)
    before = time.time()
    r = httpx.post(gw.url + "/api/echo/x?q=1", content=b"0123456789", timeout=5.0)
    after = time.time()
    assert r.status_code == 200
    miss = httpx.get(gw.url + "/nowhere", timeout=5.0)
    assert miss.status_code == 404
    records = wait_for(lambda: len(gw.access_lines) == 2 and access_records(gw), what="2 access lines")

    rec = records[0]
    assert list(rec) == ACCESS_FIELDS
    assert rec["request_id"] == r.headers["x-request-id"]
    sent = dict(r.json()["headers"])
    assert {k: rec[k] for k in ACCESS_FIELDS[2:14]} == {
        "trace_id": sent["traceparent"][3:35], "client_ip": "127.0.0.1", "method": "POST",
        "path": "/api/echo/x", "protocol": "HTTP/1.1", "route": "echo-route", "consumer": None,
        "upstream": backend.address, "upstream_ms": rec["upstream_ms"], "status": 200, "bytes_in": 10,
        "bytes_out": len(r.content)}
    assert rec["user_agent"] == r.request.headers["user-agent"] and rec["user_agent"].startswith("python-httpx/")
    assert isinstance(rec["upstream_ms"], float) and 0 <= rec["upstream_ms"] <= rec["duration_ms"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"])
    stamp = time.mktime(time.strptime(rec["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    stamp += int(rec["time"][20:23]) / 1000
    # (the loop's clock and time.monotonic() must agree: a wrong base would be far off)
    assert before - 0.05 <= stamp <= after + 0.01, (before, stamp, after)
    assert isinstance(rec["duration_ms"], float) and 0 <= rec["duration_ms"] <= (after - before) * 1000 + 5

    rec = records[1]  # answered by fastgw: no trace sent upstream, no upstream time
    assert list(rec) == ACCESS_FIELDS
    assert {k: rec[k] for k in ACCESS_FIELDS[1:14]} == {
        "request_id": miss.headers["x-request-id"], "trace_id": None, "client_ip": "127.0.0.1", "method": "GET",
        "path": "/nowhere", "protocol": "HTTP/1.1", "route": None, "consumer": None, "upstream": None,
        "upstream_ms": None, "status": 404, "bytes_in": 0, "bytes_out": len(miss.content)}


def test_access_log_names_the_target_a_failed_connect_tried(backend, gateway):
    """A 502 for a refused connect logs the address it tried (as nginx logs
    $upstream_addr for failed tries too): the proxy notes it before connecting."""
    dead = free_port()
    toml, port = config_for(backend, routes=f'[[routes]]\nname = "dead"\npaths = ["/*"]\nupstream = "gone"\n')
    toml += f'\n[upstreams.gone]\ntargets = ["127.0.0.1:{dead}"]\n'
    gw = gateway(toml, port)
    r = fresh_get(gw.url + "/x")
    assert r.status_code == 502
    (rec,) = wait_for(lambda: access_records(gw), what="the access line")
    assert (rec["route"], rec["status"], rec["upstream"]) == ("dead", 502, f"127.0.0.1:{dead}")


def test_access_log_off_writes_nothing_and_a_reload_can_turn_it_on(backend, gateway):
    toml, port = config_for(backend, log='access = "off"')
    gw = gateway(toml, port)
    (worker,) = wait_for(lambda: children(gw.proc.pid), what="the worker")
    for _ in range(5):
        assert fresh_get(gw.url + "/echo").status_code == 200
    time.sleep(0.5)  # two sweeper flushes
    assert gw.stdout_path.read_bytes() == b""

    on = toml.replace('access = "off"', 'access = "logs.jsonl"')
    gw.reload(on)
    wait_for(lambda: worker in reloaded_pids(gw, on), what="the reload")
    r = fresh_get(gw.url + "/echo")
    path = gw.folder / "logs.jsonl"
    lines = wait_for(lambda: path.exists() and path.read_text().splitlines(), what="the log file")
    assert [json.loads(line)["request_id"] for line in lines] == [r.headers["x-request-id"]]
    assert gw.stop() == 0
    assert gw.stdout_path.read_bytes() == b""


def test_a_reload_turns_the_access_log_off_and_on_again(backend, gateway):
    """The proxy skips an access log that is "off" without calling it: a reload that
    switches the log must switch that too, both ways."""
    toml, port = config_for(backend, log='access = "logs.jsonl"')
    gw = gateway(toml, port)
    (worker,) = wait_for(lambda: children(gw.proc.pid), what="the worker")
    path = gw.folder / "logs.jsonl"

    def logged() -> list[str]:
        return [json.loads(line)["request_id"] for line in path.read_text().splitlines()] if path.exists() else []

    first = fresh_get(gw.url + "/echo").headers["x-request-id"]
    wait_for(lambda: logged() == [first], what="the first line")

    off = toml.replace('access = "logs.jsonl"', 'access = "off"')
    gw.reload(off)
    wait_for(lambda: worker in reloaded_pids(gw, off), what="the reload to off")
    for _ in range(5):
        assert fresh_get(gw.url + "/echo").status_code == 200
    time.sleep(0.5)  # two sweeper flushes
    assert logged() == [first]

    gw.reload(toml)
    wait_for(lambda: worker in reloaded_pids(gw, toml), what="the reload to on")
    last = fresh_get(gw.url + "/echo").headers["x-request-id"]
    wait_for(lambda: logged() == [first, last], what="the line after turning it on again")
    assert gw.stop() == 0
    assert gw.stdout_path.read_bytes() == b""


def test_access_log_relative_path_is_next_to_the_config_with_two_workers(backend, tmp_path):
    conf = tmp_path / "etc"
    conf.mkdir()
    port = free_port()
    toml, _ = config_for(backend, port=port, server="workers = 2", log='access = "access.log"')
    (conf / "gw.toml").write_text(toml)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "run", "-c", "../etc/gw.toml"], cwd=elsewhere,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_port(port, proc=proc)
        ids = [fresh_get(f"http://127.0.0.1:{port}/echo").headers["x-request-id"] for _ in range(40)]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, stderr
    assert stdout == b""
    assert not (elsewhere / "access.log").exists()
    records = [json.loads(line) for line in (conf / "access.log").read_text().splitlines()]
    assert sorted(rec["request_id"] for rec in records) == sorted(ids)
    assert all(list(rec) == ACCESS_FIELDS and rec["status"] == 200 for rec in records)
    assert len({prefix(i) for i in ids}) == 2  # both workers wrote to the one file


@pytest.mark.slow
def test_access_log_to_a_stalled_stdout_pipe_never_stalls_requests(backend, tmp_path):
    """``access = "stdout"`` into a pipe nobody reads (a stuck log collector): requests
    go on, and once the reader drains the pipe every line arrives whole, in order."""
    toml, port = config_for(backend)
    (tmp_path / "fastgw.toml").write_text(toml)
    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "run"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=(tmp_path / "stderr.log").open("wb"), stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_port(port, proc=proc)
        ids = []
        with httpx.Client(timeout=3.0) as client:  # a stalled worker fails this at once
            for _ in range(700):  # ~170 KB of log: well past the 64 KiB a pipe holds
                r = client.get(f"http://127.0.0.1:{port}/echo")
                assert r.status_code == 200
                ids.append(r.headers["x-request-id"])
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.extend(iter(proc.stdout.readline, b"")), daemon=True)
        reader.start()
        wait_for(lambda: len(got) >= len(ids), timeout=10, what="the log lines")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert [json.loads(line)["request_id"] for line in got] == ids


# -- fastgw run refusing to start ------------------------------------------------------------


def test_run_with_a_bad_config_exits_1_and_prints_every_error(tmp_path):
    port = free_port()
    (tmp_path / "fastgw.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 0\ndrain_timeout = "soon"\n\n'
        '[upstreams.users]\ntargets = ["127.0.0.1:99999"]\n\n'
        '[[routes]]\nname = "u"\npaths = ["/u"]\nupstream = "user"\nbogus = 1\n')
    result = run_fastgw(["run"], cwd=tmp_path)  # the default ./fastgw.toml
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) >= 5, errors
    assert all(line.startswith("fastgw.toml: ") for line in errors), errors
    for needle in ("server.workers", "server.drain_timeout", "upstreams.users.targets[0]",
                   'upstream "user" is not defined (did you mean "users"?)', 'unknown key "bogus"'):
        assert any(needle in line for line in errors), (needle, errors)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_run_without_a_config_file_exits_1(tmp_path):
    result = run_fastgw(["run", "-c", "missing.toml"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "missing.toml: cannot read the file: No such file or directory"


def test_run_on_a_port_in_use_exits_with_a_clear_message(backend, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        toml, _ = config_for(backend, port=port)
        (tmp_path / "fastgw.toml").write_text(toml)
        result = run_fastgw(["run"], cwd=tmp_path)
    assert result.returncode == 3  # cannot bind (1 is an invalid config)
    assert result.stderr.strip().splitlines()[-1] == f"fastgw: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_run_on_a_port_another_gateway_holds_exits_with_a_clear_message(backend, gateway, tmp_path):
    """Our listen sockets are SO_REUSEPORT, which would let a second gateway join the
    first's port silently and take half its connections."""
    toml, port = config_for(backend)
    first = gateway(toml, port)
    other = tmp_path / "second"
    other.mkdir()
    (other / "fastgw.toml").write_text(toml)
    result = run_fastgw(["run"], cwd=other)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1] == f"fastgw: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert first.proc.poll() is None
    assert fresh_get(first.url + "/echo").status_code == 200


def test_run_with_an_access_log_it_cannot_open_exits_1(backend, tmp_path):
    toml, port = config_for(backend, log='access = "no/such/dir/access.log"')
    (tmp_path / "fastgw.toml").write_text(toml)
    result = run_fastgw(["run"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"fastgw.toml: log.access: cannot write {tmp_path}/no/such/dir/access.log: "
                                     f"folder {tmp_path}/no/such/dir does not exist")
