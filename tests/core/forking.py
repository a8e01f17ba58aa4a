"""Races between forked processes, for the tests of the shared-memory tables
(``_core.targets``, ``_core.limiter``): ``race(body)`` forks workers that run ``body`` on
the memory mapped before the fork, released together by ``Gate``, and returns what each
returned. Bounded: a worker still running after ``DEADLINE_S`` is killed and fails the
test; children leave by ``os._exit`` and never return into pytest.

May import: fastgw._core.targets (a shared counter for the gate), the standard library.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import time
import traceback
from typing import Callable

from fastgw._core.targets import TargetTable

WORKERS = 4
DEADLINE_S = 30.0


class Gate:
    """A barrier that lets the workers go within a few instructions of each other, so
    that they really race: each arrival adds one to a counter in a shared slot of its
    own and spins (yielding the CPU) until the round's last worker has arrived. (A
    semaphore wakes its waiters one after the other, too far apart to race.)"""

    def __init__(self, workers: int) -> None:
        self.counter = TargetTable(1).state(b"gate")
        self.workers = workers
        self.rounds = 0  # each process counts its own, after the fork

    def wait(self) -> None:
        self.rounds += 1
        self.counter.add_in_flight(1)
        everyone = self.workers * self.rounds
        deadline = time.monotonic() + DEADLINE_S
        while self.counter.in_flight < everyone:
            os.sched_yield()
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate round {self.rounds}: {self.counter.in_flight} of {everyone}")


def race(body: Callable[[int, Gate], object], workers: int = WORKERS) -> list:
    """Fork ``workers`` children that run ``body(index, gate)`` on the memory mapped
    before the fork, all starting together; returns what each returned (as JSON through
    a pipe). A child that raises fails the test with its traceback; one that is still
    running after DEADLINE_S is killed and fails it."""
    barrier = multiprocessing.get_context("fork").Barrier(workers, timeout=DEADLINE_S)
    gate = Gate(workers)
    pipes = [os.pipe() for _ in range(workers)]
    pids = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                for n, (r, w) in enumerate(pipes):
                    os.close(r)
                    if n != index:
                        os.close(w)
                out = pipes[index][1]
                try:
                    barrier.wait()  # every child forked and running
                    gate.wait()
                    data = json.dumps({"result": body(index, gate)}).encode()
                    code = 0
                except BaseException:
                    data = json.dumps({"error": traceback.format_exc()}).encode()
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view):]
            finally:
                os._exit(code)
        pids.append(pid)
    for _, w in pipes:
        os.close(w)
    deadline = time.monotonic() + DEADLINE_S
    chunks: dict[int, list[bytes]] = {r: [] for r, _ in pipes}
    open_fds = set(chunks)
    try:
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_fds), [], [], 0.5)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    chunks[fd].append(chunk)
                else:
                    open_fds.discard(fd)
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    pids.remove(pid)
            if pids:
                time.sleep(0.01)
    finally:
        for pid in pids:  # still running at the deadline: ours to end
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for r, _ in pipes:
            os.close(r)
    assert not pids and not open_fds, f"workers still running after {DEADLINE_S} s"
    results = []
    for r, _ in pipes:
        answer = json.loads(b"".join(chunks[r]) or b'{"error": "no answer"}')
        assert "error" not in answer, answer["error"]
        results.append(answer["result"])
    return results
