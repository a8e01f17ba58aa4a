"""Plain-Python references for fastgw._core.balancer: the same algorithms written the
obvious way (a sorted list and bisect for the ring), for the tests to compare against.

May import: the standard library only.
"""

from __future__ import annotations

import bisect
from fractions import Fraction

MASK = (1 << 64) - 1
POINTS_PER_WEIGHT = 1000


def key_hash(key: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in key:
        h = ((h ^ byte) * 0x100000001B3) & MASK
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 31)


def is_up(up: bytes | None, i: int) -> bool:
    return up is None or up[i] != 0


class ReferenceRing:
    def __init__(self, targets: list[tuple[bytes, int]]) -> None:
        points = sorted((key_hash(name + b"#%d" % v), name, i)
                        for i, (name, weight) in enumerate(targets)
                        for v in range(POINTS_PER_WEIGHT * weight))
        self.hashes = [p[0] for p in points]
        self.owners = [p[2] for p in points]

    def pick(self, key: bytes, up: bytes | None = None) -> int:
        start = bisect.bisect_left(self.hashes, key_hash(key))
        for step in range(len(self.owners)):
            owner = self.owners[(start + step) % len(self.owners)]
            if is_up(up, owner):
                return owner
        return -1


class ReferenceSmoothWeighted:
    def __init__(self, weights: list[int]) -> None:
        self.weights = weights
        self.scores = [0] * len(weights)

    def pick(self, up: bytes | None = None) -> int:
        live = [i for i in range(len(self.weights)) if is_up(up, i)]
        if not live:
            return -1
        for i in live:
            self.scores[i] += self.weights[i]
        best = max(live, key=lambda i: (self.scores[i], -i))  # the first of the highest
        self.scores[best] -= sum(self.weights[i] for i in live)
        return best


class ReferenceLeastConnections:
    def __init__(self, weights: list[int]) -> None:
        self.weights = weights
        self.next_start = 0

    def pick(self, in_flight: list[int], up: bytes | None = None) -> int:
        n = len(self.weights)
        order = [(self.next_start + step) % n for step in range(n)]
        live = [i for i in order if is_up(up, i)]
        if not live:
            return -1
        # the fewest per unit of weight; among equals, the first in turn order
        best = min(live, key=lambda i: (Fraction(in_flight[i], self.weights[i]), live.index(i)))
        self.next_start = (best + 1) % n
        return best
