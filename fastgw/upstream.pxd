# C-level declarations of fastgw/upstream.pyx, cimported by the proxy.

from fastgw._core.metrics cimport UpstreamCounters
from fastgw._core.targets cimport TargetState
from fastgw.exchange cimport Exchange, UpstreamSide


cdef class ResponseListener:
    cpdef upstream_done(self, Exchange ex, UpstreamConnection conn, error)
    cpdef bint retry_status(self, Exchange ex, int status)


cdef class UpstreamConnection(UpstreamSide):
    cdef public Pool pool
    cdef object transport, parser, drop_names
    cdef ResponseListener on_done
    cdef public Exchange ex
    cdef public bytes head
    cdef list headers
    cdef Py_ssize_t length
    # the response-head shortcut: llhttp was fed this response (so it reads on), the
    # body bytes still to relay (-1: none, or llhttp's), the upstream keeps the connection
    cdef bint parser_fed, keep_alive
    cdef Py_ssize_t relay_left
    cdef public double deadline
    # when the bytes being handled were read (monotonic)
    cdef double read_at
    cdef public bint reused, got_response_bytes, head_received, closed, body_chunked
    cdef public bint pooled  # in its pool's idle list
    cdef bint read_paused    # reading paused for a slow client (client_writable)
    # switched to a tunnel by a 101 (its Upgrade value kept to check it)
    cdef public bint tunnel
    cdef bytes upgrade_token
    # the socket's descriptor of our own for writing at once (``fastgw.socket_writes``; -1:
    # none), and whether the transport may hold bytes, written after them
    cdef int sock
    cdef bint buffered

    cpdef start(self, Exchange ex, bytes head, ResponseListener on_done)
    cpdef client_writable(self, bint writable)
    cpdef cancel(self, error)
    cdef _extend_deadline(self, Exchange ex, double now)
    cpdef fail(self, error)
    cdef _reset_response(self)
    cdef _finish(self)
    cdef bint _retrying(self, Exchange ex, int status)
    cdef _relay(self, Exchange ex, bytes data, Py_ssize_t start)
    cdef _complete(self, bint keep_alive)
    cdef _open_tunnel(self, Exchange ex)
    cdef _end_tunnel(self)
    cpdef close(self)
    cdef _write(self, bytes data)
    cdef _writelines(self, parts)


cdef class Pool:
    cdef public str host, address, upstream_name
    cdef public int port, weight, keepalive
    cdef public double connect_timeout, read_timeout
    cdef public list idle
    cdef public object loop
    cdef public bint retired
    cdef public Py_ssize_t in_flight  # requests under way on its connections
    cdef public Py_ssize_t low_water  # fewest idle since the last trim
    # health and the circuit, shared by every worker; the circuit breaker is off while
    # breaker_failures is 0, active checks while health_checked is False
    cdef public TargetState state
    cdef public int breaker_failures
    cdef public double breaker_cooldown, health_interval
    cdef public bint health_checked

    cpdef bint available(self, double now)
    cdef bint _claim(self, Exchange ex, double now)
    cpdef record(self, Exchange ex, bint ok)
    cpdef undecided(self, Exchange ex)
    cpdef double wait(self, double now)
    cpdef UpstreamConnection take_idle(self)
    cpdef release(self, UpstreamConnection conn)
    cpdef forget(self, UpstreamConnection conn)
    cpdef trim(self)


cdef class Upstream:
    cdef public str name
    cdef public list pools
    cdef public str balance
    cdef public int retries
    cdef object round_robin, least_conn, two_choices, ring
    cdef public bint watched   # some target has a circuit breaker or active checks
    cdef public object health_check
    cdef list _counts          # reused by _in_flight
    cdef int hash_kind                 # what hash_on reads (HASH_* in upstream.pyx)
    cdef bytes hash_name
    cdef public object signature
    # its connect failures, timeouts and retries (``_core.metrics``), set by the snapshot
    cdef public UpstreamCounters metrics

    cpdef Pool pick(self, Exchange ex, list tried=*)
    cdef bytes _mask(self, list tried, double now)
    cpdef int retry_after(self, double now)
    cpdef str unavailable(self, double now)
    cdef list _in_flight(self)
    cdef bint _some_target_out(self, double now)
    cdef object _hash_key(self, Exchange ex)
