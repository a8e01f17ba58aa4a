"""A test-only parent for a real gateway whose metrics a test can read:
``python -m tests.metrics_helper CONFIG`` compiles the config first (which maps the shared
tables in this process, as the supervisor's first load does), forks ``fastgw.server.run``
on it (that supervisor and its workers inherit the mapping), then answers on stdin/stdout:
``render`` prints ``fastgw.metrics.render`` of its snapshot followed by a line ``.end``;
``slot N`` prints worker slot N's open connections by protocol;
``stop`` (or the end of stdin) stops the gateway with SIGTERM and exits. So the test
reads the shared memory from a process that is neither the supervisor nor a worker,
as the admin process will, and fastgw itself carries no test-only code.

May import: fastgw.server, fastgw.metrics, the standard library.
"""

from __future__ import annotations

import os
import signal
import sys

from fastgw import metrics
from fastgw._core.metrics import shared_metrics
from fastgw.server import load, run


def main(path: str) -> int:
    _, snapshot = load(path)  # maps the shared tables here, before the fork
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run(path)
        finally:
            os._exit(code)
    print(f"started {pid}", flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "render":
                sys.stdout.write(metrics.render(snapshot))
                sys.stdout.write(".end\n")
                sys.stdout.flush()
            elif command.startswith("slot "):  # one worker slot's connection gauges
                print(*shared_metrics().connections(int(command[5:])), flush=True)
            elif command == "stop":
                break
    finally:
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
