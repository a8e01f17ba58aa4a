"""What an operator does to a running gateway, end to end: rotating its logs (SIGUSR1, and
SIGHUP), killing its supervisor however it dies (no worker may be left holding the port),
reading the error log to learn why a request failed (while the client learns nothing of
the inside of the network), and reloads whose warnings say what is bound.

Each test runs ``fastgw run`` as a real process against real backends on 127.0.0.1; every
wait is a bounded poll.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import config_for, free_port
from tests.test_server import children, fresh_get, prefix, run_fastgw, wait_for


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def two_worker_prefixes(url: str) -> set[str]:
    """Request on new connections until both workers answered (their id prefixes)."""
    seen: set[str] = set()
    for _ in range(200):
        seen.add(prefix(fresh_get(url + "/echo").headers["x-request-id"]))
        if len(seen) == 2:
            break
    assert len(seen) == 2
    return seen


def logged_ids(path: Path) -> set[str]:
    return {prefix(json.loads(line)["request_id"]) for line in lines_of(path)}


# -- log rotation ----------------------------------------------------------------------------


def test_sigusr1_reopens_the_access_and_error_logs_of_every_process(backend, gateway, tmp_path):
    toml, port = config_for(backend, server="workers = 2",
                            log='access = "access.log"\nerror = "error.log"')
    gw = gateway(toml, port)
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    workers = wait_for(lambda: len(children(gw.proc.pid)) == 2 and children(gw.proc.pid), what="2 workers")
    prefixes = two_worker_prefixes(gw.url)
    wait_for(lambda: logged_ids(access) == prefixes, what="both workers' lines in access.log")

    # logrotate: move the files away, then SIGUSR1 (what it sends nginx).
    access.rename(tmp_path / "access.log.1")
    error.rename(tmp_path / "error.log.1")
    gw.signal(signal.SIGUSR1)
    wait_for(lambda: "log files reopened" in error.read_text() if error.exists() else False,
             what="the supervisor's line in the new error.log")
    time.sleep(0.3)  # the workers take the signal on their loops
    before = len(lines_of(tmp_path / "access.log.1"))
    assert two_worker_prefixes(gw.url) == prefixes
    wait_for(lambda: logged_ids(access) == prefixes, what="both workers writing to the new access.log")
    assert len(lines_of(tmp_path / "access.log.1")) == before

    # The workers' error log lines go to the new file too, and nobody died of SIGUSR1.
    dead = free_port()
    gw.reload(config_for({"app": backend}, port=port, server="workers = 2",
                         log='access = "access.log"\nerror = "error.log"',
                         routes=f'[upstreams.dead]\ntargets = ["127.0.0.1:{dead}"]\n'
                                '[[routes]]\nname = "dead"\npaths = ["/dead"]\nupstream = "dead"\n'
                                '[[routes]]\nname = "all"\npaths = ["/*"]\nupstream = "app"\n')[0])
    wait_for(lambda: error.read_text().count("INFO reloaded") == 2, what="both workers reloaded")
    for _ in range(6):
        assert fresh_get(gw.url + "/dead").status_code == 502
    wait_for(lambda: f"target 127.0.0.1:{dead}: connect to 127.0.0.1:{dead} refused" in error.read_text(),
             what="the failure in the new error.log")
    assert "refused" not in (tmp_path / "error.log.1").read_text()
    assert gw.proc.poll() is None and children(gw.proc.pid) == workers
    assert gw.stop() == 0


def test_sighup_after_a_move_writes_to_a_new_access_log(backend, gateway, tmp_path):
    toml, port = config_for(backend, log='access = "access.log"')
    gw = gateway(toml, port)
    access = tmp_path / "access.log"
    assert fresh_get(gw.url + "/echo?before").status_code == 200
    wait_for(lambda: lines_of(access), what="the first line")
    access.rename(tmp_path / "access.log.1")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "INFO reloaded" in gw.stderr, what="the reload")
    assert fresh_get(gw.url + "/echo?after").status_code == 200
    wait_for(lambda: lines_of(access), what="a line in the new access.log")
    assert [json.loads(line)["path"] for line in lines_of(access)] == ["/echo"]
    assert len(lines_of(tmp_path / "access.log.1")) == 1


# -- workers never outlive their supervisor --------------------------------------------------


@pytest.mark.parametrize("signo", [signal.SIGKILL, signal.SIGUSR2, signal.SIGALRM],
                         ids=lambda s: signal.Signals(s).name)
def test_workers_leave_with_their_supervisor_however_it_dies(backend, gateway, tmp_path, signo):
    toml, port = config_for(backend, server="workers = 2")
    gw = gateway(toml, port)
    workers = wait_for(lambda: len(children(gw.proc.pid)) == 2 and children(gw.proc.pid), what="2 workers")
    os.kill(gw.proc.pid, signo)
    gw.proc.wait(5)
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10, what="the workers gone")
    # The port is free: a new gateway starts on it.
    again = gateway(toml, port)
    assert fresh_get(again.url + "/echo").status_code == 200


def test_sigquit_drains_like_sigterm(backend, gateway):
    toml, port = config_for(backend, server="workers = 2")
    gw = gateway(toml, port)
    wait_for(lambda: len(children(gw.proc.pid)) == 2, what="2 workers")
    gw.signal(signal.SIGQUIT)
    assert gw.proc.wait(10) == 0
    assert "died" not in gw.stderr and "draining" in gw.stderr


# -- the error log, and what the client is told ----------------------------------------------


def error_body(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error", "status", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def gateway_to(gateway, backend, name: str, target: str, extra: str = ""):
    """A gateway whose route NAME, path /NAME, goes to the upstream NAME of one ``target``."""
    toml, port = config_for(backend, log='access = "off"', routes=(
        f'[upstreams.{name}]\ntargets = ["{target}"]\n{extra}\n'
        f'[[routes]]\nname = "{name}"\npaths = ["/{name}"]\nupstream = "{name}"\n'))
    return gateway(toml, port)


def test_a_refused_connect_is_a_generic_502_and_a_detailed_error_line(backend, gateway):
    dead = free_port()
    gw = gateway_to(gateway, backend, "gone", f"127.0.0.1:{dead}")
    r = fresh_get(gw.url + "/gone")
    assert r.status_code == 502
    body = error_body(r)
    assert body["error"] == "upstream unavailable"
    assert "127.0.0.1" not in r.text and str(dead) not in r.text
    line = wait_for(lambda: [x for x in gw.stderr.splitlines() if body["request_id"] in x], what="the error line")
    assert len(line) == 1
    assert re.search(rf" ERROR request {re.escape(body['request_id'])} route gone upstream gone "
                     rf"target 127.0.0.1:{dead}: connect to 127.0.0.1:{dead} refused; answered 502$", line[0])


def test_an_unresolvable_target_names_no_host_to_the_client(backend, gateway):
    gw = gateway_to(gateway, backend, "nowhere", "backend.invalid:80", extra='connect_timeout = "1s"')
    r = fresh_get(gw.url + "/nowhere")
    assert r.status_code in (502, 504)  # a resolver that answers, or one that never does
    body = error_body(r)
    assert body["error"] in ("upstream unavailable", "upstream timed out")
    assert "invalid" not in r.text and "Name or service" not in r.text
    wait_for(lambda: f"request {body['request_id']} route nowhere upstream nowhere target backend.invalid:80: "
                     "connect to backend.invalid:80" in gw.stderr, what="the error line")


def test_a_timeout_is_a_generic_504_and_a_retry_is_a_warning(make_backend, gateway):
    slow, good = make_backend("slow"), make_backend("good")
    dead = free_port()
    toml, port = config_for({"slow": slow, "pair": good}, routes="""
        [[routes]]
        name = "slow"
        paths = ["/hang"]
        upstream = "slow"
        [[routes]]
        name = "pair"
        paths = ["/echo"]
        upstream = "pair"
        """, log='access = "off"', upstream_extra='read_timeout = "500ms"\n')
    # The pair: a dead target first, then the good one (round robin starts at the first).
    toml = toml.replace(f'targets = ["{good.address}"]', f'targets = ["127.0.0.1:{dead}", "{good.address}"]')
    gw = gateway(toml, port)
    r = fresh_get(gw.url + "/hang")
    assert r.status_code == 504
    body = error_body(r)
    assert body["error"] == "upstream timed out" and slow.address not in r.text
    wait_for(lambda: f"ERROR request {body['request_id']} route slow upstream slow target {slow.address}: "
                     "upstream did not answer in time; answered 504" in gw.stderr, what="the timeout line")
    ids = [fresh_get(gw.url + "/echo").headers["x-request-id"] for _ in range(2)]
    retried = wait_for(lambda: [x for x in gw.stderr.splitlines() if "retrying on" in x], what="a retry line")
    assert len(retried) == 1 and " WARNING request " in retried[0] and retried[0].split("request ")[1].split()[0] in ids
    assert f"target 127.0.0.1:{dead}: connect to 127.0.0.1:{dead} refused; retrying on {good.address}" in retried[0]


def test_error_log_to_a_file_at_level_error_leaves_warnings_out(backend, gateway, tmp_path):
    dead = free_port()
    toml, port = config_for(backend, log='access = "off"\nerror = "logs/errors.log"\nlevel = "error"',
                            upstream_extra="")
    toml = toml.replace(f'targets = ["{backend.address}"]', f'targets = ["127.0.0.1:{dead}", "{backend.address}"]')
    toml = toml.replace(f'targets = ["127.0.0.1:{dead}", "{backend.address}"]',
                        f'targets = ["127.0.0.1:{dead}", "{backend.address}"]\nretries = 0')
    (tmp_path / "logs").mkdir()
    gw = gateway(toml, port)
    statuses = sorted(fresh_get(gw.url + "/echo").status_code for _ in range(2))
    assert statuses == [200, 502]
    errors = tmp_path / "logs" / "errors.log"
    wait_for(lambda: "answered 502" in errors.read_text(), what="the 502 in the file")
    text = errors.read_text()
    assert " INFO " not in text and " WARNING " not in text  # not even "listening on"
    assert gw.stderr == ""


def test_level_warning_leaves_the_info_lines_out(backend, gateway):
    toml, port = config_for(backend, log='access = "off"\nlevel = "warning"')
    gw = gateway(toml, port)
    gw.reload(toml.replace('paths = ["/*"]', 'paths = ["/echo/*"]'))
    wait_for(lambda: fresh_get(gw.url + "/count").status_code == 404, what="the reload applied")
    assert gw.stop() == 0
    assert gw.stderr == ""  # no "listening on", "reloaded", "draining", "stopped": all INFO


def test_access_log_to_stderr_in_any_case_creates_no_file(backend, gateway, tmp_path):
    toml, port = config_for(backend, log='access = "STDERR"')
    gw = gateway(toml, port)
    r = fresh_get(gw.url + "/echo")
    wait_for(lambda: r.headers["x-request-id"] in gw.stderr, what="the access line on stderr")
    line = next(x for x in gw.stderr.splitlines() if r.headers["x-request-id"] in x)
    assert json.loads(line)["status"] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fastgw.toml", "stderr.log", "stdout.log"]
    assert gw.access_lines == []


def test_connections_over_max_connections_are_logged(backend, gateway):
    toml, port = config_for(backend, server="max_connections = 1", log='access = "off"')
    gw = gateway(toml, port)
    time.sleep(0.3)  # the gateway sees the start-up probe's connection close
    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        held.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")  # served: it holds the one place
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as extra:
                extra.settimeout(2)
                assert extra.recv(1) == b""  # closed unanswered
        line = wait_for(lambda: re.search(r"WARNING (\d+) connection\(s\) closed unanswered: "
                                          r"max_connections \(1\) reached", gw.stderr), what="the warning")
        assert int(line.group(1)) >= 1
    finally:
        held.close()


# -- reload ----------------------------------------------------------------------------------


def test_reload_warns_with_the_bound_values_and_only_while_they_differ(backend, gateway):
    toml, port = config_for(backend)
    gw = gateway(toml, port)
    other = free_port()
    gw.reload(toml.replace(f"127.0.0.1:{port}", f"127.0.0.1:{other}").replace("[server]", "[server]\nworkers = 2"))
    wait_for(lambda: gw.stderr.count("INFO reloaded") == 1, what="the first reload")
    assert (f"WARNING server.listen is now 127.0.0.1:{other}, but 127.0.0.1:{port} stays bound until the next "
            "restart") in gw.stderr
    assert "WARNING server.workers is now 2, but 1 keep running until the next restart" in gw.stderr
    gw.reload(toml)  # back to what is bound
    wait_for(lambda: gw.stderr.count("INFO reloaded") == 2, what="the second reload")
    assert gw.stderr.count("server.listen is now") == 1 and gw.stderr.count("server.workers is now") == 1
    assert fresh_get(gw.url + "/echo").status_code == 200


# -- fastgw reload | stop | reopen -----------------------------------------------------------


def test_reload_reopen_and_stop_find_the_gateway_through_its_pid_file(backend, gateway, tmp_path):
    toml, port = config_for(backend, server='pid_file = "run/fastgw.pid"')
    (tmp_path / "run").mkdir()
    gw = gateway(toml, port)
    pid_file = tmp_path / "run" / "fastgw.pid"
    wait_for(lambda: pid_file.exists(), what="the pid file")
    assert pid_file.read_text() == f"{gw.proc.pid}\n"

    result = run_fastgw(["reopen"], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"fastgw: sent SIGUSR1 to {gw.proc.pid} (reopen)\n")
    wait_for(lambda: "log files reopened" in gw.stderr, what="the reopen")

    gw.config.write_text(toml + "\n[[routes]]\nname = 'broken'\n")  # no paths, no upstream
    result = run_fastgw(["reload"], cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == "fastgw: reload not sent: the running config stays"
    assert 'routes[1] "broken": missing required key "paths"' in result.stderr
    gw.config.write_text(toml.replace('paths = ["/*"]', 'paths = ["/echo/*"]'))
    result = run_fastgw(["reload"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: fresh_get(gw.url + "/count").status_code == 404, what="the reload applied")
    assert "reload refused" not in gw.stderr

    result = run_fastgw(["stop"], cwd=tmp_path)
    assert result.returncode == 0
    assert gw.proc.wait(10) == 0
    assert not pid_file.exists()
    result = run_fastgw(["stop"], cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, f"fastgw: not running (no pid file {pid_file})\n")


def test_signalling_without_a_pid_file_says_how(backend, tmp_path):
    toml, _ = config_for(backend)
    (tmp_path / "fastgw.toml").write_text(toml)
    result = run_fastgw(["reload"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == ("fastgw: fastgw.toml sets no [server].pid_file, so the running gateway cannot be "
                             "found; set one, or send the supervisor SIGHUP yourself\n")
    (tmp_path / "fastgw.toml").write_text(toml.replace("[server]", '[server]\npid_file = "gw.pid"'))
    (tmp_path / "gw.pid").write_text("999999999\n")
    result = run_fastgw(["stop"], cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, f"fastgw: not running (pid 999999999 of {tmp_path}/gw.pid "
                                                     "is gone)\n")
