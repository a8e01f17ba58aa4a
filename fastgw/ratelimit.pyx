# cython: boundscheck=True, wraparound=True
"""Rate limits on the request path: ``[routes.rate_limit]`` and ``[global].rate_limit``.

A ``RateLimitPolicy`` is one ``rate_limit`` table compiled: where its key comes from
(``ip``: the client address, behind ``trusted_proxies``; ``route``: one bucket for the
route; ``header:NAME``: the first such header, or the client address when the request
has none, so leaving the header out is no way around the limit), and its buckets:
``_core.limiter.Limiter`` in the machine's shared arena (``scope = "local"``: exact across
every worker), or Redis (``scope = "cluster"``: exact across machines, through
``fastgw.cluster``, which falls back to the local buckets when Redis is away).

A policy's buckets are named by its owner and settings, so a reload that keeps a route's
``rate_limit`` keeps its buckets, and one that changes it starts them full.

The proxy asks every policy of a route (the global one first) and answers 429 for the
first refusal; the answer headers are built here (``refusal_fields``,
``allowed_fields``): ``Retry-After`` and ``RateLimit-Reset`` in whole seconds, rounded up.

May import: the standard library, fastgw._core, fastgw.exchange; fastgw.cluster's
``ClusterLimits`` comes in built.
"""

from libc.stdint cimport int64_t

from fastgw._core.limiter cimport Arena, Limiter

cdef enum:
    KEY_IP = 0
    KEY_ROUTE = 1
    KEY_HEADER = 2


cdef class RateLimitPolicy:
    """One ``rate_limit`` table of ``owner`` (a route's name, or "global")."""

    def __init__(self, str owner, config, Arena arena, cluster=None):
        self.owner = owner
        settings = f"{owner}\0{config.rate!r}\0{config.burst}\0{config.key}"
        self.local = Limiter(config.rate, config.burst, config.max_keys, arena,
                             f"ratelimit\0{settings}\0{config.max_keys}".encode())
        self.cluster = cluster if config.scope == "cluster" else None
        self.cluster_name = settings.replace("\0", ":").encode()
        self.limit_pair = (b"ratelimit-limit", b"%d" % config.burst)
        kind, _, name = config.key.partition(":")
        self.kind = KEY_IP if kind == "ip" else KEY_ROUTE if kind == "route" else KEY_HEADER
        self.header = name.encode("latin-1")

    cdef bytes key_of(self, Exchange ex):
        """The bucket ``ex`` draws from (prefixed, so a header's value never shares a
        bucket with an address)."""
        cdef bytes name, value
        cdef Py_ssize_t n
        if self.kind == KEY_ROUTE:
            return b"r"
        if self.kind == KEY_HEADER:
            n = len(self.header)
            for name, value in ex.headers:
                if len(name) == n and name.lower() == self.header:
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


cdef bytes _seconds(int64_t ns):
    """Whole seconds, rounded up (a client that waits that long is not refused again for
    want of time)."""
    return b"%d" % ((ns + 999_999_999) // 1_000_000_000)
