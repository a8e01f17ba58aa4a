"""Micro-benchmarks of fastgw._core.balancer against the plain-Python references of the
tests (tests/core/reference_balancer.py): the consistent-hash ring pick (10 targets,
weights 1 to 3, client-address keys) and the smooth weighted round robin pick (10
targets, one down). ``test_speedup_over_reference`` measures both sides in the same run
and fails below 3x (a ratio, never an absolute time).

May import: fastgw._core, tests.core.reference_balancer, pytest, the standard library.
"""

from __future__ import annotations

from benchmarks.timing import native_against_reference
from fastgw._core.balancer import HashRing, SmoothWeighted
from tests.core import reference_balancer as ref

MIN_SPEEDUP = 3.0
TARGETS = [(b"10.0.0.%d:8080" % i, 1 + i % 3) for i in range(10)]
KEYS = [b"203.0.113.%d" % i for i in range(200)]
UP = bytes([1] * 9 + [0])

_ring, _ref_ring = HashRing(TARGETS), ref.ReferenceRing(TARGETS)


def ring_picks(ring) -> None:
    pick = ring.pick
    for key in KEYS:
        pick(key, UP)


def weighted_picks(picker) -> None:
    pick = picker.pick
    for _ in range(200):
        pick(UP)


CASES = {
    "ring pick": (lambda: ring_picks(_ring), lambda: ring_picks(_ref_ring)),
    "smooth weighted pick": (lambda: weighted_picks(SmoothWeighted([w for _, w in TARGETS])),
                             lambda: weighted_picks(ref.ReferenceSmoothWeighted([w for _, w in TARGETS]))),
}


def test_same_answers():
    for key in KEYS:
        assert _ring.pick(key, UP) == _ref_ring.pick(key, UP)
    fast, slow = SmoothWeighted([w for _, w in TARGETS]), ref.ReferenceSmoothWeighted([w for _, w in TARGETS])
    assert [fast.pick(UP) for _ in range(100)] == [slow.pick(UP) for _ in range(100)]


test_native, test_reference, test_speedup_over_reference = native_against_reference(
    "balancer", CASES, "200 picks", MIN_SPEEDUP)
