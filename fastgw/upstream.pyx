# cython: boundscheck=True, wraparound=True
# (Python semantics for indexing: this module is the request path, not the numeric core.)
"""The upstream side: an HTTP/1.1 client protocol, a keep-alive pool per target, and an
``Upstream`` (a named group of targets) that picks one per request.

``UpstreamConnection`` is an ``asyncio.Protocol`` driving ``httptools.HttpResponseParser``:
it writes the request head the proxy built, streams the request body out of the
``Exchange``, and relays the response straight to the exchange's ``Downstream`` as it
arrives (status and headers once, then each body chunk), with backpressure both ways.
It never holds a whole body. It reports the end through a callback: the response is complete,
or it failed with an ``UpstreamError`` / ``UpstreamTimeout`` that the proxy maps to a status.

Timeouts are not timers per request: each busy connection and each connect under way
carries a ``deadline``, and the worker's sweeper calls ``sweep`` a few times a second (as
nginx keeps an ordered set of timers rather than one per read). The same sweep closes the
idle connections a pool holds beyond its ``keepalive`` once they stay unused (``trim``).

Tunnels (WebSocket, ``websocket = "proxy"``): a request the proxy made a tunnel
(``BODY_TUNNEL``) goes with its Upgrade; a 101 naming the same protocol switches the
connection (``_open_tunnel``): the 101 goes to the client, then bytes flow both ways
unchanged (the client's through the exchange's body sink, the upstream's through
``send_body``) until either side closes, or none moved for ``read_timeout``. Any other
answer is relayed as usual, and a 101 nobody asked for is an error. The connection is
never pooled again.

The plainest responses are read by ``_core.wire.scan_response_head`` and relayed without a
parser callback per field (``_relay``); llhttp (httptools) reads every other response.

The pick step is ``Upstream.pick(ex)``: a ``_core.balancer`` pick over the targets that
may take traffic, which ``_core.targets`` decides from state every worker shares (active
health, the circuit breaker). The active checks themselves run in ``fastgw.health``.

Compiled (Cython, declared in ``upstream.pxd``): the relay runs once per request and
per response chunk, so its state is typed and its calls into the exchange and the
client's protocol are C calls.

May import: the standard library, httptools, fastgw.errors, fastgw.exchange,
fastgw.socket_writes.
"""

import asyncio
import logging
import os
import socket

import httptools

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t

from fastgw._core.balancer cimport HashRing, LeastConnections, SmoothWeighted, TwoChoices
from fastgw._core.targets cimport (
    CIRCUIT_CLOSED, CIRCUIT_REOPENED, NO_CHANGE, REFUSED, TRIAL_BEGAN, TargetState, TargetTable)
from fastgw._core.wire cimport (
    H_CONNECTION, H_CONTENT_LENGTH, H_KEEP_ALIVE, H_PROXY_AUTHENTICATE, H_PROXY_AUTHORIZATION,
    H_PROXY_CONNECTION, H_TE, H_TRAILER, H_TRANSFER_ENCODING, H_UPGRADE, H_X_REQUEST_ID,
    HeadWriter, ResponseHead, header_id, named_in, scan_response_head)
from fastgw.errors import FastGWError, UpstreamError, UpstreamRetryable, UpstreamTimeout
from fastgw.socket_writes cimport dup_socket, release_socket, send_bytes
from fastgw.exchange cimport (
    BODY_CHUNKED, BODY_NONE, BODY_TUNNEL, Downstream, Exchange, FieldView, UpstreamSide, add_head_lines,
    head_fields, monotonic)


cdef enum:
    # what ``hash_on`` reads of a request (``Upstream.hash_kind``)
    HASH_NONE, HASH_IP, HASH_PATH, HASH_QUERY, HASH_HEADER, HASH_COOKIE

cdef dict _HASH_KINDS = {"ip": HASH_IP, "path": HASH_PATH, "query": HASH_QUERY, "header": HASH_HEADER,
                         "cookie": HASH_COOKIE}
cdef tuple _COOKIE = (b"cookie",)

# Response headers never relayed to the client: hop-by-hop ones (RFC 9110 §7.6.1), the
# framing the downstream protocol writes itself, and the request id we set ourselves.
cdef unsigned int RESPONSE_DROP_MASK = (
    1 << H_CONNECTION | 1 << H_KEEP_ALIVE | 1 << H_TE | 1 << H_TRAILER
    | 1 << H_TRANSFER_ENCODING | 1 << H_UPGRADE | 1 << H_PROXY_CONNECTION
    | 1 << H_PROXY_AUTHENTICATE | 1 << H_PROXY_AUTHORIZATION | 1 << H_CONTENT_LENGTH
    | 1 << H_X_REQUEST_ID)

# The response fields the shortcut relays, for every connection of this process (a
# head is read and handed on without yielding).
cdef HeadWriter _fields = HeadWriter()
cdef enum:
    # the largest body sent in one piece with its head (``send_response``): a larger one
    # is not worth a copy to save a send()
    WHOLE_RESPONSE_MAX = 65536

log = logging.getLogger("fastgw")

#: every open upstream connection, for the deadline sweeper (which looks at those with a
#: request in flight): kept per connection, not per request (PERF)
cdef set open_connections = set()
#: every connect under way, for the deadline sweeper
cdef set connecting = set()
#: every pool holding more idle connections than its keepalive, for the sweeper
cdef set over_cap = set()


cdef inline int64_t _ms(double seconds) noexcept:
    """Seconds (the deadlines' clock) to the milliseconds of ``_core.targets``."""
    return <int64_t>(seconds * 1000.0)


cdef class Connecting:
    """A connect under way: the task awaiting it and when it must give up."""
    cdef object task
    cdef double deadline
    cdef bint expired

    def __init__(self, task, double deadline):
        self.task = task
        self.deadline = deadline
        self.expired = False


def sweep(double now):
    """Called by the worker's sweeper a few times a second: fail every in-flight upstream
    request whose read deadline or route deadline passed, cancel every connect past its
    connect_timeout, and trim the pools over their keepalive."""
    cdef UpstreamConnection conn
    cdef Connecting pending
    cdef Pool pool
    for pool in list(over_cap):
        pool.trim()
    expired = [conn for conn in open_connections if conn.ex is not None and conn.deadline < now]
    for conn in expired:
        conn.fail(UpstreamTimeout(f"tunnel idle for {conn.pool.read_timeout:g}s (read_timeout)" if conn.tunnel
                                  else "upstream did not answer in time"))
    late = [pending for pending in connecting if pending.deadline < now and not pending.expired]
    for pending in late:
        pending.expired = True
        pending.task.cancel()


cdef class ResponseListener:
    """Who is told when an upstream request ends (the proxy)."""

    cpdef upstream_done(self, Exchange ex, UpstreamConnection conn, error):
        """The response went whole to the client (``error`` None), or it failed."""
        raise NotImplementedError

    cpdef bint retry_status(self, Exchange ex, int status):
        """Whether a response with ``status`` is dropped for a try on another target."""
        return False


cdef class UpstreamConnection(UpstreamSide):
    """One pooled HTTP/1.1 connection to a target (an asyncio protocol); one request at
    a time."""

    def __cinit__(self):
        self.sock = -1  # (before __init__: __dealloc__ closes what is not -1)

    def __dealloc__(self):
        release_socket(self.sock)  # (dropped without connection_lost: the loop closed)

    def __init__(self, Pool pool):
        self.pool = pool
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex = None
        self.on_done = None
        #: the request head last sent (kept for the one retry of a stale connection)
        self.head = b""
        self.deadline = 0.0
        self.reused = False
        self.closed = False
        self.pooled = False
        self.keep_alive = False
        self.tunnel = False
        self._reset_response()

    cdef _reset_response(self):
        """Nothing of a response read yet."""
        self.headers = None  # (a list once llhttp reads the head: most take the shortcut)
        self.length = -1
        self.head_received = False
        self.got_response_bytes = False
        self.body_chunked = False
        self.drop_names = None
        self.parser_fed = False
        self.relay_left = -1
        self.upgrade_token = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        open_connections.add(self)
        self.sock = dup_socket(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not TCP
                pass

    def data_received(self, bytes data):
        cdef Exchange ex = self.ex
        if ex is None:
            # An idle pooled connection must not speak: whatever it says, it is not ours.
            self.close()
            return
        self.got_response_bytes = True
        # PERF: one clock read per read, for its deadline and, when it carries the
        # response head, the access log's upstream time (``read_at``, also for llhttp's
        # callbacks below)
        cdef double now = monotonic()
        self.read_at = now
        if self.tunnel:
            self.deadline = now + self.pool.read_timeout
            ex.downstream.send_body(ex, data)
            return
        self._extend_deadline(ex, now)
        cdef ResponseHead head
        if self.relay_left >= 0:
            self._relay(ex, data, 0)
        elif (not self.parser_fed and not ex.is_head and (ex.chain is None or not ex.chain.dynamic)
              and scan_response_head(data, RESPONSE_DROP_MASK,
                                     None if ex.chain is None else ex.chain.drop_names, _fields, &head)):
            # PERF: the plainest responses (one Content-Length, nothing unusual) are read
            # by a C shortcut that llhttp agrees with, and their fields relayed as lines:
            # no callback per field. Anything else is llhttp's, below.
            if self._retrying(ex, head.status):
                return
            self.head_received = True
            ex.upstream_answered = now
            self.length = head.content_length
            self.keep_alive = head.keep_alive
            self.relay_left = head.content_length
            add_head_lines(ex, _fields)
            if head.content_length <= len(data) - head.head_end and head.content_length <= WHOLE_RESPONSE_MAX:
                # PERF: the whole response is in this read: it goes out in one piece
                if head.content_length < len(data) - head.head_end:
                    self.keep_alive = False  # more than announced (as in _relay)
                self.relay_left = -1
                ex.downstream.send_response(ex, head.status, _fields, data, head.head_end, head.content_length)
                if self.ex is ex:
                    self._complete(self.keep_alive)
                return
            ex.downstream.send_head_lines(ex, head.status, _fields.finish(), head.content_length)
            self._relay(ex, data, head.head_end)
        else:
            if not self.parser_fed:
                self.parser_fed = True
                self.headers = []
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as switched:
                # (llhttp stops after a 101: what follows it is the tunnel's first bytes)
                rest = data[switched.args[0]:]
                if self.tunnel and rest:
                    ex.downstream.send_body(ex, rest)
            except httptools.HttpParserError as exc:
                self.fail(UpstreamError(f"upstream answered garbage ({exc.__class__.__name__})"))
                return
        if self.ex is not None and self.head_received:
            ex.downstream.flush()

    cdef bint _retrying(self, Exchange ex, int status):
        """A 502 or 503 the proxy would rather try elsewhere: dropped unread, with the
        connection (its body is not read), and reported as ``UpstreamRetryable``."""
        if (status == 502 or status == 503) and self.on_done is not None \
                and self.on_done.retry_status(ex, status):
            self.fail(UpstreamRetryable(status))
            return True
        return False

    cdef _relay(self, Exchange ex, bytes data, Py_ssize_t start):
        """Relay the body bytes of ``data`` from ``start``, of a response whose head the
        shortcut read; the response ends when Content-Length bytes went through."""
        cdef Py_ssize_t available = len(data) - start, take = available
        if take > self.relay_left:
            # More than announced: not this response's, and the connection is not fit
            # to be reused.
            take = self.relay_left
            self.keep_alive = False
        if take > 0:
            ex.downstream.send_body(ex, data if take == len(data) else data[start:start + take])
            self.relay_left -= take
        if self.relay_left == 0 and self.ex is ex:
            self.relay_left = -1
            self._complete(self.keep_alive)

    def eof_received(self):
        self.sock = release_socket(self.sock)  # the transport closes now
        return None

    def connection_lost(self, exc):
        self.closed = True
        self.sock = release_socket(self.sock)
        open_connections.discard(self)
        self.pool.forget(self)
        if self.ex is None:
            return
        if self.tunnel:
            self._end_tunnel()
        elif self.head_received and self.length < 0 and not self.body_chunked:
            # A response without Content-Length or chunking ends when the upstream closes.
            self.on_message_complete()
        elif self.head_received:
            self.fail(UpstreamError("upstream closed the connection mid-response"))
        else:
            self.fail(UpstreamError("upstream closed the connection before answering"))

    def pause_writing(self):
        cdef Exchange ex = self.ex
        if ex is not None:
            ex.downstream.pause_reading(ex)

    def resume_writing(self):
        cdef Exchange ex = self.ex
        if ex is not None:
            ex.downstream.resume_reading(ex)

    # -- the request ------------------------------------------------------------------------

    cpdef start(self, Exchange ex, bytes head, ResponseListener on_done):
        """Send the request head and stream the body; ``on_done.upstream_done(ex, conn,
        error)`` is called once, when the whole response went to the client (error None)
        or failed.

        A callback rather than a future: the common request finishes with no task, no
        future and no await (PERF)."""
        self.ex = ex
        self.on_done = on_done
        self.head = head
        self.pool.in_flight += 1
        self.pool.state.enter()
        self._reset_response()
        cdef double now = monotonic()
        self._extend_deadline(ex, now)
        ex.upstream_sent = now
        ex.upstream_answered = 0.0
        ex.upstream_side = self
        if ex.body_kind == BODY_NONE or ex.body_kind == BODY_TUNNEL:
            # (a tunnel's bytes flow only after the upstream's 101: ``_open_tunnel``)
            self._write(head)
            return
        # PERF: the body that came with the head (all of a small one) goes with it, in
        # one write; the rest streams as it comes.
        cdef list parts = [head]
        cdef bytes chunk
        for chunk in ex.take_held_body():
            if ex.body_kind == BODY_CHUNKED:
                if chunk:
                    parts += _framed_chunk(chunk)
            else:
                parts.append(chunk)
        if ex.body_done:  # all of it came with the head: nothing to stream
            if ex.body_kind == BODY_CHUNKED:
                parts.append(LAST_CHUNK)
            self._writelines(parts)
            return
        self._writelines(parts)
        if ex.body_kind == BODY_CHUNKED:
            ex.attach_body(self._write_chunk, self._write_last_chunk)
        else:
            ex.attach_body(self._write_body, _nothing)

    cdef _write(self, bytes data):
        """Every write to the upstream, in order (``fastgw.socket_writes``)."""
        self.buffered = send_bytes(self.sock, self.transport, self.buffered, data)

    cdef _writelines(self, parts):
        # (a head with body parts: the transport writes them in one call, no join of ours;
        # after it, writes wait behind what it holds)
        if len(parts) == 1:
            self._write(parts[0])
            return
        self.transport.writelines(parts)
        self.buffered = self.sock >= 0

    def _write_body(self, bytes data):
        self._write(data)

    def _write_chunk(self, bytes data):
        if data:
            self._writelines(_framed_chunk(data))

    def _write_last_chunk(self):
        self._write(LAST_CHUNK)

    cpdef client_writable(self, bint writable):
        if self.transport is not None and not self.closed and writable == self.read_paused:
            self.read_paused = not writable
            if writable:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    cpdef cancel(self, error):
        self.fail(error)

    cdef _extend_deadline(self, Exchange ex, double now):
        cdef double deadline = now + self.pool.read_timeout
        if ex.deadline and ex.deadline < deadline:
            deadline = ex.deadline
        self.deadline = deadline

    cpdef fail(self, error):
        """End the request in flight with ``error`` and close the connection."""
        cdef Exchange ex = self.ex
        cdef ResponseListener on_done = self.on_done
        self._finish()
        self.close()
        if ex is not None and on_done is not None:
            on_done.upstream_done(ex, self, error)

    cdef _finish(self):
        cdef Exchange ex = self.ex
        if self.read_paused:
            # Paused for a slow client by the read that also completed the response: the
            # connection goes back to its pool reading, or the next request on it hangs.
            self.client_writable(True)
        if ex is not None:
            ex.detach_body()
            ex.upstream_side = None
            self.pool.in_flight -= 1
            self.pool.state.leave()
        self.ex = None
        self.on_done = None
        self.relay_left = -1

    cpdef close(self):
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            self.sock = release_socket(self.sock)
            if self.transport is not None:
                self.transport.close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, bytes name, bytes value):
        cdef int ident = header_id(name)
        if not RESPONSE_DROP_MASK & (1 << ident):
            self.headers.append((name, value))
        elif ident == H_CONTENT_LENGTH:
            self.length = int(value)
        elif ident == H_TRANSFER_ENCODING:
            self.body_chunked = True
        elif ident == H_CONNECTION:
            self.drop_names = [t.strip().lower() for t in value.split(b",")]
        elif ident == H_UPGRADE:
            self.upgrade_token = value

    def on_headers_complete(self):
        cdef Exchange ex = self.ex
        if ex is None:
            return
        cdef int status = self.parser.get_status_code()
        if status < 200:
            # Interim answers (100 Continue, 103 Early Hints) are not relayed: we strip
            # Expect and answer 100 to the client ourselves. 101 comes only to a tunnel's
            # request, naming the protocol it asked for; any other is an upstream that
            # does not speak HTTP to us any more.
            if status == 101:
                if ex.body_kind != BODY_TUNNEL:
                    self.fail(UpstreamError("upstream switched protocols unasked"))
                elif (not self.parser.should_upgrade() or self.upgrade_token is None
                      or self.upgrade_token.strip().lower() != ex.upgrade):
                    self.fail(UpstreamError(f"upstream switched to {self.upgrade_token!r}, not {ex.upgrade!r}"))
                else:
                    self._open_tunnel(ex)
                return
            self.headers = []
            self.length = -1
            self.body_chunked = False
            return
        if self._retrying(ex, status):
            return
        self.head_received = True
        ex.upstream_answered = self.read_at
        headers = self.headers
        if self.drop_names:
            drop = self.drop_names
            headers = [(n, v) for n, v in headers if n.lower() not in drop]
        if self.body_chunked:
            self.length = -1
        ex.downstream.send_head(ex, status, head_fields(ex, status, headers), self.length)
        if ex.is_head:
            # The parser cannot be told this response has no body; finish it here and
            # give the next request on this connection a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            self.on_message_complete()

    def on_body(self, bytes body):
        cdef Exchange ex = self.ex
        if ex is not None:
            ex.downstream.send_body(ex, body)

    def on_message_complete(self):
        if self.ex is None or not self.head_received or self.tunnel:
            return
        self._complete(self.parser.should_keep_alive())

    cdef _complete(self, bint keep_alive):
        """The whole response went to the client: pool the connection or close it."""
        cdef Exchange ex = self.ex
        cdef ResponseListener on_done = self.on_done
        # Reusable only when both sides finished cleanly: an upstream that answered before
        # reading our whole body may still be reading it.
        cdef bint reusable = ex.body_done and keep_alive and not self.closed
        self._finish()
        ex.downstream.send_end(ex)
        if reusable:
            self.pool.release(self)
        else:
            self.close()
        if on_done is not None:
            on_done.upstream_done(ex, self, None)


    cdef _open_tunnel(self, Exchange ex):
        """The upstream answered 101: the client gets it, and from now on this
        connection is the tunnel's other end."""
        self.tunnel = True
        self.head_received = True
        ex.upstream_answered = self.read_at
        self.deadline = self.read_at + self.pool.read_timeout  # the route's timeout was the handshake's
        self.pool.record(ex, True)  # the target answered: a trial it was is decided
        headers = self.headers
        if self.drop_names:
            drop = self.drop_names
            headers = [(n, v) for n, v in headers if n.lower() not in drop]
        ex.attach_body(self._tunnel_write, self._tunnel_eof)
        ex.downstream.send_head(ex, 101, head_fields(ex, 101, headers), -1)

    def _tunnel_write(self, bytes data):
        if not self.closed:
            self.deadline = monotonic() + self.pool.read_timeout
            self._write(data)

    def _tunnel_eof(self):
        # The client half-closed: so does the upstream side (its answer may still come).
        if not self.closed and self.transport.can_write_eof():
            self.sock = release_socket(self.sock)  # (nothing more is written)
            self.transport.write_eof()

    cdef _end_tunnel(self):
        """The upstream closed the tunnel: what it sent went to the client; now the end."""
        cdef Exchange ex = self.ex
        cdef ResponseListener on_done = self.on_done
        self._finish()
        ex.downstream.send_end(ex)
        if on_done is not None:
            on_done.upstream_done(ex, self, None)


LAST_CHUNK = b"0\r\n\r\n"


cdef inline tuple _framed_chunk(bytes data):
    """A request body chunk in HTTP/1.1 chunked framing, as parts to write."""
    return (b"%x\r\n" % len(data), data, b"\r\n")


def _nothing():
    pass


cdef class Pool:
    """Keep-alive connections to one target (``host:port``): at most ``keepalive`` idle."""

    def __init__(self, str host, int port, int weight, int keepalive,
                 double connect_timeout, double read_timeout, TargetState state=None):
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.weight = weight
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle = []
        self.loop = None
        self.retired = False
        self.in_flight = 0
        self.low_water = 0
        self.upstream_name = ""  # for the log
        #: health and circuit, shared by every worker (``_core.targets``); a table of
        #: its own when none is given (a pool made outside a snapshot, in tests)
        self.state = state if state is not None else TargetTable(1).state(b"")
        self.breaker_failures = 0
        self.breaker_cooldown = 0.0
        self.health_checked = False
        self.health_interval = 0.0

    # -- health and the circuit breaker (the state is shared: see _core.targets) --------

    cpdef bint available(self, double now):
        """Whether the target may take a request now: not found unhealthy by active
        checks, and its circuit closed or open with its cooldown over (the request that
        then takes it is the trial)."""
        if self.health_checked and not self.state.healthy():
            return False
        return self.breaker_failures == 0 or self.state.may_admit(_ms(now))

    cdef bint _claim(self, Exchange ex, double now):
        """Admit ``ex``: False when another worker took the trial first."""
        if self.breaker_failures == 0:
            return True
        cdef int verdict = self.state.admit(_ms(now), _ms(self.connect_timeout + self.read_timeout))
        if verdict == TRIAL_BEGAN:
            log.info("upstream %s target %s: cooldown over, one trial request", self.upstream_name,
                     self.address)
            if ex is not None:
                ex.trial = self
        return verdict != REFUSED

    cpdef record(self, Exchange ex, bint ok):
        """The outcome of ``ex`` on this target: an answer below 500 (``ok``), or a 5xx, a
        failed connect, a reset or a timeout. Every change is logged once, by the worker
        whose outcome made it."""
        cdef bint trial = ex is not None and ex.trial is self
        # (an answer that is neither a failure nor a trial's changes nothing dated: PERF,
        # no clock read for it)
        cdef int change = self.state.record(ok, self.breaker_failures, _ms(self.breaker_cooldown),
                                            _ms(monotonic()) if not ok or trial else 0, trial)
        if change == NO_CHANGE:
            return
        if change == CIRCUIT_CLOSED:
            log.info("upstream %s target %s: circuit closed", self.upstream_name, self.address)
        elif change == CIRCUIT_REOPENED:
            log.warning("upstream %s target %s: trial failed, circuit open again for %gs",
                        self.upstream_name, self.address, self.breaker_cooldown)
        else:
            log.warning("upstream %s target %s: circuit open after %d consecutive failures, for %gs",
                        self.upstream_name, self.address, self.breaker_failures, self.breaker_cooldown)

    cpdef undecided(self, Exchange ex):
        """``ex`` ended with no verdict on the target (the client left): a trial it was is
        owed again."""
        if ex.trial is self:
            self.state.undecided(_ms(monotonic()))

    cpdef double wait(self, double now):
        """Seconds until the target may take traffic again (0: it may now): the rest of
        its cooldown, or one check interval when checks found it unhealthy."""
        cdef double wait = 0.0
        if self.health_checked and not self.state.healthy():
            wait = self.health_interval
        if self.breaker_failures and not self.state.may_admit(_ms(now)):
            wait = max(wait, self.state.until_ms / 1000.0 - now)
        return wait

    cpdef UpstreamConnection take_idle(self):
        cdef UpstreamConnection conn
        cdef list idle = self.idle
        while idle:
            conn = idle.pop()  # LIFO: the warmest connection is the least likely to be closed
            conn.pooled = False
            if len(idle) < self.low_water:
                self.low_water = len(idle)
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect(self):
        """A new connection to the target, within ``connect_timeout``: called in a task,
        which the sweeper cancels when the deadline passes (PERF: ``asyncio.wait_for``
        would add a second task and a timer to every connect)."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        cdef Connecting pending = Connecting(asyncio.current_task(loop),
                                             monotonic() + self.connect_timeout)
        connecting.add(pending)
        try:
            _, conn = await loop.create_connection(self._new_connection, self.host, self.port)
        except asyncio.CancelledError:
            if not pending.expired:
                raise
            pending.task.uncancel()
            raise UpstreamTimeout(f"connect to {self.address} timed out") from None
        except ConnectionRefusedError:
            raise UpstreamError(f"connect to {self.address} refused") from None
        except OSError as exc:
            raise UpstreamError(f"connect to {self.address} failed: {exc.strerror or exc}") from None
        finally:
            connecting.discard(pending)
        return conn

    def _new_connection(self):
        return UpstreamConnection(self)

    cpdef release(self, UpstreamConnection conn):
        if self.retired or self.keepalive <= 0 or self.loop is None:
            conn.close()
            return
        conn.pooled = True
        self.idle.append(conn)
        if len(self.idle) > self.keepalive:
            # Over the cap: the sweeper closes what stays unused (``trim``), not we, now.
            # Under load the responses of one moment release connections that the
            # requests of the next take again; closing them at once and opening new ones
            # for those requests (nginx's way) cost a connect for one request in six at
            # 200 concurrent clients, and the backend as many accepts (PERF).
            over_cap.add(self)

    cpdef trim(self):
        """Close the least recently used idle connections beyond ``keepalive`` that
        stayed unused since the last trim (the sweeper calls it a few times a second)."""
        cdef Py_ssize_t excess = min(len(self.idle), self.low_water) - self.keepalive
        cdef UpstreamConnection conn
        if excess > 0:
            stale = self.idle[:excess]
            del self.idle[:excess]
            for conn in stale:
                conn.pooled = False
                conn.close()
        self.low_water = len(self.idle)
        if self.low_water <= self.keepalive:
            over_cap.discard(self)

    cpdef forget(self, UpstreamConnection conn):
        if conn.pooled:
            conn.pooled = False
            self.idle.remove(conn)

    def retire(self):
        """This pool left the config: close its idle connections, and busy ones when done."""
        self.retired = True
        idle, self.idle = self.idle, []
        for conn in idle:
            (<UpstreamConnection>conn).pooled = False
            conn.close()
        over_cap.discard(self)


cdef class Upstream:
    """A named group of targets and the pick step (``balance``), by ``_core.balancer``:

    - ``round_robin``: smooth weighted round robin (nginx's: a 1:3 pair goes B A B B);
    - ``least_conn``: the fewest requests in flight per unit of weight, equals in turn;
    - ``random``: two targets drawn at random, the less loaded of the two;
    - ``consistent_hash``: a ring keyed by ``hash_on`` (the client address, the path, a
      header, a cookie or a query parameter); a request without the key is picked by
      round robin.
    """

    def __init__(self, str name, list pools, signature, str balance="round_robin", str hash_on="ip",
                 int retries=1, health_check=None):
        self.name = name
        self.retries = retries
        self.pools = pools
        weights = [(<Pool>p).weight for p in pools]
        self.balance = balance
        self.round_robin = SmoothWeighted(weights)
        self.least_conn = LeastConnections(weights) if balance == "least_conn" else None
        self.two_choices = TwoChoices(weights, os.urandom(16)) if balance == "random" else None
        self.ring = None
        if balance == "consistent_hash":
            self.ring = HashRing([((<Pool>p).address.encode(), (<Pool>p).weight) for p in pools])
        kind, _, name_part = hash_on.partition(":")
        self.hash_kind = _HASH_KINDS.get(kind, HASH_NONE)  # (a word compared once, not per request)
        self.hash_name = name_part.encode("latin-1")
        #: the config this was built from: a reload keeps the Upstream (and its warm
        #: pools) when the signature is unchanged
        self.signature = signature
        #: the active checks' settings (config.HealthCheck), run by fastgw.health; or None
        self.health_check = health_check
        self.watched = any([(<Pool>p).breaker_failures > 0 or (<Pool>p).health_checked
                            for p in pools])
        self._counts = [0] * len(pools)

    cpdef Pool pick(self, Exchange ex, list tried=None):
        """The target for ``ex``, never one in ``tried``, found unhealthy, or whose circuit
        is open; None when no target is left."""
        cdef list pools = self.pools
        if len(pools) == 1 and not tried and not self.watched:
            return pools[0]
        cdef bytes up = None
        # (the clock only for targets with health or a circuit to read)
        cdef double now = monotonic() if self.watched else 0.0
        cdef Pool pool
        cdef Py_ssize_t index
        if tried or (self.watched and self._some_target_out(now)):
            up = self._mask(tried, now)
            if up is None:
                return None
        while True:
            index = -1
            if self.ring is not None:
                key = self._hash_key(ex)
                if key is not None:
                    index = (<HashRing>self.ring).pick(key, up)
            elif self.least_conn is not None:
                index = (<LeastConnections>self.least_conn).pick(self._in_flight(), up)
            elif self.two_choices is not None:
                index = (<TwoChoices>self.two_choices).pick(self._in_flight(), up)
            if index < 0:
                index = (<SmoothWeighted>self.round_robin).pick(up)
            pool = pools[index]
            if pool._claim(ex, now):
                return pool
            # Another worker took this target's trial first: pick among the others.
            mask = bytearray(up if up is not None else self._mask(tried, now) or bytes(len(pools)))
            mask[index] = 0
            if not any(mask):
                return None
            up = bytes(mask)

    cdef bytes _mask(self, list tried, double now):
        """One byte per target, 1 for those that may take a request; None when none may."""
        up = bytes([(not tried or p not in tried) and (<Pool>p).available(now) for p in self.pools])
        return up if any(up) else None

    cpdef int retry_after(self, double now):
        """Whole seconds until some target may take traffic again (for Retry-After), at
        least 1."""
        soonest = min([(<Pool>p).wait(now) for p in self.pools])
        return max(1, <int>(soonest + 0.999))

    cpdef str unavailable(self, double now):
        """Why no target may take a request now (the 503's message)."""
        if all([(<Pool>p).health_checked and not (<Pool>p).state.healthy() for p in self.pools]):
            return f"no healthy target in upstream {self.name!r}"
        return f"no target of upstream {self.name!r} can take requests now (circuits open)"

    cdef list _in_flight(self):
        """The in-flight count of each target, in a list kept for it (no list per pick)."""
        cdef list counts = self._counts
        cdef Py_ssize_t i
        for i in range(len(self.pools)):
            counts[i] = (<Pool>self.pools[i]).in_flight
        return counts

    cdef bint _some_target_out(self, double now):
        # PERF: a C pass over the targets; the mask is built only when one is out
        cdef Pool pool
        for pool in self.pools:
            if not pool.available(now):
                return True
        return False

    cdef object _hash_key(self, Exchange ex):
        """The bytes ``hash_on`` names in this request, or None when it has none."""
        cdef int kind = self.hash_kind
        if kind == HASH_IP:
            return ex.client_ip.encode()
        if kind == HASH_PATH:
            return ex.path.encode("latin-1")
        if kind == HASH_QUERY:
            return _query_value(ex.query, self.hash_name)
        if kind == HASH_HEADER:
            return ex.header(self.hash_name)
        if kind != HASH_COOKIE:
            return None
        # (read in the exchange's field block: only a Cookie field becomes bytes)
        cdef FieldView field
        cdef Py_ssize_t i
        for i in range(ex.field_total()):
            ex.field_at(i, &field)
            if named_in(<const unsigned char*>field.name, field.name_length, _COOKIE):
                found = _cookie_value(PyBytes_FromStringAndSize(field.value, field.value_length), self.hash_name)
                if found is not None:
                    return found
        return None

    def targets_view(self):
        """Every target's state as plain values (for the admin API's ``GET /upstreams``):
        what all workers share (health, circuit, in flight, failures), and "off" for a
        health or circuit that the config does not watch."""
        cdef int64_t now = _ms(monotonic())
        cdef Pool pool
        result = []
        for pool in self.pools:
            view = pool.state.view(now)
            if not pool.health_checked:
                view["health"] = "off"
            if pool.breaker_failures == 0:
                view["circuit"] = "off"
            result.append({"address": pool.address, "weight": pool.weight, **view})
        return result

    def retire(self):
        for pool in self.pools:
            pool.retire()


cdef object _query_value(bytes query, bytes name):
    """The raw value of the first ``name=`` in a query string (``a=1&b=2``), or None."""
    for pair in query.split(b"&"):
        key, sep, value = pair.partition(b"=")
        if key == name and sep:
            return value
    return None


cdef object _cookie_value(bytes cookie, bytes name):
    """The value of cookie ``name`` in a Cookie header (``a=1; b=2``), or None."""
    for pair in cookie.split(b";"):
        key, sep, value = pair.strip().partition(b"=")
        if key == name and sep:
            return value
    return None
