"""Tests of fastgw._core.targets, the target state that every worker shares: examples of
each documented behaviour (active health thresholds, the circuit breaker and its one
trial, the probe election, the table), a property test that drives a TargetState and the
plain-Python reference of tests/core/reference_targets.py with the same operations and
times and compares every answer and everything observable after every step, and races
between forked processes on one shared slot (counters exact, one probe per interval, one
opening, one trial).

May import: fastgw._core, tests.core.reference_targets, tests.core.forking, pytest, hypothesis,
the standard library.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core.targets import (
    ADMITTED,
    BECAME_HEALTHY,
    BECAME_UNHEALTHY,
    CIRCUIT_CLOSED,
    CIRCUIT_OPENED,
    CIRCUIT_REOPENED,
    NO_CHANGE,
    REFUSED,
    TRIAL_BEGAN,
    TargetState,
    TargetTable,
)
from tests.core import reference_targets as ref
from tests.core.forking import WORKERS, race

T0 = 1_000_000  # a CLOCK_MONOTONIC-like time (0 reads as "never" in view())
COOLDOWN = 5_000
TRIAL = 2_000


def fresh(name: bytes = b"api\0" b"10.0.0.1:8080") -> TargetState:
    return TargetTable(16).state(name)


def opened(threshold: int = 3, now: int = T0) -> TargetState:
    """A state whose circuit ``threshold`` failures opened at ``now``."""
    s = fresh()
    for _ in range(threshold - 1):
        assert s.record(False, threshold, COOLDOWN, now) == NO_CHANGE
    assert s.record(False, threshold, COOLDOWN, now) == CIRCUIT_OPENED
    return s


# -- active health checks -------------------------------------------------------------

def test_unchecked_becomes_healthy_on_the_first_pass():
    s = fresh()
    assert s.health == "unchecked" and s.healthy()
    assert s.probe_result(200, 5, 3, T0) == BECAME_HEALTHY
    assert s.health == "healthy" and s.healthy()
    assert s.probe_result(200, 5, 3, T0 + 1) == NO_CHANGE


def test_unhealthy_after_threshold_failures_in_a_row():
    s = fresh()
    s.probe_result(200, 2, 3, T0)
    assert s.probe_result(500, 2, 3, T0) == NO_CHANGE
    assert s.probe_result(0, 2, 3, T0) == NO_CHANGE
    assert s.probe_result(204, 2, 3, T0) == NO_CHANGE  # a pass breaks the run
    assert s.probe_result(503, 2, 3, T0) == NO_CHANGE
    assert s.probe_result(0, 2, 3, T0) == NO_CHANGE
    assert s.healthy()
    assert s.probe_result(404, 2, 3, T0) == BECAME_UNHEALTHY
    assert s.health == "unhealthy" and not s.healthy()
    assert s.probe_result(500, 2, 3, T0) == NO_CHANGE  # once only


def test_unchecked_turns_unhealthy_after_threshold_failures():
    s = fresh()
    assert s.probe_result(0, 2, 2, T0) == NO_CHANGE
    assert s.health == "unchecked" and s.healthy()
    assert s.probe_result(0, 2, 2, T0) == BECAME_UNHEALTHY
    assert not s.healthy()


def test_healthy_again_after_threshold_passes_in_a_row():
    s = fresh()
    s.probe_result(500, 3, 1, T0)
    assert s.health == "unhealthy"
    assert s.probe_result(200, 3, 1, T0) == NO_CHANGE  # no longer unchecked: one is not enough
    assert s.probe_result(200, 3, 1, T0) == NO_CHANGE
    assert s.probe_result(0, 3, 1, T0) == NO_CHANGE    # the run starts again
    assert s.probe_result(200, 3, 1, T0) == NO_CHANGE
    assert s.probe_result(301, 3, 1, T0) == NO_CHANGE
    assert s.probe_result(399, 3, 1, T0) == BECAME_HEALTHY
    assert s.healthy()


@pytest.mark.parametrize("status,passes", [
    (200, True), (204, True), (301, True), (399, True),
    (0, False), (199, False), (400, False), (404, False), (500, False), (503, False),
    (1000, False), (-1, False),
])
def test_which_statuses_pass(status, passes):
    s = fresh()
    s.probe_result(500, 1, 1, T0)  # unhealthy: one pass (threshold 1) heals
    assert s.probe_result(status, 1, 1, T0) == (BECAME_HEALTHY if passes else NO_CHANGE)
    assert s.view(T0)["last_check_status"] == (status if 0 <= status <= 999 else 0)


def test_check_streaks_saturate():
    s = fresh()
    for _ in range(70_000):
        s.probe_result(500, 1, 3, T0)
    assert s.view(T0)["checks_failed_in_a_row"] == 65535
    assert s.probe_result(200, 1, 3, T0) == BECAME_HEALTHY
    for _ in range(70_000):
        s.probe_result(200, 1, 3, T0)
    v = s.view(T0)
    assert (v["checks_passed_in_a_row"], v["checks_failed_in_a_row"]) == (65535, 0)


# -- electing the prober --------------------------------------------------------------

def test_claim_probe_once_per_interval():
    s = fresh()
    assert s.claim_probe(T0, 100)
    assert not s.claim_probe(T0, 100)
    assert not s.claim_probe(T0 + 50, 100)
    assert not s.claim_probe(T0 + 99, 100)
    assert s.claim_probe(T0 + 100, 100)  # due exactly now
    assert not s.claim_probe(T0 + 100, 100)
    assert not s.claim_probe(T0 + 150, 100)
    assert s.claim_probe(T0 + 250, 100)  # late: due since T0 + 200
    assert not s.claim_probe(T0 + 300, 100)  # next due at T0 + 350, not T0 + 300


def test_claim_probe_due_further_than_one_interval_counts_as_due():
    s = fresh()
    assert s.claim_probe(T0, 60_000)  # next due in a minute
    assert not s.claim_probe(T0 + 10, 60_000)
    # a reload shortened the interval to 1 s: a due time a minute away is now due
    assert s.claim_probe(T0 + 10, 1_000)
    assert not s.claim_probe(T0 + 20, 1_000)
    assert s.claim_probe(T0 + 1_010, 1_000)


# -- the circuit breaker --------------------------------------------------------------

def test_circuit_opens_at_the_threshold():
    s = fresh()
    for n in range(1, 3):
        assert s.record(False, 3, COOLDOWN, T0) == NO_CHANGE
        assert s.consecutive_failures == n and s.circuit == "closed"
        assert s.admit(T0, TRIAL) == ADMITTED and s.may_admit(T0)
    assert s.record(False, 3, COOLDOWN, T0 + 7) == CIRCUIT_OPENED
    assert s.circuit == "open" and s.consecutive_failures == 3
    assert s.until_ms == T0 + 7 + COOLDOWN


def test_a_success_resets_the_count_of_failures():
    s = fresh()
    s.record(False, 3, COOLDOWN, T0)
    s.record(False, 3, COOLDOWN, T0)
    assert s.record(True, 3, COOLDOWN, T0) == NO_CHANGE
    assert s.consecutive_failures == 0
    s.record(False, 3, COOLDOWN, T0)
    assert s.record(False, 3, COOLDOWN, T0) == NO_CHANGE  # 2 in a row, not 4
    assert s.circuit == "closed"


def test_open_circuit_refuses_until_the_cooldown_is_over():
    s = opened()
    for now in (T0, T0 + 1, T0 + COOLDOWN - 1):
        assert s.admit(now, TRIAL) == REFUSED
        assert not s.may_admit(now)
    assert s.circuit == "open"
    assert s.may_admit(T0 + COOLDOWN)
    assert s.circuit == "open"  # may_admit claims nothing
    assert s.admit(T0 + COOLDOWN, TRIAL) == TRIAL_BEGAN
    assert s.circuit == "trial"


def test_exactly_one_trial():
    s = opened()
    now = T0 + COOLDOWN + 10
    answers = [s.admit(now, TRIAL) for _ in range(5)]
    assert answers == [TRIAL_BEGAN] + [REFUSED] * 4
    assert not s.may_admit(now)
    assert s.until_ms == now + TRIAL


def test_a_trial_that_succeeds_closes_the_circuit():
    s = opened()
    now = T0 + COOLDOWN
    s.admit(now, TRIAL)
    assert s.record(True, 3, COOLDOWN, now + 5, True) == CIRCUIT_CLOSED
    assert s.circuit == "closed" and s.consecutive_failures == 0 and s.until_ms == 0
    assert s.admit(now + 5, TRIAL) == ADMITTED
    assert s.record(True, 3, COOLDOWN, now + 6) == NO_CHANGE


def test_a_trial_that_fails_reopens_the_circuit():
    s = opened()
    now = T0 + COOLDOWN
    s.admit(now, TRIAL)
    assert s.record(False, 3, COOLDOWN, now + 5, True) == CIRCUIT_REOPENED
    assert s.circuit == "open" and s.consecutive_failures == 4
    assert s.until_ms == now + 5 + COOLDOWN
    assert s.admit(now + 5 + COOLDOWN - 1, TRIAL) == REFUSED
    assert s.admit(now + 5 + COOLDOWN, TRIAL) == TRIAL_BEGAN


def test_only_the_trial_request_decides_a_trial():
    """Answers to requests admitted before the circuit opened, arriving during the trial,
    are counted and decide nothing."""
    s = opened()
    now = T0 + COOLDOWN
    s.admit(now, TRIAL)
    assert s.record(False, 3, COOLDOWN, now + 1) == NO_CHANGE
    assert s.record(True, 3, COOLDOWN, now + 2) == NO_CHANGE
    assert s.circuit == "trial" and s.consecutive_failures == 4
    assert s.view(now + 3)["failures_total"] == 4
    assert s.record(True, 3, COOLDOWN, now + 4, True) == CIRCUIT_CLOSED


def test_a_trial_lapses_after_trial_ms():
    s = opened()
    now = T0 + COOLDOWN
    assert s.admit(now, TRIAL) == TRIAL_BEGAN
    assert s.admit(now + TRIAL - 1, TRIAL) == REFUSED
    assert not s.may_admit(now + TRIAL - 1)
    assert s.may_admit(now + TRIAL)
    assert s.admit(now + TRIAL, TRIAL) == TRIAL_BEGAN  # the worker that had it never reported
    assert s.until_ms == now + 2 * TRIAL


def test_an_undecided_trial_is_owed_again_at_once():
    s = opened()
    now = T0 + COOLDOWN
    assert s.undecided(now) == 0  # not a trial
    s.admit(now, TRIAL)
    assert s.undecided(now + 3) == 1
    assert s.circuit == "open" and s.until_ms == now + 3
    assert s.view(now + 10)["changed_ms_ago"] == 7
    assert s.undecided(now + 3) == 0
    assert s.admit(now + 3, TRIAL) == TRIAL_BEGAN
    closed = fresh()
    assert closed.undecided(T0) == 0 and closed.circuit == "closed"


def test_a_success_while_open_changes_nothing():
    s = opened()
    until = s.until_ms
    assert s.record(True, 3, COOLDOWN, T0 + 1) == NO_CHANGE
    assert s.circuit == "open" and s.consecutive_failures == 3 and s.until_ms == until


def test_failures_while_open_are_counted_and_keep_the_cooldown():
    s = opened()
    until = s.until_ms
    assert s.record(False, 3, COOLDOWN, T0 + 100) == NO_CHANGE
    assert s.circuit == "open" and s.consecutive_failures == 4 and s.until_ms == until
    assert s.view(T0 + 100)["failures_total"] == 4


def test_threshold_zero_only_counts():
    s = fresh()
    for _ in range(1000):
        assert s.record(False, 0, COOLDOWN, T0) == NO_CHANGE
    assert s.circuit == "closed" and s.consecutive_failures == 1000
    assert s.admit(T0, TRIAL) == ADMITTED


def test_consecutive_failures_saturate():
    s = fresh()
    record = s.record
    for _ in itertools.repeat(None, (1 << 22) + 10):
        record(False, 0, COOLDOWN, T0)
    assert s.consecutive_failures == (1 << 22) - 1
    assert s.circuit == "closed"  # the count did not spill into the state bits
    assert s.view(T0)["failures_total"] == (1 << 22) + 10
    assert s.record(False, 1, COOLDOWN, T0) == CIRCUIT_OPENED
    assert s.consecutive_failures == (1 << 22) - 1 and s.until_ms == T0 + COOLDOWN


def test_until_is_clamped_to_40_bits():
    s = fresh()
    assert s.record(False, 1, 1 << 45, T0) == CIRCUIT_OPENED
    assert s.until_ms == (1 << 40) - 1 and s.circuit == "open"
    assert not s.may_admit(T0 + 10**9)


def test_in_flight():
    s = fresh()
    s.add_in_flight(1)
    s.add_in_flight(1)
    s.add_in_flight(-1)
    assert s.in_flight == 1
    s.add_in_flight(-2)
    assert s.in_flight == -1  # a counter, not clamped


def test_view():
    s = fresh()
    assert s.view(T0) == {
        "health": "unchecked", "checks_passed_in_a_row": 0, "checks_failed_in_a_row": 0,
        "last_check_status": None, "circuit": "closed", "consecutive_failures": 0,
        "retry_in_ms": 0, "in_flight": 0, "failures_total": 0, "last_failure_ms_ago": None,
        "changed_ms_ago": None, "shared": True,
    }
    s.probe_result(200, 2, 2, T0)              # healthy (changed at T0)
    s.probe_result(503, 2, 2, T0 + 10)
    s.add_in_flight(3)
    s.record(False, 2, COOLDOWN, T0 + 20)
    s.record(False, 2, COOLDOWN, T0 + 30)      # opened (changed at T0 + 30)
    s.record(True, 2, COOLDOWN, T0 + 40)       # ignored: open
    assert s.view(T0 + 100) == {
        "health": "healthy", "checks_passed_in_a_row": 0, "checks_failed_in_a_row": 1,
        "last_check_status": 503, "circuit": "open", "consecutive_failures": 2,
        "retry_in_ms": COOLDOWN - 70, "in_flight": 3, "failures_total": 2,
        "last_failure_ms_ago": 70, "changed_ms_ago": 70, "shared": True,
    }
    assert s.view(T0 + 2 * COOLDOWN)["retry_in_ms"] == 0
    s.admit(T0 + COOLDOWN + 30, TRIAL)
    v = s.view(T0 + COOLDOWN + 100)
    assert v["circuit"] == "trial" and v["retry_in_ms"] == TRIAL - 70 and v["changed_ms_ago"] == 70


# -- the table -------------------------------------------------------------------------

def test_same_name_same_slot():
    table = TargetTable(64)
    a, again, other = table.state(b"api\0a:1"), table.state(b"api\0a:1"), table.state(b"api\0b:1")
    assert table.used == 2
    a.record(False, 1, COOLDOWN, T0)
    a.add_in_flight(2)
    assert again.circuit == "open" and again.in_flight == 2
    assert other.circuit == "closed" and other.in_flight == 0
    assert a.shared and again.shared and other.shared


def test_used_counts_claimed_slots():
    table = TargetTable(32)
    assert table.used == 0 and table.capacity == 32
    for i in range(20):
        table.state(b"up\0host-%d:80" % i)
        assert table.used == i + 1
    table.state(b"up\0host-3:80")
    assert table.used == 20


def test_a_full_table_gives_a_private_state_that_works():
    table = TargetTable(2)
    a, b = table.state(b"a"), table.state(b"b")
    assert a.shared and b.shared and table.used == 2
    c = table.state(b"c")
    assert not c.shared and c.view(T0)["shared"] is False
    assert table.used == 2
    # it works, for this process only
    assert c.record(False, 1, COOLDOWN, T0) == CIRCUIT_OPENED
    assert c.admit(T0 + COOLDOWN, TRIAL) == TRIAL_BEGAN
    assert c.probe_result(200, 1, 1, T0) == BECAME_HEALTHY and c.claim_probe(T0, 10)
    assert a.circuit == b.circuit == "closed" and a.health == b.health == "unchecked"
    assert table.state(b"a").shared  # names that have a slot still find it


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        TargetTable(0)


# -- against the reference -------------------------------------------------------------

STATUSES = [0, 200, 204, 302, 399, 400, 404, 500, 503, 1000]
# Coarse times, so that "now" often lands exactly on a cooldown's or a trial's end.
SPANS = st.sampled_from([0, 1, 10, 20, 50])
RECORD = st.tuples(st.just("record"), st.booleans(), st.integers(0, 3), SPANS, st.booleans())
ADMIT = st.tuples(st.just("admit"), SPANS)
OPERATIONS = st.one_of(  # the request path drawn more often than the rest
    RECORD, RECORD, RECORD, ADMIT, ADMIT,
    st.tuples(st.just("record"), st.just(False), st.integers(1, 2), SPANS, st.booleans()),
    st.tuples(st.just("undecided")),
    st.tuples(st.just("may_admit")),
    st.tuples(st.just("claim_probe"), SPANS),
    st.tuples(st.just("probe_result"), st.sampled_from(STATUSES), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("add_in_flight"), st.integers(-2, 2)),
)


def call(state, op: tuple, now: int):
    name, *args = op
    if name == "claim_probe":
        return state.claim_probe(now, args[0])
    if name == "probe_result":
        return state.probe_result(args[0], args[1], args[2], now)
    if name == "may_admit":
        return state.may_admit(now)
    if name == "admit":
        return state.admit(now, args[0])
    if name == "record":
        return state.record(args[0], args[1], args[2], now, args[3])
    if name == "undecided":
        return state.undecided(now)
    return state.add_in_flight(args[0])


def observe(state, now: int) -> tuple:
    return (state.health, state.healthy(), state.circuit, state.consecutive_failures,
            state.until_ms, state.may_admit(now), state.in_flight, state.view(now))


@settings(max_examples=300, deadline=None)
@given(start=st.sampled_from([1, T0, (1 << 40) - 150, (1 << 40) + 5]),
       steps=st.lists(st.tuples(SPANS, OPERATIONS), min_size=15, max_size=50))
def test_same_answers_and_state_as_the_reference(start, steps):
    native, reference = fresh(), ref.ReferenceTargetState()
    now = start
    assert observe(native, now) == observe(reference, now)
    for i, (elapsed, op) in enumerate(steps):
        now += elapsed
        got, expected = call(native, op, now), call(reference, op, now)
        assert got == expected, f"step {i}: {op} at {now}"
        assert observe(native, now) == observe(reference, now), f"after step {i}: {op} at {now}"


# -- processes racing on one shared slot ----------------------------------------------



def test_race_in_flight_and_failures_are_exact():
    table = TargetTable(16)
    s = table.state(b"api\0a:1")
    n, threshold = 20_000, 50_000

    def body(index, gate):
        add, record = s.add_in_flight, s.record
        changes = []
        for _ in range(n):
            add(1)
            changes.append(record(False, threshold, COOLDOWN * 1000, T0))
        gate.wait()
        in_flight_at_peak = s.in_flight
        gate.wait()  # nobody leaves before everyone has read it
        for _ in range(n):
            add(-1)
            changes.append(record(False, threshold, COOLDOWN * 1000, T0))
        return [in_flight_at_peak, changes.count(CIRCUIT_OPENED), len(changes) - changes.count(NO_CHANGE)]

    results = race(body)
    assert all(peak == WORKERS * n for peak, _, _ in results)
    assert sum(opened for _, opened, _ in results) == 1
    assert sum(changed for _, _, changed in results) == 1
    total = WORKERS * 2 * n
    assert s.in_flight == 0
    assert s.view(T0)["failures_total"] == total
    assert s.consecutive_failures == total
    assert s.circuit == "open"


def test_race_one_probe_per_interval():
    table = TargetTable(16)
    s = table.state(b"api\0a:1")
    interval, steps = 1_000, 2_000

    def body(index, gate):
        claimed = []
        for step in range(steps):
            gate.wait()  # every worker at the same time, as on one clock
            now = T0 + step * interval
            claimed.append(sum(s.claim_probe(now, interval) for _ in range(3)))
        return claimed

    results = race(body)
    per_step = [sum(column) for column in zip(*results)]
    assert per_step == [1] * steps


def test_race_one_opening():
    rounds, threshold = 1_000, 3
    table = TargetTable(2 * rounds)
    states = [table.state(b"api\0round-%d:80" % r) for r in range(rounds)]

    def body(index, gate):
        opened_here = []
        for s in states:
            gate.wait()
            answers = [s.record(False, threshold, COOLDOWN, T0) for _ in range(2)]
            opened_here.append(answers.count(CIRCUIT_OPENED))
            assert set(answers) <= {NO_CHANGE, CIRCUIT_OPENED}, answers
        return opened_here

    results = race(body)
    assert [sum(column) for column in zip(*results)] == [1] * rounds
    for s in states:
        assert s.circuit == "open" and s.consecutive_failures == 2 * WORKERS
        assert s.view(T0)["failures_total"] == 2 * WORKERS


def test_race_one_trial():
    rounds = 1_000
    table = TargetTable(2 * rounds)
    states = [table.state(b"api\0round-%d:80" % r) for r in range(rounds)]
    for s in states:
        assert s.record(False, 1, COOLDOWN, T0) == CIRCUIT_OPENED
    after = T0 + COOLDOWN + 1

    def body(index, gate):
        began = []
        for s in states:
            gate.wait()
            answers = [s.admit(after, TRIAL) for _ in range(2)]
            assert set(answers) <= {REFUSED, TRIAL_BEGAN}, answers
            began.append(answers.count(TRIAL_BEGAN))
        return began

    results = race(body)
    assert [sum(column) for column in zip(*results)] == [1] * rounds
    assert all(s.circuit == "trial" and s.until_ms == after + TRIAL for s in states)


def test_a_name_of_none_is_refused():
    with pytest.raises(TypeError):
        TargetTable(4).state(None)
