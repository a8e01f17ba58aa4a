"""Rate limits exact across several gateway machines (``scope = "cluster"``), kept in
the Redis of ``[cluster].redis``.

``ClusterLimits(url, timeout)`` is one worker process's connection to that Redis, made
lazily on first use in the running event loop. ``acquire`` answers as
``fastgw._core.limiter.Limiter.acquire`` does (tokens left ≥ 0, or minus the nanoseconds
until the next token), computed by ONE atomic script call per request: the same GCRA as
the local limiter (``GCRA_SCRIPT``), judged on Redis's own clock (``TIME``) so that
every machine's requests meet one clock and one bucket, whatever their own clocks say.
A bucket's key is ``fastgw:rl:NAME:KEY`` and it expires when the bucket is full again,
so idle keys cost Redis nothing.

Micro-batching. A call through redis-py's client (pool checkout, locks, a timeout
context, packing, a parser call per reply, and a round trip of its own: a write and a
read, two system calls) cost the worker 120–170 µs of CPU a request, several times the
rest of a proxied request, whereas Redis runs the script in ~10 µs. So the calls go
another way, each still one EVALSHA of its own (the semantics per request are
untouched): the requests that arrive in one event-loop iteration are queued, the first
of them schedules a flush (``loop.call_soon``), and the flush writes the whole queue as
one pipeline of packed EVALSHA commands on ONE persistent connection, in one write; one
task reads that connection, feeds the bytes to ``hiredis.Reader`` (redis's own parser)
and resolves the requests' futures in order (Redis answers the commands of one
connection in the order sent). A request then costs a future, a few bytes packed, and
its share of one write, one read and one task wake-up: 5–7 µs with 50 requests at a
time, and through the gateway a cluster-scope limit costs about what a local one does.
Latency does not suffer: a batch waits for nothing but the end of the current
iteration, and up to ``MAX_BATCHES_IN_FLIGHT`` batches are pipelined on the connection
(beyond that, the queue waits for the oldest to be answered and then goes as one,
larger batch). The connection itself is opened, authenticated and set to its database
by redis-py's own ``Connection`` (every option of the URL, TLS included), which then
hands over its streams; the script is loaded (SCRIPT LOAD) on every new connection, and
a call answered NOSCRIPT all the same (a SCRIPT FLUSH, a failover behind a proxy) is
sent again at once as EVAL, which loads it again.

Redis is a dependency the gateway must survive: when it is unreachable, errors, or does
not answer within ``timeout``, the request is answered at once by the machine-wide
``Limiter`` passed in (never an exception, never a wait beyond ``timeout``), one warning
is logged, and Redis is left alone while it is down: a background task probes it about
once a second, logs once when it is back, and requests go to it again. The ``timeout``
is one timer a batch, started when its first request is queued: it bounds the wait for
the connection, for a place in flight and for the answers. When it fires, or an error
comes back, or the connection breaks under calls in flight, Redis is down: the
connection is dropped and every request queued or in flight is answered locally.
(A connection that closes while idle, as by Redis's own ``timeout``, is not a failure:
the next request opens another.) ``fallbacks`` counts the requests answered locally (a
counter for operators), ``up`` says which way they go.

May import: the standard library, redis, hiredis, fastgw._core.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
from redis._parsers import BaseParser
from redis.asyncio.connection import parse_url
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError

from fastgw._core.metrics import shared_metrics

if TYPE_CHECKING:
    from fastgw._core.limiter import Limiter

log = logging.getLogger("fastgw")

# GCRA (the generic cell rate algorithm, as fastgw._core.limiter) on one key, atomically
# (a script runs alone in Redis). The key holds the bucket's theoretical arrival time
# (TAT) in microseconds of Redis's own clock (TIME: one clock for every machine).
#   KEYS[1]: the bucket; ARGV[1]: the interval (microseconds a token); ARGV[2]: burst.
# A request at `now` is allowed when max(TAT, now) + interval - now <= burst × interval:
# the TAT moves on by one interval and is written with an expiry (PX) of the time until
# the bucket is full again (a key that is gone is a full bucket: nothing is lost when it
# expires), and the answer is the tokens left (>= 0). Refused: nothing is written and
# the answer is minus the microseconds until the next token (<= -1).
# Lua numbers are doubles: microseconds since 1970 (about 2^51) are exact integers, and
# string.format('%d') writes them whole (tostring would write "1.7e+15").
GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local limit = interval * tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local ahead = tat + interval - now
if ahead > limit then return limit - ahead end
redis.call('SET', KEYS[1], string.format('%d', now + ahead),
           'PX', string.format('%d', math.ceil(ahead / 1000)))
return math.floor((limit - ahead) / interval)
"""

#: the prefix of every bucket's key in Redis
KEY_PREFIX = b"fastgw:rl:"
#: the key the probe takes a token of (a bucket of one, full again after 1 µs): no
#: policy's key can be it, theirs have a colon after the name
PROBE_KEY = KEY_PREFIX + b"probe"
#: seconds between two probes of a Redis that is down
RECONNECT_EVERY = 1.0
#: batches sent on the connection and not yet fully answered, at most: more pipelined
#: gain nothing (Redis answers one after another), and a queue that waits meanwhile
#: goes as one larger batch, cheaper still
MAX_BATCHES_IN_FLIGHT = 4
#: bytes read from the connection at once
READ_SIZE = 1 << 16


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


_SCRIPT = GCRA_SCRIPT.encode()
_SHA = hashlib.sha1(_SCRIPT).hexdigest().encode()  # as Redis names it
# A script call, packed (RESP): the head (the command, the script or its SHA, one key)
# and the tail of each call (its key, interval and burst).
_EVALSHA = b"*6\r\n" + _bulk(b"EVALSHA") + _bulk(_SHA) + _bulk(b"1")
_EVAL = b"*6\r\n" + _bulk(b"EVAL") + _bulk(_SCRIPT) + _bulk(b"1")
_SCRIPT_LOAD = b"*3\r\n" + _bulk(b"SCRIPT") + _bulk(b"LOAD") + _bulk(_SCRIPT)


def _tail(key: bytes, interval_us: int, burst: int) -> bytes:
    interval = b"%d" % interval_us
    most = b"%d" % burst
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(key), key, len(interval), interval, len(most), most)


class _Batch:
    """Requests queued in one event-loop iteration and sent together: their futures
    and packed tails, how many answers are still due, and the timer of ``timeout``."""

    __slots__ = ("items", "left", "timer")

    def __init__(self) -> None:
        self.items: list[tuple[asyncio.Future, bytes]] = []
        self.left = 0
        self.timer: asyncio.TimerHandle | None = None


class _Link:
    """The connection in use: its streams (taken over from redis-py's ``Connection``
    once it has connected, authenticated and selected the database), the parser of
    its replies, the calls sent and not yet answered (future, tail, batch; in the order
    sent), the batches they make, and the task that reads."""

    __slots__ = ("stream", "writer", "parser", "sent", "batches", "task")

    def __init__(self, stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stream = stream
        self.writer = writer
        self.parser = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        self.sent: collections.deque[tuple[asyncio.Future, bytes, _Batch]] = collections.deque()
        self.batches = 0
        self.task: asyncio.Task | None = None


def _take_streams(conn: aioredis.Connection) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The streams of a connected redis-py connection, which forgets them (from here on
    they are ours to read, write and close). (redis-py has no public way to hand them
    over: this reads its ``_reader`` and ``_writer``, as it has named them since 4.2.)"""
    stream, writer = conn._reader, conn._writer
    if stream is None or writer is None:
        raise ConnectionError("not connected")
    conn._reader = conn._writer = None
    return stream, writer


def _discard(conn: aioredis.Connection) -> None:
    """Drop a redis-py connection at once (in any state, not waiting for anything)."""
    writer = conn._writer
    conn._reader = conn._writer = None
    if writer is not None:
        writer.transport.abort()


class ClusterLimits:
    """Cluster-wide token buckets in the Redis at ``url``, for one worker process;
    ``timeout`` (seconds) bounds every request's wait for Redis."""

    def __init__(self, url: str, timeout: float = 0.05) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be above 0, got {timeout}")
        options = parse_url(url)  # a URL redis cannot use fails here, with the config
        self.url = url
        self.timeout = timeout
        self.up = True          # requests go to Redis (False: to the local limiter)
        self.fallbacks = 0      # requests answered by the local limiter
        split = urlsplit(url)
        # where Redis is, for the log (never the password of the URL)
        self.where = (split.path if split.scheme == "unix"
                      else f"{split.hostname or 'localhost'}:{split.port or 6379}")
        # redis-py's connection class and its arguments: each command and the connect
        # within ``timeout``, no retries (a request has one chance, within ``timeout``)
        self._connection_class = options.pop("connection_class", aioredis.Connection)
        self._options = dict(options, socket_timeout=timeout, socket_connect_timeout=timeout,
                             health_check_interval=0, retry=None)
        if self._connection_class is not aioredis.UnixDomainSocketConnection:
            self._options["socket_keepalive"] = True  # (TCP only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: _Link | None = None             # the connection in use, if any
        self._connecting: asyncio.Task | None = None  # opening it
        self._batch: _Batch | None = None           # the requests queued, not yet sent
        self._reconnect_task: asyncio.Task | None = None
        self._closed = False

    async def acquire(self, name: bytes, key: bytes, interval_ns: int, burst: int,
                      local: Limiter, now_ns: int) -> int:
        """Take a token of ``key`` in the cluster-wide bucket of policy ``name``
        (``interval_ns`` a token, at most ``burst``): the tokens left (≥ 0), else minus
        the nanoseconds until one is (≤ -1). When Redis cannot answer within
        ``timeout``, ``local`` answers (at ``now_ns``), as it does while Redis is down
        and once closed."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop and not self._closed:
            self._bind(loop)  # (down in another loop, as in a forked child: tried afresh here)
        if self.up:
            future = loop.create_future()
            batch = self._batch
            if batch is None:  # the first of this iteration: it sends them all, after it
                batch = self._batch = _Batch()
                batch.timer = loop.call_later(self.timeout, self._timed_out)
                loop.call_soon(self._flush)
            batch.items.append((future, _tail(KEY_PREFIX + name + b":" + key,
                                              max(1, (interval_ns + 500) // 1000), burst)))
            answer = await future  # an int, or None: answered here (Redis is down)
            if answer is not None:
                if answer >= 0:
                    return answer
                # microseconds to nanoseconds, never more than one interval (rounding)
                return -min(-answer * 1000, interval_ns)
        return self.acquire_here(key, local, now_ns)

    def acquire_here(self, key: bytes, local: Limiter, now_ns: int) -> int:
        """While Redis is down (``up`` is False): ``local`` answers at once, counted in
        ``fallbacks`` (and in the machine's ``fastgw_cluster_fallbacks_total``). The proxy
        calls this without a task when it sees Redis down."""
        self.fallbacks += 1
        shared_metrics().cluster_fallback()
        return local.acquire(key, now_ns)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start afresh in ``loop`` (the first, or a new one: what was made in an
        earlier loop is dropped, that loop can no longer close it)."""
        self._loop = loop
        self._link = self._connecting = self._batch = self._reconnect_task = None
        self.up = True

    def _flush(self) -> None:
        """Send the queued requests as one batch, when there is a connection and room
        in flight (else when the connection is open, or the oldest batch answered)."""
        batch = self._batch
        if batch is None or not self.up:
            return
        link = self._link
        if link is None:
            if self._connecting is None:
                self._connecting = self._loop.create_task(self._connect())
            return
        if link.batches >= MAX_BATCHES_IN_FLIGHT:
            return
        if link.stream.at_eof():  # closed by Redis (its idle timeout?), not yet seen
            if not link.sent:  # nothing lost: another connection
                self._forget(link)
                self._flush()
            return  # (else the reader finds calls in flight failed, and answers them here)
        self._batch = None
        # (a request cancelled meanwhile, its HTTP client gone, is not sent)
        items = [item for item in batch.items if not item[0].done()]
        if not items:
            batch.timer.cancel()
            return
        batch.left = len(items)
        link.batches += 1
        link.sent.extend([(future, tail, batch) for future, tail in items])
        try:
            link.writer.write(_EVALSHA + _EVALSHA.join([tail for _, tail in items]))
        except Exception as error:  # (uvloop: a transport closed under us)
            self._down(error)

    async def _read(self, link: _Link) -> None:
        """Read the connection's replies and answer its calls, in order, until it is
        dropped or it breaks."""
        try:
            while self._link is link:
                data = await link.stream.read(READ_SIZE)
                if not data:
                    raise ConnectionError("Connection closed by server.")
                link.parser.feed(data)
                self._answer(link)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if self._link is link:
                if link.sent:  # calls in flight: Redis failed them
                    self._down(error)
                else:  # idle (closed by Redis's own timeout, say): the next call reconnects
                    self._forget(link)

    def _forget(self, link: _Link) -> None:
        """Close the connection ``link``, stop its reader (the calls in flight, if any,
        are the caller's to answer)."""
        self._link = None
        if link.task is not asyncio.current_task():
            link.task.cancel()
        link.writer.transport.abort()

    def _answer(self, link: _Link) -> None:
        """Answer the calls whose replies have been read."""
        parser, sent = link.parser, link.sent
        full = link.batches >= MAX_BATCHES_IN_FLIGHT
        again: list[tuple[asyncio.Future, bytes, _Batch]] = []
        failed: Exception | None = None
        while (reply := parser.gets()) is not False:
            if not sent:
                failed = InvalidResponse(f"a reply to no call: {reply!r}")
                break
            item = sent.popleft()
            future, _, batch = item
            if type(reply) is not int:
                if isinstance(reply, NoScriptError) and not future.done():
                    again.append(item)  # the script is gone: sent again as EVAL, which loads it
                    continue
                if failed is None:  # an error (or a reply no script call gives): Redis is down
                    failed = reply if isinstance(reply, Exception) else InvalidResponse(
                        f"the script answered {reply!r}")
                reply = None
            if not future.done():
                future.set_result(reply)
            batch.left -= 1
            if not batch.left:
                batch.timer.cancel()
                link.batches -= 1
        if again:  # (still in their batches, under their timers)
            sent.extend(again)
        if failed is not None:
            self._down(failed)  # (answers here those in flight, `again` too)
            return
        if again:
            link.writer.write(_EVAL + _EVAL.join([tail for _, tail, _ in again]))
        if full and link.batches < MAX_BATCHES_IN_FLIGHT:
            self._flush()  # the queue that waited for room (else its flush is on its way)

    async def _open(self) -> aioredis.Connection:
        """A new connection, connected (with the URL's password, database, TLS…), the
        script loaded; each step within ``timeout``."""
        conn = self._connection_class(**self._options)
        try:
            await conn.connect()
            await conn.send_packed_command(_SCRIPT_LOAD, check_health=False)
            sha = await conn.read_response()
            if (sha.encode() if isinstance(sha, str) else sha) != _SHA:  # (decode_responses)
                raise ResponseError(f"SCRIPT LOAD answered {sha!r}")
        except BaseException:
            _discard(conn)
            raise
        return conn

    def _use(self, conn: aioredis.Connection) -> None:
        """Send the requests through ``conn`` from now on."""
        link = self._link = _Link(*_take_streams(conn))
        link.task = self._loop.create_task(self._read(link))

    async def _connect(self) -> None:
        try:
            conn = await self._open()
        except Exception as error:
            self._connecting = None
            self._down(error)
            return
        self._connecting = None
        self._use(conn)
        self._flush()

    def _timed_out(self) -> None:
        self._down(TimeoutError())

    def _down(self, error: BaseException) -> None:
        """Redis failed: drop the connection, answer every request queued or in flight
        here, and (the first time) log it and start the probe."""
        if self.up:
            self.up = False
            if isinstance(error, TimeoutError):  # asyncio's (its text is empty) or ours
                reason = f"no answer within {self.timeout * 1000:g} ms"
            else:
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            log.warning("cluster: redis at %s unreachable (%s); rate limits fall back to this "
                        "machine's until it is back", self.where, reason)
            if not self._closed:
                self._reconnect_task = self._loop.create_task(self._reconnect())
        self._drop()

    def _drop(self) -> None:
        """Drop the connection (and one being opened); the requests queued or in flight
        are answered here."""
        link, self._link = self._link, None
        connecting, self._connecting = self._connecting, None
        batch, self._batch = self._batch, None
        if connecting is not None and connecting is not asyncio.current_task():
            connecting.cancel()
        if batch is not None:
            batch.timer.cancel()
            for future, _ in batch.items:
                if not future.done():
                    future.set_result(None)
        if link is not None:
            self._forget(link)
            for future, _, sent_in in link.sent:
                sent_in.timer.cancel()
                if not future.done():
                    future.set_result(None)
            link.sent.clear()

    async def _reconnect(self) -> None:
        """Probe a Redis that is down about once a second until it serves again: a new
        connection (its connect, handshake and SCRIPT LOAD each within ``timeout``, the
        whole within a second), then the script itself (on ``PROBE_KEY``) answered
        within ``timeout``, as a request must be; that connection is then used. (The
        script rather than a PING: a Redis that answers PING but refuses the script's
        write, as when out of memory or a read-only replica, is still down.)"""
        while True:
            await asyncio.sleep(RECONNECT_EVERY)
            if self._closed:
                return
            try:
                async with asyncio.timeout(RECONNECT_EVERY):
                    conn = await self._open()
                try:
                    async with asyncio.timeout(self.timeout):
                        await conn.send_packed_command(_EVALSHA + _tail(PROBE_KEY, 1, 1), check_health=False)
                        await conn.read_response()
                except BaseException:
                    _discard(conn)
                    raise
            except Exception:
                continue
            self._reconnect_task = None
            self._use(conn)
            self.up = True
            log.info("cluster: redis at %s reachable again; cluster rate limits restored", self.where)
            return

    async def close(self) -> None:
        """Stop probing and close the connection (in the loop that made it); requests
        after this are answered by the local limiter."""
        self._closed = True
        self.up = False
        tasks = [self._reconnect_task, self._connecting, self._link and self._link.task]
        self._reconnect_task = None
        self._drop()
        loop, self._loop = self._loop, None
        running = asyncio.get_running_loop()
        for task in tasks:
            if task is not None:
                task.cancel()
                if loop is running:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def __aenter__(self) -> ClusterLimits:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Closes it on the way out (``async with ClusterLimits(url) as limits:``)."""
        await self.close()
