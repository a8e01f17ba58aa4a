"""Reload and drain under mixed load, end to end: a real gateway (2 workers) in front of
real backends, with keep-alive GETs, streamed uploads, large downloads, HTTP/2 streams
and WebSocket tunnels all running while the config is reloaded ten times (routes and
upstreams added, moved and removed around the ones the load uses), then one SIGTERM
with slow requests of every kind in flight.

What must hold: no request of the load fails, every tunnel keeps echoing through every
reload, the requests in flight at SIGTERM finish whole (they are shorter than
``drain_timeout``), and the gateway exits 0. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import free_port
from tests.test_server import children, reloaded_pids, wait_for
from tests.test_websocket_proxy import ws_connect
from tests.ws_backends import WsEcho

DOWNLOAD_BYTES = 300_000
UPLOAD_PIECES = 20
PIECE = b"u" * 10_000


def config(port: int, a, b, ws: WsEcho, step: int) -> str:
    """Version ``step`` of the config: the routes the load uses (/load, /ws) never go
    away; around them a route is added, moved to another upstream and removed, and the
    upstream "app" moves between the two backends (both give the same answers)."""
    app = a if step % 2 == 0 else b
    text = (f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\ndrain_timeout = "10s"\n'
            f'[log]\naccess = "off"\n'
            f'[upstreams.app]\ntargets = ["{app.address}"]\n'
            f'[upstreams.ws]\ntargets = ["{ws.address}"]\nread_timeout = "60s"\n'
            '[[routes]]\nname = "load"\npaths = ["/load/*"]\nupstream = "app"\nstrip_prefix = "/load"\n'
            '[[routes]]\nname = "ws"\npaths = ["/ws/*"]\nupstream = "ws"\nwebsocket = "proxy"\n')
    if step % 3 == 1:
        text += f'[upstreams.other]\ntargets = ["{b.address}"]\n'
        text += '[[routes]]\nname = "extra"\npaths = ["/extra/*"]\nupstream = "other"\nstrip_prefix = "/extra"\n'
    elif step % 3 == 2:
        text += '[[routes]]\nname = "extra"\npaths = ["/moved/*"]\nupstream = "app"\n'
    return text


@pytest.mark.slow
def test_ten_reloads_and_a_drain_under_mixed_load_fail_nothing(make_backend, gateway):
    a, b = make_backend("a"), make_backend("b")
    ws = WsEcho()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gw = gateway(config(port, a, b, ws, 0), port)
    try:
        workers = wait_for(lambda: len(children(gw.proc.pid)) == 2 and children(gw.proc.pid), what="2 workers")
        stop = threading.Event()
        lock = threading.Lock()
        failures: list[str] = []
        done = {"get": 0, "upload": 0, "download": 0, "h2": 0, "ws": 0}

        def fail(kind: str, what: object) -> None:
            with lock:
                failures.append(f"{kind}: {what!r}"[:300])

        def count(kind: str) -> None:
            with lock:
                done[kind] += 1

        def keepalive_gets() -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                for _ in range(5000):
                    if stop.is_set():
                        return
                    try:
                        r = client.get("/load/echo/get")
                        if r.status_code != 200 or r.json()["path"] != "/echo/get":
                            fail("get", (r.status_code, r.text[:100]))
                        count("get")
                    except httpx.HTTPError as exc:
                        fail("get", exc)

        def uploads() -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                for _ in range(500):
                    if stop.is_set():
                        return

                    def body():
                        for _ in range(UPLOAD_PIECES):
                            yield PIECE
                    try:
                        r = client.post("/load/echo/up", content=body())
                        seen = r.json()
                        if r.status_code != 200 or seen["body_len"] != UPLOAD_PIECES * len(PIECE):
                            fail("upload", (r.status_code, seen.get("body_len")))
                        count("upload")
                    except (httpx.HTTPError, ValueError) as exc:
                        fail("upload", exc)

        def downloads() -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                for _ in range(500):
                    if stop.is_set():
                        return
                    try:
                        r = client.get(f"/load/big?bytes={DOWNLOAD_BYTES}")
                        if r.status_code != 200 or len(r.content) != DOWNLOAD_BYTES:
                            fail("download", (r.status_code, len(r.content)))
                        count("download")
                    except httpx.HTTPError as exc:
                        fail("download", exc)

        def h2_streams() -> None:
            async def run() -> None:
                async with httpx.AsyncClient(base_url=url, http1=False, http2=True, timeout=10) as client:
                    while not stop.is_set():
                        results = await asyncio.gather(
                            *[client.get(f"/load/echo/h2/{i}") for i in range(8)], return_exceptions=True)
                        for i, r in enumerate(results):
                            if isinstance(r, Exception):
                                fail("h2", r)
                            elif r.status_code != 200 or r.json()["path"] != f"/echo/h2/{i}" \
                                    or r.http_version != "HTTP/2":
                                fail("h2", (r.status_code, r.http_version))
                            else:
                                count("h2")
            asyncio.run(run())

        def tunnel(n: int) -> None:
            try:
                with ws_connect(f"ws://127.0.0.1:{port}/ws/tunnel-{n}") as conn:
                    for i in range(100_000):
                        if stop.is_set():
                            return
                        message = f"{n}:{i}"
                        conn.send(message)
                        if conn.recv(timeout=5) != message:
                            fail("ws", message)
                        count("ws")
                        time.sleep(0.02)
            except Exception as exc:  # noqa: BLE001 - any failure of a tunnel is the test's finding
                fail("ws", exc)

        threads = ([threading.Thread(target=keepalive_gets) for _ in range(2)]
                   + [threading.Thread(target=uploads), threading.Thread(target=downloads),
                      threading.Thread(target=h2_streams)]
                   + [threading.Thread(target=tunnel, args=(n,)) for n in range(3)])
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            for step in range(1, 11):
                text = config(port, a, b, ws, step)
                gw.reload(text)
                # Bounded poll: every worker logged this very file's reload.
                wait_for(lambda: reloaded_pids(gw, text) == workers, timeout=15, what=f"reload {step}")
                time.sleep(0.3)
                if step % 3 == 1:
                    with httpx.Client(timeout=5) as client:
                        r = client.get(f"{url}/extra/echo")
                        assert (r.status_code, r.headers.get("x-backend")) == (200, "b"), step
        finally:
            stop.set()
            for t in threads:
                t.join(20)
        assert not any(t.is_alive() for t in threads)
        assert failures == [], failures[:10]
        assert min(done.values()) >= 5, done
        assert children(gw.proc.pid) == workers, "no worker was lost on the way"

        # The drain: slow requests of every kind in flight when SIGTERM comes all finish.
        in_flight: dict[str, object] = {}

        def slow(kind: str, call) -> threading.Thread:
            def run() -> None:
                try:
                    in_flight[kind] = call()
                except Exception as exc:  # noqa: BLE001
                    in_flight[kind] = exc
            t = threading.Thread(target=run)
            t.start()
            return t

        def slow_h1():
            with httpx.Client(timeout=15) as client:
                return client.get(f"{url}/load/slow?ms=1500").status_code

        def slow_h2():
            with httpx.Client(http1=False, http2=True, timeout=15) as client:
                return client.get(f"{url}/load/slow?ms=1500").status_code

        def slow_upload():
            def body():
                for _ in range(10):
                    time.sleep(0.15)
                    yield PIECE
            with httpx.Client(timeout=15) as client:
                r = client.post(f"{url}/load/echo/slow-up", content=body())
                return r.status_code, r.json()["body_len"]

        slow_threads = [slow("h1", slow_h1), slow("h2", slow_h2), slow("upload", slow_upload)]
        time.sleep(0.4)
        gw.signal(signal.SIGTERM)
        for t in slow_threads:
            t.join(20)
        assert in_flight == {"h1": 200, "h2": 200, "upload": (200, 10 * len(PIECE))}, in_flight
        assert gw.proc.wait(20) == 0
        assert "Traceback" not in gw.stderr and "died" not in gw.stderr
    finally:
        ws.close()
