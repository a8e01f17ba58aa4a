# fastgw._core.limiter: C-level declarations, for ``cimport`` by the request path.
#
# What lives here: token buckets (GCRA) keyed by bytes, in fixed-size tables that live in
# a shared arena mapped before the workers fork (so a limit is the machine's limit), and
# machine-wide in-flight counters. Python callers read limiter.pyi.
# May cimport: Cython's own libc/posix declarations, _core.atomic, _core.balancer's hash.

from libc.stdint cimport int64_t, uint64_t


cdef class Arena:
    cdef char* base
    cdef size_t size
    cdef readonly bint shared

    cdef char* region(self, bytes name, size_t size) except? NULL


cdef class Limiter:
    cdef uint64_t* slots          # pairs (key hash, TAT ns), GROUP pairs per group
    cdef uint64_t group_mask
    cdef int64_t interval_ns      # one token's worth of time: 1 / rate
    cdef int64_t limit_ns         # burst × interval: how far ahead the TAT may run
    cdef int64_t* counters        # shared: evictions, refusals for a full group
    cdef object owner             # keeps the memory mapped or allocated
    cdef readonly int64_t burst
    cdef readonly double rate
    cdef readonly bint shared

    cpdef int64_t acquire(self, bytes key, int64_t now_ns)
    cdef int64_t _take(self, uint64_t* slot, int64_t now_ns) noexcept


cdef class ConcurrencyGuard:
    cdef int64_t* total
    cdef int64_t* shares          # each worker slot's part of the total (see reclaim)
    cdef Py_ssize_t workers
    cdef object owner
    cdef readonly int64_t maximum

    cpdef bint enter(self)
    cpdef void leave(self)
