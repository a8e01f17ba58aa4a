"""Tests of fastgw._core.limiter: examples of each documented behaviour of the token
buckets (burst, the exact wait of a refusal, continuous refill, fractional rates, peek,
independent keys, argument checks), the bounded table (a flood of random keys neither
grows memory nor resets a busy key; idle full buckets go first; a group of busy buckets
refuses), a property test that drives a Limiter and the plain-Python reference of
tests/core/reference_limiter.py with the same operations and times and compares every
answer and counter, races of forked processes on one arena (exact totals at a fixed time
and with refill, a concurrency maximum that holds machine-wide, a dead worker's share
reclaimed), and the arena's named regions (shared by name, separate by name, private
when full).

May import: fastgw._core, tests.core.reference_limiter, tests.core.forking, pytest, hypothesis,
the standard library.
"""

from __future__ import annotations

import math
import os
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core.balancer import key_hash
from fastgw._core.limiter import (
    DIRECTORY_ENTRIES,
    Arena,
    ConcurrencyGuard,
    Limiter,
    set_worker_slot,
)
from tests.core import reference_limiter as ref
from tests.core.forking import WORKERS, race

T0 = 1_000 * 10**9  # a CLOCK_MONOTONIC-like time, in ns
SECOND = 10**9
ARENA_HEADER = 64 + DIRECTORY_ENTRIES * 32  # the directory, before the first region


def interval_ns(limiter) -> int:
    return round(limiter.interval * 1e9)


# -- token buckets ------------------------------------------------------------------------

def test_burst_then_refusal_with_the_exact_wait():
    lim = Limiter(10.0, 5)  # one token every 100 ms
    assert [lim.acquire(b"client", T0) for _ in range(5)] == [4, 3, 2, 1, 0]
    assert lim.acquire(b"client", T0) == -100_000_000
    assert lim.acquire(b"client", T0) == -100_000_000  # a refusal takes nothing
    assert lim.acquire(b"client", T0 + 30_000_000) == -70_000_000
    assert lim.acquire(b"client", T0 + 100_000_000 - 1) == -1
    assert lim.acquire(b"client", T0 + 100_000_000) == 0
    assert lim.acquire(b"client", T0 + 100_000_000) == -100_000_000


def test_continuous_refill():
    lim = Limiter(2.0, 4)  # one token every 500 ms
    step = 500_000_000
    for _ in range(4):
        lim.acquire(b"k", T0)
    assert lim.peek(b"k", T0) == 0
    # half an interval later: half a token, which is none
    assert lim.peek(b"k", T0 + step // 2) == 0
    assert lim.acquire(b"k", T0 + step // 2) == -(step // 2)
    # one interval: one token, taken
    assert lim.peek(b"k", T0 + step) == 1
    assert lim.acquire(b"k", T0 + step) == 0
    assert lim.acquire(b"k", T0 + step) == -step
    # two and a half intervals after that: two tokens
    assert lim.peek(b"k", T0 + step + 5 * step // 2) == 2
    # a long idle: exactly burst, never more
    later = T0 + 3600 * SECOND
    assert lim.peek(b"k", later) == 4
    assert [lim.acquire(b"k", later) for _ in range(5)] == [3, 2, 1, 0, -step]


def test_remaining_counts_and_peek_agree():
    lim = Limiter(1.0, 7)
    for left in range(6, -1, -1):
        assert lim.acquire(b"k", T0) == left
        assert lim.peek(b"k", T0) == left
    assert lim.acquire(b"k", T0) == -SECOND
    assert lim.peek(b"k", T0) == 0


@pytest.mark.parametrize("rate, expected_interval", [
    (3.0, 333_333_333),                  # "3/s": 1e9 / 3 rounded to the nearest ns
    (6.0, 166_666_667),                  # "6/s": rounded up
    (6000 / 60, 10_000_000),             # "6000/m" = 100/s
    (50000 / 3600, 72_000_000),          # "50000/h" = 13.9/s
    (0.5, 2 * SECOND),                   # "30/m"
    (1 / 3600, 3600 * SECOND),           # "1/h"
    (2 / 3, 1_500_000_000),              # "40/m"
    (1e9, 1),                            # the fastest accepted: one a ns
])
def test_fractional_rates(rate, expected_interval):
    lim = Limiter(rate, 2)
    assert interval_ns(lim) == expected_interval
    assert lim.interval == expected_interval / 1e9
    assert lim.rate == rate
    assert [lim.acquire(b"k", T0) for _ in range(2)] == [1, 0]
    assert lim.acquire(b"k", T0) == -expected_interval
    if expected_interval > 1:
        assert lim.acquire(b"k", T0 + expected_interval - 1) == -1
    assert lim.acquire(b"k", T0 + expected_interval) == 0


def test_peek_takes_nothing():
    lim = Limiter(1.0, 3, max_keys=8)
    assert lim.peek(b"k", T0) == 3
    for _ in range(10):
        assert lim.peek(b"k", T0) == 3
    assert [lim.acquire(b"k", T0) for _ in range(4)] == [2, 1, 0, -SECOND]
    # a peek at an unknown key neither takes a slot nor evicts one
    for i in range(7):  # with b"k", every slot of the one group busy
        for _ in range(3):
            lim.acquire(b"busy-%d" % i, T0)
    assert lim.peek(b"stranger", T0) == 3
    assert (lim.evictions, lim.full) == (0, 0)
    assert all(lim.peek(b"busy-%d" % i, T0) == 0 for i in range(7))
    assert lim.acquire(b"stranger", T0) == -SECOND
    assert lim.full == 1


def test_distinct_keys_are_independent():
    lim = Limiter(1.0, 2)
    assert [lim.acquire(b"a", T0) for _ in range(3)] == [1, 0, -SECOND]
    assert lim.peek(b"b", T0) == 2
    assert [lim.acquire(b"b", T0) for _ in range(3)] == [1, 0, -SECOND]
    assert lim.acquire(b"", T0) == 1
    assert lim.peek(b"a", T0) == 0
    # and two limiters never share a bucket without an arena
    other = Limiter(1.0, 2)
    assert other.peek(b"a", T0) == 2


@pytest.mark.parametrize("args", [(0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0), (1.0, -5),
                                  (1.0, 1, 0), (1.0, 1, -1)])
def test_bad_limiter_arguments_are_refused(args):
    with pytest.raises(ValueError):
        Limiter(*args)
    with pytest.raises(ValueError):
        ref.ReferenceLimiter(*args)


@pytest.mark.parametrize("make", [lambda: ConcurrencyGuard(0), lambda: ConcurrencyGuard(-1),
                                  lambda: ConcurrencyGuard(1, workers=0), lambda: Arena(4096)])
def test_bad_guard_and_arena_arguments_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_a_key_must_be_bytes():
    lim = Limiter(1.0, 1)
    with pytest.raises(TypeError):
        lim.acquire(None, T0)
    with pytest.raises(TypeError):
        lim.acquire("client", T0)
    assert lim.acquire(b"client", T0) == 0  # nothing was taken by the refused calls


@pytest.mark.parametrize("asked, rounded", [(1, 8), (8, 8), (9, 16), (64, 64), (65, 128),
                                             (100, 128), (16384, 16384)])
def test_max_keys_rounds_up_to_a_power_of_two_of_groups(asked, rounded):
    assert Limiter(1.0, 1, max_keys=asked).max_keys == rounded
    assert ref.ReferenceLimiter(1.0, 1, max_keys=asked).max_keys == rounded


# -- bounded memory ----------------------------------------------------------------------

def group_of(key: bytes, groups: int) -> int:
    return (key_hash(key) or 1) % groups


def keys_in_group(group: int, groups: int, n: int, prefix: bytes) -> list[bytes]:
    found = []
    i = 0
    while len(found) < n:
        key = prefix + b"-%d" % i
        if group_of(key, groups) == group:
            found.append(key)
        i += 1
    return found


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_flood_of_random_keys_keeps_memory_and_busy_buckets():
    burst, groups = 5, 8
    lim = Limiter(1.0, burst, max_keys=64)
    assert lim.max_keys == groups * 8
    # group 0: every slot busy; groups 1-3: 3 busy keys each; groups 4-7: none
    busy_per_group = {0: 8, 1: 3, 2: 3, 3: 3}
    busy = [k for g, n in busy_per_group.items() for k in keys_in_group(g, groups, n, b"busy")]
    for key in busy:
        assert [lim.acquire(key, T0) for _ in range(burst)] == list(range(burst - 1, -1, -1))
    rss_before = rss_bytes()
    rng = random.Random(20240601)
    flood_per_group = [0] * groups
    for _ in range(100_000):
        key = rng.randbytes(16)
        g = group_of(key, groups)
        flood_per_group[g] += 1
        got = lim.acquire(key, T0)
        if g == 0:
            assert got == -SECOND, key  # a group of busy buckets refuses
        else:
            assert got == burst - 1, key  # a free slot or an evicted once-seen key
    grown = rss_bytes() - rss_before
    assert grown < 4 * 1024 * 1024, f"RSS grew by {grown} bytes"
    assert lim.max_keys == 64
    # refused: exactly the flood that landed in the all-busy group
    assert lim.full == flood_per_group[0] > 0
    # evicted: every flood key after the free slots of its group were taken
    assert lim.evictions == sum(max(0, flood_per_group[g] - (8 - busy_per_group.get(g, 0)))
                                for g in range(1, groups))
    # no busy bucket was reset: each still holds 0 tokens and waits a whole interval
    for key in busy:
        assert lim.peek(key, T0) == 0, key
        assert lim.acquire(key, T0) == -SECOND, key


def test_idle_full_buckets_are_evicted_before_near_full_ones():
    burst = 5
    lim = Limiter(1.0, burst, max_keys=8)  # one group
    near, *busy, idle = keys_in_group(0, 1, 8, b"slot")
    lim.acquire(near, T0)                      # slot 0
    for key in busy:                           # slots 1-6
        for _ in range(burst):
            lim.acquire(key, T0)
    lim.acquire(idle, T0)                      # slot 7
    later = T0 + 2 * SECOND
    assert lim.acquire(near, later) == burst - 1  # near: within one token of full
    # idle: full again (TAT in the past); busy: 3 tokens short
    assert lim.peek(idle, later) == burst and lim.peek(busy[0], later) == 2
    assert lim.acquire(b"new-1", later) == burst - 1
    assert lim.evictions == 1
    assert lim.peek(near, later) == burst - 1  # still in its slot, not the one evicted
    # the next new key finds only near-full ones (near and new-1) to evict: the first
    assert lim.acquire(b"new-2", later) == burst - 1
    assert lim.evictions == 2
    assert lim.peek(near, later) == burst  # gone: a full bucket again
    assert lim.peek(b"new-1", later) == burst - 1
    assert all(lim.peek(key, later) == 2 for key in busy)
    # and once every slot is busy, a new key is refused with one interval to wait
    for _ in range(2):
        lim.acquire(b"new-1", later)
        lim.acquire(b"new-2", later)
    assert lim.full == 0
    assert lim.acquire(b"new-3", later) == -SECOND
    assert (lim.full, lim.evictions) == (1, 2)


# -- against the reference ---------------------------------------------------------------

KEYS = [b"k%d" % i for i in range(10)]  # more than a group holds
TIMES = st.sampled_from([1, 2, 3, 6])  # in a row at the same time: enough to drain a bucket
OPERATIONS = st.one_of(
    # (operation, [keys], times): each key in turn, ``times`` times
    st.tuples(st.sampled_from(["acquire", "acquire", "acquire", "peek"]),
              st.integers(0, len(KEYS) - 1).map(lambda k: [k]), TIMES),
    # every key, in some order: fills whole groups, so that some refuse
    st.tuples(st.just("acquire"), st.permutations(range(len(KEYS))), TIMES),
)
# elapsed time in quarters of an interval, nudged by a ns so boundaries are crossed both ways
ELAPSED = st.tuples(st.sampled_from([0, 0, 0, 0, 1, 2, 3, 4, 8, 40]), st.sampled_from([-1, 0, 0, 1]))


@settings(max_examples=300, deadline=None)
@given(rate=st.sampled_from([1.0, 3.0, 6.0, 100.0, 50000 / 3600, 1e9]),
       burst=st.sampled_from([1, 2, 3, 5]),
       max_keys=st.sampled_from([1, 8, 16]),
       start=st.sampled_from([0, T0, 1 << 62]),
       steps=st.lists(st.tuples(ELAPSED, OPERATIONS), min_size=5, max_size=40))
def test_same_answers_as_the_reference(rate, burst, max_keys, start, steps):
    native, reference = Limiter(rate, burst, max_keys=max_keys), ref.ReferenceLimiter(rate, burst, max_keys)
    assert (native.max_keys, native.interval, native.burst) == (reference.max_keys, reference.interval,
                                                                 reference.burst)
    step = interval_ns(native)
    now = start
    for i, ((quarters, nudge), (op, keys, times)) in enumerate(steps):
        now += max(0, quarters * step // 4 + nudge)
        for key in (KEYS[k] for k in keys):
            for _ in range(times):
                got, expected = getattr(native, op)(key, now), getattr(reference, op)(key, now)
                assert got == expected, f"step {i}: {op} {key!r} at {now - start}"
                assert (native.evictions, native.full) == (reference.evictions, reference.full), \
                    f"after step {i}"
    assert [native.peek(key, now) for key in KEYS] == [reference.peek(key, now) for key in KEYS]


# -- processes racing on one arena --------------------------------------------------------



def test_race_one_key_at_a_fixed_time_allows_exactly_burst():
    arena = Arena(1 << 20)
    lim = Limiter(1.0, 30, max_keys=64, arena=arena, name=b"race-fixed")
    assert lim.shared

    def body(index, gate):
        acquire = lim.acquire
        return [acquire(b"hot", T0) for _ in range(5_000)]

    answers = [a for result in race(body) for a in result]
    allowed = sorted(a for a in answers if a >= 0)
    # 30 tokens in all, each "tokens left" answer given once: no token taken twice
    assert allowed == list(range(30))
    assert set(a for a in answers if a < 0) == {-SECOND}
    assert lim.peek(b"hot", T0) == 0


def test_race_one_key_with_refill_allows_burst_plus_the_refill():
    burst, rate, steps, tries = 30, 1000.0, 400, 10
    arena = Arena(1 << 20)
    lim = Limiter(rate, burst, max_keys=64, arena=arena, name=b"race-refill")
    step_ns = 250_000  # a quarter of the interval
    times = [T0 + s * step_ns for s in range(steps)]

    def body(index, gate):
        acquire = lim.acquire
        allowed = []
        for now in times:
            gate.wait()  # every worker at the same time, as on one clock
            allowed.append(sum(acquire(b"hot", now) >= 0 for _ in range(tries)))
        return allowed

    per_step = [sum(column) for column in zip(*race(body))]
    # one process asking as often at the same times allows exactly as many at each
    reference = ref.ReferenceLimiter(rate, burst, 64)
    expected = [sum(reference.acquire(b"hot", now) >= 0 for _ in range(WORKERS * tries)) for now in times]
    assert per_step == expected
    elapsed_s = (times[-1] - T0) / 1e9
    assert sum(per_step) == burst + math.floor(elapsed_s * rate + 1e-9) == burst + 99


def test_race_concurrency_maximum_holds_machine_wide():
    arena = Arena(1 << 20)
    guard = ConcurrencyGuard(10, workers=WORKERS, arena=arena, name=b"guard")
    held = ConcurrencyGuard(1 << 62, arena=arena, name=b"held")  # admitted and not yet left
    rounds, each = 300, 5  # 4 × 5 asked at once for 10 places

    def body(index, gate):
        set_worker_slot(index)
        admitted_per_round, seen_at_once, peak = [], [], 0

        def ask() -> int:
            """Ask for ``each`` places; the number admitted (each counted in ``held``)."""
            nonlocal peak
            mine = 0
            for _ in range(each):
                if guard.enter():
                    mine += 1
                    held.enter()
                    peak = max(peak, held.in_flight)
            return mine

        def leave(mine: int) -> None:
            for _ in range(mine):
                held.leave()
                guard.leave()

        for r in range(rounds):
            mine = ask()
            gate.wait()  # everyone has asked; nobody has left
            seen_at_once.append(guard.in_flight)
            gate.wait()
            leave(mine)
            admitted_per_round.append(mine)
        # and free running: enter and leave at will
        for _ in range(2_000):
            leave(ask())
        return [admitted_per_round, seen_at_once, peak]

    results = race(body)
    assert [sum(column) for column in zip(*(r[0] for r in results))] == [10] * rounds
    assert all(seen == [10] * rounds for _, seen, _ in results)
    assert max(peak for _, _, peak in results) <= 10
    assert guard.in_flight == 0 and held.in_flight == 0


def test_reclaim_hands_back_what_a_dead_worker_held():
    arena = Arena(1 << 20)
    guard = ConcurrencyGuard(10, workers=2, arena=arena, name=b"reclaim")
    try:
        set_worker_slot(0)
        assert guard.enter() and guard.enter()  # the parent's own, in slot 0

        def body(index, gate):
            set_worker_slot(1)
            return [guard.enter() for _ in range(3)]  # and dies without leaving

        assert race(body, workers=1) == [[True, True, True]]
        assert guard.in_flight == 5
        set_worker_slot(1)  # the dead worker's successor
        assert guard.reclaim() == 3
        assert guard.in_flight == 2
        assert guard.reclaim() == 0  # nothing left to hand back
        set_worker_slot(0)
        guard.leave()
        guard.leave()
        assert guard.in_flight == 0
    finally:
        set_worker_slot(0)


def test_a_region_made_after_the_fork_is_the_same_memory_for_all():
    arena = Arena(1 << 20)

    def body(index, gate):
        lim = Limiter(1.0, 3, max_keys=64, arena=arena, name=b"made-by-a-worker")
        return [lim.shared, [lim.acquire(b"k", T0) for _ in range(3)]]

    assert race(body, workers=1) == [[True, [2, 1, 0]]]
    lim = Limiter(1.0, 3, max_keys=64, arena=arena, name=b"made-by-a-worker")
    assert lim.shared
    assert lim.peek(b"k", T0) == 0
    assert lim.acquire(b"k", T0) == -SECOND


# -- the arena's named regions ------------------------------------------------------------

def test_same_name_shares_buckets_different_names_do_not():
    arena = Arena(1 << 20)
    a = Limiter(1.0, 3, max_keys=8, arena=arena, name=b"route-a")
    a_again = Limiter(1.0, 3, max_keys=8, arena=arena, name=b"route-a")
    b = Limiter(1.0, 3, max_keys=8, arena=arena, name=b"route-b")
    assert a.shared and a_again.shared and b.shared
    assert arena.regions == 2
    assert [a.acquire(b"k", T0) for _ in range(2)] == [2, 1]
    assert a_again.peek(b"k", T0) == 1
    assert a_again.acquire(b"k", T0) == 0
    assert a.acquire(b"k", T0) == -SECOND
    assert b.peek(b"k", T0) == 3
    assert b.acquire(b"k", T0) == 2
    # the counters are shared too
    for i in range(7):  # with b"k", every slot of the one group busy
        for _ in range(3):
            a.acquire(b"busy-%d" % i, T0)
    assert a_again.acquire(b"stranger", T0) == -SECOND
    assert (a.full, a_again.full, b.full) == (1, 1, 0)


def test_a_full_arena_gives_private_memory_that_works():
    arena = Arena(ARENA_HEADER + 4096)
    small = Limiter(1.0, 2, max_keys=8, arena=arena, name=b"small")
    assert small.shared
    used = arena.used
    big = Limiter(1.0, 2, max_keys=16384, arena=arena, name=b"big")
    assert not big.shared
    assert [big.acquire(b"k", T0) for _ in range(3)] == [1, 0, -SECOND]
    assert big.max_keys == 16384
    big_again = Limiter(1.0, 2, max_keys=16384, arena=arena, name=b"big")
    assert not big_again.shared and big_again.peek(b"k", T0) == 2  # private: its own
    # the region already made is still found by name
    assert Limiter(1.0, 2, max_keys=8, arena=arena, name=b"small").shared
    assert used <= arena.used
    guard = ConcurrencyGuard(1, workers=100_000, arena=arena, name=b"too-many-workers")
    assert guard.enter() and not guard.enter()
    guard.leave()
    assert guard.in_flight == 0


def test_a_flood_never_resets_a_drained_burst_of_one():
    """With burst 1 a key seen once is an empty bucket: it is not "a token from full"."""
    limiter = Limiter(1.0, 1, max_keys=8)
    assert limiter.acquire(b"a", 0) == 0 and limiter.acquire(b"a", 0) == -SECOND
    for i in range(20):
        limiter.acquire(b"other-%d" % i, 0)
    assert limiter.acquire(b"a", 0) == -SECOND
    assert limiter.full > 0


def test_none_names_and_keys_are_refused():
    with pytest.raises(TypeError):
        Limiter(1.0, 1).peek(None, 0)
    with pytest.raises(TypeError):
        Limiter(1.0, 1, arena=Arena(1 << 20), name=None)
    with pytest.raises(TypeError):
        ConcurrencyGuard(1, 1, Arena(1 << 20), None)


def test_a_region_too_big_spoils_none_after_it():
    arena = Arena(1 << 20)
    assert not Limiter(1.0, 1, max_keys=1 << 20, arena=arena, name=b"big").shared
    assert Limiter(1.0, 1, max_keys=8, arena=arena, name=b"small").shared
    assert arena.used < 1 << 20


@pytest.mark.parametrize(("rate", "burst"), [(1e-10, 1), (1e10, 1), (1e-9, 10), (1.0, 2**62), (1.0, 2.5)])
def test_rates_and_bursts_out_of_range_are_refused(rate, burst):
    with pytest.raises(ValueError):
        Limiter(rate, burst)
