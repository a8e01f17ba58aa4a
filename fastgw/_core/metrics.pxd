# fastgw._core.metrics: C-level declarations, for ``cimport`` by the request path.
#
# What lives here: the machine's counters (requests, durations, bytes, refusals by route;
# connect failures, timeouts, retries by upstream; open connections by protocol and worker
# slot; Redis fallbacks), int64 words in one anonymous shared mapping made before the
# workers fork, each changed by one atomic add. Python callers read metrics.pyi.
# May cimport: Cython's own libc/posix declarations, _core.atomic, _core.balancer's hash.

from libc.stdint cimport int64_t

cpdef enum:
    # method classes (the ``method`` label)
    M_GET = 0
    M_HEAD = 1
    M_POST = 2
    M_PUT = 3
    M_DELETE = 4
    M_PATCH = 5
    M_OPTIONS = 6
    M_OTHER = 7
    METHODS = 8
    # open client connections (the ``protocol`` label)
    P_HTTP1 = 0
    P_HTTP2 = 1
    P_WEBSOCKET = 2
    PROTOCOLS = 3
    # a route block's scalar counters (int64 offsets)
    R_KEY = 0
    R_REQUEST_BYTES = 1
    R_RESPONSE_BYTES = 2
    R_RATE_LIMITED = 3
    R_CONCURRENCY_REFUSED = 4
    R_DURATION_SUM_NS = 5
    R_BUCKETS = 8          # BUCKETS counts, the last one +Inf (not cumulative)
    BUCKETS = 14
    R_REQUESTS = 24        # METHODS x CODES counts
    CODES = 32
    ROUTE_WORDS = 288      # 24 + 8 * 32 = 280, padded to whole cache lines (2304 bytes)
    # an upstream block's counters
    U_KEY = 0
    U_CONNECT_FAILURES = 1
    U_TIMEOUTS = 2
    U_RETRIES = 3
    UPSTREAM_WORDS = 8     # one cache line


cdef class RouteCounters:
    cdef int64_t* base
    cdef object owner             # keeps the memory mapped (the table)
    cdef readonly bint named      # its own slot (False: the table was full, "(other)")

    cdef void record(self, int method, int status, int64_t duration_ns, int64_t bytes_in,
                     int64_t bytes_out) noexcept
    cdef void count(self, int counter) noexcept


cdef class UpstreamCounters:
    cdef int64_t* base
    cdef object owner
    cdef readonly bint named

    cdef void count(self, int counter) noexcept


cdef class MetricsTable:
    cdef char* memory
    cdef size_t size
    cdef readonly Py_ssize_t route_capacity, upstream_capacity, worker_slots

    cdef int64_t* _header(self) noexcept
    cdef int64_t* _connections(self, Py_ssize_t slot) noexcept
    cdef int64_t* _route_block(self, Py_ssize_t i) noexcept
    cdef int64_t* _upstream_block(self, Py_ssize_t i) noexcept
    cpdef RouteCounters route(self, bytes name)
    cpdef UpstreamCounters upstream(self, bytes name)
    cdef RouteCounters _route_at(self, Py_ssize_t i, bint named)
    cdef UpstreamCounters _upstream_at(self, Py_ssize_t i, bint named)


cdef int method_class(str method) noexcept
cdef RouteCounters unmatched()
cdef void connection_opened(int protocol) noexcept
cdef void connection_closed(int protocol) noexcept
