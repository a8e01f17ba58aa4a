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

Redis is a dependency the gateway must survive: when it is unreachable, errors, or does
not answer within ``timeout``, the request is answered at once by the machine-wide
``Limiter`` passed in (never an exception, never a wait beyond ``timeout``), one warning
is logged, and Redis is left alone while it is down: a background task PINGs it about
once a second, logs once when it is back, and requests go to it again. ``fallbacks``
counts the requests answered locally (the metric), ``up`` says which way they go.

May import: the standard library, redis, fastgw._core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url

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
#: connections to Redis a worker keeps at most: one request in flight on each (at a
#: tenth of a millisecond a call, far more than a worker can ask); more concurrent
#: requests wait for one, within ``timeout``
MAX_CONNECTIONS = 16


class ClusterLimits:
    """Cluster-wide token buckets in the Redis at ``url``, for one worker process;
    ``timeout`` (seconds) bounds every request's wait for Redis."""

    def __init__(self, url: str, timeout: float = 0.05) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be above 0, got {timeout}")
        parse_url(url)  # a URL redis cannot use fails here, with the config, not per request
        self.url = url
        self.timeout = timeout
        self.up = True          # requests go to Redis (False: to the local limiter)
        self.fallbacks = 0      # requests answered by the local limiter
        split = urlsplit(url)
        # where Redis is, for the log (never the password of the URL)
        self.where = (split.path if split.scheme == "unix"
                      else f"{split.hostname or 'localhost'}:{split.port or 6379}")
        self._client: aioredis.Redis | None = None
        self._script = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconnect_task: asyncio.Task | None = None
        self._closed = False

    def _client_here(self) -> aioredis.Redis:
        """The client of the running event loop, made on first use there (a client is
        bound to the loop its connections were made in)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # (a client of an earlier loop is dropped: its loop can no longer close it)
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=MAX_CONNECTIONS, timeout=self.timeout,
                socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                socket_keepalive=True, health_check_interval=0,
                retry=None)  # no retries: a request has one chance, within ``timeout``
            self._client = aioredis.Redis.from_pool(pool)
            self._script = self._client.register_script(GCRA_SCRIPT)
            self._loop = loop
            self._reconnect_task = None
            self.up = True
        return self._client

    async def acquire(self, name: bytes, key: bytes, interval_ns: int, burst: int,
                      local: Limiter, now_ns: int) -> int:
        """Take a token of ``key`` in the cluster-wide bucket of policy ``name``
        (``interval_ns`` a token, at most ``burst``): the tokens left (≥ 0), else minus
        the nanoseconds until one is (≤ -1). When Redis cannot answer within
        ``timeout``, ``local`` answers (at ``now_ns``), as it does while Redis is down
        and once closed."""
        if not self.up and self._loop is not asyncio.get_running_loop() and not self._closed:
            self.up = True  # down in another loop (this is a forked child?): try afresh here
        if self.up:
            interval_us = max(1, (interval_ns + 500) // 1000)
            try:
                client = self._client_here()
                async with asyncio.timeout(self.timeout):
                    answer = await self._script(
                        keys=(KEY_PREFIX + name + b":" + key,), args=(interval_us, burst), client=client)
            except Exception as error:  # unreachable, an error, too slow: this machine answers
                self._went_down(error)
            else:
                if answer >= 0:
                    return answer
                # microseconds to nanoseconds, never more than one interval (rounding)
                return -min(-answer * 1000, interval_ns)
        self.fallbacks += 1
        return local.acquire(key, now_ns)

    def _went_down(self, error: BaseException) -> None:
        if not self.up:
            return  # others in flight when it went down: already told
        self.up = False
        if isinstance(error, TimeoutError):  # asyncio's (its text is empty) or redis's
            reason = f"no answer within {self.timeout * 1000:g} ms"
        else:
            reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        log.warning("cluster: redis at %s unreachable (%s); rate limits fall back to this "
                    "machine's until it is back", self.where, reason)
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Probe a Redis that is down about once a second until it serves again: a PING
        (on a new connection, its connect and reads each within ``timeout``, the whole
        within a second), then the script itself (on ``PROBE_KEY``) answered within
        ``timeout``, as a request must be. (The script
        rather than a second PING: a Redis that answers PING but refuses the script's
        write, as when out of memory or a read-only replica, is still down.)"""
        while True:
            await asyncio.sleep(RECONNECT_EVERY)
            client = self._client
            if client is None:
                return  # closed
            try:
                async with asyncio.timeout(RECONNECT_EVERY):
                    await client.ping()
                async with asyncio.timeout(self.timeout):
                    await self._script(keys=(PROBE_KEY,), args=(1, 1), client=client)
            except Exception:
                continue
            self.up = True
            self._reconnect_task = None
            log.info("cluster: redis at %s reachable again; cluster rate limits restored", self.where)
            return

    async def close(self) -> None:
        """Stop probing and close the connections (in the loop that made them); requests
        after this are answered by the local limiter."""
        self._closed = True
        self.up = False
        task, self._reconnect_task = self._reconnect_task, None
        client, self._client = self._client, None
        loop, self._loop = self._loop, None
        running = asyncio.get_running_loop()
        if task is not None:
            task.cancel()
            if loop is running:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if client is not None and loop is running:
            with contextlib.suppress(Exception):
                await client.aclose()
