"""Processes, listeners, reload and drain.

Theory of operation. ``run()`` is the supervisor: it loads and compiles the config (a bad
one never starts), binds the listen sockets itself, one SO_REUSEPORT socket per worker
and address, so a bind error is reported once and clearly, then forks ``workers``
processes. Each worker runs uvloop, serves its own sockets (the kernel spreads new
connections across them) and holds its own compiled ``Snapshot``. The supervisor keeps
the sockets: a worker that dies is forked again on the same sockets, so connections that
were waiting in its accept queue are served by its successor.

What the workers must agree on, each target's health and circuit, lives in the table of
``_core.targets``, which the supervisor's first config load maps shared before it forks.
Each worker runs a ``HealthChecker`` (fastgw.health); the table makes each check run once.

Signals go to the supervisor, which forwards them:
- SIGHUP: the supervisor validates the file; when valid every worker loads and compiles
  it (in a thread, so its event loop keeps serving) and swaps its snapshot in one assignment (requests in flight finish on the old one,
  no connection is touched); when invalid every error is logged and nothing changes.
  ``listen`` and ``workers`` changes need a restart (logged).
- SIGTERM / SIGINT: drain. Workers stop accepting, close idle keep-alive connections,
  finish requests in flight (their responses say ``Connection: close``) for up to
  ``drain_timeout``, then close what is left and exit 0; the supervisor exits 0 after them.

May import: everything in fastgw (it is the top of the house).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Callable

import uvloop

from fastgw import upstream
from fastgw._core import limiter
from fastgw.accesslog import AccessLog
from fastgw.config import Config, ServerConfig, load_config
from fastgw.errors import ConfigError
from fastgw.health import HealthChecker
from fastgw.protocols.http1 import HTTP1Connection
from fastgw.proxy import Proxy
from fastgw.snapshot import Snapshot, compile_snapshot, retire_replaced

log = logging.getLogger("fastgw")

SWEEP_INTERVAL = 0.25
RESTART_BACKOFF = 1.0


def setup_logging() -> None:
    # %(process)d, not the pid at setup: workers are forked after this and log as themselves.
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="%(asctime)s fastgw[%(process)d] %(levelname)s %(message)s")


def load(path: str) -> tuple[Config, Snapshot]:
    """Load and compile ``path``; raises ConfigError with every problem."""
    config = load_config(path)
    check_access_log(config)
    return config, compile_snapshot(config)


def check_access_log(config: Config) -> None:
    """An access log file that cannot be opened is a config error: found here, once, it
    is reported (and a reload refused); found by each worker, it would crash them in a
    restart loop while the supervisor keeps the port open."""
    target = config.log.access
    if target in ("stdout", "off"):
        return
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    except OSError as exc:
        raise ConfigError([f"{config.source}: log.access: cannot open {target}: "
                           f"{exc.strerror or exc}"]) from None


# -- the worker ---------------------------------------------------------------------------------


class Worker:
    """One process serving its listen sockets with the current snapshot."""

    def __init__(self, config_path: str, config: Config, snapshot: Snapshot,
                 sockets: list[socket.socket], slot: int = 0) -> None:
        self.config_path = config_path
        # This worker's share of every route's machine-wide concurrency count; what a
        # predecessor in this slot died with is handed back.
        limiter.set_worker_slot(slot)
        for route in snapshot.routes:
            if route.guard is not None and route.guard.reclaim():
                log.warning("route %s: requests in flight of a dead worker handed back", route.name)
        self.config = config
        self.limits: ServerConfig = config.server
        self.access_log = AccessLog(config.log.access)
        self.proxy = Proxy(snapshot, self.access_log)
        self.sockets = sockets
        self.connections: set[HTTP1Connection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.stopped: asyncio.Future | None = None
        self.reload_generation = 0

    def run(self) -> None:
        uvloop.run(self.serve())

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopped = self.loop.create_future()
        for sock in self.sockets:
            server = await self.loop.create_server(
                lambda: HTTP1Connection(self), sock=sock, backlog=4096)
            self.servers.append(server)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.loop.add_signal_handler(signal.SIGTERM, self.begin_drain)
        self.loop.add_signal_handler(signal.SIGINT, self.begin_drain)
        # The supervisor forked us with its signals blocked; a SIGHUP or SIGTERM that came
        # meanwhile is pending and is delivered now, to the handlers (unblocked earlier, a
        # SIGHUP's default action would have killed this worker).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, Supervisor.SIGNALS)
        sweeper = self.loop.create_task(self.sweep())
        # Every worker runs one; the shared target table makes each check happen once.
        checker = self.loop.create_task(HealthChecker(lambda: self.proxy.snapshot).run())
        try:
            await self.stopped
        finally:
            sweeper.cancel()
            checker.cancel()
            self.access_log.close()

    async def sweep(self) -> None:
        """Deadlines of every connection and upstream request, and the access log flush,
        a few times a second: cheaper than a timer per request."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()  # the clock of every deadline (exchange.monotonic)
            try:
                for conn in list(self.connections):
                    conn.check(now)
                upstream.sweep(now)
                self.access_log.flush()
            except Exception:  # a bug of ours must not stop every timeout of the worker
                log.exception("sweep failed")

    def reload(self) -> None:
        """SIGHUP: load and compile the file off the event loop, then swap on it.

        Compiling 10,000 routes takes over a second; on the loop, that second would be a
        stall for every connection of this worker (measured: 1.2 s worst latency across a
        reload). In a thread the loop keeps serving; only the last reload asked for is
        applied."""
        self.reload_generation += 1
        self.loop.create_task(self._reload(self.reload_generation))

    def _load_and_compile(self, previous: Snapshot) -> tuple[Config, Snapshot]:
        config = load_config(self.config_path)
        return config, compile_snapshot(config, previous=previous)

    async def _reload(self, generation: int) -> None:
        try:
            config, snapshot = await self.loop.run_in_executor(
                None, self._load_and_compile, self.proxy.snapshot)
        except ConfigError as exc:
            log.error("reload refused, the running config stays:\n%s", exc)
            return
        if generation != self.reload_generation:
            return  # a later SIGHUP came while this one compiled: that one wins
        if config.log.access != self.config.log.access:
            try:
                access_log = AccessLog(config.log.access)
            except OSError as exc:
                log.error("reload refused, the running config stays: log.access: cannot open %s: %s",
                          config.log.access, exc.strerror or exc)
                return
            old_log, self.access_log = self.access_log, access_log
            self.proxy.access_log = access_log
            old_log.close()
        old = self.proxy.snapshot
        self.proxy.snapshot = snapshot
        self.limits = config.server
        self.config = config
        retire_replaced(old, snapshot)
        if old.cluster is not None and old.cluster is not snapshot.cluster:
            self.loop.create_task(old.cluster.close())
        log.info("reloaded %s (digest %s, %d routes)", self.config_path, config.digest[:12],
                 len(config.routes))

    def begin_drain(self) -> None:
        if self.proxy.draining:
            return
        self.proxy.draining = True
        self.loop.create_task(self.drain())

    async def drain(self) -> None:
        for server in self.servers:
            server.close()
        deadline = self.loop.time() + self.limits.drain_timeout
        while self.connections and self.loop.time() < deadline:
            for conn in list(self.connections):
                conn.close_if_idle()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.transport.abort()
        for up in self.proxy.snapshot.upstreams.values():
            up.retire()
        if self.proxy.snapshot.cluster is not None:
            await self.proxy.snapshot.cluster.close()
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)


# -- the supervisor -----------------------------------------------------------------------------


def bind_sockets(config: Config) -> list[list[socket.socket]]:
    """One list of listening sockets per worker, all SO_REUSEPORT."""
    per_worker = []
    for addr in config.server.listen:
        _check_free(addr)
    for _ in range(config.server.workers):
        socks = []
        for addr in config.server.listen:
            family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((addr.host, addr.port))
            except OSError as exc:
                sock.close()
                raise SystemExit(f"fastgw: cannot listen on {addr}: {exc.strerror}") from None
            sock.listen(4096)
            sock.setblocking(False)
            socks.append(sock)
        per_worker.append(socks)
    return per_worker


def _check_free(addr) -> None:
    """Refuse an address another process listens on. Our sockets are SO_REUSEPORT, and
    the kernel lets a second gateway (same user) join that group silently and take half
    the connections; a probe bound without SO_REUSEPORT fails against any listener."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((addr.host, addr.port))
        except OSError as exc:
            raise SystemExit(f"fastgw: cannot listen on {addr}: {exc.strerror}") from None


class Supervisor:
    """Forks the workers, restarts the dead, forwards signals. Runs no event loop."""

    SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)

    def __init__(self, config_path: str, config: Config, snapshot: Snapshot,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.snapshot = snapshot
        self.sockets = bind_sockets(config)
        self.workers: dict[int, int] = {}   # pid -> slot
        self.started: dict[int, float] = {}
        self.stopping = False
        self.on_ready = on_ready

    def spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                # Signals stay blocked until the worker's loop has its handlers (Worker.serve).
                for other, socks in enumerate(self.sockets):
                    if other != slot:
                        for sock in socks:
                            sock.close()
                Worker(self.config_path, self.config, self.snapshot, self.sockets[slot], slot).run()
            except BaseException:  # noqa: BLE001 - a worker must never return into the supervisor
                log.exception("worker crashed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.workers[pid] = slot
        self.started[pid] = time.monotonic()

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        for slot in range(self.config.server.workers):
            self.spawn(slot)
        addrs = ", ".join(str(a) for a in self.config.server.listen)
        log.info("listening on %s with %d worker(s)", addrs, len(self.workers))
        if self.on_ready is not None:
            self.on_ready()
        stop_deadline = None
        while self.workers:
            info = signal.sigtimedwait(self.SIGNALS, 0.5)
            if info is not None:
                if info.si_signo == signal.SIGHUP:
                    self.reload()
                elif info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                    self.stopping = True
                    stop_deadline = time.monotonic() + self.config.server.drain_timeout + 5
                    log.info("draining (up to %ss)", self.config.server.drain_timeout)
                    self.signal_workers(signal.SIGTERM)
                    self.close_sockets()
            self.reap()
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self.signal_workers(signal.SIGKILL)
        log.info("stopped")
        return 0

    def reap(self) -> None:
        # Our workers only, never waitpid(-1): whoever runs us may have children of its own
        # (fastgw demo's backends) that are theirs to wait for.
        for pid in list(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            slot = self.workers.pop(pid)
            if self.stopping:
                continue
            lived = time.monotonic() - self.started.pop(pid, 0.0)
            log.error("worker %d (pid %d) died with %s; starting another", slot, pid,
                      _describe_status(status))
            if lived < RESTART_BACKOFF:
                time.sleep(RESTART_BACKOFF)  # a worker that dies at once: do not spin
            self.spawn(slot)

    def reload(self) -> None:
        try:
            config, snapshot = load(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, the running config stays:\n%s", exc)
            return
        if config.server.listen != self.config.server.listen or config.server.workers != self.config.server.workers:
            log.warning("server.listen and server.workers take effect at the next restart")
        # Workers forked later start from the new config.
        self.config, self.snapshot = config, snapshot
        self.signal_workers(signal.SIGHUP)

    def signal_workers(self, signo: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signo)
            except ProcessLookupError:
                pass

    def close_sockets(self) -> None:
        for socks in self.sockets:
            for sock in socks:
                sock.close()


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def run(config_path: str, on_ready: Callable[[], None] | None = None) -> int:
    """``fastgw run``: validate, bind, fork, supervise. Returns the exit code."""
    setup_logging()
    try:
        config, snapshot = load(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fastgw: cannot read {config_path}: {exc.strerror}", file=sys.stderr)
        return 1
    return Supervisor(config_path, config, snapshot, on_ready).run()
