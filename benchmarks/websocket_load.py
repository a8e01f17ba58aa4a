"""The WebSocket side of the macro-benchmarks (benchmarks/macro.py's ``websocket``
scenario): an echo backend, and a load client.

    python benchmarks/websocket_load.py echo --port 9001
    python benchmarks/websocket_load.py load --url ws://gw.bench.example.com:8080/path --connections 50 --duration 10

``echo``: a ``websockets`` (asyncio) server on 127.0.0.1 that sends every message back,
no compression, no pings. ``load``: ``--connections`` clients in one asyncio process, each
sending a 64-byte text message and waiting for its echo, again and again, for
``--duration`` seconds (connecting to 127.0.0.1 whatever the URL's host, which is the
Host field sent); prints one JSON line: messages/s (round trips), p50 and p99 of
the round trip in ms, the message count and the errors. The client is Python: on a small
machine it is a bottleneck of its own, the same one for both proxies compared.

May import: the standard library, websockets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

MESSAGE = "x" * 64


async def echo(port: int) -> None:
    async def handler(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None, max_size=None):
        await asyncio.Future()


async def client(url: str, until: float, latencies: list[float], errors: dict[str, int]) -> None:
    try:
        # (the URL's host is the Host field the proxies route on; the socket goes to 127.0.0.1)
        async with connect(url, compression=None, ping_interval=None, open_timeout=10, proxy=None,
                           host="127.0.0.1") as ws:
            while time.perf_counter() < until:
                sent = time.perf_counter()
                await ws.send(MESSAGE)
                if await ws.recv() != MESSAGE:
                    errors["wrong_echo"] = errors.get("wrong_echo", 0) + 1
                latencies.append(time.perf_counter() - sent)
    except Exception as exc:  # a failed connection is counted, not fatal: the run goes on
        name = type(exc).__name__
        errors[name] = errors.get(name, 0) + 1


async def load(url: str, connections: int, duration: float) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    started = time.perf_counter()
    await asyncio.gather(*(client(url, started + duration, latencies, errors) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]
    return {
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--port", type=int, required=True)
    c = sub.add_parser("load")
    c.add_argument("--url", required=True)
    c.add_argument("--connections", type=int, default=50)
    c.add_argument("--duration", type=float, default=10.0)
    args = ap.parse_args()
    if args.command == "echo":
        try:
            asyncio.run(echo(args.port))
        except KeyboardInterrupt:
            pass
    else:
        print(json.dumps(asyncio.run(load(args.url, args.connections, args.duration))), flush=True)


if __name__ == "__main__":
    main()
