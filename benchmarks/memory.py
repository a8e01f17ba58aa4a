"""Memory: a proxy worker's RSS with 10,000 idle keep-alive client connections, fastgw
against nginx, on 127.0.0.1.

    python benchmarks/memory.py [--connections 10000]

Needs nginx (Debian: ``apt-get install nginx-light``). One side at a time, in front of the
same nginx backend (``return 200``, small body):

- fastgw: 1 worker, access log off, ``max_connections = 20000``, ``idle_timeout = "120s"``,
  the 10-route table of macro.py;
- nginx as a reverse proxy: 1 worker, upstream keepalive 64, access log off,
  ``worker_connections 20000``.

For each: warm up (200 connections, one request each, closed), read the worker's VmRSS
from /proc/PID/status (fastgw's worker is the child of the ``fastgw run`` supervisor,
nginx's the child of its master), open the connections (each sends one GET, reads the
whole answer and stays open, idle), check that none was closed, read VmRSS again, and
close them (RST, so no TIME_WAIT uses up local ports). The difference over the number of
connections is the cost of an idle connection in the worker's memory; the kernel's socket
memory is not in it, for either side. The client is this process: non-blocking sockets on
asyncio, at most 256 opening at once; the whole run is bounded to 60 s.

Prints one line for README.md's performance section and writes
``benchmarks/results/memory-<timestamp>.json``. Exit status: 0, 2 when nginx is missing,
1 when a side fails to start or does not keep the connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from macro import (HOST, RESULTS, ROOT, Fail, Stack, fastgw_conf, free_port,  # noqa: E402
                   machine, machine_line, nginx_backend_conf, nginx_proxy_conf)

TIME_LIMIT = 60
OPENING_AT_ONCE = 256
WARMUP_CONNECTIONS = 200
REQUEST = f"GET /api/v1/small HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise Fail(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (this kernel may lack /proc/PID/task/PID/children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # the command may hold spaces and parentheses: the fields start after the last ")"
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def the_worker(parent: int, name: str) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kids = children(parent)
        if len(kids) == 1:
            return kids[0]
        time.sleep(0.05)
    raise Fail(f"{name}: expected one worker process under pid {parent}, found {children(parent)}")


def answer_complete(data: bytes) -> bool:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[:end].decode("latin-1").lower()
    if not head.startswith("http/1.1 200"):
        raise Fail(f"answer is not 200: {head.splitlines()[0]!r}")
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip() == "content-length":
            return len(data) - end - 4 >= int(value)
    raise Fail("answer without Content-Length")


async def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each got one full answer and are now idle."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    socks: list[socket.socket] = []

    async def one() -> None:
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            socks.append(sock)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, REQUEST)
            data = b""
            while not answer_complete(data):
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    raise Fail(f"connection closed after {len(data)} bytes of the answer")
                data += chunk

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except BaseException:
        close_all(socks)
        raise
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many are neither closed by the server nor holding unexpected bytes."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN | select.POLLRDHUP)
    return len(socks) - len(poller.poll(0))


def close_all(socks: list[socket.socket]) -> None:
    linger = struct.pack("ii", 1, 0)  # RST at close: no TIME_WAIT on this side's ports
    for sock in socks:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        sock.close()
    socks.clear()


def measure(name: str, port: int, worker: int, count: int, deadline: float) -> dict:
    async def run() -> dict:
        warm = await open_idle(port, WARMUP_CONNECTIONS)
        close_all(warm)
        await asyncio.sleep(0.5)
        before = vm_rss_kib(worker)
        t0 = time.monotonic()
        socks: list[socket.socket] = []
        try:
            socks = await asyncio.wait_for(open_idle(port, count), max(1.0, deadline - time.monotonic() - 10))
            opened_s = time.monotonic() - t0
            await asyncio.sleep(1.0)
            alive = still_open(socks)
            after = vm_rss_kib(worker)
        finally:
            close_all(socks)
        if alive != count:
            raise Fail(f"{name}: {count - alive} of the {count} idle connections were closed by the server")
        return {"worker_pid": worker, "connections": count, "rss_before_kib": before, "rss_after_kib": after,
                "per_connection_kib": (after - before) / count, "open_seconds": round(opened_s, 2)}

    return asyncio.run(run())


def raise_nofile(needed: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise Fail(f"RLIMIT_NOFILE hard limit is {hard}, {needed} needed (ulimit -Hn)")
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def side(stack: Stack, folder: Path, name: str, backend: int, count: int, deadline: float) -> dict:
    port = free_port()
    if name == "fastgw":
        conf = folder / "fastgw.toml"
        conf.write_text(fastgw_conf(port, backend, 1, 10, server_extra=(
            f'max_connections = {2 * count}\nidle_timeout = "120s"')))
        proc = stack.start("fastgw", [sys.executable, "-m", "fastgw", "run", "-c", str(conf)], port,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    else:
        conf = folder / "proxy.conf"
        conf.write_text(nginx_proxy_conf(folder, port, backend, 1, worker_connections=2 * count))
        proc = stack.start("nginx", ["nginx", "-c", str(conf), "-p", str(folder)], port,
                           extra_logs=(folder / "proxy.err",))
    stack.wait_ready(timeout=15)
    result = measure(name, port, the_worker(proc.popen.pid, name), count, deadline)
    stack.check_alive()
    # this side's processes go, the backend stays
    proc.popen.send_signal(signal.SIGTERM)
    proc.popen.wait(15)
    stack.procs.remove(proc)
    return result


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10_000, help="idle connections (default 10000)")
    args = ap.parse_args(argv)
    if shutil.which("nginx") is None:
        print("memory benchmark: missing nginx; install with: apt-get install nginx-light", file=sys.stderr)
        return 2
    deadline = time.monotonic() + TIME_LIMIT

    def out_of_time(signo, frame):
        raise Fail(f"not finished within {TIME_LIMIT} s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(128 + signo))  # unwind: stop the sides
    signal.alarm(TIME_LIMIT)
    folder = Path(tempfile.mkdtemp(prefix="fastgw-memory-"))
    folder.chmod(0o755)  # nginx workers run as nobody when we are root
    stack = Stack(folder)
    results: dict[str, dict] = {}
    try:
        nofile = raise_nofile(args.connections + 1024)  # ours; the proxies inherit it
        backend = free_port()
        (folder / "backend.conf").write_text(nginx_backend_conf(folder, backend, 1))
        stack.start("backend", ["nginx", "-c", str(folder / "backend.conf"), "-p", str(folder)], backend,
                    extra_logs=(folder / "backend.err",))
        stack.wait_ready(timeout=15)
        for name in ("fastgw", "nginx"):
            results[name] = side(stack, folder, name, backend, args.connections, deadline)
            r = results[name]
            print(f"{name:6} worker: {mib(r['rss_before_kib'])} -> {mib(r['rss_after_kib'])} with "
                  f"{args.connections:,} idle connections, {r['per_connection_kib']:.2f} KiB each "
                  f"(opened in {r['open_seconds']} s)", flush=True)
    except Fail as exc:
        print(f"memory benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)
    info = machine()
    f, n = results["fastgw"], results["nginx"]
    line = (f"RSS with {args.connections:,} idle keep-alive client connections (1 worker each): fastgw "
            f"{mib(f['rss_before_kib'])} → {mib(f['rss_after_kib'])} ({f['per_connection_kib']:.1f} KiB per "
            f"connection), nginx {mib(n['rss_before_kib'])} → {mib(n['rss_after_kib'])} "
            f"({n['per_connection_kib']:.1f} KiB per connection); {machine_line(info)}.")
    print("\nfor README.md:\n" + line)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"memory-{stamp}.json").write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info, "rlimit_nofile": list(nofile),
        "connections": args.connections, "warmup_connections": WARMUP_CONNECTIONS,
        "fastgw_config": {"workers": 1, "max_connections": 2 * args.connections, "idle_timeout": "120s",
                          "access_log": "off", "routes": 10},
        "nginx_config": {"worker_processes": 1, "worker_connections": 2 * args.connections, "access_log": "off"},
        "results": results, "readme_line": line}, indent=2) + "\n")
    print(f"wrote benchmarks/results/memory-{stamp}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
