# cython: boundscheck=False, wraparound=False
"""The machine's counters, for ``fastgw.metrics`` to render: int64 words in one
anonymous ``MAP_SHARED`` mapping that the supervisor's first config load makes before it
forks (as ``_core.targets``' table), so every worker adds into the same memory, a
worker's death loses nothing it counted, and any process forked after the mapping (the
admin process) reads the machine's totals without asking the workers.

Layout (every block whole cache lines; every word an int64 changed by one atomic add,
``_core.atomic``, relaxed: counters need no ordering):

- a header line: a magic word, the cluster's Redis fallbacks, and how many routes and
  upstreams found their table full;
- ``worker_slots`` connection lines: open client connections by protocol (http1, http2,
  websocket), one line per worker slot, zeroed by the worker that takes the slot (so the
  connections of a worker that died vanish with it); the gauge is their sum;
- ``route_capacity`` route blocks of 2304 bytes: the key (the hash of the route's name),
  request and response bytes, rate-limit and concurrency refusals, the duration
  histogram (14 buckets, the last +Inf, and the sum in ns), and requests by method class
  (8) and status code (32: 26 exact codes, the five classes for the rest, "other" for
  none in 100-599). Block 0 counts requests that matched no route ("(none)"), block 1
  every route that found no free block ("(other)");
- ``upstream_capacity`` upstream lines: the key, connect failures, timeouts, retries.
  Line 0 counts the upstreams that found no free line ("(other)").

Blocks are found by the hash of the name, claimed by a CAS on the key word, never
freed: a reload keeps the counts of every route and upstream it keeps, and a name that
comes back continues where it was. A request records with ``RouteCounters.record``: a
C call on a block pointer resolved when the snapshot was compiled, and five atomic adds.

May import: nothing of fastgw (``_core`` is a leaf); no I/O but the mapping.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.stdint cimport int64_t, uint64_t
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap

from fastgw._core.atomic cimport atomic_add, atomic_cas, atomic_load, atomic_load_i64, atomic_store
from fastgw._core.balancer cimport hash_key

cdef extern from "sys/mman.h":
    int MAP_NORESERVE

#: route blocks in the table ``shared_metrics()`` maps (2304 bytes each)
DEFAULT_ROUTES = 1024
#: upstream lines (64 bytes each)
DEFAULT_UPSTREAMS = 1024
#: worker slots with a line of connection gauges (a slot past it shares slot % this)
DEFAULT_WORKER_SLOTS = 256

#: the ``method`` label of each method class
METHOD_NAMES = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
#: the ``protocol`` label of each connection gauge
PROTOCOL_NAMES = ("http1", "http2", "websocket")
#: status codes counted as themselves; any other counts as its class ("4xx")
EXACT_CODES = (101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308,
               400, 401, 403, 404, 405, 408, 409, 413, 429, 499, 500, 502, 503, 504)
#: the ``code`` label of each code index
CODE_NAMES = tuple(str(c) for c in EXACT_CODES) + ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
#: the duration histogram's upper bounds, seconds (then +Inf)
BUCKET_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: the names of the two reserved route blocks and the reserved upstream line
UNMATCHED = "(none)"
OVERFLOW = "(other)"

cdef enum:
    H_MAGIC = 0
    H_CLUSTER_FALLBACKS = 1
    H_ROUTES_FULL = 2
    H_UPSTREAMS_FULL = 3
    FIRST_NAMED_ROUTE = 2
    FIRST_NAMED_UPSTREAM = 1

cdef uint64_t MAGIC = 0x6661737467776D31  # "fastgwm1"
cdef unsigned char CODE_INDEX[600]
cdef int64_t BOUNDS_NS[13]


cdef void _init_tables():
    cdef int i, code
    for code in range(600):
        CODE_INDEX[code] = CODES - 1 if code < 100 else len(EXACT_CODES) + code // 100 - 1
    for i, code in enumerate(EXACT_CODES):
        CODE_INDEX[code] = i
    for i, bound in enumerate(BUCKET_BOUNDS):
        BOUNDS_NS[i] = <int64_t>(bound * 1e9 + 0.5)


_init_tables()
assert len(CODE_NAMES) == CODES and len(METHOD_NAMES) == METHODS and len(BUCKET_BOUNDS) + 1 == BUCKETS


def code_index(int status):
    """The code label's index for ``status`` (for tests and the renderer)."""
    return CODE_INDEX[status] if 0 <= status < 600 else CODES - 1


def bucket_index(int64_t duration_ns):
    """The histogram bucket ``duration_ns`` falls in (BUCKETS - 1: +Inf)."""
    return _bucket(duration_ns)


cdef inline int _bucket(int64_t duration_ns) noexcept:
    cdef int i
    for i in range(BUCKETS - 1):
        if duration_ns <= BOUNDS_NS[i]:
            return i
    return BUCKETS - 1


cdef int method_class(str method) noexcept:
    """The method class of a request method (M_GET … M_OTHER): a length switch, then one
    compare (the protocols hand us interned method strings, so mostly a pointer compare)."""
    if method is None:
        return M_OTHER
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(method)
    if n == 3:
        if method == "GET":
            return M_GET
        if method == "PUT":
            return M_PUT
    elif n == 4:
        if method == "POST":
            return M_POST
        if method == "HEAD":
            return M_HEAD
    elif n == 6:
        if method == "DELETE":
            return M_DELETE
    elif n == 5:
        if method == "PATCH":
            return M_PATCH
    elif n == 7:
        if method == "OPTIONS":
            return M_OPTIONS
    return M_OTHER


def method_index(str method):
    """``method_class`` for Python callers (tests)."""
    return method_class(method)


cdef class RouteCounters:
    """One route's block (made by ``MetricsTable.route``). ``record`` and ``count`` are
    safe from any number of processes at once."""

    cdef void record(self, int method, int status, int64_t duration_ns, int64_t bytes_in,
                     int64_t bytes_out) noexcept:
        """One exchange ended: its method class, status, duration and bytes."""
        cdef int64_t* base = self.base
        cdef int code = CODE_INDEX[status] if 0 <= status < 600 else CODES - 1
        if duration_ns < 0:
            duration_ns = 0
        atomic_add(&base[R_REQUESTS + method * CODES + code], 1)
        atomic_add(&base[R_BUCKETS + _bucket(duration_ns)], 1)
        atomic_add(&base[R_DURATION_SUM_NS], duration_ns)
        if bytes_in:
            atomic_add(&base[R_REQUEST_BYTES], bytes_in)
        if bytes_out:
            atomic_add(&base[R_RESPONSE_BYTES], bytes_out)

    cdef void count(self, int counter) noexcept:
        """One more of a scalar counter (R_RATE_LIMITED, R_CONCURRENCY_REFUSED)."""
        atomic_add(&self.base[counter], 1)

    def add(self, int method, int status, double duration, int64_t bytes_in=0, int64_t bytes_out=0):
        """``record`` for Python callers (tests, benchmarks): ``duration`` in seconds."""
        if not 0 <= method < METHODS:
            raise ValueError(f"method class {method} out of range")
        # (to the nearest ns: truncating would put 1,000,001 ns, 0.001000001 s as a
        # float, at 1,000,000, into the bucket below)
        self.record(method, status, <int64_t>(duration * 1e9 + 0.5), bytes_in, bytes_out)

    def rate_limited(self):
        self.count(R_RATE_LIMITED)

    def concurrency_refused(self):
        self.count(R_CONCURRENCY_REFUSED)

    def read(self):
        """Everything the block holds, as plain values: ``requests`` {(method index, code
        index): n} (non-zero only), ``buckets`` (not cumulative, +Inf last), ``sum_ns``,
        ``count``, the bytes and the refusals."""
        cdef int64_t* base = self.base
        cdef int i
        cdef int64_t n
        requests = {}
        for i in range(METHODS * CODES):
            n = atomic_load_i64(&base[R_REQUESTS + i])
            if n:
                requests[(i // CODES, i % CODES)] = n
        buckets = [atomic_load_i64(&base[R_BUCKETS + i]) for i in range(BUCKETS)]
        return {
            "requests": requests,
            "buckets": buckets,
            "count": sum(buckets),
            "sum_ns": atomic_load_i64(&base[R_DURATION_SUM_NS]),
            "request_bytes": atomic_load_i64(&base[R_REQUEST_BYTES]),
            "response_bytes": atomic_load_i64(&base[R_RESPONSE_BYTES]),
            "rate_limited": atomic_load_i64(&base[R_RATE_LIMITED]),
            "concurrency_refused": atomic_load_i64(&base[R_CONCURRENCY_REFUSED]),
        }


cdef class UpstreamCounters:
    """One upstream's line (made by ``MetricsTable.upstream``)."""

    cdef void count(self, int counter) noexcept:
        """One more U_CONNECT_FAILURES, U_TIMEOUTS or U_RETRIES."""
        atomic_add(&self.base[counter], 1)

    def connect_failed(self):
        self.count(U_CONNECT_FAILURES)

    def timed_out(self):
        self.count(U_TIMEOUTS)

    def retried(self):
        self.count(U_RETRIES)

    def read(self):
        return {
            "connect_failures": atomic_load_i64(&self.base[U_CONNECT_FAILURES]),
            "timeouts": atomic_load_i64(&self.base[U_TIMEOUTS]),
            "retries": atomic_load_i64(&self.base[U_RETRIES]),
        }


cdef inline uint64_t _key(bytes name) noexcept:
    cdef uint64_t h = hash_key(<const unsigned char*>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
    return h if h != 0 else 1  # 0 marks a free block


cdef Py_ssize_t _claim(MetricsTable table, bint route, uint64_t key, Py_ssize_t first,
                       Py_ssize_t capacity) noexcept:
    """The index of the block keyed ``key`` among ``first`` … ``capacity`` - 1 (route
    blocks, or upstream lines), claimed by CAS when new; -1 when every one is taken."""
    cdef Py_ssize_t span = capacity - first, n, i
    cdef uint64_t* word
    if span <= 0:
        return -1
    cdef Py_ssize_t start = <Py_ssize_t>(key % <uint64_t>span)
    for n in range(span):
        i = first + (start + n) % span
        word = <uint64_t*>(table._route_block(i) if route else table._upstream_block(i))
        if atomic_load(word) == 0 and atomic_cas(word, 0, key):
            return i
        if atomic_load(word) == key:
            return i
    return -1


cdef class MetricsTable:
    """The counters of one machine, in one anonymous shared mapping: made before ``fork``,
    it is the same memory in every worker."""

    def __cinit__(self, Py_ssize_t routes=DEFAULT_ROUTES, Py_ssize_t upstreams=DEFAULT_UPSTREAMS,
                  Py_ssize_t worker_slots=DEFAULT_WORKER_SLOTS):
        if routes < FIRST_NAMED_ROUTE or upstreams < FIRST_NAMED_UPSTREAM or worker_slots < 1:
            raise ValueError("a metrics table needs at least 2 route blocks, 1 upstream line "
                             "and 1 worker slot")
        self.route_capacity = routes
        self.upstream_capacity = upstreams
        self.worker_slots = worker_slots
        self.size = 64 + 64 * <size_t>worker_slots + 8 * ROUTE_WORDS * <size_t>routes \
            + 8 * UPSTREAM_WORDS * <size_t>upstreams
        cdef void* memory = mmap(NULL, self.size, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if memory == MAP_FAILED:
            self.memory = NULL
            raise MemoryError(f"cannot map {self.size} bytes of shared memory")
        self.memory = <char*>memory  # anonymous mappings start zeroed: every block free
        atomic_store(<uint64_t*>self.memory, MAGIC)

    def __dealloc__(self):
        if self.memory != NULL:
            munmap(self.memory, self.size)

    cdef int64_t* _header(self) noexcept:
        return <int64_t*>self.memory

    cdef int64_t* _connections(self, Py_ssize_t slot) noexcept:
        return <int64_t*>(self.memory + 64 + 64 * (slot % self.worker_slots))

    cdef int64_t* _route_block(self, Py_ssize_t i) noexcept:
        return <int64_t*>(self.memory + 64 + 64 * self.worker_slots) + ROUTE_WORDS * i

    cdef int64_t* _upstream_block(self, Py_ssize_t i) noexcept:
        return <int64_t*>(self.memory + 64 + 64 * self.worker_slots) + ROUTE_WORDS * self.route_capacity \
            + UPSTREAM_WORDS * i

    cpdef RouteCounters route(self, bytes name):
        """The block of route ``name``, claimed on first use by any process; the shared
        "(other)" block (``named`` False) when every block is taken."""
        if name is None:
            raise TypeError("a route's name is bytes, not None")
        cdef Py_ssize_t i = _claim(self, True, _key(name), FIRST_NAMED_ROUTE, self.route_capacity)
        if i < 0:
            atomic_add(&self._header()[H_ROUTES_FULL], 1)
            return self._route_at(1, False)
        return self._route_at(i, True)

    def unmatched(self):
        """The "(none)" block: requests that matched no route."""
        return self._route_at(0, False)

    def overflow(self):
        """The "(other)" block: routes that found the table full."""
        return self._route_at(1, False)

    cdef RouteCounters _route_at(self, Py_ssize_t i, bint named):
        cdef RouteCounters counters = RouteCounters.__new__(RouteCounters)
        counters.owner = self
        counters.named = named
        counters.base = self._route_block(i)
        return counters

    cpdef UpstreamCounters upstream(self, bytes name):
        """The line of upstream ``name``; the shared "(other)" line (``named`` False)
        when every line is taken."""
        if name is None:
            raise TypeError("an upstream's name is bytes, not None")
        cdef Py_ssize_t i = _claim(self, False, _key(name), FIRST_NAMED_UPSTREAM,
                                   self.upstream_capacity)
        if i < 0:
            atomic_add(&self._header()[H_UPSTREAMS_FULL], 1)
            return self._upstream_at(0, False)
        return self._upstream_at(i, True)

    def upstream_overflow(self):
        """The "(other)" line: upstreams that found the table full."""
        return self._upstream_at(0, False)

    cdef UpstreamCounters _upstream_at(self, Py_ssize_t i, bint named):
        cdef UpstreamCounters counters = UpstreamCounters.__new__(UpstreamCounters)
        counters.owner = self
        counters.named = named
        counters.base = self._upstream_block(i)
        return counters

    # -- connections, by worker slot ------------------------------------------------------

    def take_worker_slot(self, Py_ssize_t slot):
        """This process serves worker slot ``slot`` from now on: its connection gauges
        start from zero (a predecessor that died there took its connections with it), and
        ``connection_opened`` / ``connection_closed`` count in them."""
        global _own_row
        if slot < 0:
            raise ValueError(f"a worker slot is at least 0, got {slot}")
        cdef int64_t* row = self._connections(slot)
        cdef int p
        for p in range(PROTOCOLS):
            atomic_store(<uint64_t*>&row[p], 0)
        _own_row = row

    def add_connection(self, Py_ssize_t slot, int protocol, int64_t delta):
        """Change slot ``slot``'s gauge of ``protocol`` (for tests)."""
        if not 0 <= protocol < PROTOCOLS:
            raise ValueError(f"protocol {protocol} out of range")
        atomic_add(&self._connections(slot)[protocol], delta)

    def connections(self, slot=None):
        """Open client connections by protocol, summed over the worker slots (or worker
        slot ``slot``'s own)."""
        cdef int p
        totals = [0] * PROTOCOLS
        for slot in (range(self.worker_slots) if slot is None else (slot,)):
            for p in range(PROTOCOLS):
                totals[p] += atomic_load_i64(&self._connections(slot)[p])
        return tuple(totals)

    # -- the machine's counters -----------------------------------------------------------

    def cluster_fallback(self):
        atomic_add(&self._header()[H_CLUSTER_FALLBACKS], 1)

    @property
    def cluster_fallbacks(self):
        return atomic_load_i64(&self._header()[H_CLUSTER_FALLBACKS])

    @property
    def routes_full(self):
        """Times a route found every block taken (and counted in "(other)")."""
        return atomic_load_i64(&self._header()[H_ROUTES_FULL])

    @property
    def upstreams_full(self):
        return atomic_load_i64(&self._header()[H_UPSTREAMS_FULL])

    @property
    def routes_used(self):
        """Named route blocks claimed so far."""
        cdef Py_ssize_t i, n = 0
        for i in range(FIRST_NAMED_ROUTE, self.route_capacity):
            if atomic_load(<uint64_t*>self._route_block(i)) != 0:
                n += 1
        return n


cdef MetricsTable _shared = None
cdef RouteCounters _unmatched = None
# this process's worker slot's connection gauges (NULL outside a worker: not counted)
cdef int64_t* _own_row = NULL


def shared_metrics():
    """The process's table, mapped on first use: the supervisor's first config load maps
    it, before any fork, so the workers (and the admin process) inherit the one mapping."""
    global _shared
    if _shared is None:
        _shared = MetricsTable(DEFAULT_ROUTES, DEFAULT_UPSTREAMS, DEFAULT_WORKER_SLOTS)
    return _shared


cdef RouteCounters unmatched():
    """The shared table's "(none)" block (requests that matched no route)."""
    global _unmatched
    if _unmatched is None:
        _unmatched = shared_metrics().unmatched()
    return _unmatched


cdef void connection_opened(int protocol) noexcept:
    if _own_row != NULL:
        atomic_add(&_own_row[protocol], 1)


cdef void connection_closed(int protocol) noexcept:
    if _own_row != NULL:
        atomic_add(&_own_row[protocol], -1)


def set_worker_slot(Py_ssize_t slot):
    """Called by a worker at start: its connection gauges are slot ``slot``'s, from zero."""
    shared_metrics().take_worker_slot(slot)


def opened(int protocol):
    """``connection_opened`` for Python callers (tests)."""
    connection_opened(protocol)


def closed(int protocol):
    connection_closed(protocol)
