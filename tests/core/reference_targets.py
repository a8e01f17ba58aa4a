"""A plain-Python reference for one fastgw._core.targets.TargetState: the same methods
and return codes, written the obvious way from the documented semantics (plain
attributes, no packed words, no atomics; one process only), for the tests and the
micro-benchmarks to compare against. The limits of the packed words are kept as limits
(consecutive failures saturate at 2**22 - 1, streaks at 65535, ``until`` is clamped to
40 bits of milliseconds, a status outside 0..999 is kept as 0).

May import: fastgw._core.targets (its constants only), the standard library.
"""

from __future__ import annotations

from fastgw._core.targets import (
    ADMITTED,
    BECAME_HEALTHY,
    BECAME_UNHEALTHY,
    CIRCUIT_CLOSED,
    CIRCUIT_NAMES,
    CIRCUIT_OPENED,
    CIRCUIT_REOPENED,
    CLOSED,
    HEALTH_NAMES,
    HEALTHY,
    NO_CHANGE,
    OPEN,
    REFUSED,
    TRIAL,
    TRIAL_BEGAN,
    UNCHECKED,
    UNHEALTHY,
)

STREAK_MAX = 0xFFFF
FAILURES_MAX = (1 << 22) - 1
UNTIL_MAX = (1 << 40) - 1


def clamp_until(until: int) -> int:
    return min(max(until, 0), UNTIL_MAX)


class ReferenceTargetState:
    def __init__(self, shared: bool = True) -> None:
        self.shared = shared
        # active health checks
        self.health_state = UNCHECKED
        self.passed_in_a_row = 0
        self.failed_in_a_row = 0
        self.last_status: int | None = None
        self.next_probe = 0
        # the circuit breaker
        self.circuit_state = CLOSED
        self.failures = 0
        self.until = 0
        # counters
        self._in_flight = 0
        self.failures_total = 0
        self.last_failure = 0
        self.changed = 0

    # -- active health checks ---------------------------------------------------------

    def healthy(self) -> bool:
        return self.health_state != UNHEALTHY

    def claim_probe(self, now_ms: int, interval_ms: int) -> bool:
        due = self.next_probe
        if now_ms < due <= now_ms + interval_ms:
            return False  # not due yet (and not further away than one interval)
        self.next_probe = now_ms + interval_ms
        return True

    def probe_result(self, status: int, healthy_threshold: int, unhealthy_threshold: int,
                     now_ms: int) -> int:
        self.last_status = status if 0 <= status <= 999 else 0
        change = NO_CHANGE
        if 200 <= status < 400:
            self.passed_in_a_row = min(self.passed_in_a_row + 1, STREAK_MAX)
            self.failed_in_a_row = 0
            if self.health_state == UNCHECKED or (
                    self.health_state == UNHEALTHY and self.passed_in_a_row >= healthy_threshold):
                self.health_state = HEALTHY
                change = BECAME_HEALTHY
        else:
            self.failed_in_a_row = min(self.failed_in_a_row + 1, STREAK_MAX)
            self.passed_in_a_row = 0
            if self.health_state != UNHEALTHY and self.failed_in_a_row >= unhealthy_threshold:
                self.health_state = UNHEALTHY
                change = BECAME_UNHEALTHY
        if change != NO_CHANGE:
            self.changed = now_ms
        return change

    # -- the circuit breaker ------------------------------------------------------------

    def may_admit(self, now_ms: int) -> bool:
        return self.circuit_state == CLOSED or self.until <= now_ms

    def admit(self, now_ms: int, trial_ms: int) -> int:
        if self.circuit_state == CLOSED:
            return ADMITTED
        if self.until > now_ms:
            return REFUSED  # cooling down, or a trial is under way
        self.circuit_state = TRIAL
        self.until = clamp_until(now_ms + trial_ms)
        self.changed = now_ms
        return TRIAL_BEGAN

    def record(self, ok: bool, threshold: int, cooldown_ms: int, now_ms: int, trial: bool = False) -> int:
        deciding = self.circuit_state == TRIAL and trial  # only the trial request decides a trial
        if ok:
            if self.circuit_state != CLOSED and not deciding:
                return NO_CHANGE  # admitted before it opened: tells nothing
            change = CIRCUIT_CLOSED if deciding else NO_CHANGE
            self.circuit_state, self.failures, self.until = CLOSED, 0, 0
        else:
            self.failures_total += 1
            self.last_failure = now_ms
            self.failures = min(self.failures + 1, FAILURES_MAX)
            change = NO_CHANGE
            if deciding:
                change = CIRCUIT_REOPENED
            elif self.circuit_state == CLOSED and threshold > 0 and self.failures >= threshold:
                change = CIRCUIT_OPENED
            if change != NO_CHANGE:
                self.circuit_state = OPEN
                self.until = clamp_until(now_ms + cooldown_ms)
        if change != NO_CHANGE:
            self.changed = now_ms
        return change

    def undecided(self, now_ms: int) -> int:
        if self.circuit_state != TRIAL:
            return 0
        self.circuit_state = OPEN
        self.until = clamp_until(now_ms)  # owed again at once
        self.changed = now_ms
        return 1

    # -- requests in flight -------------------------------------------------------------

    def add_in_flight(self, delta: int) -> None:
        self._in_flight += delta

    # -- reading ----------------------------------------------------------------------

    @property
    def health(self) -> str:
        return HEALTH_NAMES[self.health_state]

    @property
    def circuit(self) -> str:
        return CIRCUIT_NAMES[self.circuit_state]

    @property
    def consecutive_failures(self) -> int:
        return self.failures

    @property
    def until_ms(self) -> int:
        return self.until

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def view(self, now_ms: int) -> dict[str, object]:
        return {
            "health": self.health,
            "checks_passed_in_a_row": self.passed_in_a_row,
            "checks_failed_in_a_row": self.failed_in_a_row,
            "last_check_status": self.last_status,
            "circuit": self.circuit,
            "consecutive_failures": self.failures,
            "retry_in_ms": max(0, self.until - now_ms) if self.circuit_state != CLOSED else 0,
            "in_flight": self._in_flight,
            "failures_total": self.failures_total,
            # a time of 0 reads as "never" (CLOCK_MONOTONIC is never 0 on a running machine)
            "last_failure_ms_ago": now_ms - self.last_failure if self.last_failure else None,
            "changed_ms_ago": now_ms - self.changed if self.changed else None,
            "shared": self.shared,
        }

