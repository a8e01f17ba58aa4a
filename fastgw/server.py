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
  ``listen`` and ``workers`` changes need a restart (logged, with the values). Every
  process opens its log files again (logrotate).
- SIGUSR1: every process opens its log files again (fastgw.logs), as nginx's ``reopen``.
- SIGTERM / SIGINT / SIGQUIT: drain. Workers stop accepting, close idle keep-alive
  connections, finish requests in flight (their responses say ``Connection: close``) for
  up to ``drain_timeout``, then close what is left and exit 0; the supervisor exits 0
  after them.
- Any other deadly signal, SIGKILL included, ends the supervisor alone; each worker
  watches it (the kernel's parent-death signal, and ``getppid`` in the sweeper) and
  drains when it is gone, so no worker outlives it holding the port.

``[server].pid_file`` holds the supervisor's pid while it runs; ``signal_running`` is
``fastgw reload|stop|reopen``, which finds it there.

May import: everything in fastgw (it is the top of the house).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from typing import Callable

import uvloop

from fastgw import __version__, runtime, upstream
from fastgw._core import limiter
from fastgw._core import metrics as core_metrics
from fastgw.config import Config, ServerConfig, load_config
from fastgw.errors import ConfigError
from fastgw.health import HealthChecker
from fastgw.logs import AccessLog, error_log
from fastgw import aggregate
from fastgw.protocols import websocket
from fastgw.protocols.http1 import HTTP1Connection
from fastgw.protocols.http2 import HTTP2Connection
from fastgw.proxy import Proxy
from fastgw.snapshot import Snapshot, compile_snapshot, retire_replaced
from fastgw.tls import Listener

log = logging.getLogger("fastgw")

SWEEP_INTERVAL = 0.25
#: ``fastgw run``'s exit codes besides 0 (cli.py adds 2, a usage error, as argparse does)
EXIT_CONFIG = 1   # the config is invalid or cannot be read
EXIT_START = 3    # a listen address cannot be bound, or the process cannot start
RESTART_BACKOFF = 1.0


def load(path: str, text_from: str | None = None) -> tuple[Config, Snapshot]:
    """Load and compile ``path`` (its text read from ``text_from`` when given: a copy in
    the runtime folder); raises ConfigError with every problem (a log file that cannot be
    written among them: config.py checks that without creating anything)."""
    config = load_config(path, text_from)
    return config, compile_snapshot(config)


def stage(directory: str, path: str, generation: int) -> str | None:
    """Copy the config file's bytes into the runtime folder as ``generation``: what is
    validated next, and what every process will load. None when it cannot be read
    (loading ``path`` itself then says why)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return runtime.write_config(directory, generation, data)


def open_logs(config: Config, access_log: AccessLog | None = None) -> AccessLog:
    """Point this process's error log at ``[log].error`` and ``level``, and open the
    access log: a new one when its target changed, else ``access_log`` opened again
    (after ``mv access.log access.log.1``, a reload writes to a new ``access.log``, as
    nginx's does). Raises OSError when a file cannot be opened."""
    error_log().configure(config.log.error, config.log.level)
    if access_log is not None and access_log.target == config.log.access:
        access_log.reopen()
        return access_log
    return AccessLog(config.log.access)


def reopen_logs() -> None:
    """SIGUSR1 (logrotate's signal): every log file of this process opened again."""
    try:
        error_log().reopen()
    except OSError as exc:
        log.error("cannot reopen the error log %s: %s", error_log().target, exc.strerror or exc)


def _watch_supervisor(supervisor_pid: int) -> None:
    """In a new worker: be sent SIGTERM (drain) when the supervisor dies, however it dies
    (SIGKILL included), so that no worker outlives it holding the port. Linux's
    parent-death signal does it at once; the sweeper's ``getppid`` check is the fallback."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the sweeper notices within a sweep
        pass
    if os.getppid() != supervisor_pid:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


# -- the worker ---------------------------------------------------------------------------------


class Worker:
    """One process serving its listen sockets with the current snapshot."""

    def __init__(self, config_path: str, config: Config, snapshot: Snapshot,
                 sockets: list[socket.socket], slot: int = 0, supervisor_pid: int = 0,
                 tls_sockets: list[socket.socket] = (), runtime_dir: str = "", generation: int = 0) -> None:
        self.config_path = config_path
        #: the supervisor's runtime folder ("" outside a supervisor): the validated config
        #: copies and the status this worker publishes there
        self.runtime_dir = runtime_dir
        self.generation = generation
        self.slot = slot
        self.since = time.time()
        self.tls_sockets = list(tls_sockets)
        #: the TLS listeners' context (its certificates swapped on reload), or None
        self.tls = Listener(config.server.tls) if config.server.tls is not None and tls_sockets else None
        self.supervisor_pid = supervisor_pid
        # This worker's share of every route's machine-wide concurrency count; what a
        # predecessor in this slot died with is handed back.
        limiter.set_worker_slot(slot)
        # Its open-connections gauges start from zero: a predecessor's died with it.
        core_metrics.set_worker_slot(slot)
        for route in snapshot.routes:
            if route.guard is not None and route.guard.reclaim():
                log.warning("route %s: requests in flight of a dead worker handed back", route.name)
        self.config = config
        self.limits: ServerConfig = config.server
        self.access_log = AccessLog(config.log.access)
        self.proxy = Proxy(snapshot, self.access_log)
        websocket.attach(self.proxy, slot, supervisor_pid)  # websocket = "http", and its registry
        aggregate.attach(self.proxy)  # [routes.aggregate]
        self.sockets = sockets
        self.connections: set[HTTP1Connection | HTTP2Connection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.stopped: asyncio.Future | None = None
        self.reload_generation = 0
        #: connections closed unanswered over max_connections since the last report
        self.refused_connections = 0
        self.refusals_reported = 0.0

    def run(self) -> None:
        uvloop.run(self.serve())

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopped = self.loop.create_future()
        for sock in self.sockets:
            server = await self.loop.create_server(
                lambda: HTTP1Connection(self), sock=sock, backlog=4096)
            self.servers.append(server)
        for sock in self.tls_sockets:
            server = await self.loop.create_server(
                lambda: HTTP1Connection(self, True), sock=sock, backlog=4096, ssl=self.tls.context,
                ssl_handshake_timeout=self.limits.header_timeout)
            self.servers.append(server)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.loop.add_signal_handler(signal.SIGTERM, self.begin_drain)
        self.loop.add_signal_handler(signal.SIGINT, self.begin_drain)
        self.loop.add_signal_handler(signal.SIGQUIT, self.begin_drain)
        self.loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        # The supervisor forked us with its signals blocked; a SIGHUP or SIGTERM that came
        # meanwhile is pending and is delivered now, to the handlers (unblocked earlier, a
        # SIGHUP's default action would have killed this worker).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, Supervisor.SIGNALS)
        self.publish()
        # PERF: what start-up made lives as long as the worker: out of the cyclic GC's
        # sight, a full collection scans only what requests left alive. Requests that
        # hold many objects at once (an aggregate: its calls in flight) get a full
        # collection every few thousand requests, and those scanned the whole heap:
        # 7,200 -> 13,000 aggregates/s with this (benchmarks/README.md). (Not again after
        # a reload: cyclic garbage of the old config still in use would be kept forever.)
        gc.collect()
        gc.freeze()
        sweeper = self.loop.create_task(self.sweep())
        # Every worker runs one; the shared target table makes each check happen once.
        checker = self.loop.create_task(HealthChecker(lambda: self.proxy.snapshot).run())
        try:
            await self.stopped
        finally:
            sweeper.cancel()
            checker.cancel()
            self.access_log.close()

    def publish(self, failed: dict | None = None) -> None:
        """``worker-<slot>.json``: the config this worker runs (for the admin API)."""
        if not self.runtime_dir:
            return
        try:
            runtime.write_json(self.runtime_dir, runtime.worker_file(self.slot), {
                "slot": self.slot, "pid": os.getpid(), "generation": self.generation,
                "digest": self.config.digest, "since": self.since, "failed": failed})
        except OSError as exc:
            log.error("cannot write this worker's status in %s: %s", self.runtime_dir, exc.strerror or exc)

    async def sweep(self) -> None:
        """Deadlines of every connection and upstream request, and the access log flush,
        a few times a second: cheaper than a timer per request."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()  # the clock of every deadline (exchange.monotonic)
            if self.supervisor_pid and os.getppid() != self.supervisor_pid and not self.proxy.draining:
                log.error("the supervisor (pid %d) is gone: draining", self.supervisor_pid)
                self.begin_drain()
            try:
                for conn in list(self.connections):
                    conn.check(now)
                upstream.sweep(now)
                self.access_log.flush()
                if self.refused_connections and now - self.refusals_reported >= 1.0:
                    log.warning("%d connection(s) closed unanswered: max_connections (%d) reached",
                                self.refused_connections, self.limits.max_connections)
                    self.refused_connections, self.refusals_reported = 0, now
            except Exception:  # a bug of ours must not stop every timeout of the worker
                log.exception("sweep failed")

    def reopen_logs(self) -> None:
        """SIGUSR1: the access and error log files opened again (logrotate moved them)."""
        try:
            self.access_log.reopen()
        except OSError as exc:
            log.error("cannot reopen the access log %s: %s", self.access_log.target, exc.strerror or exc)
        reopen_logs()

    def reload(self) -> None:
        """SIGHUP: load and compile the file off the event loop, then swap on it.

        Compiling 10,000 routes takes over a second; on the loop, that second would be a
        stall for every connection of this worker (measured: 1.2 s worst latency across a
        reload). In a thread the loop keeps serving; only the last reload asked for is
        applied."""
        self.reload_generation += 1
        self.loop.create_task(self._reload(self.reload_generation))

    def _load_and_compile(self, previous: Snapshot, text_from: str | None) -> tuple[Config, Snapshot]:
        config = load_config(self.config_path, text_from)
        return config, compile_snapshot(config, previous=previous)

    async def _reload(self, generation: int) -> None:
        # The config the supervisor validated last, from its copy: never the file, which
        # may have been edited since (outside a supervisor, the file).
        text_from, config_generation = None, self.generation
        if self.runtime_dir:
            state = runtime.read_json(self.runtime_dir, runtime.SUPERVISOR) or {}
            config_generation = state.get("generation", self.generation)
            text_from = runtime.config_copy(self.runtime_dir, config_generation)
        try:
            config, snapshot = await self.loop.run_in_executor(
                None, self._load_and_compile, self.proxy.snapshot, text_from)
        except ConfigError as exc:
            log.error("reload refused, the running config stays:\n%s", exc)
            self.publish({"generation": config_generation, "errors": exc.errors})
            return
        if generation != self.reload_generation:
            return  # a later SIGHUP came while this one compiled: that one wins
        try:
            access_log = open_logs(config, self.access_log)
        except OSError as exc:
            log.error("reload refused, the running config stays: cannot open a log file: %s",
                      exc.strerror or exc)
            self.publish({"generation": config_generation, "errors": [f"cannot open a log file: {exc}"]})
            return
        if self.tls is not None and config.server.tls is not None:
            self.tls.update(config.server.tls)  # new handshakes get the new certificates
        if access_log is not self.access_log:
            old_log, self.access_log = self.access_log, access_log
            self.proxy.access_log = access_log
            old_log.close()
        old = self.proxy.snapshot
        self.proxy.snapshot = snapshot
        if config.server.http2 != self.limits.http2:
            # Open HTTP/2 connections keep the SETTINGS they were told: GOAWAY sends their
            # clients to a new connection, which hears the new ones.
            for conn in list(self.connections):
                if isinstance(conn, HTTP2Connection):
                    conn.retire()
        self.limits = config.server
        self.config = config
        retire_replaced(old, snapshot)
        if old.cluster is not None and old.cluster is not snapshot.cluster:
            self.loop.create_task(old.cluster.close())
        if config_generation != self.generation:
            self.generation, self.since = config_generation, time.time()
        self.publish()
        log.info("reloaded %s (digest %s, %d routes)", self.config_path, config.digest[:12],
                 len(config.routes))

    def begin_drain(self) -> None:
        if self.proxy.draining:
            return
        self.proxy.draining = True
        websocket.going_away()  # adapted WebSocket connections close with 1001
        self.loop.create_task(self.drain())

    async def drain(self) -> None:
        for server in self.servers:
            server.close()
        deadline = self.loop.time() + self.limits.drain_timeout
        # (a sequence's compensations may run on after its client's answer: not cut short)
        while (self.connections or aggregate.undoing()) and self.loop.time() < deadline:
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


def bind_sockets(listen, workers: int) -> list[list[socket.socket]]:
    """One list of listening sockets per worker, all SO_REUSEPORT."""
    per_worker = []
    for addr in listen:
        _check_free(addr)
    for _ in range(workers):
        socks = []
        for addr in listen:
            socks.append(_listening_socket(addr, reuseport=True, backlog=4096))
        per_worker.append(socks)
    return per_worker


def _listening_socket(addr, reuseport: bool, backlog: int, what: str = "") -> socket.socket:
    """A non-blocking socket listening on ``addr``; a bind error ends the process with
    its one-line reason."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((addr.host, addr.port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"fastgw: cannot listen on {addr}{what}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


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


def bind_admin(addr) -> socket.socket:
    """The admin API's listening socket (one, shared by no one: only the admin process
    accepts on it)."""
    _check_free(addr)
    return _listening_socket(addr, reuseport=False, backlog=128, what=" (admin)")


#: the admin process's place among the supervisor's children (workers have slots 0..n-1)
ADMIN_SLOT = -1


class Supervisor:
    """Forks the workers and the admin process, restarts the dead, forwards signals.
    Runs no event loop."""

    # SIGQUIT drains too (nginx's graceful stop). Any other signal whose default is to end
    # the process ends the supervisor; its workers, watching it, drain and go with it.
    SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)

    def __init__(self, config_path: str, config: Config, snapshot: Snapshot,
                 on_ready: Callable[[], None] | None = None, runtime_dir: str = "", generation: int = 1) -> None:
        self.config_path = config_path
        #: the runtime folder (fastgw.runtime) and the generation of the config running
        self.runtime_dir = runtime_dir
        self.generation = generation
        #: reloads asked for (accepted or refused), and the last one's outcome
        self.reloads = 0
        self.last_reload: dict | None = None
        self.started_at = time.time()
        self.config = config
        self.snapshot = snapshot
        tls = config.server.tls
        self.sockets = bind_sockets(config.server.listen, config.server.workers)
        self.tls_sockets = bind_sockets(tls.listen if tls else (), config.server.workers)
        self.admin_socket = bind_admin(config.admin.listen) if config.admin is not None else None
        self.admin_listen = config.admin.listen if config.admin is not None else None
        # What is bound and forked: a reload cannot change them (see ``reload``).
        self.bound = (config.server.listen, config.server.workers, tls.listen if tls else (),
                      tls.min_version if tls else None)
        self.workers: dict[int, int] = {}   # pid -> slot
        self.started: dict[int, float] = {}
        self.stopping = False
        self.on_ready = on_ready

    def spawn(self, slot: int) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker, or the admin process
            code = 0
            try:
                # Signals stay blocked until the child's loop has its handlers (Worker.serve).
                for other, socks in enumerate(self.sockets + self.tls_sockets):
                    if other % len(self.sockets) != slot:
                        for sock in socks:
                            sock.close()
                _watch_supervisor(supervisor)
                if slot == ADMIN_SLOT:
                    from fastgw.admin import AdminProcess
                    AdminProcess(self.config_path, self.config, self.snapshot, self.admin_socket, supervisor,
                                 self.runtime_dir, self.generation).run()
                    return
                if self.admin_socket is not None:
                    self.admin_socket.close()
                Worker(self.config_path, self.config, self.snapshot, self.sockets[slot], slot, supervisor,
                       self.tls_sockets[slot], self.runtime_dir, self.generation).run()
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
        self.publish()
        for slot in range(self.config.server.workers):
            self.spawn(slot)
        if self.admin_socket is not None:
            self.spawn(ADMIN_SLOT)
        self.pid_file = self.config.server.pid_file
        write_pid_file(self.pid_file)
        tls = self.config.server.tls
        log.info("listening on %s%s with %d worker(s)%s", _addresses(self.config.server.listen),
                 f", TLS on {_addresses(tls.listen)}" if tls else "", self.config.server.workers,
                 f", admin API on {self.admin_listen}" if self.admin_listen else "")
        if self.on_ready is not None:
            self.on_ready()
        stop_deadline = None
        while self.workers:
            info = signal.sigtimedwait(self.SIGNALS, 0.5)
            if info is not None:
                if info.si_signo == signal.SIGHUP:
                    self.reload()
                elif info.si_signo == signal.SIGUSR1:
                    reopen_logs()
                    log.info("log files reopened")
                    self.signal_workers(signal.SIGUSR1)
                elif info.si_signo in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) and not self.stopping:
                    self.stopping = True
                    stop_deadline = time.monotonic() + self.config.server.drain_timeout + 5
                    log.info("draining (up to %ss)", self.config.server.drain_timeout)
                    self.signal_workers(signal.SIGTERM)
                    self.close_sockets()
            self.reap()
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self.signal_workers(signal.SIGKILL)
        remove_pid_file(self.pid_file)
        if self.runtime_dir:
            runtime.remove(self.runtime_dir)
        log.info("stopped")
        return 0

    def publish(self) -> None:
        """``supervisor.json``: what the admin API's ``/status`` and ``POST /reload`` read."""
        if not self.runtime_dir:
            return
        try:
            runtime.write_json(self.runtime_dir, runtime.SUPERVISOR, {
                "pid": os.getpid(), "version": __version__, "started": self.started_at,
                "config": os.path.abspath(self.config_path), "generation": self.generation,
                "digest": self.config.digest, "workers": self.bound[1], "reloads": self.reloads,
                "last_reload": self.last_reload})
        except OSError as exc:
            log.error("cannot write the supervisor's status in %s: %s", self.runtime_dir, exc.strerror or exc)

    def refuse(self, errors: list[str]) -> None:
        self.last_reload = {"seq": self.reloads, "time": time.time(), "outcome": "refused", "errors": errors,
                            "generation": None, "digest": None}
        self.publish()

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
            log.error("%s (pid %d) died with %s; starting another",
                      "the admin process" if slot == ADMIN_SLOT else f"worker {slot}", pid, _describe_status(status))
            if lived < RESTART_BACKOFF:
                time.sleep(RESTART_BACKOFF)  # a worker that dies at once: do not spin
            self.spawn(slot)

    def reload(self) -> None:
        """SIGHUP: validate the file; when valid, its exact bytes become the next
        generation, which every worker (and the admin process) loads."""
        self.reloads += 1
        generation = self.generation + 1
        copy = stage(self.runtime_dir, self.config_path, generation) if self.runtime_dir else None
        try:
            config, snapshot = load(self.config_path, copy)
        except ConfigError as exc:
            log.error("reload refused, the running config stays:\n%s", exc)
            self.refuse(exc.errors)
            return
        try:
            error_log().configure(config.log.error, config.log.level)
        except OSError as exc:
            log.error("reload refused, the running config stays: cannot open the error log %s: %s",
                      config.log.error, exc.strerror or exc)
            self.refuse([f"cannot open the error log {config.log.error}: {exc.strerror or exc}"])
            return
        listen, workers, tls_listen, min_version = self.bound
        tls = config.server.tls
        if (tls.listen if tls else ()) != tls_listen:
            log.warning("server.tls.listen is now %s, but %s stays bound until the next restart",
                        _addresses(tls.listen) if tls else "none", _addresses(tls_listen) or "none")
        elif tls is not None and tls.min_version != min_version:
            log.warning("server.tls.min_version is now %s, but %s holds until the next restart",
                        tls.min_version, min_version)
        if config.server.listen != listen:
            log.warning("server.listen is now %s, but %s stays bound until the next restart",
                        _addresses(config.server.listen), _addresses(listen))
        if config.server.workers != workers:
            log.warning("server.workers is now %d, but %d keep running until the next restart",
                        config.server.workers, workers)
        admin_listen = config.admin.listen if config.admin is not None else None
        if admin_listen != self.admin_listen:
            log.warning("admin.listen is now %s, but %s holds until the next restart",
                        admin_listen or "none", self.admin_listen or "none")
        if config.server.pid_file != self.pid_file:
            remove_pid_file(self.pid_file)
            self.pid_file = config.server.pid_file
            write_pid_file(self.pid_file)
        # Workers forked later start from the new config.
        self.config, self.snapshot = config, snapshot
        if copy is not None:
            self.generation = generation
        self.last_reload = {"seq": self.reloads, "time": time.time(), "outcome": "ok", "errors": [],
                            "generation": self.generation, "digest": config.digest}
        self.publish()
        self.signal_workers(signal.SIGHUP)

    def signal_workers(self, signo: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signo)
            except ProcessLookupError:
                pass

    def close_sockets(self) -> None:
        for socks in self.sockets + self.tls_sockets:
            for sock in socks:
                sock.close()
        if self.admin_socket is not None:
            self.admin_socket.close()


def write_pid_file(path: str) -> None:
    """The supervisor's pid in ``[server].pid_file`` (written whole, then renamed into
    place, so a reader never sees half of it)."""
    if not path:
        return
    try:
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(temporary, path)
    except OSError as exc:
        log.error("cannot write the pid file %s: %s", path, exc.strerror or exc)


def remove_pid_file(path: str) -> None:
    """Remove ``path`` when it still names this process (never another gateway's)."""
    try:
        if path and read_pid_file(path) == os.getpid():
            os.unlink(path)
    except (OSError, ValueError):
        pass


def read_pid_file(path: str) -> int:
    """The pid in ``path``. Raises OSError, or ValueError when it holds no pid."""
    with open(path) as f:
        text = f.read().strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{path} holds no pid ({text[:20]!r})")
    return int(text)


def signal_running(config_path: str, command: str) -> int:
    """``fastgw reload|stop|reopen``: send the running supervisor, found through the
    config's ``[server].pid_file``, SIGHUP, SIGTERM or SIGUSR1. Returns the exit code."""
    signo = {"reload": signal.SIGHUP, "stop": signal.SIGTERM, "reopen": signal.SIGUSR1}[command]
    try:
        # A reload of a file with errors would be refused by the supervisor, which only
        # logs why: refused here, the errors are shown to whoever asked.
        config = load(config_path)[0] if command == "reload" else load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        if command == "reload":
            print("fastgw: reload not sent: the running config stays", file=sys.stderr)
        return 1
    path = config.server.pid_file
    if not path:
        print(f"fastgw: {config_path} sets no [server].pid_file, so the running gateway cannot be "
              f"found; set one, or send the supervisor {signo.name} yourself", file=sys.stderr)
        return 1
    try:
        pid = read_pid_file(path)
        os.kill(pid, signo)
    except FileNotFoundError:
        print(f"fastgw: not running (no pid file {path})", file=sys.stderr)
        return 1
    except ProcessLookupError:
        print(f"fastgw: not running (pid {pid} of {path} is gone)", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"fastgw: cannot signal the gateway: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1
    print(f"fastgw: sent {signo.name} to {pid} ({command})")
    return 0


def _addresses(listen) -> str:
    return ", ".join(str(address) for address in listen)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def run(config_path: str, on_ready: Callable[[], None] | None = None) -> int:
    """``fastgw run``: validate, bind, fork, supervise. Returns the exit code."""
    error_log()  # on stderr until the config says where
    try:
        directory = runtime.prepare(os.getpid())
    except OSError as exc:
        print(f"fastgw: cannot make the runtime folder: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_START
    try:
        config, snapshot = load(config_path, stage(directory, config_path, 1))
        error_log().configure(config.log.error, config.log.level)  # each worker opens its access log
    except ConfigError as exc:
        runtime.remove(directory)
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        runtime.remove(directory)
        print(f"fastgw: cannot open {exc.filename or config_path}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        supervisor = Supervisor(config_path, config, snapshot, on_ready, directory, 1)
    except SystemExit as exc:  # a listen address that cannot be bound
        runtime.remove(directory)
        print(exc, file=sys.stderr)
        return EXIT_START
    return supervisor.run()
