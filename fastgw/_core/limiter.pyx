# cython: boundscheck=False, wraparound=False
"""Rate limits and concurrency limits that hold for the whole machine.

``Limiter``: token buckets keyed by bytes, as GCRA (the generic cell rate algorithm,
which is a token bucket stored as one number): each key keeps a theoretical arrival time
(TAT); a request at ``now`` is allowed when ``max(TAT, now) + interval - now <= burst ×
interval``, and then moves the TAT on by one ``interval`` (= 1 / rate). Continuous refill
at ``rate`` up to ``burst``, in one 64-bit word per key, so a take is one compare-and-swap
(``_core.atomic``) and a key whose TAT is in the past holds a full bucket: exactly the
state of a key never seen. ``acquire`` answers the tokens left (≥ 0), or minus the
nanoseconds until the next token.

Bounded memory: a table of ``max_keys`` slots (16 bytes each: the key's 64-bit hash and
its TAT) in groups of 8 (two cache lines); a key lives in the group its hash names. A new
key takes a free slot of its group, else evicts an idle full bucket (TAT in the past:
nothing is lost), else, when ``burst`` > 1, one within one token of full (a key seen
once: a flood of random keys is of those; with a burst of 1 such a key is an empty
bucket, and is kept), never a busier one: when the whole group is busy the new key is
refused (as nginx refuses when its zone is full), and ``full`` counts it. A flood of
random keys therefore cannot grow memory, nor reset a busy key's bucket.

``Arena``: the memory every worker shares. One anonymous ``MAP_SHARED | MAP_NORESERVE``
mapping (pages cost only once touched) made by the supervisor's first config load,
before it forks; tables are regions in it, found by name (a policy's identity: route,
rate, burst, key, size) through a directory claimed by CAS and never freed, so a reload
keeps the buckets of every policy it keeps, and a region made by any process (the
supervisor on reload, or a worker) is the same memory for all.

``ConcurrencyGuard``: requests in flight on a route, machine-wide, with each worker's
share kept beside the total, so that a worker that died with requests in flight does not
leave them counted: its successor (same worker slot) hands its share back.

Keys hash to 64 bits (FNV-1a + SplitMix64, as the balancer's ring): two keys share a
bucket only when their hashes collide, about once in 2^64 pairs.

May import: nothing of fastgw (``_core`` is a leaf); no I/O but the mapping.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap

from fastgw._core.atomic cimport atomic_add, atomic_cas, atomic_load, atomic_load_i64, atomic_store
from fastgw._core.balancer cimport hash_key

cdef extern from "sys/mman.h":
    int MAP_NORESERVE
cdef extern from "sched.h":
    int sched_yield() nogil

#: slots per group: 8 pairs of 8-byte words, two cache lines
cdef enum:
    GROUP = 8
#: the arena's size (virtual: a page costs memory once touched)
ARENA_BYTES = 256 * 1024 * 1024
#: regions the arena's directory can name
DIRECTORY_ENTRIES = 1024
#: the default size of a limiter's table (as nginx's 1m zone, about 16,000 states)
DEFAULT_MAX_KEYS = 16384
#: the longest a bucket may take to fill (burst / rate): keeps burst × interval in int64
MAX_FILL_SECONDS = 1e9

cdef size_t HEADER_BYTES = 64 + DIRECTORY_ENTRIES * 32
cdef int COUNTER_EVICTIONS = 0
cdef int COUNTER_FULL = 1

# The worker slot of this process (0 outside workers): which share a ConcurrencyGuard
# counts this process's requests in.
cdef Py_ssize_t _worker_slot = 0


def set_worker_slot(Py_ssize_t slot):
    """Called by a worker at start: its slot (0 … workers - 1)."""
    global _worker_slot
    _worker_slot = slot


cdef inline uint64_t _hash(bytes data) noexcept:
    cdef uint64_t h = hash_key(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    return h if h != 0 else 1  # 0 marks a free slot


# -- the arena ------------------------------------------------------------------------------

ctypedef struct DirectoryEntry:
    uint64_t key
    uint64_t offset
    uint64_t size
    uint64_t ready   # 0: being made, 1: ready, 2: the arena was full


cdef class Arena:
    """Named regions of one shared mapping (``shared``), or of private memory when the
    mapping could not be made."""

    def __cinit__(self, size_t size=ARENA_BYTES):
        if size < HEADER_BYTES + 4096:
            raise ValueError(f"an arena needs at least {HEADER_BYTES + 4096} bytes")
        cdef void* memory = mmap(NULL, size, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if memory == MAP_FAILED:
            raise MemoryError(f"cannot map {size} bytes of shared memory")
        self.base = <char*>memory
        self.size = size
        self.shared = True
        # the bump pointer: regions are handed out after the header
        atomic_store(<uint64_t*>self.base, HEADER_BYTES)

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)

    cdef char* region(self, bytes name, size_t size) except? NULL:
        """The region named ``name`` (zeroed when new), made by whichever process asks
        first; NULL when the arena or its directory is full."""
        if name is None:
            raise TypeError("a region's name is bytes, not None")
        cdef uint64_t key = _hash(name)
        cdef DirectoryEntry* entries = <DirectoryEntry*>(self.base + 64)
        cdef DirectoryEntry* entry
        cdef uint64_t start, spins
        cdef Py_ssize_t i
        size = (size + 63) & ~(<size_t>63)  # whole cache lines
        for i in range(DIRECTORY_ENTRIES):
            entry = &entries[(key + <uint64_t>i) % DIRECTORY_ENTRIES]
            if atomic_load(&entry.key) == 0 and atomic_cas(&entry.key, 0, key):
                while True:  # take room only when it fits: a region too big spoils none after it
                    start = atomic_load(<uint64_t*>self.base)
                    if start + size > self.size:
                        atomic_store(&entry.ready, 2)
                        return NULL
                    if atomic_cas(<uint64_t*>self.base, start, start + size):
                        break
                entry.offset = start
                entry.size = size
                atomic_store(&entry.ready, 1)
                return self.base + start
            if atomic_load(&entry.key) == key:
                spins = 0
                while atomic_load(&entry.ready) == 0:  # its maker is between two stores
                    spins += 1
                    if spins > 100000:
                        return NULL  # its maker died there: do without
                    sched_yield()
                if atomic_load(&entry.ready) != 1 or entry.size != size:
                    return NULL
                return self.base + entry.offset
        return NULL

    @property
    def used(self):
        """Bytes handed out, the header included."""
        return atomic_load(<uint64_t*>self.base)

    @property
    def regions(self):
        cdef DirectoryEntry* entries = <DirectoryEntry*>(self.base + 64)
        cdef Py_ssize_t i, n = 0
        for i in range(DIRECTORY_ENTRIES):
            if atomic_load(&entries[i].key) != 0:
                n += 1
        return n


cdef class _Private:
    """Memory of this process alone, for a table the arena could not hold."""
    cdef void* memory

    def __dealloc__(self):
        free(self.memory)


cdef char* _memory(Arena arena, bytes name, size_t size, list owner) except NULL:
    """A region of ``arena`` named ``name``, or private memory (``owner[0]`` keeps it)."""
    cdef char* found = NULL
    if arena is not None:
        found = arena.region(name, size)
    if found != NULL:
        owner.append(arena)
        return found
    cdef _Private private = _Private()
    private.memory = calloc(1, size)
    if private.memory == NULL:
        raise MemoryError()
    owner.append(private)
    return <char*>private.memory


cdef Arena _arena = None


def shared_arena():
    """The process's arena, mapped on first use: the supervisor's first config load maps
    it, before any fork, so the workers inherit the one mapping."""
    global _arena
    if _arena is None:
        _arena = Arena(ARENA_BYTES)
    return _arena


# -- token buckets ----------------------------------------------------------------------------


cdef class Limiter:
    """Token buckets: ``rate`` tokens a second, at most ``burst``, for up to about
    ``max_keys`` keys. In ``arena`` under ``name`` (shared by every process that asks for
    that name), or private when ``arena`` is None or full (``shared`` False)."""

    def __cinit__(self, double rate, burst, Py_ssize_t max_keys=DEFAULT_MAX_KEYS,
                  Arena arena=None, bytes name=b""):
        if not 1e-9 <= rate <= 1e9:
            raise ValueError(f"rate must be between 1e-9 and 1e9 a second, got {rate}")
        if type(burst) is not int or burst < 1:
            raise ValueError(f"burst must be an integer of at least 1, got {burst!r}")
        if burst / rate > MAX_FILL_SECONDS:
            raise ValueError(f"burst / rate is {burst / rate:.3g} s to fill, over {MAX_FILL_SECONDS:g} s")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.rate = rate
        self.burst = burst
        self.interval_ns = max(1, <int64_t>(1e9 / rate + 0.5))
        self.limit_ns = burst * self.interval_ns
        cdef uint64_t groups = 1
        while groups * GROUP < <uint64_t>max_keys:
            groups <<= 1
        self.group_mask = groups - 1
        owner = []
        cdef char* memory = _memory(arena, name, 64 + groups * GROUP * 16, owner)
        self.owner = owner[0]
        self.shared = isinstance(self.owner, Arena)
        self.counters = <int64_t*>memory
        self.slots = <uint64_t*>(memory + 64)

    @property
    def max_keys(self):
        return (self.group_mask + 1) * GROUP

    @property
    def interval(self):
        """Seconds between two tokens (1 / rate)."""
        return self.interval_ns / 1e9

    @property
    def evictions(self):
        return atomic_load_i64(&self.counters[COUNTER_EVICTIONS])

    @property
    def full(self):
        """Requests refused because every bucket of their group was busy."""
        return atomic_load_i64(&self.counters[COUNTER_FULL])

    cpdef int64_t acquire(self, bytes key, int64_t now_ns):
        """Take a token for ``key`` at ``now_ns`` (CLOCK_MONOTONIC nanoseconds): the
        tokens left (≥ 0) when allowed, else minus the nanoseconds until one is (≤ -1)."""
        if key is None:
            raise TypeError("a limiter key is bytes, not None")
        cdef uint64_t h = _hash(key)
        cdef uint64_t* group = self.slots + (h & self.group_mask) * GROUP * 2
        cdef Py_ssize_t i, victim = -1
        cdef uint64_t held, tat, fullest = 0
        cdef uint64_t now = <uint64_t>now_ns
        for i in range(GROUP):
            if atomic_load(&group[2 * i]) == h:
                return self._take(&group[2 * i + 1], now_ns)
        # A new key: a free slot, else the idlest bucket if it is within a token of full.
        for i in range(GROUP):
            held = atomic_load(&group[2 * i])
            if held == 0:
                if atomic_cas(&group[2 * i], 0, h):
                    return self._take(&group[2 * i + 1], now_ns)
                held = atomic_load(&group[2 * i])
                if held == h:  # another process took it for this very key
                    return self._take(&group[2 * i + 1], now_ns)
                continue
            tat = atomic_load(&group[2 * i + 1])
            if victim < 0 or tat < fullest:
                victim, fullest = i, tat
        if victim >= 0 and (fullest <= now or (self.burst > 1 and fullest <= now + <uint64_t>self.interval_ns)):
            held = atomic_load(&group[2 * victim])
            if held != h and atomic_cas(&group[2 * victim], held, h):
                # (a take of the evicted key racing this store loses at most one token)
                atomic_store(&group[2 * victim + 1], 0)
                atomic_add(&self.counters[COUNTER_EVICTIONS], 1)
            return self._take(&group[2 * victim + 1], now_ns)
        atomic_add(&self.counters[COUNTER_FULL], 1)
        return -self.interval_ns

    cdef int64_t _take(self, uint64_t* slot, int64_t now_ns) noexcept:
        cdef uint64_t tat, start, next_tat
        cdef int64_t ahead
        while True:
            tat = atomic_load(slot)
            start = tat if tat > <uint64_t>now_ns else <uint64_t>now_ns
            next_tat = start + <uint64_t>self.interval_ns
            ahead = <int64_t>(next_tat - <uint64_t>now_ns)
            if ahead > self.limit_ns:
                return -(ahead - self.limit_ns)
            if atomic_cas(slot, tat, next_tat):
                return (self.limit_ns - ahead) // self.interval_ns

    def peek(self, bytes key, int64_t now_ns):
        """The tokens ``key`` holds at ``now_ns``, taking none (for tests and the admin)."""
        if key is None:
            raise TypeError("a limiter key is bytes, not None")
        cdef uint64_t h = _hash(key)
        cdef uint64_t* group = self.slots + (h & self.group_mask) * GROUP * 2
        cdef Py_ssize_t i
        cdef int64_t ahead
        for i in range(GROUP):
            if atomic_load(&group[2 * i]) == h:
                ahead = <int64_t>atomic_load(&group[2 * i + 1]) - now_ns
                return self.burst if ahead <= 0 else max(0, (self.limit_ns - ahead) // self.interval_ns)
        return self.burst


# -- in-flight requests -----------------------------------------------------------------------


cdef class ConcurrencyGuard:
    """At most ``maximum`` requests in flight, machine-wide, counted in ``arena`` under
    ``name`` with one share per worker slot (``workers`` of them)."""

    def __cinit__(self, int64_t maximum, Py_ssize_t workers=1, Arena arena=None, bytes name=b""):
        if maximum < 1:
            raise ValueError(f"maximum must be at least 1, got {maximum}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.maximum = maximum
        self.workers = workers
        owner = []
        cdef char* memory = _memory(arena, name, 64 + 8 * <size_t>workers, owner)
        self.owner = owner[0]
        self.total = <int64_t*>memory
        self.shares = <int64_t*>(memory + 64)

    cpdef bint enter(self):
        """Count one more request in flight, or refuse it (False) at the maximum."""
        if atomic_add(self.total, 1) > self.maximum:
            atomic_add(self.total, -1)
            return False
        atomic_add(&self.shares[_worker_slot % self.workers], 1)
        return True

    cpdef void leave(self):
        atomic_add(&self.shares[_worker_slot % self.workers], -1)
        atomic_add(self.total, -1)

    def reclaim(self):
        """This process took over its worker slot: what its dead predecessor left counted
        is handed back."""
        cdef int64_t* share = &self.shares[_worker_slot % self.workers]
        cdef int64_t left = atomic_load_i64(share)
        if left:
            atomic_add(share, -left)
            atomic_add(self.total, -left)
        return left

    @property
    def in_flight(self):
        return atomic_load_i64(self.total)
