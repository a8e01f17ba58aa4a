"""A plain-Python reference of fastgw._core.metrics' counters: what one route block, one
upstream line and the connection gauges must hold after a sequence of operations, written
for clarity (dicts, bisect), not speed. tests/core/test_metrics.py drives both with the
same operations and compares.

May import: the standard library only.
"""

from __future__ import annotations

import bisect

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
EXACT = (101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308,
         400, 401, 403, 404, 405, 408, 409, 413, 429, 499, 500, 502, 503, 504)
BOUNDS_NS = [round(b * 1e9) for b in (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0, 10.0)]


def method_label(method: str | None) -> str:
    return method if method in METHODS else "other"


def code_label(status: int) -> str:
    if status in EXACT:
        return str(status)
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return "other"


def bucket(duration_ns: int) -> int:
    """Index of the first bound ≥ duration (len(BOUNDS_NS): +Inf)."""
    return bisect.bisect_left(BOUNDS_NS, max(0, duration_ns))


class Route:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.buckets = [0] * (len(BOUNDS_NS) + 1)
        self.sum_ns = 0
        self.request_bytes = 0
        self.response_bytes = 0
        self.rate_limited = 0
        self.concurrency_refused = 0

    def record(self, method: str, status: int, duration_ns: int, bytes_in: int, bytes_out: int) -> None:
        key = (method_label(method), code_label(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        self.buckets[bucket(duration_ns)] += 1
        self.sum_ns += max(0, duration_ns)
        self.request_bytes += bytes_in
        self.response_bytes += bytes_out
