"""fastgw against nginx as a reverse proxy, same backend, same wrk load, on 127.0.0.1.

    python benchmarks/proxy_vs_nginx.py [--duration 10] [--connections 50] [--rounds 3]

Needs nginx and wrk (Debian: apt-get install nginx-light wrk). It starts:
- the backend: nginx, 1 worker, ``return 200`` with a small body, access log off (never
  the bottleneck);
- nginx as a reverse proxy: 1 worker, upstream keepalive 64, HTTP/1.1 upstream, access
  log off;
- fastgw: 1 worker, access log off, upstream keepalive 64;
then runs ``wrk -t1 -cC -dDs --latency`` against each, interleaved (A B A B ...) ``rounds``
times, and prints the medians of req/s, p50 and p99 and the ratio fastgw/nginx. A JSON
copy goes to benchmarks/results/. Fair play: both proxies get the same backend, load,
worker count, and no logging.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NGINX_BACKEND = """
worker_processes 1;
daemon off;
pid {dir}/backend.pid;
error_log {dir}/backend.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{ return 200 "hello from the backend\\n"; }}
    }}
}}
"""

NGINX_PROXY = """
worker_processes 1;
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

FASTGW = """
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
[log]
access = "off"
[upstreams.backend]
targets = ["127.0.0.1:{backend}"]
keepalive = 64
[[routes]]
name = "all"
paths = ["/*"]
upstream = "backend"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, connections: int, duration: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors.group(0) if errors else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (Debian: apt-get install nginx-light wrk)", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen] = []
    folder = Path(tempfile.mkdtemp(prefix="fastgw-bench-"))
    try:
        backend, nginx_port, fastgw_port = free_port(), free_port(), free_port()
        (folder / "backend.conf").write_text(NGINX_BACKEND.format(dir=folder, port=backend))
        (folder / "proxy.conf").write_text(NGINX_PROXY.format(dir=folder, port=nginx_port, backend=backend))
        (folder / "fastgw.toml").write_text(FASTGW.format(port=fastgw_port, backend=backend))
        for conf in ("backend.conf", "proxy.conf"):
            procs.append(subprocess.Popen(["nginx", "-c", str(folder / conf), "-p", str(folder)],
                                          stderr=subprocess.DEVNULL))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, "-m", "fastgw", "run", "-c", str(folder / "fastgw.toml")],
                                      env=env, stderr=subprocess.DEVNULL))
        for port in (backend, nginx_port, fastgw_port):
            wait_port(port)
        for port in (nginx_port, fastgw_port):  # warm both (connections, caches)
            wrk(port, args.connections, 2)
        runs: dict[str, list[dict]] = {"nginx": [], "fastgw": []}
        for i in range(args.rounds):
            for name, port in (("nginx", nginx_port), ("fastgw", fastgw_port)):
                result = wrk(port, args.connections, args.duration)
                runs[name].append(result)
                print(f"round {i + 1} {name:6} {result['rps']:>10.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
                      f"p99 {result['p99_ms']:.2f} ms {result['errors']}", flush=True)
        summary = {name: {key: statistics.median(r[key] for r in rs) for key in ("rps", "p50_ms", "p99_ms")}
                   for name, rs in runs.items()}
        ratio = summary["fastgw"]["rps"] / summary["nginx"]["rps"]
        print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} rounds interleaved, medians:")
        print("| proxy | req/s | p50 ms | p99 ms |\n|---|---|---|---|")
        for name, s in summary.items():
            print(f"| {name} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} |")
        print(f"\nfastgw/nginx req/s: {ratio:.2f}   p99 ratio: {summary['fastgw']['p99_ms'] / summary['nginx']['p99_ms']:.2f}")
        results = ROOT / "benchmarks" / "results"
        results.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (results / f"proxy_vs_nginx-{stamp}.json").write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "load": {"connections": args.connections, "duration": args.duration, "rounds": args.rounds},
            "runs": runs, "medians": summary, "ratio_rps": ratio}, indent=2))
        return 0
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM if proc.args[0] != "nginx" else signal.SIGQUIT)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
