"""Micro-benchmarks of fastgw._core.targets against the plain-Python reference of the
tests (tests/core/reference_targets.py), on the calls the request path makes on a
target's shared state: ``admit`` then ``record`` of a success on a closed circuit (every
request to a healthy target), and ``record`` of a failure then ``may_admit`` (a target
that fails: its circuit opens after 5 and stays open, failures still counted).
``test_speedup_over_reference`` measures both sides in the same run and fails below
1.3x (a ratio, never an absolute time; measured on the 2-core development machine: ~2x
for the success path, where the reference does next to nothing and the cost on both
sides is mostly the Python call, ~4x for the failure path). Both sides are called from
Python here, so the ratio understates what a ``cimport``ing caller gets.

May import: fastgw._core, tests.core.reference_targets, pytest, the standard library.
"""

from __future__ import annotations

from benchmarks.timing import native_against_reference
from fastgw._core.targets import TargetTable
from tests.core import reference_targets as ref

MIN_SPEEDUP = 1.3
NOW = 1_000_000
THRESHOLD, COOLDOWN_MS, TRIAL_MS = 5, 30_000, 10_000

_table = TargetTable(16)


def admit_and_succeed(state) -> None:
    admit, record = state.admit, state.record
    for _ in range(200):
        admit(NOW, TRIAL_MS)
        record(True, THRESHOLD, COOLDOWN_MS, NOW)


def fail_and_ask(state) -> None:
    record, may_admit = state.record, state.may_admit
    for _ in range(200):
        record(False, THRESHOLD, COOLDOWN_MS, NOW)
        may_admit(NOW)


_healthy, _ref_healthy = _table.state(b"bench\0healthy:80"), ref.ReferenceTargetState()
_failing, _ref_failing = _table.state(b"bench\0failing:80"), ref.ReferenceTargetState()

CASES = {
    "admit + record success, closed": (lambda: admit_and_succeed(_healthy),
                                       lambda: admit_and_succeed(_ref_healthy)),
    "record failure + may_admit": (lambda: fail_and_ask(_failing),
                                   lambda: fail_and_ask(_ref_failing)),
}


def test_same_answers():
    fast, slow = _table.state(b"bench\0check:80"), ref.ReferenceTargetState()
    for state in (fast, slow):
        admit_and_succeed(state)
        fail_and_ask(state)
    for method, args in [("admit", (NOW, TRIAL_MS)), ("record", (True, THRESHOLD, COOLDOWN_MS, NOW)),
                         ("may_admit", (NOW,)), ("admit", (NOW + COOLDOWN_MS, TRIAL_MS)),
                         ("record", (True, THRESHOLD, COOLDOWN_MS, NOW + COOLDOWN_MS))]:
        assert getattr(fast, method)(*args) == getattr(slow, method)(*args), method
    assert fast.view(NOW) == slow.view(NOW)


test_native, test_reference, test_speedup_over_reference = native_against_reference(
    "targets", CASES, "200 requests", MIN_SPEEDUP)
