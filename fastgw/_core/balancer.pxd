# fastgw._core.balancer: C-level declarations, for ``cimport`` by the request path.
#
# What lives here: the pick step of an upstream over its targets, by index: a weighted
# consistent-hash ring, smooth weighted round robin, least connections, and random with
# two choices. Which targets may be picked comes in as a mask (``up``: one byte per
# target, non-zero for a target that may take traffic); in-flight counts come in as a
# list. Python callers read balancer.pyi.
# May cimport: Cython's own ``libc``/``cpython`` declarations only (_core is a leaf).

from libc.stdint cimport uint64_t


cdef uint64_t hash_key(const unsigned char* data, Py_ssize_t n) noexcept


cdef class HashRing:
    cdef uint64_t* points          # sorted hash points of every virtual node
    cdef int* owners               # the target of each point
    cdef Py_ssize_t count          # number of points
    cdef readonly Py_ssize_t targets

    cpdef Py_ssize_t pick(self, bytes key, bytes up=*) except -2


cdef class SmoothWeighted:
    cdef list weights
    cdef list scores
    cdef readonly Py_ssize_t targets

    cpdef Py_ssize_t pick(self, bytes up=*) except -2


cdef class LeastConnections:
    cdef list weights
    cdef Py_ssize_t next_start
    cdef readonly Py_ssize_t targets

    cpdef Py_ssize_t pick(self, list in_flight, bytes up=*) except -2


cdef class TwoChoices:
    cdef list weights
    cdef uint64_t state0, state1
    cdef readonly Py_ssize_t targets

    cdef uint64_t _next(self) noexcept
    cpdef Py_ssize_t pick(self, list in_flight, bytes up=*) except -2
