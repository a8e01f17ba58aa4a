# cython: boundscheck=False, wraparound=False
"""The state of upstream targets that every worker of a machine shares: active health,
the circuit breaker, requests in flight and failures, one 64-byte slot per target in a
``TargetTable`` mapped ``MAP_SHARED | MAP_ANONYMOUS`` by the supervisor before it forks,
so every worker sees one table (as nginx's upstream ``zone``).

Why shared: with per-worker state, ``workers = 4`` would probe each target four times as
often and eject it after up to four times ``failures`` failures, and the workers would
disagree on who is up. Here one CAS on ``next_probe`` elects the worker that runs each
active check; every verdict and every circuit change is one CAS on one word, made (and so
logged) by exactly one process.

Why no locks: a worker may die at any instant, and a lock it held would stay held. Each
state is one 64-bit word replaced whole by compare-and-swap (``_core.atomic``):

- ``health``: state (2 bits) | consecutive passed checks (16) | consecutive failed checks
  (16) | the last check's status (10; 0 = no answer);
- ``circuit``: state (2 bits) | consecutive failures (22) | until (40: CLOCK_MONOTONIC ms,
  when an open circuit may try again, or when a trial that never reported lapses).

Slots are found by the hash of the target's name (``upstream\\0host:port``), claimed by a
CAS on ``key`` and never freed, so a reload that keeps a target keeps its state. Times
come in as ``now_ms`` (CLOCK_MONOTONIC milliseconds, the same clock in every process), so
tests inject them.

May import: nothing of fastgw (``_core`` is a leaf); no I/O but the mapping.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap

from fastgw._core.atomic cimport atomic_add, atomic_cas, atomic_load, atomic_load_i64, atomic_store
from fastgw._core.balancer cimport hash_key

#: slots in the table ``shared_table()`` maps (64 bytes each: 256 KiB)
DEFAULT_CAPACITY = 4096

HEALTH_NAMES = ("unchecked", "healthy", "unhealthy")
CIRCUIT_NAMES = ("closed", "open", "trial")

cdef uint64_t STREAK_MAX = 0xFFFF
cdef uint64_t FAILURES_MAX = (1 << 22) - 1
cdef uint64_t UNTIL_MAX = (1ULL << 40) - 1
cdef uint64_t STATUS_MAX = 999


# -- packing ------------------------------------------------------------------------------

cdef inline uint64_t pack_health(uint64_t state, uint64_t ok, uint64_t failed, uint64_t status) noexcept:
    return state | ok << 2 | failed << 18 | status << 34

cdef inline uint64_t health_state(uint64_t w) noexcept:
    return w & 3

cdef inline uint64_t health_ok(uint64_t w) noexcept:
    return (w >> 2) & 0xFFFF

cdef inline uint64_t health_failed(uint64_t w) noexcept:
    return (w >> 18) & 0xFFFF

cdef inline uint64_t health_status(uint64_t w) noexcept:
    return (w >> 34) & 0x3FF

cdef inline uint64_t pack_circuit(uint64_t state, uint64_t failures, int64_t until) noexcept:
    cdef uint64_t u = 0 if until < 0 else (<uint64_t>until if <uint64_t>until < UNTIL_MAX else UNTIL_MAX)
    return state | failures << 2 | u << 24

cdef inline uint64_t circuit_state(uint64_t w) noexcept:
    return w & 3

cdef inline uint64_t circuit_failures(uint64_t w) noexcept:
    return (w >> 2) & FAILURES_MAX

cdef inline int64_t circuit_until(uint64_t w) noexcept:
    return <int64_t>(w >> 24)


cdef class TargetState:
    """One target's slot. Made by ``TargetTable.state``; every method is safe to call from
    any number of processes at once."""

    def __dealloc__(self):
        if self.private != NULL:
            free(self.private)

    # -- active health checks ---------------------------------------------------------

    cpdef bint healthy(self):
        """Whether active checks let the target take traffic (not ``unhealthy``)."""
        return health_state(atomic_load(&self.slot.health)) != UNHEALTHY

    cpdef bint claim_probe(self, int64_t now_ms, int64_t interval_ms):
        """True for exactly one caller per ``interval_ms``, machine-wide: that caller runs
        the check. A due time further away than one interval (the interval was shortened
        by a reload) counts as due."""
        cdef uint64_t due
        cdef uint64_t now = <uint64_t>now_ms
        cdef uint64_t interval = <uint64_t>interval_ms
        while True:
            due = atomic_load(&self.slot.next_probe)
            if now < due and due <= now + interval:
                return False
            if atomic_cas(&self.slot.next_probe, due, now + interval):
                return True

    cpdef int probe_result(self, int status, int healthy_threshold, int unhealthy_threshold,
                           int64_t now_ms):
        """Record a check's answer (``status`` 0: no answer in time; 2xx/3xx pass). The
        target turns healthy after ``healthy_threshold`` passes in a row (at once from
        ``unchecked``), unhealthy after ``unhealthy_threshold`` failures in a row.
        Returns BECAME_HEALTHY, BECAME_UNHEALTHY or NO_CHANGE."""
        cdef bint ok = 200 <= status < 400
        cdef uint64_t code = <uint64_t>status if 0 <= status <= <int>STATUS_MAX else 0
        cdef uint64_t w, state, passed, failed, new_state
        cdef int change
        while True:
            w = atomic_load(&self.slot.health)
            state = health_state(w)
            change = NO_CHANGE
            if ok:
                passed = min(health_ok(w) + 1, STREAK_MAX)
                failed = 0
                new_state = state
                if state != HEALTHY and (state == UNCHECKED or passed >= <uint64_t>healthy_threshold):
                    new_state = HEALTHY
                    change = BECAME_HEALTHY
            else:
                passed = 0
                failed = min(health_failed(w) + 1, STREAK_MAX)
                new_state = state
                if state != UNHEALTHY and failed >= <uint64_t>unhealthy_threshold:
                    new_state = UNHEALTHY
                    change = BECAME_UNHEALTHY
            if atomic_cas(&self.slot.health, w, pack_health(new_state, passed, failed, code)):
                break
        if change != NO_CHANGE:
            atomic_store(<uint64_t*>&self.slot.changed, <uint64_t>now_ms)
        return change

    # -- the circuit breaker ------------------------------------------------------------

    cpdef bint may_admit(self, int64_t now_ms):
        """Whether ``admit`` could let a request through now (it does not claim a trial)."""
        cdef uint64_t w = atomic_load(&self.slot.circuit)
        return circuit_state(w) == CLOSED or circuit_until(w) <= now_ms

    cpdef int admit(self, int64_t now_ms, int64_t trial_ms):
        """ADMITTED when the circuit is closed; TRIAL_BEGAN for the one caller that takes
        the trial of an open circuit whose cooldown is over (the trial lapses after
        ``trial_ms`` if it never reports, so a dead worker cannot hold it); else REFUSED."""
        cdef uint64_t w
        while True:
            w = atomic_load(&self.slot.circuit)
            if circuit_state(w) == CLOSED:
                return ADMITTED
            if circuit_until(w) > now_ms:
                return REFUSED
            if atomic_cas(&self.slot.circuit, w,
                          pack_circuit(TRIAL, circuit_failures(w), now_ms + trial_ms)):
                atomic_store(<uint64_t*>&self.slot.changed, <uint64_t>now_ms)
                return TRIAL_BEGAN

    cpdef int record(self, bint ok, int threshold, int64_t cooldown_ms, int64_t now_ms,
                     bint trial=False):
        """The outcome of a request the target served: ``ok`` (an answer below 500) or a
        failure (a 5xx, a failed connect, a reset, a timeout). ``threshold`` consecutive
        failures open a closed circuit for ``cooldown_ms`` (0: never: failures are only
        counted). Only the trial request (``trial``: its caller got TRIAL_BEGAN) decides
        a circuit on trial: closed again, or open for another cooldown. Any other answer
        while the circuit is open or on trial (a request admitted before it opened) is
        counted and changes nothing. Returns CIRCUIT_OPENED, CIRCUIT_CLOSED,
        CIRCUIT_REOPENED or NO_CHANGE."""
        cdef uint64_t w, state, failures, new
        cdef int change
        if not ok:
            atomic_add(&self.slot.failures_total, 1)
            atomic_store(<uint64_t*>&self.slot.last_failure, <uint64_t>now_ms)
        while True:
            w = atomic_load(&self.slot.circuit)
            state = circuit_state(w)
            change = NO_CHANGE
            if ok:
                if state == CLOSED and circuit_failures(w) == 0:
                    return NO_CHANGE  # PERF: the common case writes nothing shared
                if state != CLOSED and not (state == TRIAL and trial):
                    return NO_CHANGE
                if state == TRIAL:
                    change = CIRCUIT_CLOSED
                new = pack_circuit(CLOSED, 0, 0)
            else:
                failures = min(circuit_failures(w) + 1, FAILURES_MAX)
                if state == TRIAL and trial:
                    new = pack_circuit(OPEN, failures, now_ms + cooldown_ms)
                    change = CIRCUIT_REOPENED
                elif state == CLOSED and threshold > 0 and failures >= <uint64_t>threshold:
                    new = pack_circuit(OPEN, failures, now_ms + cooldown_ms)
                    change = CIRCUIT_OPENED
                else:
                    new = pack_circuit(state, failures, circuit_until(w))
            if atomic_cas(&self.slot.circuit, w, new):
                break
        if change != NO_CHANGE:
            atomic_store(<uint64_t*>&self.slot.changed, <uint64_t>now_ms)
        return change

    cpdef int undecided(self, int64_t now_ms):
        """The trial request ended with no verdict (the client left): the trial is owed
        again, at once. Returns 1 when the circuit was on trial."""
        cdef uint64_t w
        while True:
            w = atomic_load(&self.slot.circuit)
            if circuit_state(w) != TRIAL:
                return 0
            if atomic_cas(&self.slot.circuit, w, pack_circuit(OPEN, circuit_failures(w), now_ms)):
                atomic_store(<uint64_t*>&self.slot.changed, <uint64_t>now_ms)
                return 1

    # -- requests in flight -------------------------------------------------------------

    cdef void enter(self) noexcept:
        atomic_add(&self.slot.in_flight, 1)

    cdef void leave(self) noexcept:
        atomic_add(&self.slot.in_flight, -1)

    def add_in_flight(self, int delta):
        """``enter``/``leave`` for Python callers (tests)."""
        atomic_add(&self.slot.in_flight, delta)

    # -- reading ----------------------------------------------------------------------

    @property
    def health(self):
        return HEALTH_NAMES[health_state(atomic_load(&self.slot.health))]

    @property
    def circuit(self):
        return CIRCUIT_NAMES[circuit_state(atomic_load(&self.slot.circuit))]

    @property
    def consecutive_failures(self):
        return circuit_failures(atomic_load(&self.slot.circuit))

    @property
    def until_ms(self):
        return circuit_until(atomic_load(&self.slot.circuit))

    @property
    def in_flight(self):
        return atomic_load_i64(&self.slot.in_flight)

    def view(self, int64_t now_ms):
        """Everything the slot holds, as plain values (for the admin API and tests)."""
        cdef uint64_t h = atomic_load(&self.slot.health)
        cdef uint64_t c = atomic_load(&self.slot.circuit)
        cdef int64_t last_failure = atomic_load_i64(&self.slot.last_failure)
        cdef int64_t changed = atomic_load_i64(&self.slot.changed)
        until = circuit_until(c)
        return {
            "health": HEALTH_NAMES[health_state(h)],
            "checks_passed_in_a_row": health_ok(h),
            "checks_failed_in_a_row": health_failed(h),
            "last_check_status": health_status(h) if (h >> 2) else None,
            "circuit": CIRCUIT_NAMES[circuit_state(c)],
            "consecutive_failures": circuit_failures(c),
            "retry_in_ms": max(0, until - now_ms) if circuit_state(c) != CLOSED else 0,
            "in_flight": atomic_load_i64(&self.slot.in_flight),
            "failures_total": atomic_load_i64(&self.slot.failures_total),
            "last_failure_ms_ago": now_ms - last_failure if last_failure else None,
            "changed_ms_ago": now_ms - changed if changed else None,
            "shared": self.shared,
        }


cdef TargetState _state_at(TargetSlot* slot, object owner, bint shared):
    cdef TargetState state = TargetState.__new__(TargetState)
    state.slot = slot
    state.owner = owner
    state.shared = shared
    return state


cdef class TargetTable:
    """``capacity`` slots in one anonymous shared mapping: made before ``fork``, it is the
    same memory in every worker."""

    def __cinit__(self, Py_ssize_t capacity=DEFAULT_CAPACITY):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.size = <size_t>capacity * sizeof(TargetSlot)
        cdef void* memory = mmap(NULL, self.size, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if memory == MAP_FAILED:
            self.slots = NULL
            raise MemoryError(f"cannot map {self.size} bytes of shared memory")
        self.slots = <TargetSlot*>memory  # anonymous mappings start zeroed: every slot free

    def __dealloc__(self):
        if self.slots != NULL:
            munmap(self.slots, self.size)

    cpdef TargetState state(self, bytes name):
        """The slot of target ``name``, claimed on first use by any process. When every
        slot is taken the state is the caller's own (``shared`` False): it still works,
        for this process only."""
        if name is None:  # (a typed bytes argument lets None through)
            raise TypeError("a target's name is bytes, not None")
        cdef uint64_t key = hash_key(<const unsigned char*>PyBytes_AS_STRING(name),
                                     PyBytes_GET_SIZE(name))
        if key == 0:
            key = 1  # 0 marks a free slot
        cdef Py_ssize_t start = <Py_ssize_t>(key % <uint64_t>self.capacity)
        cdef Py_ssize_t n
        cdef TargetSlot* slot
        cdef uint64_t held
        for n in range(self.capacity):
            slot = &self.slots[(start + n) % self.capacity]
            held = atomic_load(&slot.key)
            if held == 0 and atomic_cas(&slot.key, 0, key):
                return _state_at(slot, self, True)
            if atomic_load(&slot.key) == key:
                return _state_at(slot, self, True)
        cdef TargetSlot* own = <TargetSlot*>calloc(1, sizeof(TargetSlot))
        if own == NULL:
            raise MemoryError()
        state = _state_at(own, None, False)
        state.private = own
        return state

    @property
    def used(self):
        """Slots claimed so far."""
        cdef Py_ssize_t i, n = 0
        for i in range(self.capacity):
            if atomic_load(&self.slots[i].key) != 0:
                n += 1
        return n


cdef TargetTable _shared = None


def shared_table():
    """The process's table, mapped on first use: the supervisor's first config load maps
    it, before any fork, so the workers inherit the one mapping."""
    global _shared
    if _shared is None:
        _shared = TargetTable(DEFAULT_CAPACITY)
    return _shared
