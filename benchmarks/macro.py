"""The macro-benchmark suite: fastgw against nginx as a reverse proxy, on 127.0.0.1.

    python benchmarks/macro.py                       # every scenario, -c50 and -c200, 10 s, 3 rounds
    python benchmarks/macro.py --scenario json_4k --scenario post_1k --duration 5
    python benchmarks/macro.py --quick               # CI: 2 s, 1 round, -c50 only

Needs nginx, wrk and h2load (Debian: ``apt-get install nginx-light wrk nghttp2-client``);
exits 2 naming what is missing. For each scenario it starts, on fresh ports:

- the backend: nginx, ``return 200`` with a small body (and a 4 KiB JSON body at
  ``/api/v1/json``), access log off, as many workers as the proxies under test;
- nginx as a reverse proxy: upstream keepalive 64, HTTP/1.1 upstream, access log off (in
  ``small_get_fields``, also set to send the forwarding fields fastgw sends by default);
- fastgw: access log off, upstream keepalive 64, the route table of the scenario;

(the ``websocket`` scenario: a ``websockets`` echo backend, both proxies set to tunnel to
it, and benchmarks/websocket_load.py's client instead of wrk, counting round trips; the
``aggregate`` scenario: no nginx proxy, fastgw with a parallel aggregate route of three
calls, measured against wrk calling the backend directly, with fastgw's CPU per request
from /proc: ``measure_aggregate``);
checks that both proxies give the backend's answer to the scenario's request, then, for
each load (``wrk -t1 -cC -dDs --latency``; for the HTTP/2 scenarios ``h2load -t1 -cC -mM
-DD`` over cleartext HTTP/2 by prior knowledge, its per-request log giving p50 and p99),
warms each side and runs them interleaved
(A B A B ...) ``--rounds`` times. It prints a markdown table of the medians of req/s, p50
and p99 with the ratios fastgw/nginx, flags runs where wrk saw socket errors or non-2xx
answers, and writes ``benchmarks/results/<timestamp>.json`` (the machine, every run, the
medians, the ratios) and ``benchmarks/results/latest.md`` (the table and the machine).
``--quick`` writes ``<timestamp>-quick.json`` and ``latest-quick.md`` instead, so a CI
or smoke run never replaces the latest full table.

Every request, in every scenario, goes to the last route of fastgw's table (a wildcard
host and a ``{param}`` path with a catch-all) with ``Host: gw.bench.example.com``; nginx
gets the same request on a single ``location /``. (The aggregate scenario's aggregate
requests take an 11th route, its exact path.) Results are reported, never asserted:
the exit status is 0 unless a tool is missing (2) or a side fails to start or to answer
correctly (1). Fair play is in benchmarks/README.md.

May import: the standard library; fastgw.demo (the TLS scenario's certificate), imported
only when that scenario runs. fastgw itself runs as ``python -m fastgw run``, never
in-process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
RESULTS = HERE / "results"

TOOLS = {"nginx": "nginx-light", "wrk": "wrk", "h2load": "nghttp2-client"}

HOST = "gw.bench.example.com"
SMALL_BODY = "hello from the backend\n"
UPSTREAM_KEEPALIVE = 64
# The aggregate scenario's backend answer, one per call: small JSON, served from memory.
ITEM_JSON = '{"sku":"SKU-00042","name":"item number 42","price":56.0,"in_stock":true}'


def json_4k() -> str:
    """A JSON document of exactly 4096 bytes, with nothing nginx's config quoting minds
    (no single quote, backslash or dollar)."""
    items = [{"id": i, "sku": f"SKU-{i:05d}", "name": f"item number {i}", "price": round(3.5 + i * 1.25, 2),
              "tags": ["bench", "json"], "in_stock": i % 3 != 0} for i in range(40)]
    doc = {"items": items, "pad": ""}
    text = json.dumps(doc, separators=(",", ":"))
    while len(text) > 4096:
        items.pop()
        text = json.dumps(doc, separators=(",", ":"))
    doc["pad"] = "x" * (4096 - len(text))
    text = json.dumps(doc, separators=(",", ":"))
    assert len(text) == 4096
    return text


# -- the sides' configs -------------------------------------------------------------------------


def nginx_backend_conf(folder: Path, port: int, workers: int) -> str:
    # nginx refuses a config token over 4 KiB, so the JSON body is served from memory in
    # four 1 KiB variables (map with only a default: a constant) joined by ``return``.
    doc = json_4k()
    parts = [doc[i:i + 1024] for i in range(0, len(doc), 1024)]
    maps = "\n".join(f"    map $host $json_part{i} {{ default '{part}'; }}" for i, part in enumerate(parts))
    joined = "".join(f"$json_part{i}" for i in range(len(parts)))
    return f"""
worker_processes {workers};
daemon off;
pid {folder}/backend.pid;
error_log {folder}/backend.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
{maps}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
        location /api/v1/item/ {{
            default_type application/json;
            return 200 '{ITEM_JSON}';
        }}
        location = /api/v1/json {{
            default_type application/json;
            return 200 "{joined}";
        }}
    }}
}}
"""


def nofile_for(worker_connections: int) -> int:
    """nginx's worker_rlimit_nofile: room for the connections, within our hard limit
    (which root may exceed, but nothing else may)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = worker_connections + 1024
    return wanted if os.geteuid() == 0 or hard == resource.RLIM_INFINITY else min(wanted, hard)


def nginx_proxy_conf(folder: Path, port: int, backend: int, workers: int, worker_connections: int = 4096,
                     tls: bool = False, http2: bool = False, websocket: bool = False,
                     forwarding: bool = False) -> str:
    # keepalive_requests in the upstream block: nginx closes a pooled upstream connection
    # after 1,000 requests by default, fastgw never does; both keep them alike.
    # reuseport: fastgw gives each worker its own SO_REUSEPORT socket, so nginx does too
    # (the kernel spreads connections the same way for both; with one worker it changes
    # nothing).
    return f"""
worker_processes {workers};
daemon off;
worker_rlimit_nofile {nofile_for(worker_connections)};
pid {folder}/proxy.pid;
error_log {folder}/proxy.err warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport{" ssl" if tls else ""}{" http2" if http2 else ""};
        {TLS_NGINX.format(folder=folder) if tls else ""}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            {WEBSOCKET_NGINX if websocket else 'proxy_set_header Connection "";'}
            {FORWARDING_NGINX if forwarding else ""}
        }}
    }}
}}
"""


# nginx's WebSocket proxying, as its documentation gives it
WEBSOCKET_NGINX = """proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";"""


# What fastgw does by default to every request and response, said in nginx's terms, for
# the ``small_get_fields`` scenario: the client's Host passed on, X-Forwarded-For (appended),
# -Proto and -Host, a request id sent up and returned, and a W3C traceparent started.
# (nginx has no second random value without a module: the span id is fixed; $request_id
# is 32 hex digits, fastgw's id is shorter.)
FORWARDING_NGINX = """proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $request_id;
            proxy_set_header traceparent "00-$request_id-00f067aa0ba902b7-01";
            add_header X-Request-Id $request_id;"""


def route_table(n: int, target_extra: str = "") -> str:
    """``n`` routes: n - 1 fillers in four kinds taken in turn (exact; {param}; catch-all;
    host rules, exact or wildcard, some with a header condition), as in bench_router.py,
    then the route every benchmark request takes, last in the file (with ``target_extra``,
    TOML of its policies)."""
    out = []
    for i in range(n - 1):
        kind = i % 4
        if kind == 0:
            out.append(f'[[routes]]\nname = "exact{i}"\npaths = ["/svc{i}/items"]\nmethods = ["GET", "HEAD"]\n')
        elif kind == 1:
            out.append(f'[[routes]]\nname = "param{i}"\npaths = ["/svc{i}/items/{{id}}", "/svc{i}/items/{{id}}/raw"]\n'
                       f'methods = ["GET", "PUT"]\n')
        elif kind == 2:
            out.append(f'[[routes]]\nname = "static{i}"\npaths = ["/svc{i}/static/*"]\n')
        else:
            host = f"h{i}.example.com" if i % 8 == 3 else f"*.t{i}.example.com"
            headers = '\nheaders = { "x-v" = "2" }' if i % 16 == 7 else ""
            out.append(f'[[routes]]\nname = "host{i}"\nhosts = ["{host}"]\npaths = ["/svc{i}/{{tenant}}/x"]{headers}\n')
        out[-1] += 'upstream = "backend"\n'
    out.append('[[routes]]\nname = "target"\nhosts = ["*.bench.example.com"]\npaths = ["/api/{version}/*"]\n'
               'methods = ["GET", "POST"]\nupstream = "backend"\n' + target_extra)
    return "\n".join(out)


# TLS scenario: the same certificate and protocols on both sides (fastgw.demo's, made per
# run: EC P-256, for 127.0.0.1).
TLS_NGINX = """ssl_certificate {folder}/demo-cert.pem;
        ssl_certificate_key {folder}/demo-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;"""


def fastgw_conf(port: int, backend: int, workers: int, routes: int, server_extra: str = "",
                target_extra: str = "", more_routes: str = "") -> str:
    return f"""
[server]
listen = ["127.0.0.1:{port}"]
workers = {workers}
{server_extra}
[log]
access = "off"
[upstreams.backend]
targets = ["127.0.0.1:{backend}"]
keepalive = {UPSTREAM_KEEPALIVE}

""" + route_table(routes, target_extra) + more_routes


# -- scenarios ----------------------------------------------------------------------------------


# The policies scenario's chain: every built-in kind of work, none refusing.
POLICIES = """ip = { allow = ["127.0.0.0/8"] }
request_headers = { set = { "x-gateway" = "fastgw" } }
response_headers = { set = { "x-frame-options" = "DENY" }, remove = ["server"] }
rate_limit = { rate = "100000000/s", burst = 100000000 }
"""


# The auth scenario's: a key looked up per request, the consumer's bucket taken.
AUTH = """auth = { methods = ["key"] }
rate_limit = { rate = "100000000/s", burst = 100000000, key = "consumer" }
[consumers.bench]
api_keys = ["bench-key-0123456789"]
"""


# The aggregate scenario: three small GETs to the backend sent at once, composed into one
# JSON object. Its exact path outranks the benchmark route's "/api/{version}/*" (a literal
# segment before a parameter), whatever the order in the file.
AGGREGATE_CALLS = ("/api/v1/item/1", "/api/v1/item/2", "/api/v1/item/3")
AGGREGATE_PATH = "/api/v1/aggregate"
AGGREGATE_ROUTE = f"""
[[routes]]
name = "aggregate"
hosts = ["*.bench.example.com"]
paths = ["{AGGREGATE_PATH}"]
methods = ["GET"]
upstream = "backend"
[routes.aggregate]
mode = "parallel"
timeout = "5s"
""" + "".join(f"""[[routes.aggregate.calls]]
name = "item{i}"
upstream = "backend"
method = "GET"
path = "{path}"
""" for i, path in enumerate(AGGREGATE_CALLS, 1))


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    path: str = "/api/v1/small"
    method: str = "GET"
    lua: str | None = None          # a wrk script under benchmarks/ that sends that method (and a body)
    workers: int = 1
    routes: int = 10
    compare_routes: int | None = None  # a second fastgw with this many routes, interleaved too
    target_extra: str = ""          # policies of the route the requests take (TOML)
    headers: tuple[str, ...] = ()   # more request fields ("name: value"), sent by wrk and the check
    tls: bool = False               # both proxies terminate TLS (wrk over https)
    h2_streams: int = 0             # HTTP/2 by prior knowledge: h2load with this many streams per connection
    loads: tuple[int, ...] = ()     # the connection counts of this scenario (default: --connections)
    compare_plain: bool = False     # a second fastgw without them, interleaved too
    websocket: bool = False         # a websockets echo backend, tunnelled; benchmarks/websocket_load.py's client
    aggregate: bool = False         # fastgw's aggregate route against the client calling the backend itself; no nginx
    nginx_forwarding: bool = False  # nginx set to add what fastgw adds by default (FORWARDING_NGINX)
    note: str = ""


SCENARIOS = {s.name: s for s in (
    Scenario("small_get", "GET, small response (23 bytes)"),
    Scenario("small_get_fields", "GET, small response (23 bytes); nginx set to do what fastgw does by default: "
             "X-Forwarded-For, -Proto and -Host, X-Request-Id (and back), traceparent, the client's Host",
             nginx_forwarding=True,
             note="nginx beyond its defaults, doing fastgw's default work; small_get leaves both at their defaults"),
    Scenario("json_4k", "GET, 4 KiB JSON response", path="/api/v1/json"),
    Scenario("post_1k", "POST with a 1 KiB JSON body, small response", path="/api/v1/post",
             method="POST", lua="post_1k.lua"),
    Scenario("routes_10k", "GET, small response, 10,000 routes in fastgw's config", routes=10_000,
             compare_routes=10,
             note="nginx has one location: its config has no equivalent of the 10,000 routes"),
    Scenario("workers_2", "GET, small response, 2 workers on each proxy (and the backend)", workers=2),
    Scenario("policies", "GET, small response, through ip allow, request_headers set, response_headers set and "
             "remove, and a local rate limit that never refuses", target_extra=POLICIES, compare_plain=True,
             note="nginx has none of these policies"),
    Scenario("tls", "GET, small response, HTTP/1.1 over TLS (the same EC P-256 certificate on both, keep-alive)",
             tls=True),
    Scenario("auth", "GET, small response, API key auth and a rate limit keyed by the consumer that never refuses",
             target_extra=AUTH, compare_plain=True, headers=("apikey: bench-key-0123456789",),
             note="nginx has no API key auth: it proxies the same request unchecked"),
    Scenario("h2", "GET, small response, cleartext HTTP/2 by prior knowledge, 10 streams per connection "
             "(HTTP/1.1 to the backend)", h2_streams=10, loads=(10, 50)),
    Scenario("websocket", "WebSocket tunnel: a 64-byte text message echoed by a websockets backend, round trips per "
             "second over C connections (websocket = \"proxy\"; nginx with Upgrade and Connection set)",
             target_extra='websocket = "proxy"\n', websocket=True,
             note="messages/s, not requests: benchmarks/websocket_load.py's client (Python, one process), "
                  "the same for both"),
    Scenario("aggregate", f"GET of a parallel aggregate route: three GETs of a {len(ITEM_JSON)}-byte JSON answer "
             "sent at once by fastgw, composed into one JSON object; against the client sending the same three itself",
             path=AGGREGATE_PATH, aggregate=True, loads=(1, 50),
             note="not against nginx: the direct client is the reference"),
)}


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fail(Exception):
    """A side did not start or did not answer as it should: exit 1."""


@dataclass
class Proc:
    name: str
    port: int
    popen: subprocess.Popen
    log: Path
    extra_logs: list[Path] = field(default_factory=list)

    def tail(self) -> str:
        text = ""
        for path in (self.log, *self.extra_logs):
            if path.exists():
                text += path.read_text(errors="replace")[-2000:]
        return text.strip() or "(nothing on stderr)"


class Stack:
    """The processes of one scenario: started together, stopped together."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], port: int, env: dict | None = None,
              extra_logs: tuple[Path, ...] = ()) -> Proc:
        log = self.folder / f"{name}.stderr"
        with open(log, "wb") as err:
            popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                     start_new_session=True)
        proc = Proc(name, port, popen, log, list(extra_logs))
        self.procs.append(proc)
        return proc

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            while True:
                if proc.popen.poll() is not None:
                    raise Fail(f"{proc.name} exited with status {proc.popen.returncode} before listening "
                               f"on 127.0.0.1:{proc.port}:\n{proc.tail()}")
                try:
                    socket.create_connection(("127.0.0.1", proc.port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise Fail(f"{proc.name}: nothing listens on 127.0.0.1:{proc.port} after "
                                   f"{timeout:.0f} s:\n{proc.tail()}") from None
                    time.sleep(0.05)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is not None:
                raise Fail(f"{proc.name} died (status {proc.popen.returncode}):\n{proc.tail()}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
        self.procs.clear()


def start_scenario(stack: Stack, sc: Scenario) -> dict[str, Proc]:
    folder = stack.folder
    backend, nginx_port, fastgw_port = free_port(), free_port(), free_port()
    (folder / "backend.conf").write_text(nginx_backend_conf(folder, backend, sc.workers))
    (folder / "proxy.conf").write_text(nginx_proxy_conf(folder, nginx_port, backend, sc.workers, tls=sc.tls,
                                                        http2=sc.h2_streams > 0, websocket=sc.websocket,
                                                        forwarding=sc.nginx_forwarding))
    server_extra = ""
    if sc.tls:  # fastgw's plain listener moves aside; the measured one is its TLS listener
        from fastgw.demo import make_certificate
        cert, key = make_certificate(str(folder))
        server_extra = (f'[server.tls]\nlisten = ["127.0.0.1:{fastgw_port}"]\n'
                        f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n')
    (folder / "fastgw.toml").write_text(fastgw_conf(free_port() if sc.tls else fastgw_port, backend, sc.workers,
                                                    sc.routes, server_extra, target_extra=sc.target_extra,
                                                    more_routes=AGGREGATE_ROUTE if sc.aggregate else ""))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if sc.websocket:
        backend_side = stack.start("backend", [sys.executable, str(HERE / "websocket_load.py"), "echo", "--port",
                                               str(backend)], backend)
    else:
        backend_side = stack.start("backend", ["nginx", "-c", str(folder / "backend.conf"), "-p", str(folder)],
                                   backend, extra_logs=(folder / "backend.err",))
    sides = {"backend": backend_side}
    if not sc.aggregate:  # (nginx has no aggregation: that scenario's reference is the backend itself)
        sides["nginx"] = stack.start("nginx", ["nginx", "-c", str(folder / "proxy.conf"), "-p", str(folder)],
                                     nginx_port, extra_logs=(folder / "proxy.err",))
    sides["fastgw"] = stack.start("fastgw", [sys.executable, "-m", "fastgw", "run", "-c",
                                             str(folder / "fastgw.toml")], fastgw_port, env=env)
    if sc.compare_routes:
        name = f"fastgw_{sc.compare_routes}routes"
        port = free_port()
        (folder / f"{name}.toml").write_text(fastgw_conf(port, backend, sc.workers, sc.compare_routes))
        sides[name] = stack.start(name, [sys.executable, "-m", "fastgw", "run", "-c", str(folder / f"{name}.toml")],
                                  port, env=env)
    if sc.compare_plain:
        port = free_port()
        (folder / "fastgw_plain.toml").write_text(fastgw_conf(port, backend, sc.workers, sc.routes))
        sides["fastgw_plain"] = stack.start("fastgw_plain", [sys.executable, "-m", "fastgw", "run", "-c",
                                                             str(folder / "fastgw_plain.toml")], port, env=env)
    stack.wait_ready(timeout=60 if sc.routes > 1000 else 15)
    return sides


# -- the request and wrk ------------------------------------------------------------------------


def fetch(port: int, sc: Scenario, tls: bool = False, h2: bool = False, path: str | None = None) -> tuple[int, bytes]:
    path = path or sc.path
    if h2:  # (nginx's cleartext HTTP/2 port speaks nothing else)
        done = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", f"Host: {HOST}", "-w", "\n%{http_code}",
                               f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=10)
        body, _, status = done.stdout.rpartition(b"\n")
        return int(status or 0), body
    # 1 KiB of JSON for a POST, as post_1k.lua sends (the backend answers the same to any body)
    body = b'{"id":42,"payload":"' + b"x" * 1002 + b'"}' if sc.method == "POST" else None
    if tls:  # (the scenario's own self-signed certificate: not verified)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"Host": HOST, **dict(f.split(": ", 1) for f in sc.headers)}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(sc.method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_answers(sides: dict[str, Proc], sc: Scenario) -> None:
    """Every side must give the backend's own answer to the benchmark request, or the
    numbers would compare different work."""
    if sc.websocket:
        for name, proc in sides.items():
            result = load(proc.port, sc, 1, 1)
            if not result["requests"] or result["errors"]:
                raise Fail(f"{sc.name}: {name} echoes no WebSocket message: {result}")
        return
    if sc.aggregate:
        check_aggregate(sides, sc)
        return
    status, expected = fetch(sides["backend"].port, sc)
    if status != 200:
        raise Fail(f"{sc.name}: the backend answers {status} to {sc.path}")
    for name, proc in sides.items():
        if name == "backend":
            continue
        status, body = fetch(proc.port, sc, tls=sc.tls, h2=sc.h2_streams > 0)
        if status != 200 or body != expected:
            raise Fail(f"{sc.name}: {name} answers {status} with {len(body)} bytes to {sc.path}, "
                       f"the backend 200 with {len(expected)}:\n{body[:300]!r}")


def check_aggregate(sides: dict[str, Proc], sc: Scenario) -> None:
    """The aggregate URL must answer 200 with one member per call, each the backend's
    own JSON, and the proxied call the backend's answer: otherwise the run would time
    502s or 404s."""
    expected = {}
    for i, path in enumerate(AGGREGATE_CALLS, 1):
        status, body = fetch(sides["backend"].port, sc, path=path)
        if status != 200:
            raise Fail(f"{sc.name}: the backend answers {status} to {path}")
        expected[f"item{i}"] = json.loads(body)
    status, body = fetch(sides["fastgw"].port, sc, path=AGGREGATE_CALLS[0])
    if status != 200 or json_or_none(body) != expected["item1"]:
        raise Fail(f"{sc.name}: fastgw answers {status} to {AGGREGATE_CALLS[0]} (proxied), not the backend's "
                   f"200:\n{body[:300]!r}")
    status, body = fetch(sides["fastgw"].port, sc)
    got = json_or_none(body)
    if status != 200 or not isinstance(got, dict) or list(got) != list(expected) or got != expected:
        raise Fail(f"{sc.name}: fastgw's answer to {sc.path} is not a 200 with the members "
                   f"{', '.join(expected)}, each the backend's JSON; it is a {status}:\n{body[:600]!r}")


def json_or_none(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def load(port: int, sc: Scenario, connections: int, duration: int) -> dict:
    """One measured run: wrk; h2load for an HTTP/2 scenario; the WebSocket client for a
    WebSocket one."""
    if sc.h2_streams:
        return h2load(port, sc, connections, duration)
    if not sc.websocket:
        return wrk(port, sc, connections, duration)
    argv = [sys.executable, str(HERE / "websocket_load.py"), "load", "--url", f"ws://{HOST}:{port}{sc.path}",
            "--connections", str(connections), "--duration", str(duration)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0 or not done.stdout.strip():
        raise Fail(f"the WebSocket client failed (status {done.returncode}): {' '.join(argv)}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def wrk(port: int, sc: Scenario, connections: int, duration: int, path: str | None = None,
        lua: str | None = None) -> dict:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Host: {HOST}"]
    for header in sc.headers:
        argv += ["-H", header]
    if lua or sc.lua:
        argv += ["-s", str(HERE / (lua or sc.lua))]
    argv.append(f"{'https' if sc.tls else 'http'}://127.0.0.1:{port}{path or sc.path}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise Fail(f"wrk failed (status {done.returncode}): {' '.join(argv)}\n{out}{done.stderr}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx_3xx": 0}
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        for key, value in zip(("connect", "read", "write", "timeout"), socket_errors.groups()):
            errors[key] = int(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors["non_2xx_3xx"] = int(non_2xx.group(1))
    result = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99_ms": to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        "errors": {k: v for k, v in errors.items() if v},
    }
    for key, value in re.findall(r"^lua: (\w+)_us (\d+)$", out, re.M):  # a script's own figures
        result[f"{key}_ms"] = int(value) / 1000.0
    return result


def h2load(port: int, sc: Scenario, connections: int, duration: int) -> dict:
    """``h2load`` over cleartext HTTP/2 for ``duration`` seconds; p50 and p99 from its
    per-request log (its own summary has only min, max and mean)."""
    with tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log") as log:
        argv = ["h2load", "-t1", f"-c{connections}", f"-m{sc.h2_streams}", f"-D{duration}", "--log-file",
                log.name, "-H", f":authority: {HOST}", f"http://127.0.0.1:{port}{sc.path}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        out = done.stdout
        found = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
        if done.returncode != 0 or found is None:
            raise Fail(f"h2load failed (status {done.returncode}): {' '.join(argv)}\n{out}{done.stderr}")
        durations = sorted(int(line.split()[2]) for line in Path(log.name).read_text().splitlines() if line.strip())
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", out)
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors = {"failed": int(counts.group(4)), "errored": int(counts.group(5)), "timeout": int(counts.group(6)),
              "non_2xx_3xx": int(statuses.group(3)) + int(statuses.group(4))} if counts and statuses else {}
    if not durations:
        raise Fail(f"h2load logged no request: {' '.join(argv)}\n{out}")
    return {
        "rps": float(found.group(1)),
        "requests": int(counts.group(3)) if counts else len(durations),
        "p50_ms": durations[len(durations) // 2] / 1000.0,
        "p99_ms": durations[min(len(durations) - 1, int(len(durations) * 0.99))] / 1000.0,
        "errors": {k: v for k, v in errors.items() if v},
    }


# -- measuring ----------------------------------------------------------------------------------


def median_of(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")}


def error_total(runs: list[dict]) -> dict:
    total: dict[str, int] = {}
    for r in runs:
        for key, value in r["errors"].items():
            total[key] = total.get(key, 0) + value
    return total


def measure(sides: dict[str, Proc], stack: Stack, sc: Scenario, connections: int, args) -> dict:
    under_test = [name for name in sides if name != "backend"]
    for name in under_test:  # warm: connections, upstream pools, caches, the allocator
        load(sides[name].port, sc, connections, args.warmup)
    runs: dict[str, list[dict]] = {name: [] for name in under_test}
    for i in range(args.rounds):
        for name in under_test:  # interleaved: A B A B ...
            result = load(sides[name].port, sc, connections, args.duration)
            stack.check_alive()
            runs[name].append(result)
            flag = f"  ERRORS {result['errors']}" if result["errors"] else ""
            print(f"  {sc.name} -c{connections} round {i + 1} {name:18} {result['rps']:>9.0f} req/s  "
                  f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms{flag}", flush=True)
    medians = {name: median_of(rs) for name, rs in runs.items()}
    errors = {name: error_total(rs) for name, rs in runs.items()}
    entry = {
        "scenario": sc.name, "what": sc.what, "note": sc.note, "connections": connections,
        "request": {"method": sc.method, "path": sc.path, "host": HOST, "lua": sc.lua},
        "workers": sc.workers, "fastgw_routes": sc.routes,
        "runs": runs, "medians": medians, "errors": {k: v for k, v in errors.items() if v},
        "ratio_rps": medians["fastgw"]["rps"] / medians["nginx"]["rps"],
        "ratio_p99": medians["fastgw"]["p99_ms"] / medians["nginx"]["p99_ms"],
    }
    if sc.compare_routes:
        other = medians[f"fastgw_{sc.compare_routes}routes"]
        entry["routes_cost"] = {
            "routes": sc.routes, "baseline_routes": sc.compare_routes,
            "rps": medians["fastgw"]["rps"], "baseline_rps": other["rps"],
            "ratio": medians["fastgw"]["rps"] / other["rps"],
            "cost_pct": 100.0 * (1.0 - medians["fastgw"]["rps"] / other["rps"]),
            "target_pct": 5.0,
        }
    if sc.compare_plain:
        plain = medians["fastgw_plain"]
        entry["policies_cost"] = {
            "rps": medians["fastgw"]["rps"], "baseline_rps": plain["rps"],
            "ratio": medians["fastgw"]["rps"] / plain["rps"],
            "cost_pct": 100.0 * (1.0 - medians["fastgw"]["rps"] / plain["rps"]),
            "target_pct": 15.0,
        }
    return entry


def session_cpu_ticks(session: int) -> tuple[int, int]:
    """User and system CPU (clock ticks) of every live process in ``session``: a side
    started by ``Stack.start`` leads its own, so for fastgw that is the supervisor and its
    workers."""
    user = system = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # (gone meanwhile)
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # from field 3 on: the name may hold spaces
        if int(fields[3]) == session:
            user, system = user + int(fields[11]), system + int(fields[12])
    return user, system


def measure_aggregate(sides: dict[str, Proc], stack: Stack, sc: Scenario, connections: int, args) -> dict:
    """The aggregate scenario at ``connections`` clients: three runs, interleaved ``--rounds``
    times. ``direct``: wrk with 3 × ``connections`` connections on a call's URL at the
    backend (a client's three parallel calls on three connections: the backend has as many
    calls in flight as under the aggregate). ``fastgw_proxied``: one call proxied by
    fastgw's ordinary route, ``connections`` connections. ``fastgw_aggregate``: the
    aggregate URL, ``connections`` connections. fastgw's CPU (its processes' user and
    system time, /proc) is read around each of its runs."""
    gateway = sides["fastgw"]
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    plans = {  # name: (port, path, wrk connections, script)
        "direct": (sides["backend"].port, AGGREGATE_CALLS[0], 3 * connections, "aggregate_direct.lua"),
        "fastgw_proxied": (gateway.port, AGGREGATE_CALLS[0], connections, None),
        "fastgw_aggregate": (gateway.port, sc.path, connections, None),
    }
    for name in ("fastgw_proxied", "fastgw_aggregate"):  # the backend answers from memory: nothing to warm
        port, path, conns, lua = plans[name]
        wrk(port, sc, conns, args.warmup, path=path, lua=lua)
    runs: dict[str, list[dict]] = {name: [] for name in plans}
    for i in range(args.rounds):
        for name, (port, path, conns, lua) in plans.items():
            before = session_cpu_ticks(gateway.popen.pid)
            result = wrk(port, sc, conns, args.duration, path=path, lua=lua)
            after = session_cpu_ticks(gateway.popen.pid)
            stack.check_alive()
            cpu = ""
            if name != "direct" and result["requests"]:
                result["cpu_user_us"] = (after[0] - before[0]) * tick_us / result["requests"]
                result["cpu_system_us"] = (after[1] - before[1]) * tick_us / result["requests"]
                result["cpu_us"] = result["cpu_user_us"] + result["cpu_system_us"]
                cpu = f"  fastgw CPU {result['cpu_us']:6.1f} µs/request"
            runs[name].append(result)
            flag = f"  ERRORS {result['errors']}" if result["errors"] else ""
            print(f"  {sc.name} -c{connections} round {i + 1} {name:18} {result['rps']:>9.0f} req/s  "
                  f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms{cpu}{flag}", flush=True)
    medians = {name: median_of(rs) for name, rs in runs.items()}
    for name, rs in runs.items():
        for key in ("cpu_us", "cpu_user_us", "cpu_system_us", "slowest_of_3_p50_ms", "slowest_of_3_p99_ms"):
            if all(key in r for r in rs):
                medians[name][key] = statistics.median(r[key] for r in rs)
    errors = {name: error_total(rs) for name, rs in runs.items()}
    direct, proxied, agg = medians["direct"], medians["fastgw_proxied"], medians["fastgw_aggregate"]
    return {
        "scenario": sc.name, "what": sc.what, "note": sc.note, "connections": connections,
        "request": {"method": sc.method, "path": sc.path, "host": HOST, "calls": list(AGGREGATE_CALLS),
                    "direct": {"path": AGGREGATE_CALLS[0], "connections": 3 * connections},
                    "proxied": {"path": AGGREGATE_CALLS[0], "connections": connections}},
        "workers": sc.workers, "fastgw_routes": sc.routes + 1,
        "runs": runs, "medians": medians, "errors": {k: v for k, v in errors.items() if v},
        "aggregate": {
            "rps": agg["rps"], "proxied_rps": proxied["rps"], "direct_calls_rps": direct["rps"],
            # a client's aggregate answer against its own three parallel calls: one call's
            # percentile (a bound that can only overstate what fastgw adds) and the
            # slowest-of-three estimate (exact if the calls' times were independent)
            "added_p50_ms": agg["p50_ms"] - direct["p50_ms"],
            "added_p99_ms": agg["p99_ms"] - direct["p99_ms"],
            "added_p50_ms_vs_slowest_of_3": agg["p50_ms"] - direct.get("slowest_of_3_p50_ms", direct["p50_ms"]),
            "added_p99_ms_vs_slowest_of_3": agg["p99_ms"] - direct.get("slowest_of_3_p99_ms", direct["p99_ms"]),
            "cpu_us_per_aggregate": agg.get("cpu_us"), "cpu_us_per_proxied": proxied.get("cpu_us"),
        },
    }


# -- reporting ----------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", "fastgw"],
                           capture_output=True, text=True)
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "fastgw" / "__init__.py").read_text())
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "os": platform.platform(),
        "python": platform.python_version(),
        "nginx": (nginx_v.stderr.strip().split("/")[-1] or "unknown"),
        "wrk": ((wrk_v.stdout or wrk_v.stderr).split("[")[0].replace("wrk", "", 1).strip() or "unknown"),
        "fastgw": version.group(1) if version else "unknown",
        "fastgw_commit": commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
    }


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, nginx {m['nginx']}, "
            f"wrk {m['wrk']}; fastgw {m['fastgw']} at {m['fastgw_commit']}")


def errors_text(errors: dict) -> str:
    return "; ".join(f"{side}: " + ", ".join(f"{k} {v}" for k, v in e.items()) for side, e in errors.items())


def table(entries: list[dict], args) -> str:
    against_nginx = [e for e in entries if "aggregate" not in e]
    lines = against_nginx_table(against_nginx, args) if against_nginx else []
    aggregates = [e for e in entries if "aggregate" in e]
    if aggregates:
        lines += ([""] if lines else []) + aggregate_table(aggregates, args)
    lines += ["", "Scenarios: " + "; ".join(
        f"`{name}`: {SCENARIOS[name].what}" for name in dict.fromkeys(e["scenario"] for e in entries)) + "."]
    return "\n".join(lines)


def first_notes(entry: dict, args) -> list[str]:
    """The notes every row of a table starts with: a smoke run, the errors seen."""
    notes = []
    if args.rounds == 1:
        notes.append("1 round: smoke test, not a measurement")
    if entry["errors"]:
        notes.append(f"**⚠ errors** ({errors_text(entry['errors'])})")
    return notes


def against_nginx_table(entries: list[dict], args) -> list[str]:
    lines = [
        f"wrk -t1 -d{args.duration}s --latency (h2 scenarios: h2load -t1 -m10), {args.rounds} round(s) interleaved (nginx, fastgw, ...), "
        f"medians; ratio = fastgw / nginx.",
        "",
        "| scenario | conns | nginx req/s | fastgw req/s | req/s ratio | nginx p50 | fastgw p50 | nginx p99 "
        "| fastgw p99 | p99 ratio | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in entries:
        n, f = e["medians"]["nginx"], e["medians"]["fastgw"]
        notes = first_notes(e, args)
        if "routes_cost" in e:
            c = e["routes_cost"]
            notes.append(f"fastgw with {c['baseline_routes']} routes (interleaved): {c['baseline_rps']:,.0f} req/s; "
                         f"with {c['routes']:,}: {c['ratio']:.2f}× that, a cost of **{c['cost_pct']:.1f}%** "
                         f"(target ≤ 5%)")
        if "policies_cost" in e:
            c = e["policies_cost"]
            notes.append(f"fastgw without the route's policies (interleaved): {c['baseline_rps']:,.0f} req/s; with them: "
                         f"{c['ratio']:.2f}× that, a cost of **{c['cost_pct']:.1f}%** (target ≤ 15%)")
        if e["note"]:
            notes.append(e["note"])
        lines.append(
            f"| {e['scenario']} | {e['connections']} | {n['rps']:,.0f} | {f['rps']:,.0f} | **{e['ratio_rps']:.2f}×** "
            f"| {n['p50_ms']:.2f} ms | {f['p50_ms']:.2f} ms | {n['p99_ms']:.2f} ms | {f['p99_ms']:.2f} ms "
            f"| {e['ratio_p99']:.2f}× | {'; '.join(notes)} |")
    return lines


def aggregate_table(entries: list[dict], args) -> list[str]:
    """The aggregate scenario's rows: fastgw against the client calling the backend
    itself, not against nginx (benchmarks/README.md says how to read them)."""
    lines = [
        f"Aggregation, fastgw against no gateway (not against nginx): wrk -t1 -d{args.duration}s --latency, "
        f"{args.rounds} round(s) interleaved (direct, proxied, aggregate), medians. conns = clients: the aggregate "
        "and proxied runs use that many connections, the direct run 3× (each client's three parallel calls). "
        "added = aggregate − direct (one call's percentile); fastgw CPU = its processes' user + system time "
        "(/proc) per request served.",
        "",
        "| scenario | conns | direct calls/s | proxied req/s | aggregate req/s | direct p50 | aggregate p50 "
        "| added p50 | direct p99 | aggregate p99 | added p99 | fastgw CPU / proxied | fastgw CPU / aggregate "
        "| notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in entries:
        m, a = e["medians"], e["aggregate"]
        d, p, g = m["direct"], m["fastgw_proxied"], m["fastgw_aggregate"]
        notes = first_notes(e, args)
        notes.append(f"against the slowest of three direct calls (estimate): added p50 "
                     f"{a['added_p50_ms_vs_slowest_of_3']:+.3f} ms, p99 {a['added_p99_ms_vs_slowest_of_3']:+.3f} ms")
        if a["cpu_us_per_aggregate"] and a["cpu_us_per_proxied"]:
            notes.append(f"an aggregate costs fastgw {a['cpu_us_per_aggregate'] / a['cpu_us_per_proxied']:.1f}× "
                         f"the CPU of a proxied call")
        if e["note"]:
            notes.append(e["note"])
        lines.append(
            f"| {e['scenario']} | {e['connections']} | {d['rps']:,.0f} | {p['rps']:,.0f} | {g['rps']:,.0f} "
            f"| {d['p50_ms']:.3f} ms | {g['p50_ms']:.3f} ms | **{a['added_p50_ms']:+.3f} ms** "
            f"| {d['p99_ms']:.3f} ms | {g['p99_ms']:.3f} ms | **{a['added_p99_ms']:+.3f} ms** "
            f"| {cpu_text(p)} | {cpu_text(g)} | {'; '.join(notes)} |")
    return lines


def cpu_text(medians: dict) -> str:
    if "cpu_us" not in medians:
        return "n/a"
    return f"{medians['cpu_us']:.1f} µs ({medians['cpu_user_us']:.1f} user + {medians['cpu_system_us']:.1f} sys)"


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                    help=f"run this scenario (repeatable; default all: {', '.join(SCENARIOS)})")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario and load (default 3)")
    ap.add_argument("--connections", type=int, action="append", metavar="C",
                    help="wrk connections (repeatable; default 50 and 200)")
    ap.add_argument("--warmup", type=int, default=None, help="seconds of warm-up per side and load (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="CI short mode: --duration 2 --rounds 1 --connections 50 --warmup 1")
    args = ap.parse_args(argv)
    args.explicit_connections = args.connections is not None
    if args.quick:
        args.duration, args.rounds, args.connections = 2, 1, args.connections or [50]
        args.warmup = 1 if args.warmup is None else args.warmup
    args.connections = args.connections or [50, 200]
    args.warmup = 3 if args.warmup is None else args.warmup
    args.scenario = args.scenario or list(SCENARIOS)
    if min(args.duration, args.rounds, args.warmup, *args.connections) < 1:
        ap.error("--duration, --rounds, --warmup and --connections must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the finally blocks stop every side.
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(128 + signo))
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        print(f"macro benchmark: missing {', '.join(f'{t} (package {TOOLS[t]})' for t in missing)}; "
              f"install with: apt-get install {' '.join(TOOLS[t] for t in missing)}", file=sys.stderr)
        return 2
    info = machine()
    print(f"machine: {machine_line(info)}", flush=True)
    entries: list[dict] = []
    started = time.time()
    try:
        for name in args.scenario:
            sc = SCENARIOS[name]
            folder = Path(tempfile.mkdtemp(prefix=f"fastgw-macro-{name}-"))
            folder.chmod(0o755)  # nginx workers run as nobody when we are root
            stack = Stack(folder)
            try:
                print(f"{name}: {sc.what}", flush=True)
                sides = start_scenario(stack, sc)
                check_answers(sides, sc)
                loads = args.connections
                if sc.loads and not args.explicit_connections:
                    loads = sc.loads[:1] if args.quick else list(sc.loads)
                for connections in loads:
                    entries.append((measure_aggregate if sc.aggregate else measure)(sides, stack, sc, connections,
                                                                                    args))
            finally:
                stack.stop()
                shutil.rmtree(folder, ignore_errors=True)
    except Fail as exc:
        print(f"macro benchmark failed: {exc}", file=sys.stderr)
        return 1
    md = table(entries, args)
    print("\n" + md)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    suffix = "-quick" if args.quick else ""
    command = "python benchmarks/macro.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (RESULTS / f"{stamp}{suffix}.json").write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": command.strip(), "machine": info,
        "settings": {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
                     "warmup_s": args.warmup, "quick": args.quick, "wrk_threads": 1,
                     "upstream_keepalive": UPSTREAM_KEEPALIVE, "host": HOST},
        "results": entries}, indent=2) + "\n")
    (RESULTS / f"latest{suffix}.md").write_text(
        f"# fastgw vs nginx: latest macro-benchmark run\n\n"
        f"`{command.strip()}` on {time.strftime('%Y-%m-%d', time.localtime(started))}, "
        f"results/{stamp}{suffix}.json.\n\nMachine: {machine_line(info)}.\n\n{md}\n")
    print(f"\nwrote benchmarks/results/{stamp}{suffix}.json and benchmarks/results/latest{suffix}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
