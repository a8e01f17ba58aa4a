# cython: boundscheck=True, wraparound=True
"""The limits on the policy chain: ``rate_limit`` (``[routes.rate_limit]`` and
``[global].rate_limit``) and ``max_concurrent``.

A ``RateLimitPolicy`` is one ``rate_limit`` table compiled: where its key comes from
(``ip``: the client address, behind ``trusted_proxies``; ``route``: one bucket for the
route; ``header:NAME``: the first such header, or the client address when the request
has none, so leaving the header out is no way around the limit), and its buckets:
``_core.limiter.Limiter`` in the machine's shared arena (``scope = "local"``: exact across
every worker), or Redis (``scope = "cluster"``: exact across machines, through
``fastgw.cluster``, which falls back to the local buckets when Redis is away).

A policy's buckets are named by its owner and settings, so a reload that keeps a route's
``rate_limit`` keeps its buckets, and one that changes it starts them full.

On the chain, a route's rate limits ([global]'s first) are one policy, ``RateLimits``:
a request takes a token from each, the first refusal is 429, and an allowed response
carries the tightest limit's RateLimit fields. It waits (a task for that request) only
while a cluster-scope limit's Redis is up; while it is down, the machine's buckets
answer at once. The answer headers are built here (``refusal_fields``,
``allowed_fields``): ``Retry-After`` and ``RateLimit-Reset`` in whole seconds, rounded up.

``MaxConcurrent`` counts the route's requests in flight on the machine: 503 beyond
``max_concurrent``; it leaves the count in the log phase, however the exchange ended.

May import: the standard library, fastgw._core, fastgw.exchange, fastgw.policy;
fastgw.cluster's ``ClusterLimits`` comes in built.
"""

cimport cython
from libc.stdint cimport int64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import logging
import math

from fastgw._core.limiter cimport Arena, ConcurrencyGuard, Limiter
from fastgw._core.metrics cimport R_CONCURRENCY_REFUSED, R_RATE_LIMITED, RouteCounters
from fastgw.exchange cimport Exchange
from fastgw.policy cimport ANSWERED, CONTINUE, WAIT, Policy, answer
from fastgw.policy import REQUIRED, PolicySpec

log = logging.getLogger("fastgw")

RATE_LIMIT_PRIORITY = 1000
MAX_CONCURRENT_PRIORITY = 900
#: buckets a rate limit's table may hold by default (16 bytes each: 256 KiB, nginx's 1m
#: zone), and at most (256 MiB)
DEFAULT_MAX_KEYS = 16384
MAX_KEYS_LIMIT = 1 << 24

cdef enum:
    KEY_IP = 0
    KEY_ROUTE = 1
    KEY_HEADER = 2
    KEY_CONSUMER = 3


cdef class RateLimitPolicy:
    """One ``rate_limit`` table of ``owner`` (a route's name, or "global")."""

    def __init__(self, str owner, dict config, Arena arena, cluster=None):
        self.owner = owner
        self.config = config
        rate, burst, key, max_keys = config["rate"], config["burst"], config["key"], config["max_keys"]
        settings = f"{owner}\0{rate!r}\0{burst}\0{key}"
        self.local = Limiter(rate, burst, max_keys, arena, f"ratelimit\0{settings}\0{max_keys}".encode())
        self.cluster = cluster if config["scope"] == "cluster" else None
        self.cluster_name = settings.replace("\0", ":").encode()
        self.limit_pair = (b"ratelimit-limit", b"%d" % burst)
        kind, _, name = key.partition(":")
        self.kind = {"ip": KEY_IP, "route": KEY_ROUTE, "consumer": KEY_CONSUMER}.get(kind, KEY_HEADER)
        self.header = name.encode("latin-1")

    cdef bytes key_of(self, Exchange ex):
        """The bucket ``ex`` draws from (prefixed, so a header's value never shares a
        bucket with an address)."""
        if self.kind == KEY_ROUTE:
            return b"r"
        if self.kind == KEY_CONSUMER and ex.consumer is not None:
            return b"c" + (<str>ex.consumer.name).encode()  # (else: the address, as for a header)
        if self.kind == KEY_HEADER:
            value = ex.header(self.header)
            if value is not None:
                return b"h" + value
        return b"i" + ex.client_ip.encode()

    cpdef list refusal_fields(self, int64_t wait_ns):
        """The 429's fields: wait for the next token; the bucket is full again after
        ``burst`` tokens' time more."""
        cdef int64_t full_ns = wait_ns + (self.local.burst - 1) * self.local.interval_ns
        return [(b"retry-after", _seconds(wait_ns)), self.limit_pair,
                (b"ratelimit-remaining", b"0"), (b"ratelimit-reset", _seconds(full_ns))]

    cpdef list allowed_fields(self, int64_t remaining):
        """The fields an allowed response carries: ``remaining`` tokens, and the seconds
        until the bucket is full again."""
        cdef int64_t full_ns = (self.local.burst - remaining) * self.local.interval_ns
        return [self.limit_pair, (b"ratelimit-remaining", b"%d" % remaining),
                (b"ratelimit-reset", _seconds(full_ns))]


    def describe(self):
        c = self.config
        owner = "[global] " if self.owner == "global" else ""
        keys = f", max_keys {c['max_keys']}" if c["max_keys"] != DEFAULT_MAX_KEYS else ""
        return f"rate_limit {owner}{c['rate']:g}/s burst {c['burst']} per {c['key']} ({c['scope']}{keys})"



cdef class RateLimits(Policy):
    """Every rate limit of a route, [global]'s first, as one policy of its chain."""

    def __init__(self, str owner, tuple limits):
        Policy.__init__(self, "rate_limit", owner, RATE_LIMIT_PRIORITY, request=True)
        self.limits = limits
        self.clustered = any((<RateLimitPolicy>p).cluster is not None for p in limits)

    cpdef int request(self, Exchange ex) except -1:
        cdef RateLimitPolicy policy
        cdef int64_t now = _now_ns(), left
        if self.clustered:
            for policy in self.limits:
                if policy.cluster is not None and policy.cluster.up:
                    return WAIT  # Redis answers asynchronously
        cdef _Tally tally = _Tally()
        for policy in self.limits:
            key = policy.key_of(ex)
            if policy.cluster is None:
                left = policy.local.acquire(key, now)
            else:  # Redis is down: the machine's buckets answer, counted as a fallback
                left = policy.cluster.acquire_here(key, policy.local, now)
            if not tally.count(policy, left):
                return _refuse(ex, policy, -left)
        return tally.allow(ex)

    async def wait(self, Exchange ex):
        """``request`` for a route with a cluster-scope limit: each such limit asks Redis
        (one script call, or the machine's buckets at once when Redis is away)."""
        cdef RateLimitPolicy policy
        cdef int64_t left
        cdef _Tally tally = _Tally()
        for policy in self.limits:
            key = policy.key_of(ex)
            if policy.cluster is None:
                left = policy.local.acquire(key, _now_ns())
            else:
                left = await policy.cluster.acquire(policy.cluster_name, key, policy.local.interval_ns,
                                                    policy.local.burst, policy.local, _now_ns())
            if not tally.count(policy, left):
                return _refuse(ex, policy, -left)
        return tally.allow(ex)

    def describe(self):
        return " → ".join(p.describe() for p in self.limits)


cdef int _refuse(Exchange ex, RateLimitPolicy policy, int64_t wait_ns) except -1:
    cdef RouteCounters counters = ex.metrics
    if counters is not None:
        counters.count(R_RATE_LIMITED)
    return answer(ex, 429, f"rate limit of {policy.owner!r} exceeded", policy.refusal_fields(wait_ns))


@cython.final
cdef class _Tally:
    """The answers of a route's limits so far: the tightest (fewest tokens left)."""
    cdef RateLimitPolicy tightest
    cdef int64_t least

    cdef bint count(self, RateLimitPolicy policy, int64_t left):
        """False when ``policy`` refused (``left`` < 0)."""
        if left < 0:
            return False
        if self.tightest is None or left < self.least:
            self.tightest, self.least = policy, left
        return True

    cdef int allow(self, Exchange ex) except -1:
        """Every limit allowed: the response carries the tightest one's RateLimit fields."""
        fields = self.tightest.allowed_fields(self.least)
        if ex.response_fields is None:
            ex.response_fields = fields
        else:
            ex.response_fields.extend(fields)
        return CONTINUE


cdef class MaxConcurrent(Policy):
    """``max_concurrent``: the route's requests in flight on the machine."""

    def __init__(self, str owner, ConcurrencyGuard guard):
        Policy.__init__(self, "max_concurrent", owner, MAX_CONCURRENT_PRIORITY, request=True, log=True)
        self.guard = guard

    cpdef int request(self, Exchange ex) except -1:
        cdef RouteCounters counters
        if not self.guard.enter():
            counters = ex.metrics
            if counters is not None:
                counters.count(R_CONCURRENCY_REFUSED)
            return answer(ex, 503, f"route {self.owner!r} has {self.guard.maximum} requests in flight "
                                   "(max_concurrent)", [(b"retry-after", b"1")])
        ex.guard = self.guard
        return CONTINUE

    cpdef log(self, Exchange ex):
        guard = ex.guard
        if guard is not None:
            ex.guard = None
            (<ConcurrencyGuard>guard).leave()

    def describe(self):
        return f"max_concurrent {self.guard.maximum}"


def _build_rate_limit(str owner, dict settings, context):
    """A ``RateLimitPolicy`` (the snapshot puts a route's and [global]'s together into the
    route's one ``RateLimits``)."""
    policy = RateLimitPolicy(owner, settings, context.arena, context.cluster)
    if not policy.local.shared:
        log.warning("rate limit of %s: the shared arena is full, so this worker counts on its own "
                    "(a restart reclaims the arena)", owner)
    return policy


def _complete_rate_limit(settings):
    # The default burst: one second's worth of the rate (at least 1).
    if settings["burst"] is None:
        return {**settings, "burst": max(1, math.ceil(settings["rate"]))}
    return settings


def _check_rate_limit(settings):
    rate, burst = settings["rate"], settings["burst"]
    if rate > 1e9:
        return [("rate", f"at most 1000000000/s (one request a nanosecond), got {rate:.0f}/s")]
    if burst / rate > 1e9:  # the limiter keeps burst × 1/rate in 64-bit nanoseconds
        return [("burst", f"takes {burst / rate:.3g} s to fill at this rate; at most 1e9 s")]
    return []


SPECS = (
    PolicySpec("rate_limit", RATE_LIMIT_PRIORITY, {
        "rate": ("rate", REQUIRED),
        "burst": (("int", 1), None),
        "key": ("rate_limit_key", "ip"),
        "scope": (("choice", "local", "cluster"), "local"),
        "max_keys": (("int", 1, MAX_KEYS_LIMIT), DEFAULT_MAX_KEYS),
    }, _build_rate_limit, check=_check_rate_limit, complete=_complete_rate_limit, in_global=True),
)


cdef inline int64_t _now_ns() noexcept:
    """CLOCK_MONOTONIC in nanoseconds: the clock of the rate limiters, in every process."""
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec * 1_000_000_000 + now.tv_nsec


cdef bytes _seconds(int64_t ns):
    """Whole seconds, rounded up (a client that waits that long is not refused again for
    want of time)."""
    return b"%d" % ((ns + 999_999_999) // 1_000_000_000)
