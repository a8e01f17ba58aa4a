# fastgw._core.targets: C-level declarations, for ``cimport`` by the request path.
#
# What lives here: the state of each upstream target that every worker of a machine must
# agree on (active health, the circuit breaker, requests in flight, failures), one slot
# per target in a table mapped shared before the workers fork. Python callers read
# targets.pyi.
# May cimport: Cython's own libc/posix declarations and _core.atomic (_core is a leaf).

from libc.stdint cimport int64_t, uint64_t

cpdef enum:
    # active health (``health``)
    UNCHECKED = 0      # no verdict yet: takes traffic
    HEALTHY = 1
    UNHEALTHY = 2
    # the circuit breaker (``circuit``)
    CLOSED = 0
    OPEN = 1
    TRIAL = 2          # one request decides: closed again, or open for another cooldown
    # what a call changed (each change is logged once, by the process that made it)
    NO_CHANGE = 0
    BECAME_HEALTHY = 1
    BECAME_UNHEALTHY = 2
    CIRCUIT_OPENED = 3
    CIRCUIT_CLOSED = 4
    CIRCUIT_REOPENED = 5   # its trial failed
    TRIAL_BEGAN = 6
    # what ``admit`` answers
    REFUSED = 0
    ADMITTED = 1


ctypedef struct TargetSlot:
    uint64_t key            # the target's hash (0: a free slot)
    uint64_t health         # packed: state | ok streak | failure streak | last probe status
    uint64_t circuit        # packed: state | consecutive failures | until (ms)
    uint64_t next_probe     # ms: when the next active check is due (claimed by CAS)
    int64_t in_flight
    int64_t failures_total
    int64_t last_failure    # ms
    int64_t changed         # ms: the last change of health or circuit


cdef class TargetState:
    cdef TargetSlot* slot
    cdef object owner            # what keeps the slot's memory mapped (the table)
    cdef void* private           # a slot of our own when the table was full
    cdef readonly bint shared

    cpdef bint healthy(self)
    cpdef bint claim_probe(self, int64_t now_ms, int64_t interval_ms)
    cpdef int probe_result(self, int status, int healthy_threshold, int unhealthy_threshold,
                           int64_t now_ms)
    cpdef bint may_admit(self, int64_t now_ms)
    cpdef int admit(self, int64_t now_ms, int64_t trial_ms)
    cpdef int record(self, bint ok, int threshold, int64_t cooldown_ms, int64_t now_ms,
                     bint trial=*)
    cpdef int undecided(self, int64_t now_ms)
    cdef void enter(self) noexcept
    cdef void leave(self) noexcept


cdef class TargetTable:
    cdef TargetSlot* slots
    cdef readonly Py_ssize_t capacity
    cdef size_t size

    cpdef TargetState state(self, bytes name)
