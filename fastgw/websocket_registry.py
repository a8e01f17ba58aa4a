"""The registry of adapted WebSocket connections (``websocket = "http"``): which worker
holds a connection, and how any process reaches it to push a message or close it.

A connection's id says which worker holds it: ``<worker slot>-<16 hex digits>``
(``0-9f86d081884c7d65``). Each worker that holds adapted connections listens on a Unix
socket, ``<runtime dir>/worker-<slot>.sock``, where the runtime dir is
``<temp dir>/fastgw-<uid>-<supervisor pid>`` (made 0700, and refused when it is not
ours); the socket file is 0600. Any process of the same user (another worker, the
admin process, a test) reaches a connection through the module's functions::

    from fastgw import websocket_registry
    websocket_registry.push("1-9f86d081884c7d65", "hello", supervisor_pid=pid)   # -> bool
    websocket_registry.close("1-9f86d081884c7d65", 1000, "bye", supervisor_pid=pid)

A command is one JSON line, then the message's bytes for a push; the answer is one JSON
line (``{"ok": true}``, or ``{"ok": false, "error": "..."}``). A worker answers from its
event loop; a connection is found only in the worker its id names, and a worker that
was started again in the same slot no longer has its predecessor's connections (False).

What lives in a worker: ``REGISTRY``, the connections it holds by id (each an object
with ``push(data) -> bool`` and ``close(code, reason) -> bool``), and the command socket,
opened when the first connection registers and removed when the worker drains.

May import: the standard library only (a process that only pushes loads nothing else).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import stat
import tempfile
from typing import Any, Protocol

log = logging.getLogger("fastgw")

#: the largest message a push may carry, and the largest command line
MAX_PUSH_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 4096


class Held(Protocol):
    """What a worker registers per connection (the adapter)."""

    def push(self, data: str | bytes) -> bool: ...

    def close(self, code: int, reason: str) -> bool: ...


def runtime_dir(supervisor_pid: int) -> str:
    """The folder of the command sockets of the gateway whose supervisor is
    ``supervisor_pid`` (a process with another TMPDIR must pass ``directory``)."""
    return os.path.join(tempfile.gettempdir(), f"fastgw-{os.getuid()}-{supervisor_pid}")


def socket_path(directory: str, slot: int) -> str:
    return os.path.join(directory, f"worker-{slot}.sock")


def slot_of(conn_id: str) -> int | None:
    """The worker slot a connection id names, or None when it is not an id."""
    slot, sep, rest = conn_id.partition("-")
    if not sep or not slot.isdigit() or len(rest) != 16 or any(c not in "0123456789abcdef" for c in rest):
        return None
    return int(slot)


# -- from any process ------------------------------------------------------------------------


def push(conn_id: str, data: str | bytes, *, supervisor_pid: int, directory: str | None = None,
         timeout: float = 2.0) -> bool:
    """Send ``data`` to the client of connection ``conn_id`` as one message (text for a
    str, binary for bytes). True when the worker holding it took it; False when there is
    no such open connection."""
    binary = not isinstance(data, str)
    payload = bytes(data) if binary else data.encode()
    return _command(conn_id, {"op": "push", "binary": binary}, payload, supervisor_pid, directory, timeout)


def close(conn_id: str, code: int = 1000, reason: str = "", *, supervisor_pid: int, directory: str | None = None,
          timeout: float = 2.0) -> bool:
    """Close connection ``conn_id`` with ``code`` and ``reason`` (the closing handshake,
    then its $disconnect). True when it was open and is now closing."""
    return _command(conn_id, {"op": "close", "code": code, "reason": reason}, b"", supervisor_pid, directory,
                    timeout)


def _command(conn_id: str, header: dict[str, Any], payload: bytes, supervisor_pid: int, directory: str | None,
             timeout: float) -> bool:
    slot = slot_of(conn_id)
    if slot is None:
        return False
    if len(payload) > MAX_PUSH_BYTES:
        raise ValueError(f"a pushed message is at most {MAX_PUSH_BYTES} bytes, got {len(payload)}")
    held = REGISTRY.connections.get(conn_id) if REGISTRY.supervisor_pid == supervisor_pid else None
    if held is not None:  # held by this very process: no socket to itself
        return REGISTRY.run(held, header, payload)["ok"]
    path = socket_path(directory or runtime_dir(supervisor_pid), slot)
    line = json.dumps({**header, "id": conn_id, "size": len(payload)}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(line + payload)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        return False  # no worker of that gateway in that slot holds connections
    return bool(answer) and json.loads(answer).get("ok") is True


# -- in a worker -----------------------------------------------------------------------------------


class Registry:
    """The adapted connections this worker holds, and its command socket."""

    def __init__(self) -> None:
        self.slot = 0
        self.supervisor_pid = 0
        self.connections: dict[str, Held] = {}
        self.path: str | None = None
        self.server: asyncio.AbstractServer | None = None
        self.failed = False

    def bind(self, slot: int, supervisor_pid: int) -> None:
        """This process is the worker in ``slot`` of the gateway ``supervisor_pid``."""
        self.slot, self.supervisor_pid = slot, supervisor_pid

    def new_id(self) -> str:
        return f"{self.slot}-{secrets.token_hex(8)}"

    def add(self, conn_id: str, held: Held) -> None:
        self.connections[conn_id] = held
        if self.path is None and not self.failed and self.supervisor_pid:
            self._listen()

    def remove(self, conn_id: str) -> None:
        self.connections.pop(conn_id, None)

    def stop(self) -> None:
        """The worker drains: no more commands; the socket file goes (and the folder,
        when it was the last)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.path is not None:
            for remove in (os.unlink, os.rmdir):
                try:
                    remove(self.path if remove is os.unlink else os.path.dirname(self.path))
                except OSError:
                    pass
            self.path = None

    def run(self, held: Held, header: dict[str, Any], payload: bytes) -> dict[str, Any]:
        """One command on a connection this worker holds."""
        op = header.get("op")
        if op == "push":
            ok = held.push(payload if header.get("binary") else payload.decode("utf-8", "replace"))
        elif op == "close":
            code, reason = header.get("code", 1000), header.get("reason", "")
            if not isinstance(code, int) or not isinstance(reason, str):
                return {"ok": False, "error": "code must be an integer and reason a string"}
            ok = held.close(code, reason)
        else:
            return {"ok": False, "error": f"unknown command {op!r}"}
        return {"ok": bool(ok)} if ok else {"ok": False, "error": "the connection is not open"}

    def _listen(self) -> None:
        """Bind the command socket now (so a command sent a moment later waits in its
        backlog), and serve it from the event loop."""
        directory = runtime_dir(self.supervisor_pid)
        path = socket_path(directory, self.slot)
        try:
            _own_folder(directory)
            try:
                os.unlink(path)  # a predecessor's in this slot
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            self.failed = True
            log.error("websocket registry: cannot listen on %s (%s): its connections cannot be reached from "
                      "other processes", path, exc.strerror or exc)
            return
        self.path = path
        asyncio.get_running_loop().create_task(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        self.server = await asyncio.start_unix_server(self._command, sock=sock, limit=MAX_LINE_BYTES)

    async def _command(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                header = json.loads(await asyncio.wait_for(reader.readline(), 5))
                size = header.get("size", 0)
                if not isinstance(size, int) or not 0 <= size <= MAX_PUSH_BYTES:
                    raise ValueError("bad size")
                payload = await asyncio.wait_for(reader.readexactly(size), 30) if size else b""
            except (ValueError, AttributeError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError):
                answer: dict[str, Any] = {"ok": False, "error": "bad command"}
            else:
                held = self.connections.get(header.get("id"))
                answer = self.run(held, header, payload) if held is not None else \
                    {"ok": False, "error": "no such connection"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except Exception:  # a command must never take the worker down
            log.exception("websocket registry: a command failed")
        finally:
            writer.close()


def _own_folder(directory: str) -> None:
    """Make ``directory`` (0700), or check that the one there is ours: a real folder,
    owned by this user, that no one else may enter (a folder of /tmp someone else made
    would let them take the sockets)."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{directory} is not a folder of this user's alone")


#: this process's registry (bound by the worker)
REGISTRY = Registry()
