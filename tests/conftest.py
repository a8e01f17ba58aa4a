"""Shared fixtures: real backends and a real gateway process, all on 127.0.0.1.

``backend`` starts an h11 backend (tests/backend.py) in this process. ``gateway(toml)``
writes a config to a temporary folder and starts ``python -m fastgw run -c FILE`` as a
child process, waits until it accepts connections, and stops it (SIGTERM, then SIGKILL)
at the end of the test. Its stderr and access log (stdout) are kept in files the test
can read. ``redis_server`` starts a ``redis-server`` (from the system: ``apt-get install
redis-server``) on a free port, with no persistence, and kills it at the end. Every
process and socket here is bounded in time and cleaned up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.backend import Backend

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Gateway:
    """A running ``fastgw run`` process."""

    def __init__(self, folder: Path, toml: str, port: int) -> None:
        self.folder = folder
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config = folder / "fastgw.toml"
        self.config.write_text(toml)
        self.stdout_path = folder / "stdout.log"
        self.stderr_path = folder / "stderr.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Gateway:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastgw", "run", "-c", str(self.config)],
            stdout=self.stdout_path.open("wb"), stderr=self.stderr_path.open("wb"),
            stdin=subprocess.DEVNULL, cwd=self.folder, env=env)
        if wait:
            wait_port(self.port, proc=self.proc)
        return self

    def signal(self, signo: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signo)

    def reload(self, toml: str | None = None) -> None:
        if toml is not None:
            self.config.write_text(toml)
        self.signal(signal.SIGHUP)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def access_lines(self) -> list[str]:
        return [line for line in self.stdout_path.read_text(errors="replace").splitlines() if line]


def config_for(backends: dict[str, Backend] | Backend, routes: str = "", port: int | None = None,
               server: str = "", upstream_extra: str = "", log: str = 'access = "stdout"') -> tuple[str, int]:
    """A config with one upstream per backend (named as the dict key, or "app") and the
    given route tables; by default one catch-all route to the first upstream."""
    port = port or free_port()
    if isinstance(backends, Backend):
        backends = {"app": backends}
    ups = "\n".join(
        f'[upstreams.{name}]\ntargets = ["{b.address}"]\n{upstream_extra}' for name, b in backends.items())
    first = next(iter(backends))
    routes = routes or f'[[routes]]\nname = "all"\npaths = ["/*"]\nupstream = "{first}"\n'
    toml = (f'[server]\nlisten = ["127.0.0.1:{port}"]\n{textwrap.dedent(server)}\n'
            f'[log]\n{log}\n\n{ups}\n{textwrap.dedent(routes)}')
    return toml, port


@pytest.fixture
def backend():
    b = Backend("b1")
    yield b
    b.close()


@pytest.fixture
def make_backend():
    made: list[Backend] = []

    def make(name: str = "b") -> Backend:
        b = Backend(name)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def gateway(tmp_path):
    """``gateway(toml, port)`` starts a gateway; all are stopped after the test."""
    started: list[Gateway] = []

    def start(toml: str, port: int, wait: bool = True) -> Gateway:
        gw = Gateway(tmp_path, toml, port)
        started.append(gw)
        return gw.start(wait=wait)

    yield start
    for gw in started:
        if gw.proc is not None and gw.proc.poll() is None:
            try:
                gw.stop()
            except subprocess.TimeoutExpired:
                pass


def raw_request(port: int, data: bytes, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send raw bytes on a fresh socket; return everything read until the server closes
    (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closed (EOF or reset) within ``timeout``, reading away any data."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def mutated(rng, data: bytes, pieces: list[bytes], edits: int = 4, followers: list[bytes] = ()) -> bytes:
    """``data`` after 1 to ``edits`` random edits drawn from ``rng``: one of ``pieces``
    inserted, a few bytes deleted, a byte changed, a line repeated, or (when given) one
    of ``followers`` appended, as a pipelined message. For the seeded mutation tests."""
    data = bytearray(data)
    for _ in range(rng.randint(1, edits)):
        op, at = rng.random(), rng.randint(0, len(data))
        if op < 0.3:
            data[at:at] = rng.choice(pieces)
        elif op < 0.5:
            del data[at:at + rng.randint(1, 8)]
        elif op < 0.7 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.85 or not followers:
            lines = bytes(data).split(b"\r\n")
            if len(lines) > 2:
                i = rng.randrange(1, len(lines) - 1)
                lines.insert(i, lines[i])
            data = bytearray(b"\r\n".join(lines))
        else:
            data += rng.choice(followers)
    return bytes(data)


__all__ = ["Backend", "Gateway", "RedisServer", "config_for", "free_port", "wait_port", "raw_request",
           "closed_by_peer", "mutated"]


class RedisServer:
    """A ``redis-server`` of this test on 127.0.0.1:``port``, no persistence."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"redis-server on port {self.port} not answering after {timeout}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def client(self):
        """A plain (blocking) client for the test's own looks at the server."""
        import redis  # only the tests that use Redis load it

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=5)


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.kill()
