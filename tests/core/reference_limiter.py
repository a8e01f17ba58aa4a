"""A plain-Python reference for one fastgw._core.limiter.Limiter: the same constructor
(less ``arena`` and ``name``: one process only, always private), the same ``acquire`` and
``peek`` answers and the same table rules, written the obvious way from the documented
semantics (a list of groups of 8 slots, each free or a ``[hash, TAT]`` pair; Python
integers, no packed words, no atomics), for the tests and the micro-benchmarks to compare
against. Keys are placed with the native ``key_hash`` (0 read as 1, since 0 marks a free
slot), so that the same keys land in the same groups and collide the same way.

GCRA: each key keeps a theoretical arrival time (TAT); a take at ``now`` is allowed when
``max(TAT, now) + interval - now <= burst × interval`` and moves the TAT there. A new key
takes the first free slot of its group, else evicts the slot with the smallest TAT (the
first such slot) when that bucket is full (TAT at most ``now``) or, with a burst above 1,
a token from full (TAT at most ``now + interval``), else is refused (``-interval``) and
counted in ``full``.

Times are non-negative nanoseconds (CLOCK_MONOTONIC), as on the request path.

May import: fastgw._core.balancer (``key_hash`` only), the standard library.
"""

from __future__ import annotations

from fastgw._core.balancer import key_hash

GROUP = 8
DEFAULT_MAX_KEYS = 16384


class ReferenceLimiter:
    def __init__(self, rate: float, burst: int, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if not 1e-9 <= rate <= 1e9:
            raise ValueError(f"rate must be between 1e-9 and 1e9 a second, got {rate}")
        if type(burst) is not int or burst < 1:
            raise ValueError(f"burst must be an integer of at least 1, got {burst!r}")
        if burst / rate > 1e9:
            raise ValueError("burst / rate is over 1e9 s to fill")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.shared = False
        self.interval_ns = max(1, int(1e9 / rate + 0.5))  # rounded to the nearest ns
        self.limit_ns = self.burst * self.interval_ns
        groups = 1
        while groups * GROUP < max_keys:
            groups *= 2
        # each slot: None (free) or [key hash, TAT]
        self.groups: list[list[list[int] | None]] = [[None] * GROUP for _ in range(groups)]
        self.evictions = 0
        self.full = 0

    @property
    def max_keys(self) -> int:
        return len(self.groups) * GROUP

    @property
    def interval(self) -> float:
        return self.interval_ns / 1e9

    def _group(self, key: bytes) -> tuple[int, list[list[int] | None]]:
        if not isinstance(key, bytes):
            raise TypeError(f"a limiter key is bytes, not {type(key).__name__}")
        h = key_hash(key) or 1
        return h, self.groups[h % len(self.groups)]

    def _take(self, slot: list[int], now: int) -> int:
        tat = slot[1]
        next_tat = max(tat, now) + self.interval_ns
        ahead = next_tat - now
        if ahead > self.limit_ns:
            return -(ahead - self.limit_ns)  # the wait until one token is back
        slot[1] = next_tat
        return (self.limit_ns - ahead) // self.interval_ns

    def acquire(self, key: bytes, now_ns: int) -> int:
        h, group = self._group(key)
        for slot in group:
            if slot is not None and slot[0] == h:
                return self._take(slot, now_ns)
        for i, slot in enumerate(group):
            if slot is None:
                group[i] = [h, 0]
                return self._take(group[i], now_ns)
        victim = min(range(GROUP), key=lambda i: group[i][1])  # the first of the idlest
        tat = group[victim][1]
        if tat <= now_ns or (self.burst > 1 and tat <= now_ns + self.interval_ns):
            group[victim] = [h, 0]
            self.evictions += 1
            return self._take(group[victim], now_ns)
        self.full += 1
        return -self.interval_ns

    def peek(self, key: bytes, now_ns: int) -> int:
        h, group = self._group(key)
        for slot in group:
            if slot is not None and slot[0] == h:
                ahead = slot[1] - now_ns
                if ahead <= 0:
                    return self.burst
                return max(0, (self.limit_ns - ahead) // self.interval_ns)
        return self.burst
