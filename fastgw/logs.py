"""The two logs: the access log (one JSON line per request) and the error log (what went
wrong, for the operator), and how both are reopened when logrotate moves their files.

The access log: one JSON object per request (orjson), to stdout, stderr, a file, or
off. Lines are buffered and written by the worker's sweeper a few times a second (and
at exit), one ``os.write`` per batch: a request never waits on the log's disk or pipe.
With several workers on one file, each batch is one append (the file is opened
O_APPEND), so lines never interleave within a line.

A stdout that is a pipe or a socket (a log collector) is made non-blocking: a reader
that stalls must not stall the worker. What it cannot take yet is kept for the next
flush, up to ``MAX_PENDING`` bytes, then new lines are dropped (whole lines: the reader
never sees half of one). A terminal is left blocking: its file is shared with the shell.
stderr is left blocking too: the error log writes there, line by line.

Fields: time (UTC, ISO 8601 with milliseconds), request_id, client_ip, method, path,
route, consumer (the authenticated consumer's name, or null), upstream (target address),
status, bytes_in, bytes_out, duration_ms.

The error log is the ``fastgw`` logger of the standard ``logging`` module, written by
:class:`ErrorLog` to stderr (the default), stdout or a file (``[log].error``) at
``[log].level``: one line per upstream failure, timeout, retry, circuit and health
change, reload and worker event, each request's line naming its request id, route and
target, as nginx's error.log does. Every record is one ``os.write`` of a whole line on
an O_APPEND descriptor, so the lines of several processes never mix.

Reopening (SIGUSR1, and every reload): a file log opens its path again, so that after
``mv access.log access.log.1`` the new lines go to a new ``access.log``, as nginx's
``reopen``. stdout and stderr are not reopened.

May import: the standard library, orjson; fastgw.exchange for types.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from fastgw.exchange import Exchange

FLUSH_BYTES = 64 * 1024
MAX_PENDING = 1024 * 1024


_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "2": "HTTP/2"}


def _user_agent(ex: Exchange) -> str | None:
    """The request's User-Agent (the first), cut to 256 characters, or None."""
    value = ex.header(b"user-agent")
    return value[:256].decode("latin-1") if value is not None else None


class AccessLog:
    __slots__ = ("target", "fd", "buffer", "size", "_second", "_stamp", "_clock_offset", "owns_fd", "enabled",
                 "stalled", "dropped")

    def __init__(self, target: str) -> None:
        self.buffer: list[bytes] = []
        self.size = 0
        self._second = -1
        self._stamp = ""
        # loop.time() is monotonic; the offset turns it into wall-clock time once.
        self._clock_offset = time.time() - time.monotonic()
        self.owns_fd = False
        # "off" stays off for good: the proxy does not even call ``write`` then
        # (``Proxy.access_log``). Any other may be turned off by a failed write, and on
        # again by ``reopen``.
        self.enabled = target != "off"
        self.stalled = False
        self.dropped = 0
        self.target = target
        if target == "off":
            self.fd = -1
        elif target == "stdout":
            self.fd = 1
            mode = os.fstat(1).st_mode
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                os.set_blocking(1, False)
        elif target == "stderr":
            self.fd = 2
        else:
            self.fd = _open_append(target)
            self.owns_fd = True

    def _time(self, monotonic: float) -> str:
        wall = monotonic + self._clock_offset
        second = int(wall)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((wall - second) * 1000):03d}Z"

    def write(self, ex: Exchange) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        traceparent = ex.traceparent
        answered = ex.upstream_answered
        line = orjson.dumps({
            "time": self._time(ex.started),
            "request_id": ex.request_id,
            "trace_id": traceparent[3:35].decode() if traceparent else None,
            "client_ip": ex.client_ip,
            "method": ex.method,
            "path": ex.path,
            "protocol": _PROTOCOLS.get(ex.version) or f"HTTP/{ex.version}",
            "route": ex.route_name or None,
            "consumer": ex.consumer.name if ex.consumer is not None else None,
            "upstream": ex.upstream_addr or None,
            "upstream_ms": round((answered - ex.upstream_sent) * 1000, 3) if answered else None,
            "status": ex.status,
            "bytes_in": ex.bytes_in,
            "bytes_out": ex.bytes_out,
            "duration_ms": round((now - ex.started) * 1000, 3),
            "user_agent": _user_agent(ex),
        }, option=orjson.OPT_APPEND_NEWLINE)
        self._append(line)

    def write_refusal(self, client_ip: str, request_id: str, status: int, target: bytes) -> None:
        """A request the protocol refused before it became an exchange (malformed, too large)."""
        if not self.enabled:
            return
        now = time.monotonic()
        self._append(orjson.dumps({
            "time": self._time(now), "request_id": request_id, "trace_id": None, "client_ip": client_ip,
            "method": None, "path": target[:256].decode("latin-1"), "protocol": None, "route": None,
            "consumer": None, "upstream": None, "upstream_ms": None, "status": status, "bytes_in": 0,
            "bytes_out": 0, "duration_ms": 0.0, "user_agent": None,
        }, option=orjson.OPT_APPEND_NEWLINE))

    def _append(self, line: bytes) -> None:
        if self.size >= MAX_PENDING:  # a stalled reader: drop rather than grow
            self.dropped += 1
            return
        self.buffer.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES and not self.stalled:  # stalled: the sweeper retries
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        data = b"".join(self.buffer)
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
            self.stalled = False
        except BlockingIOError:
            # A stalled reader on a pipe: keep the rest (it may begin mid-line) for later.
            self.stalled = True
        except OSError:
            self.enabled = False
            data = b""
        self.buffer = [data] if data else []
        self.size = len(data)

    def reopen(self) -> None:
        """Open a file log's path again (logrotate moved the file): what is buffered goes
        to the old file first. Raises OSError when the path cannot be opened; the old
        file is kept then."""
        if not self.owns_fd:
            return
        fd = _open_append(self.target)
        self.flush()
        os.close(self.fd)
        self.fd = fd
        self.enabled = True

    def close(self) -> None:
        self.flush()
        if self.owns_fd:
            os.close(self.fd)


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


# -- the error log ---------------------------------------------------------------------------

ERROR_LOG_FORMAT = "%(asctime)s fastgw[%(process)d] %(levelname)s %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class ErrorLog(logging.Handler):
    """The handler of the ``fastgw`` logger: each record one whole-line ``os.write``.

    One instance per process, made by :func:`error_log`; ``configure`` points it at the
    config's target and level (at start and on every reload), ``reopen`` opens a file
    target again. A write that fails (a full disk, a closed pipe) drops the line: the
    error log must never be why a request fails."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(ERROR_LOG_FORMAT))
        self.target = "stderr"
        self.fd = 2
        self.owns_fd = False

    def configure(self, target: str, level: str) -> None:
        """Write to ``target`` ("stderr", "stdout" or a file path) from ``level`` up.
        Raises OSError when the file cannot be opened (the old target is kept then)."""
        if target != self.target:
            fd = {"stderr": 2, "stdout": 1}.get(target)
            owns = fd is None
            if owns:
                fd = _open_append(target)
            self._swap(fd, owns)
            self.target = target
        else:
            self.reopen()  # a reload opens the files again, as nginx's does
        logging.getLogger("fastgw").setLevel(LEVELS[level])

    def reopen(self) -> None:
        if self.owns_fd:
            self._swap(_open_append(self.target), True)

    def _swap(self, fd: int, owns: bool) -> None:
        self.acquire()
        try:
            old, old_owned = self.fd, self.owns_fd
            self.fd, self.owns_fd = fd, owns
        finally:
            self.release()
        if old_owned:
            os.close(old)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
            while data:
                data = data[os.write(self.fd, data):]
        except Exception:  # noqa: BLE001 - see the class docstring
            pass


_error_log: ErrorLog | None = None


def error_log() -> ErrorLog:
    """This process's error log, installed on the ``fastgw`` logger at first call (by
    ``fastgw run``, before the config is read: config errors go to stderr)."""
    global _error_log
    if _error_log is None:
        _error_log = ErrorLog()
        logger = logging.getLogger("fastgw")
        logger.addHandler(_error_log)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return _error_log
