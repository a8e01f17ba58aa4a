"""Tests of fastgw._core.balancer against the plain-Python references of
tests/core/reference_balancer.py (same picks, same hashes), and the properties issue 4
asks of the ring: balance, minimal movement on removal and addition, weights, and keys
that never move when another target goes down.

May import: fastgw._core, tests.core.reference_balancer, pytest, hypothesis, the standard library.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core.balancer import HashRing, LeastConnections, SmoothWeighted, TwoChoices, key_hash
from tests.core import reference_balancer as ref

KEYS = [b"client-%d" % i for i in range(10_000)]


def names(n: int, start: int = 0) -> list[bytes]:
    return [b"10.0.0.%d:8080" % i for i in range(start, start + n)]


def shares(ring: HashRing, keys=KEYS, up=None) -> Counter:
    return Counter(ring.pick(k, up) for k in keys)


@given(st.binary(max_size=64))
def test_hash_agrees_with_the_reference(key):
    assert key_hash(key) == ref.key_hash(key)


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 3), min_size=1, max_size=5),
       keys=st.lists(st.binary(max_size=20), min_size=1, max_size=30),
       up_bits=st.lists(st.booleans(), min_size=5, max_size=5))
def test_ring_picks_as_the_reference(weights, keys, up_bits):
    targets = list(zip(names(len(weights)), weights))
    ring, reference = HashRing(targets), ref.ReferenceRing(targets)
    up = bytes(up_bits[:len(weights)])
    for key in keys:
        assert ring.pick(key) == reference.pick(key)
        assert ring.pick(key, up) == reference.pick(key, up)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_equal_targets_share_the_keys_evenly(n):
    counts = shares(HashRing([(name, 1) for name in names(n)]))
    for target in range(n):
        assert abs(counts[target] - len(KEYS) / n) <= 0.10 * len(KEYS) / n, counts


@pytest.mark.parametrize("n", [3, 5, 8])
def test_removing_a_target_moves_only_its_keys(n):
    targets = [(name, 1) for name in names(n)]
    before = HashRing(targets)
    gone = targets[1][0]
    after = HashRing([t for t in targets if t[0] != gone])
    moved_others = 0
    for key in KEYS:
        old = targets[before.pick(key)][0]
        new = [t for t in targets if t[0] != gone][after.pick(key)][0]
        if old != gone and new != old:
            moved_others += 1
    assert moved_others <= 0.01 * len(KEYS)


@pytest.mark.parametrize("n", [2, 4, 7])
def test_adding_a_target_takes_about_its_share(n):
    targets = [(name, 1) for name in names(n)]
    before = HashRing(targets)
    grown = targets + [(names(1, start=100)[0], 1)]
    after = HashRing(grown)
    moved = [key for key in KEYS if grown[after.pick(key)][0] != targets[before.pick(key)][0]]
    assert all(after.pick(key) == n for key in moved)  # only to the new one
    assert abs(len(moved) / len(KEYS) - 1 / (n + 1)) <= 0.10 / (n + 1) * 3


def test_weights_are_honoured():
    weights = [1, 2, 3]
    counts = shares(HashRing(list(zip(names(3), weights))))
    for target, weight in enumerate(weights):
        expected = len(KEYS) * weight / sum(weights)
        assert abs(counts[target] - expected) <= 0.10 * expected, counts


def test_a_target_going_down_moves_no_other_key():
    ring = HashRing([(name, 1) for name in names(5)])
    down = bytes([1, 1, 0, 1, 1])
    for key in KEYS:
        owner = ring.pick(key)
        if owner != 2:
            assert ring.pick(key, down) == owner
        else:
            assert ring.pick(key, down) not in (2, -1)
    assert ring.pick(b"any", bytes(5)) == -1


@settings(max_examples=100)
@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=6),
       masks=st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=40))
def test_smooth_weighted_picks_as_the_reference(weights, masks):
    fast, slow = SmoothWeighted(weights), ref.ReferenceSmoothWeighted(weights)
    for bits in masks:
        up = bytes(bits[:len(weights)])
        assert fast.pick(up) == slow.pick(up)
        assert fast.pick() == slow.pick()


@given(st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_smooth_weighted_gives_each_its_weight_per_cycle(weights):
    picker = SmoothWeighted(weights)
    for _ in range(3):
        assert Counter(picker.pick() for _ in range(sum(weights))) == dict(enumerate(weights))


def test_smooth_weighted_interleaves():
    picker = SmoothWeighted([1, 3])
    assert [picker.pick() for _ in range(8)] == [1, 0, 1, 1, 1, 0, 1, 1]


@settings(max_examples=100)
@given(weights=st.lists(st.integers(1, 4), min_size=1, max_size=6),
       rounds=st.lists(st.tuples(st.lists(st.integers(0, 20), min_size=6, max_size=6),
                                 st.lists(st.booleans(), min_size=6, max_size=6)), min_size=1, max_size=30))
def test_least_connections_picks_as_the_reference(weights, rounds):
    fast, slow = LeastConnections(weights), ref.ReferenceLeastConnections(weights)
    n = len(weights)
    for counts, bits in rounds:
        assert fast.pick(counts[:n], bytes(bits[:n])) == slow.pick(counts[:n], bytes(bits[:n]))


def test_least_connections_takes_turns_among_equals():
    picker = LeastConnections([1, 1, 1])
    assert [picker.pick([0, 0, 0]) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert picker.pick([4, 2, 2], bytes([1, 1, 0])) == 1


def test_two_choices_never_takes_the_busier_of_its_two():
    picker = TwoChoices([1, 1, 1, 1], os.urandom(16))
    picks = Counter(picker.pick([0, 0, 0, 50]) for _ in range(2000))
    assert 3 not in picks and set(picks) == {0, 1, 2}
    assert picker.pick([0, 0, 0, 0], bytes([0, 0, 1, 0])) == 2
    assert picker.pick([0, 0, 0, 0], bytes(4)) == -1
    seed = os.urandom(16)
    a, b = TwoChoices([1, 2, 3], seed), TwoChoices([1, 2, 3], seed)
    assert [a.pick([1, 1, 1]) for _ in range(50)] == [b.pick([1, 1, 1]) for _ in range(50)]


@pytest.mark.parametrize("make", [
    lambda: HashRing([]), lambda: HashRing([(b"a", 0)]), lambda: HashRing([(b"a", 1), (b"a", 1)]),
    lambda: SmoothWeighted([]), lambda: SmoothWeighted([1, -1]), lambda: LeastConnections([0]),
    lambda: TwoChoices([1], b"short"),
])
def test_bad_construction_is_refused(make):
    with pytest.raises(ValueError):
        make()


def test_masks_and_counts_must_fit_the_targets():
    with pytest.raises(ValueError):
        HashRing([(b"a", 1)]).pick(b"k", b"\x01\x01")
    with pytest.raises(ValueError):
        SmoothWeighted([1, 1]).pick(b"\x01")
    with pytest.raises(ValueError):
        LeastConnections([1, 1]).pick([0])
