"""The admin API: its own process, forked by the supervisor, serving ``[admin].listen``.

Why a process of its own: it must answer while every worker is busy, or being started
again, or draining. The supervisor binds its socket at start (a bind error is reported
once, before anything is forked), forks it after the workers, forks it again when it
dies, and stops it with them; like a worker it watches the supervisor (the parent-death
signal, and ``getppid`` twice a second), so it never outlives it. Forked after the
supervisor's first config load, it shares what that load mapped: the upstream targets'
table (``GET /upstreams`` reads every worker's health, circuit and in-flight counts).

What it reads besides: the status files of the runtime folder (fastgw.runtime), which
the supervisor and each worker replace whole, and the config generation the supervisor
validated last, which it loads on SIGHUP as the workers do (its own compiled
``Snapshot``: ``GET /routes``). What it changes: a reload (SIGHUP to the supervisor,
then it waits for that reload's outcome and for every worker to run it), and adapted
WebSocket connections, through fastgw.websocket_registry.

The HTTP side is a small HTTP/1.1 server on httptools (bounded head and body,
keep-alive, requests answered in order); the proxy's front end is not reused: none of
its routing, policies or upstreams apply here. Calls that wait (a reload, a push to a
worker) run in a thread, so ``/status`` still answers meanwhile. Every answer is JSON
(orjson); errors are ``{"error": ..., "status": ...}``. The one exception is ``GET /``:
the live dashboard, one static page from the package (``fastgw/admin_ui.html``: HTML,
CSS and script inline, nothing loaded from elsewhere). It is served without the token
because it holds no data: its script asks the browser's user for the token once (kept in
the tab's sessionStorage) and reads ``/metrics``, ``/upstreams`` and ``/status`` with it,
every second, like any other client.

May import: fastgw.config, fastgw.snapshot, fastgw.errors, fastgw.runtime,
fastgw.websocket_registry, fastgw.logs (the error log), and ``fastgw.metrics`` when it
exists (the monitoring endpoint's text).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import signal
import socket
import time
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import httptools
import orjson
import uvloop

from fastgw import __version__, runtime, websocket_registry
from fastgw.config import Config, load_config
from fastgw.errors import ConfigError
from fastgw.logs import error_log
from fastgw import metrics
from fastgw.snapshot import Snapshot, compile_snapshot, served_methods

log = logging.getLogger("fastgw")

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
#: how long ``POST /reload`` waits for the supervisor's outcome and the workers
RELOAD_WAIT = 30.0
IDLE_TIMEOUT = 60.0
WATCH_INTERVAL = 0.5

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout"}

JSON = b"application/json"
HTML = b"text/html; charset=utf-8"

#: paths answered without the token: the dashboard's page, which holds no data (its script
#: sends the token on every request it makes)
PUBLIC_PATHS = frozenset({"/"})
#: the page may run its own inline script and style, and talk to this address only
DASHBOARD_FIELDS = (
    (b"Content-Security-Policy", b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                 b"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                                 b"frame-ancestors 'none'"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
)


class Answer:
    """One response: status, body, content type and extra fields."""

    __slots__ = ("status", "body", "content_type", "fields")

    def __init__(self, status: int, body: Any, content_type: bytes = JSON,
                 fields: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else orjson.dumps(body)
        self.content_type = content_type
        self.fields = fields


def error(status: int, message: str, **more: Any) -> Answer:
    return Answer(status, {"error": message, "status": status, **more})


class Request:
    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        parts = urlsplit(target)
        self.method = method
        self.path = unquote(parts.path)
        self.query = parse_qs(parts.query)
        self.headers = headers
        self.body = body


# -- what the endpoints say ---------------------------------------------------------------------


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError, TypeError):
        return False


def status_of(directory: str, supervisor_pid: int) -> dict[str, Any]:
    """``GET /status``: the supervisor's and every worker slot's published state."""
    state = runtime.read_json(directory, runtime.SUPERVISOR) or {}
    workers = []
    for slot in range(int(state.get("workers", 0))):
        worker = runtime.read_json(directory, runtime.worker_file(slot))
        if worker is None:
            workers.append({"slot": slot, "pid": None, "running": False})
            continue
        workers.append({"slot": slot, "pid": worker["pid"], "running": _alive(worker["pid"]),
                        "generation": worker["generation"], "digest": worker["digest"],
                        "since": _iso(worker["since"]), "failed": worker.get("failed")})
    last = state.get("last_reload")
    if last is not None:
        took = [w["slot"] for w in workers if last.get("generation") is not None
                and w.get("generation") == last["generation"]]
        last = {"time": _iso(last["time"]), "outcome": last["outcome"], "errors": last["errors"],
                "generation": last["generation"], "digest": last["digest"], "workers": took}
    started = state.get("started", time.time())
    return {"version": __version__, "supervisor_pid": supervisor_pid, "started": _iso(started),
            "uptime_s": round(time.time() - started, 3), "config": state.get("config"),
            "generation": state.get("generation"), "digest": state.get("digest"), "workers": workers,
            "last_reload": last}


def routes_of(snapshot: Snapshot) -> list[dict[str, Any]]:
    """``GET /routes``: the compiled table, in the router's order of the file, with what
    ``fastgw check`` shows of each route (the chain's policies as its ``describe``)."""
    result = []
    for route in snapshot.routes:
        rc = route.config
        result.append({
            "name": rc.name, "index": rc.index, "hosts": list(rc.hosts), "paths": list(rc.paths),
            "methods": list(served_methods(rc.methods)), "priority": rc.priority, "upstream": rc.upstream,
            "split": [{"upstream": up.name, "percent": percent} for up, percent in route.split_shares],
            "match_split": [{"header": h, "value": v, "upstream": u} for h, v, u in rc.match_split],
            "websocket": rc.websocket, "timeout": rc.timeout, "strip_prefix": rc.strip_prefix,
            "rewrite": rc.rewrite,
            "policies": [{"name": p.name, "owner": p.owner, "priority": p.priority}
                         for p in route.chain.policies],
            "chain": route.chain.describe(),
        })
    return result


def upstreams_of(snapshot: Snapshot) -> list[dict[str, Any]]:
    """``GET /upstreams``: each upstream and its targets' shared state (every worker's)."""
    result = []
    for up in snapshot.config.upstreams:
        result.append({"name": up.name, "balance": up.balance, "retries": up.retries,
                       "targets": snapshot.upstreams[up.name].targets_view()})
    return result


@functools.cache
def dashboard_page() -> bytes:
    """``GET /``: the dashboard's page (fastgw/admin_ui.html, package data), read once."""
    return resources.files("fastgw").joinpath("admin_ui.html").read_bytes()


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


# -- the process --------------------------------------------------------------------------------


class AdminProcess:
    """The admin API's process: one event loop, the listening socket, the snapshot."""

    def __init__(self, config_path: str, config: Config, snapshot: Snapshot, sock: socket.socket,
                 supervisor_pid: int, runtime_dir: str, generation: int) -> None:
        self.config_path = config_path
        self.config = config
        self.snapshot = snapshot
        self.sock = sock
        self.supervisor_pid = supervisor_pid
        self.runtime_dir = runtime_dir
        self.generation = generation
        self.connections: set[AdminConnection] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.stopped: asyncio.Future | None = None
        self.routes: dict[str, dict[str, Callable[[Request], Any]]] = {
            "/": {"GET": self.get_dashboard, "HEAD": self.get_dashboard},
            "/status": {"GET": self.get_status},
            "/routes": {"GET": self.get_routes},
            "/upstreams": {"GET": self.get_upstreams},
            "/metrics": {"GET": self.get_metrics},
            "/reload": {"POST": self.post_reload},
        }

    def run(self) -> None:
        uvloop.run(self.serve())

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopped = self.loop.create_future()
        server = await self.loop.create_server(lambda: AdminConnection(self), sock=self.sock)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.loop.create_task(self.reload()))
        for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.loop.add_signal_handler(signo, self.stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        # The supervisor forked us with its signals blocked: the handlers are in place now.
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        watcher = self.loop.create_task(self.watch())
        try:
            await self.stopped
        finally:
            watcher.cancel()
            server.close()
            for conn in list(self.connections):
                conn.transport.close()

    def stop(self) -> None:
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    def reopen_logs(self) -> None:
        try:
            error_log().reopen()
        except OSError as exc:
            log.error("cannot reopen the error log: %s", exc.strerror or exc)

    async def watch(self) -> None:
        """The supervisor gone (the parent-death signal's fallback), and idle connections."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if os.getppid() != self.supervisor_pid:
                log.error("the supervisor (pid %d) is gone: the admin process stops", self.supervisor_pid)
                self.stop()
            now = time.monotonic()
            for conn in list(self.connections):
                if not conn.busy and now - conn.last_active > IDLE_TIMEOUT:
                    conn.transport.close()

    async def reload(self) -> None:
        """SIGHUP: the generation the supervisor validated last, compiled off the loop."""
        state = runtime.read_json(self.runtime_dir, runtime.SUPERVISOR) or {}
        generation = state.get("generation", self.generation)
        if generation == self.generation:
            return
        copy = runtime.config_copy(self.runtime_dir, generation)

        def load() -> tuple[Config, Snapshot]:
            config = load_config(self.config_path, copy)
            return config, compile_snapshot(config, previous=self.snapshot)
        try:
            self.config, self.snapshot = await self.loop.run_in_executor(None, load)
            self.generation = generation
        except ConfigError as exc:
            log.error("the admin process cannot load generation %d:\n%s", generation, exc)

    # -- requests ------------------------------------------------------------------------------

    async def answer(self, request: Request) -> Answer:
        token = self.config.admin.token if self.config.admin is not None else ""
        if token and request.path not in PUBLIC_PATHS:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                answer = error(401, "a valid bearer token is required")
                answer.fields = ((b"WWW-Authenticate", b'Bearer realm="fastgw admin"'),)
                return answer
        methods = self.routes.get(request.path)
        if methods is None and request.path.startswith("/connections/"):
            methods = {"POST": self.post_connection, "DELETE": self.delete_connection}
        if methods is None:
            return error(404, f"no such endpoint: {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            allowed = ", ".join(methods)
            answer = error(405, f"{request.method} is not allowed here (Allow: {allowed})")
            answer.fields = ((b"Allow", allowed.encode()),)
            return answer
        try:
            result = handler(request)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        except Exception as exc:  # noqa: BLE001 - the admin API answers, whatever happens
            log.exception("admin API: %s %s failed", request.method, request.path)
            return error(500, f"internal error: {type(exc).__name__}")

    def get_dashboard(self, request: Request) -> Answer:
        """The live dashboard (no token: the page holds no data; its script sends the token)."""
        return Answer(200, dashboard_page(), HTML, DASHBOARD_FIELDS)

    def get_status(self, request: Request) -> Answer:
        return Answer(200, status_of(self.runtime_dir, self.supervisor_pid))

    def get_routes(self, request: Request) -> Answer:
        return Answer(200, {"digest": self.config.digest, "routes": routes_of(self.snapshot)})

    def get_upstreams(self, request: Request) -> Answer:
        return Answer(200, {"digest": self.config.digest, "upstreams": upstreams_of(self.snapshot)})

    def get_metrics(self, request: Request) -> Answer:
        """The Prometheus exposition of the counters every worker adds to (shared memory,
        inherited: nothing is asked of the workers)."""
        return Answer(200, metrics.render(self.snapshot).encode(), metrics.CONTENT_TYPE.encode())

    async def post_reload(self, request: Request) -> Answer:
        return await self.loop.run_in_executor(None, self.reload_and_wait)

    def reload_and_wait(self) -> Answer:
        """SIGHUP to the supervisor; its outcome for that reload; then every worker."""
        before = (runtime.read_json(self.runtime_dir, runtime.SUPERVISOR) or {}).get("reloads", 0)
        os.kill(self.supervisor_pid, signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_WAIT
        last = None
        while time.monotonic() < deadline:
            state = runtime.read_json(self.runtime_dir, runtime.SUPERVISOR) or {}
            last = state.get("last_reload")
            if last is not None and last["seq"] > before:
                break
            time.sleep(0.02)
        else:
            return error(504, "the supervisor did not answer the reload in time")
        if last["outcome"] != "ok":
            return error(400, "reload refused: the running config stays", errors=last["errors"])
        generation, workers = last["generation"], int(state.get("workers", 0))
        while time.monotonic() < deadline:
            files = [runtime.read_json(self.runtime_dir, runtime.worker_file(slot)) for slot in range(workers)]
            failed = [f["failed"] for f in files if f and f.get("failed") and f["failed"]["generation"] == generation]
            if failed:
                return error(500, "a worker refused the config the supervisor accepted",
                             errors=[e for f in failed for e in f["errors"]])
            if all(f is not None and f["generation"] >= generation for f in files):
                return Answer(200, {"digest": last["digest"], "generation": generation})
            time.sleep(0.02)
        return error(504, "not every worker took the new config in time", digest=last["digest"])

    async def post_connection(self, request: Request) -> Answer:
        conn_id = request.path[len("/connections/"):]
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        data: str | bytes = request.body
        if content_type.startswith("text/") or content_type == "application/json" or content_type.endswith("+json"):
            try:
                data = request.body.decode("utf-8")
            except UnicodeDecodeError:
                return error(400, "a text message must be UTF-8")
        ok = await self.loop.run_in_executor(None, lambda: websocket_registry.push(
            conn_id, data, supervisor_pid=self.supervisor_pid, directory=self.runtime_dir))
        if not ok:
            return error(404, f"no open connection {conn_id}")
        return Answer(200, {"id": conn_id, "sent": len(request.body), "binary": isinstance(data, bytes)})

    async def delete_connection(self, request: Request) -> Answer:
        conn_id = request.path[len("/connections/"):]
        code_text = request.query.get("code", ["1000"])[0]
        reason = request.query.get("reason", [""])[0]
        if not code_text.isdigit() or not (int(code_text) == 1000 or 3000 <= int(code_text) <= 4999):
            return error(400, "code must be 1000 or 3000-4999")
        if len(reason.encode()) > 123:
            return error(400, "reason is at most 123 bytes")
        ok = await self.loop.run_in_executor(None, lambda: websocket_registry.close(
            conn_id, int(code_text), reason, supervisor_pid=self.supervisor_pid, directory=self.runtime_dir))
        if not ok:
            return error(404, f"no open connection {conn_id}")
        return Answer(200, {"id": conn_id, "closing": True, "code": int(code_text)})


class AdminConnection(asyncio.Protocol):
    """One client connection: httptools parses, requests are answered one at a time, in order."""

    def __init__(self, admin: AdminProcess) -> None:
        self.admin = admin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.queue: list[tuple[Request, bool]] = []
        self.busy = False
        self.closing = False
        self.last_active = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.head_bytes = 0
        self.body_bytes = 0
        self.in_head = True
        self._name = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.admin.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.admin.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not served here")
        except httptools.HttpParserError as exc:
            if not self.closing:
                self._refuse(400, f"malformed request: {exc}")
        except _Refused:
            pass

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        self.headers[key] = value.decode("latin-1") if key not in self.headers else \
            f"{self.headers[key]}, {value.decode('latin-1')}"

    def on_headers_complete(self) -> None:
        self.in_head = False
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            self._refuse(413, f"a body is at most {MAX_BODY_BYTES} bytes")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY_BYTES:
            self._refuse(413, f"a body is at most {MAX_BODY_BYTES} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = Request(self.parser.get_method().decode("latin-1"), self.url.decode("latin-1"), self.headers,
                          b"".join(self.body))
        self.queue.append((request, self.parser.should_keep_alive()))
        if not self.busy:
            self.busy = True
            self.admin.loop.create_task(self._answer_all())

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"a request head is at most {MAX_HEAD_BYTES} bytes")

    def _refuse(self, status: int, message: str) -> None:
        """Answer now (after what is already queued would be nicer; it is not worth it) and close."""
        if self.closing:
            raise _Refused
        self.closing = True
        self._write(error(status, message), False)
        raise _Refused

    async def _answer_all(self) -> None:
        try:
            while self.queue and not self.transport.is_closing():
                request, keep_alive = self.queue.pop(0)
                answer = await self.admin.answer(request)
                if self.transport.is_closing():
                    return
                self._write(answer, keep_alive, head_only=request.method == "HEAD")
                if not keep_alive:
                    self.closing = True
                    return
        finally:
            self.busy = False
            self.last_active = time.monotonic()

    def _write(self, answer: Answer, keep_alive: bool, head_only: bool = False) -> None:
        head = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Unknown')}".encode(),
                b"Content-Type: " + answer.content_type,
                b"Content-Length: " + str(len(answer.body)).encode(),
                b"Cache-Control: no-store"]
        head.extend(name + b": " + value for name, value in answer.fields)
        if not keep_alive:
            head.append(b"Connection: close")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + (b"" if head_only else answer.body))
        if not keep_alive:
            self.transport.close()


class _Refused(Exception):
    """A request refused mid-parse (answered already): stop feeding the parser."""
