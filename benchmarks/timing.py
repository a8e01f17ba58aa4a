"""Timing for the micro-benchmarks' speed-up checks: the fastest of a few timed calls.

May import: the standard library only.
"""

from __future__ import annotations

import time
from typing import Callable


def best_of(fn: Callable[[], object], repeat: int, budget: float = float("inf")) -> float:
    """The fastest of ``repeat`` timed calls (the least disturbed one), stopping early
    once ``budget`` seconds are spent."""
    best = float("inf")
    spent = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best = min(best, took)
        spent += took
        if spent > budget:
            break
    return best
