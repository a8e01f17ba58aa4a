"""The command line as a user runs it: ``fastgw check``, ``fastgw explain``, ``--version``
and ``fastgw demo``, each a real subprocess (the installed ``fastgw`` script, or
``python -m fastgw``), with exact output checked.

The demo test runs the demo as a user would (its own process group, Ctrl-C as SIGINT to
the whole group), follows the ``curl`` lines it prints, and checks that nothing of it is
left running afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import fastgw
from fastgw.demo import CONFIG_BEGIN, CONFIG_END, tour
from tests.conftest import ROOT, free_port, wait_port

FASTGW = Path(sys.executable).with_name("fastgw")  # the console script of this environment


def fastgw_cmd(*args: str, cwd: Path, module: bool = False, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """Run the command line to its end: the ``fastgw`` script, or ``python -m fastgw``."""
    argv = [sys.executable, "-m", "fastgw", *args] if module else [str(FASTGW), *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def cells(line: str) -> list[str]:
    """A route-table row split on its column gaps (two spaces or more)."""
    return re.split(r"\s{2,}", line.strip())


CONFIG = """\
[server]
listen = ["127.0.0.1:18080"]

[upstreams.users]
targets = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]

[upstreams.orders]
targets = ["127.0.0.1:9003"]

[[routes]]
name = "users"
hosts = ["api.example.com"]
paths = ["/users/{id}"]
methods = ["GET", "POST"]
upstream = "users"
rewrite = "/v2/users/{id}"

[[routes]]
name = "orders-v2"
paths = ["/orders/*"]
headers = { "x-api-version" = "2" }
upstream = "orders"
priority = 5
timeout = "5s"

[[routes]]
name = "orders"
paths = ["/orders/*"]
upstream = "orders"
strip_prefix = "/orders"
"""


@pytest.fixture
def conf(tmp_path) -> Path:
    (tmp_path / "fastgw.toml").write_text(CONFIG)
    return tmp_path


# -- check -----------------------------------------------------------------------------------


def test_check_prints_the_route_table(conf):
    result = fastgw_cmd("check", cwd=conf)  # the default ./fastgw.toml
    assert (result.returncode, result.stderr) == (0, "")
    digest = hashlib.sha256(CONFIG.encode()).hexdigest()[:12]
    out = lines(result.stdout)
    assert out == [
        f"fastgw.toml: ok (3 routes, 2 upstreams, digest {digest})",
        "",
        "#  ROUTE      HOSTS            METHODS           PATHS        PRI  UPSTREAM → TARGETS",
        "0  users      api.example.com  GET POST (+HEAD)  /users/{id}  0    users → 127.0.0.1:9001, 127.0.0.1:9002*3",
        "   rewrite /v2/users/{id}",
        "1  orders-v2  *                *                 /orders/*    5    orders → 127.0.0.1:9003",
        '   headers x-api-version = "2"',
        "   timeout 5s",
        "2  orders     *                *                 /orders/*    0    orders → 127.0.0.1:9003",
        "   strip_prefix /orders",
        "",
        "UPSTREAM  BALANCE      RETRIES  KEEPALIVE  CONNECT_TIMEOUT  READ_TIMEOUT  TARGETS",
        "users     round_robin  1        64         2s               30s           127.0.0.1:9001, 127.0.0.1:9002*3",
        "orders    round_robin  1        64         2s               30s           127.0.0.1:9003",
    ]
    # Columns line up: every row's cells start where the header's do.
    rows = [line for line in out[3:10] if line[0].isdigit()]
    assert [cells(row)[1] for row in rows] == ["users", "orders-v2", "orders"]
    starts = [out[2].index(name) for name in ("ROUTE", "HOSTS", "METHODS", "PATHS", "PRI", "UPSTREAM")]
    for row in rows:
        assert all(row[i - 1] == " " and row[i] != " " for i in starts), row


FULL_CONFIG = """\
[global]
rate_limit = { rate = "1000/s", burst = 2000 }

[upstreams.a]
targets = ["127.0.0.1:9001", { address = "127.0.0.1:9004", weight = 2 }]
circuit_breaker = { failures = 5, cooldown = "30s" }
health_check = { path = "/healthz", interval = "5s" }

[upstreams.b]
targets = ["127.0.0.1:9002"]
balance = "consistent_hash"
hash_on = "header:x-user"
retries = 0
keepalive = 8
connect_timeout = "250ms"
read_timeout = "500ms"

[upstreams.spare]
targets = ["127.0.0.1:9005"]
health_check = { path = "/up?deep=1", interval = "2s", timeout = "500ms", healthy_threshold = 1, unhealthy_threshold = 4 }

[[routes]]
name = "canary"
paths = ["/c/*"]
methods = ["POST"]
upstream = "a"
strip_prefix = "/c"
timeout = "5s"
max_concurrent = 100
split = [{ upstream = "b", weight = 10 }]
match_split = [{ header = "X-Beta", value = "1", upstream = "b" }, { header = "x-old", value = "yes", upstream = "a" }]

[[routes]]
name = "users"
hosts = ["api.example.com"]
paths = ["/users/{id}"]
methods = ["GET", "HEAD"]
headers = { "x-api-version" = "2" }
upstream = "b"
rewrite = "/v2/users/{id}"
rate_limit = { rate = "600/m", key = "header:X-User", max_keys = 1000 }
"""


def test_check_shows_each_route_and_upstream_whole(tmp_path):
    # Every key the file sets is somewhere in the output: the route's path handling,
    # timeout, policies and splits under its row; each upstream's balance, retries,
    # pool and timeouts in a second table, its health check and circuit breaker beneath.
    (tmp_path / "fastgw.toml").write_text(FULL_CONFIG)
    result = fastgw_cmd("check", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert lines(result.stdout)[2:] == [
        "#  ROUTE   HOSTS            METHODS   PATHS        PRI  UPSTREAM → TARGETS",
        "0  canary  *                POST      /c/*         0    a → 127.0.0.1:9001, 127.0.0.1:9004*2",
        "   strip_prefix /c",
        "   timeout 5s",
        "   rate_limit [global] 1000/s burst 2000 per ip (local) → max_concurrent 100",
        '   match_split x-beta = "1" → b',
        '   match_split x-old = "yes" → a',
        "   split 90% a / 10% b",
        "1  users   api.example.com  GET HEAD  /users/{id}  0    b → 127.0.0.1:9002",
        '   headers x-api-version = "2"',
        "   rewrite /v2/users/{id}",
        "   rate_limit [global] 1000/s burst 2000 per ip (local) → "
        "rate_limit 10/s burst 10 per header:x-user (local, max_keys 1000)",
        "",
        "UPSTREAM  BALANCE                           RETRIES  KEEPALIVE  CONNECT_TIMEOUT  READ_TIMEOUT  TARGETS",
        "a         round_robin                       1        64         2s               30s           "
        "127.0.0.1:9001, 127.0.0.1:9004*2",
        "          health_check GET /healthz every 5s, timeout 1s, healthy after 2 passes, unhealthy after 3 failures",
        "          circuit_breaker 5 failures, cooldown 30s",
        "b         consistent_hash on header:x-user  0        8          0.25s            0.5s          127.0.0.1:9002",
        "spare     round_robin                       1        64         2s               30s           127.0.0.1:9005",
        "          health_check GET /up?deep=1 every 2s, timeout 0.5s, healthy after 1 passes, "
        "unhealthy after 4 failures",
    ]


def test_check_prints_every_error_and_exits_1(tmp_path):
    (tmp_path / "bad.toml").write_text(
        '[server]\nlisten = ["127.0.0.1:99999"]\nworkerz = 2\n\n'
        '[upstreams.users]\ntargets = ["127.0.0.1:9001"]\n\n'
        '[[routes]]\nname = "x"\npaths = ["/x"]\nupstream = "user"\n'
        '[[routes]]\nname = "x"\npaths = ["/y"]\nupstream = "users"\n')
    result = fastgw_cmd("check", "-c", "bad.toml", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    errors = lines(result.stderr)
    assert 'bad.toml: server: unknown key "workerz" (did you mean "workers"?)' in errors
    assert 'bad.toml: server.listen[0]: "127.0.0.1:99999" is not host:port (port > 65535)' in errors
    assert 'bad.toml: routes[0] "x": upstream "user" is not defined (did you mean "users"?)' in errors
    assert any(line.startswith("bad.toml: routes[1]") and "x" in line for line in errors), errors
    assert len(errors) == 4, errors


def test_check_of_a_missing_file_exits_1(tmp_path):
    result = fastgw_cmd("check", "-c", "nope.toml", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == "nope.toml: cannot read the file: No such file or directory"


def test_check_refuses_an_access_log_run_could_not_open(tmp_path):
    (tmp_path / "fastgw.toml").write_text(CONFIG + '\n[log]\naccess = "missing/dir/access.log"\n')
    result = fastgw_cmd("check", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == (f"fastgw.toml: log.access: cannot write {tmp_path}/missing/dir/access.log: "
                                     f"folder {tmp_path}/missing/dir does not exist")


def test_check_creates_no_log_file(tmp_path):
    (tmp_path / "fastgw.toml").write_text(CONFIG + '\n[log]\naccess = "access.log"\nerror = "error.log"\n')
    result = fastgw_cmd("check", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fastgw.toml"]


def test_check_prints_the_config_warnings(tmp_path):
    (tmp_path / "fastgw.toml").write_text(
        '[upstreams.a]\ntargets = ["127.0.0.1:9001"]\n[[routes]]\nname = "users"\npaths = ["/users/:id"]\n'
        'upstream = "a"\n')
    result = fastgw_cmd("check", cwd=tmp_path)
    assert result.returncode == 0
    assert lines(result.stderr) == [
        'warning: fastgw.toml: routes[0] "users".paths[0]: "/users/:id" is matched literally (":id" is not a '
        'parameter); did you mean "/users/{id}"?']
    (tmp_path / "fastgw.toml").write_text("")
    result = fastgw_cmd("check", cwd=tmp_path)
    assert result.returncode == 0
    assert lines(result.stderr) == [
        "warning: fastgw.toml: no routes: every request will be answered 404 (add a [[routes]] table)"]


def test_check_warns_about_a_shadowed_route(tmp_path):
    (tmp_path / "fastgw.toml").write_text(
        '[upstreams.a]\ntargets = ["127.0.0.1:9001"]\n'
        '[[routes]]\nname = "first"\npaths = ["/users/{id}"]\nmethods = ["GET"]\nupstream = "a"\n'
        '[[routes]]\nname = "other"\npaths = ["/other"]\nupstream = "a"\n'
        '[[routes]]\nname = "second"\npaths = ["/users/{uid}"]\nmethods = ["GET"]\nupstream = "a"\n')
    result = fastgw_cmd("check", cwd=tmp_path)
    assert result.returncode == 0  # a warning, not an error
    assert lines(result.stdout)[0].startswith("fastgw.toml: ok (3 routes, 1 upstreams, digest ")
    warnings = lines(result.stderr)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith('warning: fastgw.toml: routes[2] "second" can never match: '
                                  'shadowed by routes[0] "first" (')


# -- explain ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])  # HEAD takes a GET route
def test_explain_shows_candidates_route_params_and_upstream(conf, method):
    result = fastgw_cmd("explain", method, "http://api.example.com/users/7", "-H", "x: y", cwd=conf)
    assert (result.returncode, result.stderr) == (0, "")
    assert lines(result.stdout) == [
        f"request: {method} host=api.example.com path=/users/7",
        "candidates, in the order tried:",
        '  route "users" pattern /users/{id} host api.example.com : path matches, selected',
        'result: route "users" (routes[0]) pattern /users/{id}',
        "params: id=7",
        "policies: none",
        "upstream: users [127.0.0.1:9001, 127.0.0.1:9002] path /v2/users/7",
    ]


def test_explain_lists_the_policy_chain(tmp_path):
    (tmp_path / "fastgw.toml").write_text(
        '[cluster]\nredis = "redis://127.0.0.1:6379/0"\n'
        '[global]\nrate_limit = { rate = "1000/s", burst = 2000 }\n'
        '[upstreams.users]\ntargets = ["127.0.0.1:9001"]\n'
        '[[routes]]\nname = "users"\npaths = ["/users/{id}"]\nupstream = "users"\nmax_concurrent = 100\n'
        'rate_limit = { rate = "600/m", key = "header:X-User", scope = "cluster" }\n')
    result = fastgw_cmd("explain", "GET", "/users/1", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert ("policies: rate_limit [global] 1000/s burst 2000 per ip (local) → rate_limit 10/s burst 10 "
            "per header:x-user (cluster) → max_concurrent 100") in lines(result.stdout)


def test_explain_walks_past_a_header_condition(conf):
    result = fastgw_cmd("explain", "-c", "fastgw.toml", "GET", "/orders/a/b", "-H", "X-Api-Version: 3", cwd=conf)
    assert (result.returncode, result.stderr) == (0, "")
    assert lines(result.stdout) == [
        "request: GET host=(none) path=/orders/a/b",
        "candidates, in the order tried:",
        "  route \"orders-v2\" pattern /orders/* host * : path matches, header x-api-version is '3', not '2'",
        '  route "orders" pattern /orders/* host * : path matches, selected',
        'result: route "orders" (routes[2]) pattern /orders/*',
        "params: *=a/b",
        "policies: none",
        "upstream: orders [127.0.0.1:9003] path /a/b",
    ]
    matched = fastgw_cmd("explain", "GET", "http://API.example.com:8080/orders/a/../b?x=1&y", "-H",
                         "x-api-version: 2", cwd=conf)
    assert matched.returncode == 0
    out = lines(matched.stdout)
    assert out[0] == "request: GET host=api.example.com path=/orders/b (normalised from /orders/a/../b)"
    assert 'result: route "orders-v2" (routes[1]) pattern /orders/*' in out
    assert out[-1] == "upstream: orders [127.0.0.1:9003] path /orders/b?x=1&y timeout 5s"


SPLIT_CONFIG = """\
[upstreams.a]
targets = ["127.0.0.1:9001"]

[upstreams.b]
targets = ["127.0.0.1:9002"]

[[routes]]
name = "beta"
paths = ["/c/*"]
upstream = "a"
strip_prefix = "/c"
match_split = [{ header = "x-beta", value = "1", upstream = "b" }]

[[routes]]
name = "canary"
paths = ["/s/*"]
upstream = "a"
timeout = "5s"
split = [{ upstream = "b", weight = 10 }]
match_split = [{ header = "x-beta", value = "1", upstream = "b" }]
"""


@pytest.mark.parametrize(("args", "upstream"), [
    (["-H", "x-beta: 1"], 'b [127.0.0.1:9002] (match_split: x-beta = "1")'),
    (["-H", "X-Beta:1"], 'b [127.0.0.1:9002] (match_split: x-beta = "1")'),  # the name in any case
    (["-H", "x-beta: 2"], "a [127.0.0.1:9001] (no match_split matched)"),
    (["-H", "x-beta: 2", "-H", "x-beta: 1"], "a [127.0.0.1:9001] (no match_split matched)"),  # the first decides
    ([], "a [127.0.0.1:9001] (no match_split matched)"),
])
def test_explain_follows_match_split_as_the_proxy_does(tmp_path, args, upstream):
    (tmp_path / "f.toml").write_text(SPLIT_CONFIG)
    result = fastgw_cmd("explain", "-c", "f.toml", "GET", "/c/x", *args, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert lines(result.stdout)[-1] == f"upstream: {upstream} path /x"


def test_explain_shows_the_shares_of_a_split(tmp_path):
    # Which share a given request takes depends on the requests before it: explain gives
    # the shares pick_upstream turns between; a matching match_split header still decides.
    (tmp_path / "f.toml").write_text(SPLIT_CONFIG)
    result = fastgw_cmd("explain", "-c", "f.toml", "GET", "/s/x?q=1", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert lines(result.stdout)[-1] == ("upstream: split 90% a [127.0.0.1:9001] / 10% b [127.0.0.1:9002] "
                                        "(no match_split matched) path /s/x?q=1 timeout 5s")
    result = fastgw_cmd("explain", "-c", "f.toml", "GET", "/s/x", "-H", "x-beta: 1", cwd=tmp_path)
    assert lines(result.stdout)[-1] == 'upstream: b [127.0.0.1:9002] (match_split: x-beta = "1") path /s/x timeout 5s'


def test_explain_a_404(conf):
    result = fastgw_cmd("explain", "GET", "http://other.example.com/users/7", cwd=conf)
    assert (result.returncode, result.stderr) == (1, "")
    assert lines(result.stdout) == [
        "request: GET host=other.example.com path=/users/7",
        "candidates, in the order tried:",
        "  host * : no pattern matches /users/7",
        "  404: no route for host 'other.example.com' path /users/7",
        "result: 404 no route",
    ]


def test_explain_a_405(conf):
    result = fastgw_cmd("explain", "DELETE", "http://api.example.com/users/7", cwd=conf)
    assert (result.returncode, result.stderr) == (1, "")
    assert lines(result.stdout) == [
        "request: DELETE host=api.example.com path=/users/7",
        "candidates, in the order tried:",
        '  route "users" pattern /users/{id} host api.example.com : path matches, method DELETE not in GET, HEAD, POST',
        "  host * : no pattern matches /users/7",
        "  405: the path is routed but not for DELETE (Allow: GET, HEAD, POST)",
        "result: 405 method not allowed (Allow: GET, HEAD, POST)",
    ]


def test_explain_refuses_a_malformed_header_argument(conf):
    result = fastgw_cmd("explain", "GET", "/x", "-H", "no-colon", cwd=conf)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.strip() == "fastgw: -H wants \"NAME: VALUE\", got 'no-colon'"


def test_version_with_python_m(tmp_path):
    result = fastgw_cmd("--version", cwd=tmp_path, module=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"fastgw {fastgw.__version__}\n", "")


# -- demo ------------------------------------------------------------------------------------


def _curl(line: str) -> tuple[str, httpx.Response]:
    """Run one ``curl -i ...  # comment`` line of the demo's tour as printed (curl is a CI
    dependency for exactly this), and return "METHOD /target" (" BODY" after it for a
    ``-d BODY`` line) and the parsed response."""
    argv = shlex.split(line, comments=True)
    assert argv[:2] == ["curl", "-i"], line
    result = subprocess.run([argv[0], "-sS", "--max-time", "10", *argv[1:]], capture_output=True, timeout=15)
    assert result.returncode == 0, (line, result.stderr)
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    response = httpx.Response(int(status_line.split()[1]), headers=[tuple(h.split(": ", 1)) for h in header_lines],
                              content=body)
    method = argv[argv.index("-X") + 1] if "-X" in argv else "GET"
    h2 = " (h2)" if status_line.startswith("HTTP/2 ") else ""
    # (HTTP/2 when the line asks for it, and over TLS, where curl offers h2 by ALPN)
    assert bool(h2) == ("--http2-prior-knowledge" in argv or argv[-1].startswith("https://")), (line, status_line)
    data = f" {argv[argv.index('-d') + 1]}" if "-d" in argv else ""
    return f"{method} {re.sub(r'^http://[^/]+', '', argv[-1])}{h2}{data}", response


def _alive(pid: int) -> bool:
    """Running (a zombie is not: it has exited and waits for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = {int(p) for p in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


# The tour's bank lines, as _curl names them, and the banks once the tour ran them in order.
TRANSFER = 'POST /transfer {"from":"alice","to":"carol","amount":30}'
TRANSFER_TO_NOBODY = 'POST /transfer {"from":"alice","to":"nobody","amount":30}'
BALANCES_AFTER_THE_TOUR = {"bank_a": {"bank": "bank_a", "balances": {"alice": 70, "bob": 20}},
                           "bank_b": {"bank": "bank_b", "balances": {"carol": 80}}}


@pytest.mark.slow
def test_demo_serves_the_printed_curl_lines_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "demo", "--port", str(port)],
                            stdout=out.open("wb"), stderr=err.open("wb"), stdin=subprocess.DEVNULL,
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            start_new_session=True)  # its own process group, as in a terminal
    try:
        wait_port(port, proc=proc)
        tour = _wait(lambda: "Stop with Ctrl-C." in err.read_text() and err.read_text(), 10, "the tour")
        tried = dict(_curl(line) for line in tour.splitlines() if line.lstrip().startswith("curl "))
        with httpx.Client(timeout=10.0) as client:
            ids = {r.headers["x-request-id"] for r in tried.values()}
            served_by = [client.get(f"http://127.0.0.1:{port}/users").json()["served_by"] for _ in range(8)]

        assert {k: r.status_code for k, r in tried.items()} == {
            "GET /users": 200, "GET /users/2": 200, "GET /users/2 (h2)": 200, "GET /profile/3": 200, "GET /api/orders?x=1": 200,
            "GET /api/../users/1": 200, "GET /anything": 200, "DELETE /users/1": 405, "GET /nowhere": 404,
            "GET /broken": 502, "GET /slow": 504, "GET /tenants/hello": 200, "OPTIONS /api/x": 204,
            TRANSFER: 200, TRANSFER_TO_NOBODY: 502, "GET /balances": 200}
        assert len(ids) == len(tried)
        assert tried["GET /users/2"].json() == {"served_by": tried["GET /users/2"].json()["served_by"],
                                                "id": 2, "name": "Alan Turing"}
        assert tried["GET /profile/3"].json()["name"] == "Grace Hopper"  # rewritten to /users/3
        assert tried["GET /api/../users/1"].json()["name"] == "Ada Lovelace"  # not the api route
        echo = tried["GET /api/orders?x=1"].json()
        assert (echo["service"], echo["path"], echo["query"]) == ("echo", "/orders", "x=1")
        assert echo["headers"]["x-gateway"] == "fastgw " + tried["GET /api/orders?x=1"].headers["x-request-id"]
        assert tried["GET /tenants/hello"].json()["headers"]["x-tenant"] == "acme"  # the example plugin
        assert tried["OPTIONS /api/x"].headers["access-control-allow-origin"] == "http://localhost:3000"
        assert tried["GET /anything"].json()["path"] == "/anything"  # the host-only route
        assert tried["DELETE /users/1"].headers["allow"] == "GET, HEAD, POST"  # HEAD wherever GET is
        for key, status, error in (("GET /nowhere", 404, "no route"), ("DELETE /users/1", 405, "method not allowed")):
            r = tried[key]
            assert r.json() == {"error": error, "status": status, "request_id": r.headers["x-request-id"]}
        assert tried["GET /broken"].json()["error"] == "upstream unavailable"  # the address only in the log
        assert sorted(served_by) == ["users-a"] * 2 + ["users-b"] * 6  # weights 1:3
        assert tried["GET /users"].headers["ratelimit-limit"] == "20"  # the users route's limit
        # The bank transfer (in the tour's order): 30 moved, then a failed one compensated.
        assert tried[TRANSFER].json()["deposit"] == {"bank": "bank_b", "account": "carol", "balance": 80}
        failed = tried[TRANSFER_TO_NOBODY].json()
        assert (failed["failed"]["call"], failed["compensations"][0]["outcome"]) == ("deposit", "ok")
        assert tried["GET /balances"].json() == BALANCES_AFTER_THE_TOUR

        records = _wait(lambda: len(out.read_text().splitlines()) >= len(tried) + 8
                        and [json.loads(line) for line in out.read_text().splitlines()], 5, "the access log")
        backend_ports = {int(rec["upstream"].rsplit(":", 1)[1]) for rec in records
                         if rec["upstream"] and rec["route"] != "broken"}
        assert len(backend_ports) == 5  # users-a, users-b, echo, bank-a, bank-b
        family = _descendants(proc.pid)
        assert len(family) == 2  # the backends' process and one worker

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    stderr = err.read_text()
    assert "Traceback" not in stderr and stderr.rstrip().endswith("INFO stopped")
    assert stderr.count(": healthy (check: status 200)") == 2  # users-a and users-b, each once

    # The config it printed is the one it ran, ports filled in: `fastgw check` takes it
    # as is, and none of the demo's {placeholders} is left (a path's "{id}" and a
    # header's "{request_id}" are the config's own syntax).
    config = stderr.split(CONFIG_BEGIN + "\n", 1)[1].split(CONFIG_END, 1)[0]
    assert f'listen = ["127.0.0.1:{port}"]' in config
    assert not re.findall(r"\{(port|examples|users_a|users_b|echo|bank_a|bank_b|dead)\}", config)
    (tmp_path / "demo.toml").write_text(config)
    result = fastgw_cmd("check", "-c", "demo.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("demo.toml: ok (9 routes, 5 upstreams")
    _wait(lambda: not any(_alive(pid) for pid in family), 5, "the demo's processes to end")
    for backend_port in backend_ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", backend_port), timeout=1).close()


def test_demo_on_a_port_in_use_exits_3_and_leaves_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "fastgw", "demo", "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    assert proc.returncode == 3  # cannot bind (server.EXIT_START)
    assert stderr.decode().strip() == f"fastgw: cannot listen on 127.0.0.1:{port}: Address already in use"
    # The backends' process was stopped, not orphaned: nothing is left in the group.
    _wait(lambda: not any(_alive(int(p.name)) for p in Path("/proc").iterdir()
                          if p.name.isdigit() and _pgid(int(p.name)) == proc.pid), 5, "the group to end")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_demo_serves_https_with_a_certificate_it_makes(tmp_path):
    port, tls_port = free_port(), free_port()
    err = tmp_path / "stderr"
    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "demo", "--port", str(port), "--tls-port", str(tls_port)],
                            stdout=subprocess.DEVNULL, stderr=err.open("wb"), stdin=subprocess.DEVNULL, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True)
    try:
        wait_port(tls_port, proc=proc)
        tour = _wait(lambda: "curl -i --cacert" in err.read_text() and err.read_text(), 10, "the tour")
        (line,) = [x for x in tour.splitlines() if "curl -i --cacert" in x]
        key, response = _curl(line)  # curl checks the certificate against the demo's own
        assert (key, response.status_code) == (f"GET https://127.0.0.1:{tls_port}/users/2 (h2)", 200)
        assert response.json()["name"] == "Alan Turing"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.slow
def test_demo_bank_transfer_compensates_and_its_banks_apply_an_idempotency_key_once(tmp_path):
    """The demo's aggregate routes end to end (gateway and banks real processes): a
    transfer moves money, a failed deposit is compensated, a client's retry under the same
    X-Request-Id moves nothing twice; and a bank, called directly, applies a key once and
    keeps its balances right under concurrent requests."""
    port = free_port()
    err = tmp_path / "stderr"
    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "demo", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=err.open("wb"), stdin=subprocess.DEVNULL, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True)
    try:
        wait_port(port, proc=proc)
        tour = _wait(lambda: "Stop with Ctrl-C." in err.read_text() and err.read_text(), 10, "the tour")
        config = tomllib.loads(tour.split(CONFIG_BEGIN + "\n", 1)[1].split(CONFIG_END, 1)[0])
        gateway = f"http://127.0.0.1:{port}"
        bank_a = "http://" + config["upstreams"]["bank_a"]["targets"][0]  # the bank itself, not via fastgw
        with httpx.Client(timeout=10.0) as client:

            def balances() -> dict:
                response = client.get(gateway + "/balances")
                assert response.status_code == 200, response.text
                assert {bank: doc["bank"] for bank, doc in response.json().items()} == {"bank_a": "bank_a",
                                                                                          "bank_b": "bank_b"}
                return {bank: doc["balances"] for bank, doc in response.json().items()}

            def transfer(document: dict, **headers: str) -> httpx.Response:
                return client.post(gateway + "/transfer", json=document, headers=headers)

            assert balances() == {"bank_a": {"alice": 100, "bob": 20}, "bank_b": {"carol": 50}}

            done = transfer({"from": "alice", "to": "carol", "amount": 30})
            assert done.status_code == 200, done.text
            assert done.json() == {"balance": {"bank": "bank_a", "account": "alice", "balance": 100},
                                   "withdraw": {"bank": "bank_a", "account": "alice", "balance": 70},
                                   "deposit": {"bank": "bank_b", "account": "carol", "balance": 80}}
            moved = {"bank_a": {"alice": 70, "bob": 20}, "bank_b": {"carol": 80}}
            assert balances() == moved

            failed = transfer({"from": "alice", "to": "nobody", "amount": 30})
            assert failed.json() == {"error": "call 'deposit' failed",
                                     "failed": {"call": "deposit", "status": 404, "error": "no account nobody"},
                                     "compensations": [{"call": "withdraw", "status": 200, "outcome": "ok"}],
                                     "status": 502, "request_id": failed.headers["x-request-id"]}
            assert failed.status_code == 502
            assert balances() == moved  # withdrawn, then deposited back: alice has her 30

            poor = transfer({"from": "bob", "to": "carol", "amount": 50})  # bob has 20
            assert (poor.status_code, poor.json()["failed"], poor.json()["compensations"]) == (
                502, {"call": "withdraw", "status": 409, "error": "insufficient funds"}, [])
            incomplete = transfer({"from": "alice", "amount": 5})  # nothing is sent upstream
            assert (incomplete.status_code, incomplete.json()["error"]) == (400, "missing template value {body.to}")
            assert balances() == moved

            # A client that retries under its own X-Request-Id: the calls carry the same
            # Idempotency-Keys, so the banks answer the retry from what they stored.
            first = transfer({"from": "alice", "to": "carol", "amount": 5}, **{"x-request-id": "retry-1"})
            again = transfer({"from": "alice", "to": "carol", "amount": 5}, **{"x-request-id": "retry-1"})
            assert first.status_code == again.status_code == 200, (first.text, again.text)
            assert again.json()["withdraw"] == first.json()["withdraw"] == {"bank": "bank_a", "account": "alice",
                                                                              "balance": 65}
            assert again.json()["deposit"] == {"bank": "bank_b", "account": "carol", "balance": 85}
            assert balances() == {"bank_a": {"alice": 65, "bob": 20}, "bank_b": {"carol": 85}}

            # The bank directly: a key is applied once, its answer replayed; another request under it is a 422.
            key = {"idempotency-key": "direct-1"}
            one = client.post(bank_a + "/accounts/bob/deposit", json={"amount": 5}, headers=key)
            two = client.post(bank_a + "/accounts/bob/deposit", json={"amount": 5}, headers=key)
            assert (one.status_code, one.json(), "idempotent-replayed" in one.headers) == (
                200, {"bank": "bank_a", "account": "bob", "balance": 25}, False)
            assert (two.status_code, two.json(), two.headers.get("idempotent-replayed")) == (200, one.json(), "true")
            assert client.post(bank_a + "/accounts/bob/deposit", json={"amount": 6}, headers=key).status_code == 422
            assert client.post(bank_a + "/accounts/bob/withdraw", json={"amount": 5}, headers=key).status_code == 422
            assert client.get(bank_a + "/accounts/bob/balance").json()["balance"] == 25
            # Without a key, each POST is applied.
            assert [client.post(bank_a + "/accounts/bob/deposit", json={"amount": 1}).json()["balance"]
                    for _ in range(2)] == [26, 27]

            for amount in (0, -3, "5", 1.5, True, None):
                response = client.post(bank_a + "/accounts/bob/deposit", json={"amount": amount})
                assert response.status_code == 400, (amount, response.text)
            assert client.post(bank_a + "/accounts/bob/deposit", content=b"not json").status_code == 400
            unknown = client.post(bank_a + "/accounts/zed/withdraw", json={"amount": 1})
            assert (unknown.status_code, unknown.json()) == (404, {"error": "no account zed"})
            assert client.get(bank_a + "/accounts").json() == {"bank": "bank_a", "balances": {"alice": 65, "bob": 27}}

        # Concurrent requests: 20 withdrawals of 10 from alice's 65 leave 5 (6 applied,
        # 14 refused), and 10 deposits under one key are applied once.
        def post(path: str, headers: dict | None = None) -> httpx.Response:
            with httpx.Client(timeout=10.0) as own:
                return own.post(bank_a + path, json={"amount": 10}, headers=headers)

        with ThreadPoolExecutor(20) as pool:
            withdrawals = list(pool.map(lambda _: post("/accounts/alice/withdraw"), range(20)))
            deposits = list(pool.map(lambda _: post("/accounts/bob/deposit", {"idempotency-key": "once"}), range(10)))
        assert sorted(r.status_code for r in withdrawals) == [200] * 6 + [409] * 14
        assert {r.json()["balance"] for r in deposits} == {37}
        assert [r.headers.get("idempotent-replayed") for r in deposits].count(None) == 1
        assert httpx.get(bank_a + "/accounts", timeout=10.0).json()["balances"] == {"alice": 5, "bob": 37}

        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert "Traceback" not in err.read_text()


def test_the_docs_bank_lines_are_the_ones_the_demo_prints():
    """README and docs/aggregation.md show the demo's bank lines as its tour prints them on
    the default port, so they are the lines the demo's own test runs."""
    printed = [shlex.split(line, comments=True) for line in tour(8080, "").splitlines()
               if line.lstrip().startswith("curl ")]
    for doc in (ROOT / "README.md", ROOT / "docs" / "aggregation.md"):
        shown = [shlex.split(line, comments=True) for line in doc.read_text().splitlines()
                 if line.startswith("curl -i ") and re.search(r"/(transfer|balances)\b", line)]
        assert len(shown) == 3, (doc.name, shown)
        assert [argv for argv in shown if argv not in printed] == [], doc.name
