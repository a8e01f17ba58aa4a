# C-level declarations of fastgw/policies/limits.pyx.

from libc.stdint cimport int64_t

from fastgw._core.limiter cimport ConcurrencyGuard, Limiter
from fastgw.exchange cimport Exchange
from fastgw.policy cimport Policy


cdef class RateLimitPolicy:
    cdef readonly str owner             # "global" or the route's name
    cdef readonly dict config           # its settings (rate, burst, key, scope, max_keys)
    cdef readonly Limiter local         # the machine's buckets (and cluster scope's fallback)
    cdef readonly object cluster        # fastgw.cluster.ClusterLimits for scope "cluster"
    cdef readonly bytes cluster_name    # the policy's name in Redis, the same on every machine
    cdef readonly tuple limit_pair      # the RateLimit-Limit field, made once
    cdef int kind
    cdef bytes header                   # lower-case, for key = "header:NAME"

    cdef bytes key_of(self, Exchange ex)
    cpdef list refusal_fields(self, int64_t wait_ns)
    cpdef list allowed_fields(self, int64_t remaining)


cdef class RateLimits(Policy):
    cdef readonly tuple limits          # RateLimitPolicy, [global]'s first
    cdef readonly bint clustered        # some of them ask Redis


cdef class MaxConcurrent(Policy):
    cdef readonly ConcurrencyGuard guard
