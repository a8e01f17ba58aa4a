"""The access log: one JSON object per request (orjson), to stdout, a file, or off.

Lines are buffered and written by the worker's sweeper a few times a second (and at
exit), one ``os.write`` per batch: a request never waits on the log's disk or pipe.
With several workers on one file, each batch is one append (the file is opened
O_APPEND), so lines never interleave within a line.

A stdout that is a pipe or a socket (a log collector) is made non-blocking: a reader
that stalls must not stall the worker. What it cannot take yet is kept for the next
flush, up to ``MAX_PENDING`` bytes, then new lines are dropped (whole lines: the reader
never sees half of one). A terminal is left blocking: its file is shared with the shell.

Fields: time (UTC, ISO 8601 with milliseconds), request_id, client_ip, method, path,
route, upstream (target address), status, bytes_in, bytes_out, duration_ms.

May import: the standard library, orjson; fastgw.exchange for types.
"""

from __future__ import annotations

import os
import stat
import time
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from fastgw.exchange import Exchange

FLUSH_BYTES = 64 * 1024
MAX_PENDING = 1024 * 1024


class AccessLog:
    __slots__ = ("fd", "buffer", "size", "_second", "_stamp", "_clock_offset", "owns_fd", "enabled",
                 "stalled", "dropped")

    def __init__(self, target: str) -> None:
        self.buffer: list[bytes] = []
        self.size = 0
        self._second = -1
        self._stamp = ""
        # loop.time() is monotonic; the offset turns it into wall-clock time once.
        self._clock_offset = time.time() - time.monotonic()
        self.owns_fd = False
        self.enabled = target != "off"
        self.stalled = False
        self.dropped = 0
        if target == "off":
            self.fd = -1
        elif target == "stdout":
            self.fd = 1
            mode = os.fstat(1).st_mode
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                os.set_blocking(1, False)
        else:
            self.fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
        line = orjson.dumps({
            "time": self._time(ex.started),
            "request_id": ex.request_id,
            "client_ip": ex.client_ip,
            "method": ex.method,
            "path": ex.path,
            "route": ex.route_name or None,
            "upstream": ex.upstream_addr or None,
            "status": ex.status,
            "bytes_in": ex.bytes_in,
            "bytes_out": ex.bytes_out,
            "duration_ms": round((now - ex.started) * 1000, 3),
        }, option=orjson.OPT_APPEND_NEWLINE)
        self._append(line)

    def write_refusal(self, client_ip: str, request_id: str, status: int, target: bytes) -> None:
        """A request the protocol refused before it became an exchange (malformed, too large)."""
        if not self.enabled:
            return
        now = time.monotonic()
        self._append(orjson.dumps({
            "time": self._time(now), "request_id": request_id, "client_ip": client_ip,
            "method": None, "path": target[:256].decode("latin-1"), "route": None,
            "upstream": None, "status": status, "bytes_in": 0, "bytes_out": 0, "duration_ms": 0.0,
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

    def close(self) -> None:
        self.flush()
        if self.owns_fd:
            os.close(self.fd)
