"""Active health checks: ``[upstreams.NAME.health_check]``.

Every worker runs a ``HealthChecker`` that wakes ten times a second and, for each target
of an upstream with checks, tries to claim the check that is due
(``TargetState.claim_probe``: a CAS in the table all workers share). Exactly one worker
wins each interval, so a target is checked once per ``interval`` whatever ``workers``
is, and the verdict it records is the one every worker's picks read. A worker that dies
mid-check only delays the next one by an interval.

A check is ``GET path HTTP/1.1`` on a new connection, ``Host`` the target's address,
``Connection: close``; a 2xx or 3xx status line within ``timeout`` passes, anything else
(refused, reset, timed out, a 4xx/5xx, garbage) fails. Targets start ``unchecked``, taking
traffic (as Kong and nginx start them); one passed check makes them healthy,
``unhealthy_threshold`` failures in a row unhealthy, and from there
``healthy_threshold`` passes in a row healthy again. Each change is logged once.

May import: the standard library, fastgw (version), fastgw._core.targets; it reads the
snapshot's ``Upstream`` and ``Pool`` objects (fastgw.upstream) it is handed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Callable

from fastgw import __version__
from fastgw._core.targets import BECAME_HEALTHY, BECAME_UNHEALTHY

if TYPE_CHECKING:
    from fastgw.config import HealthCheck
    from fastgw.snapshot import Snapshot
    from fastgw.upstream import Pool, Upstream

log = logging.getLogger("fastgw")

#: how often each worker looks for a check that is due (seconds)
TICK = 0.1
#: the longest status line a check reads
MAX_STATUS_LINE = 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: [^\r\n]*)?\r\n")


def now_ms() -> int:
    """CLOCK_MONOTONIC in milliseconds: the clock of the shared target table."""
    return int(time.monotonic() * 1000)


class HealthChecker:
    """Runs the checks this worker wins, for the upstreams of the current snapshot."""

    def __init__(self, snapshot_of: Callable[[], Snapshot]) -> None:
        self.snapshot_of = snapshot_of
        self.checks: set[asyncio.Task] = set()

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(TICK)
                try:
                    self.start_due(now_ms())
                except Exception:  # a bug of ours must not end every check of the worker
                    log.exception("health check pass failed")
        finally:
            for task in list(self.checks):
                task.cancel()

    def start_due(self, now: int) -> None:
        """Start every check that is due and that this worker claims."""
        for upstream in self.snapshot_of().upstreams.values():
            check = upstream.health_check
            if check is None:
                continue
            interval = int(check.interval * 1000)
            for pool in upstream.pools:
                if pool.state.claim_probe(now, interval):
                    task = asyncio.get_running_loop().create_task(self.check(upstream, pool, check))
                    self.checks.add(task)
                    task.add_done_callback(self.checks.discard)

    async def check(self, upstream: Upstream, pool: Pool, check: HealthCheck) -> None:
        status, outcome = await probe(pool.host, pool.port, pool.address, check.path, check.timeout)
        change = pool.state.probe_result(status, check.healthy_threshold, check.unhealthy_threshold,
                                         now_ms())
        if change == BECAME_UNHEALTHY:
            log.warning("upstream %s target %s: unhealthy after %d failed checks (last: %s)",
                        upstream.name, pool.address, check.unhealthy_threshold, outcome)
        elif change == BECAME_HEALTHY:
            log.info("upstream %s target %s: healthy (check: %s)", upstream.name, pool.address, outcome)


async def probe(host: str, port: int, address: str, path: str, timeout: float) -> tuple[int, str]:
    """``GET path`` on a new connection: (the status, what happened), status 0 when no
    valid status line came within ``timeout``."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: fastgw-health-check/{__version__}\r\n"
               "Connection: close\r\n\r\n").encode("ascii")
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_STATUS_LINE)
            writer.write(request)
            line = await reader.readuntil(b"\r\n")
    except TimeoutError:
        return 0, f"no answer within {timeout:g}s"
    except ConnectionRefusedError:
        return 0, "connection refused"
    except asyncio.IncompleteReadError:
        return 0, "connection closed before a status line"
    except asyncio.LimitOverrunError:
        return 0, "status line too long"
    except OSError as exc:
        return 0, f"connection failed: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.transport.abort()  # the answer is read; the rest is not wanted
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        return 0, "not an HTTP/1.x status line"
    status = int(match.group(1))
    return status, f"status {status}"
