# fastgw._core.atomic: atomic operations on 64-bit words, for the tables that several
# worker processes update in one shared mapping (target state now, rate-limit buckets
# next). Header-only: the C below is compiled into each module that cimports it.
#
# Why GCC builtins rather than locks: a worker can die at any instant (a crash, SIGKILL);
# a lock it held would stay held for every other worker, for good. A compare-and-swap
# loop leaves nothing behind. Each state a table keeps is therefore one 64-bit word,
# replaced whole by ``cas`` (read, compute the next word, swap if unchanged, else again).
#
# May cimport: Cython's own libc declarations only (_core is a leaf).

from libc.stdint cimport int64_t, uint64_t


cdef extern from *:
    """
    #include <stdint.h>
    static inline uint64_t fastgw_load64(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void fastgw_store64(uint64_t *p, uint64_t value) {
        __atomic_store_n(p, value, __ATOMIC_RELEASE);
    }
    /* Replace *p by desired if it still holds expected; 1 when it did. */
    static inline int fastgw_cas64(uint64_t *p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline int64_t fastgw_add64(int64_t *p, int64_t delta) {
        return __atomic_add_fetch(p, delta, __ATOMIC_RELAXED);
    }
    static inline int64_t fastgw_loadi64(int64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    """
    uint64_t atomic_load "fastgw_load64" (uint64_t* p) noexcept nogil
    void atomic_store "fastgw_store64" (uint64_t* p, uint64_t value) noexcept nogil
    bint atomic_cas "fastgw_cas64" (uint64_t* p, uint64_t expected, uint64_t desired) noexcept nogil
    int64_t atomic_add "fastgw_add64" (int64_t* p, int64_t delta) noexcept nogil
    int64_t atomic_load_i64 "fastgw_loadi64" (int64_t* p) noexcept nogil
