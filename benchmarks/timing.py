"""Timing for the micro-benchmarks' speed-up checks: the fastest of a few timed calls,
and ``native_against_reference``, the three tests of a file that times a Cython module's
cases beside their plain-Python references.

May import: pytest, the standard library.
"""

from __future__ import annotations

import time
from typing import Callable

import pytest


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


def native_against_reference(name: str, cases: dict[str, tuple[Callable[[], object], Callable[[], object]]],
                             unit: str, min_speedup: float) -> tuple[Callable, Callable, Callable]:
    """``test_native``, ``test_reference`` and ``test_speedup_over_reference`` for
    ``cases`` ({case: (native call, reference call)}): each side timed by
    pytest-benchmark in the group "NAME, CASE, UNIT", and the reference's best time over
    the native's recorded in the run's table of speed-ups and held to ``min_speedup``."""
    parametrize = pytest.mark.parametrize("case", sorted(cases))

    @parametrize
    def test_native(benchmark, case):
        benchmark.group = f"{name}, {case}, {unit}"
        benchmark(cases[case][0])

    @parametrize
    def test_reference(benchmark, case):
        benchmark.group = f"{name}, {case}, {unit}"
        benchmark(cases[case][1])

    @parametrize
    def test_speedup_over_reference(case, speedups):
        fast, slow = cases[case]
        ratio = best_of(slow, 7) / best_of(fast, 7)
        speedups[f"{name}, {case}"] = ratio
        assert ratio >= min_speedup, f"{case}: only {ratio:.1f}x the reference"

    return test_native, test_reference, test_speedup_over_reference
