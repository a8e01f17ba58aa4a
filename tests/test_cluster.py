"""Cluster-scope rate limits (``fastgw.cluster``) against real ``redis-server`` processes
that the tests start on free ports of 127.0.0.1 and kill at the end: exactness under
concurrency, in one process and across two (as two gateway machines), refill, the
answers' encoding, keys that expire, the micro-batching (one connection, one round
trip for the requests of one event-loop iteration, batches in flight bounded, NOSCRIPT,
cancelled requests, a connection closed while idle), and Redis failing: killed mid-test
and restarted, never there, accepting but never answering, paused (slow). Each failure must be
answered by the local limiter within about ``timeout``, logged once, counted in
``fallbacks``, and healed by the background probe.

Every test is bounded in time (``run``: asyncio.wait_for; subprocesses with timeouts).
Each closes what it opens: its ``ClusterLimits`` by ``async with``, its own client of
the Redis by the ``redis_admin`` fixture.

May import: fastgw.cluster, fastgw._core, uvloop, pytest, tests.conftest, the
standard library.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import uvloop

from fastgw._core.limiter import Limiter
from fastgw.cluster import MAX_BATCHES_IN_FLIGHT, ClusterLimits
from tests.conftest import ROOT, RedisServer, free_port

SECOND = 1_000_000_000


def run(coro, limit: float = 30.0, loop: str = "asyncio"):
    """Run ``coro`` in a fresh event loop, failing it after ``limit`` seconds."""
    bounded = asyncio.wait_for(coro, limit)
    return uvloop.run(bounded) if loop == "uvloop" else asyncio.run(bounded)


def tasks_left(baseline: set[asyncio.Task]) -> set[asyncio.Task]:
    """Tasks started since ``baseline`` (``asyncio.all_tasks()`` then) still running."""
    return asyncio.all_tasks() - baseline


def records(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fastgw" and text in r.getMessage()]


@pytest.fixture
def redis_admin(redis_server):
    """A plain client of ``redis_server``, for the test's own looks and pokes at it."""
    admin = redis_server.client()
    yield admin
    admin.close()


# -- exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_exact_under_concurrency(redis_server, loop):
    """200 concurrent requests for one key at one instant: exactly the burst is allowed,
    each count of tokens left answered once."""
    async def body():
        baseline = asyncio.all_tasks()
        local = Limiter(1000, 1000)  # would allow everything: a fallback cannot pass
        async with ClusterLimits(redis_server.url, timeout=2.0) as limits:  # (exactness, not speed)
            answers = await asyncio.gather(*(
                limits.acquire(b"route", b"alice", 10 * SECOND, 25, local, time.monotonic_ns())
                for _ in range(200)))
            assert limits.fallbacks == 0 and limits.up
            allowed = sorted(a for a in answers if a >= 0)
            assert allowed == list(range(25))
            refused = [a for a in answers if a < 0]
            assert len(refused) == 175
            assert all(-10 * SECOND <= a <= -1 for a in refused)
            # another key and another policy have buckets of their own
            assert await limits.acquire(b"route", b"bob", 10 * SECOND, 25, local, 0) == 24
            assert await limits.acquire(b"other", b"alice", 10 * SECOND, 25, local, 0) == 24
        assert not tasks_left(baseline)

    run(body(), loop=loop)


CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from fastgw._core.limiter import Limiter
    from fastgw.cluster import ClusterLimits

    async def main(url):
        local = Limiter(1000, 1000)
        async with ClusterLimits(url, timeout=2.0) as limits:
            # connected:
            await limits.acquire(b"warm", b"up", 10**9, 1000, local, time.monotonic_ns())
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # go
            answers = await asyncio.gather(*(
                limits.acquire(b"two", b"key", 10 * 10**9, 25, local, time.monotonic_ns())
                for _ in range(150)))
            print(sum(a >= 0 for a in answers), limits.fallbacks, flush=True)

    asyncio.run(main(sys.argv[1]))
""")


def test_exact_across_two_processes(redis_server):
    """Two processes (two machines, as Redis sees them), each with its own loop and
    ClusterLimits, 150 concurrent requests each at one go: 25 allowed in all."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, redis_server.url], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    try:
        for proc in procs:
            line = proc.stdout.readline()  # (bounded: the finally kills a child that hangs)
            assert line == "ready\n", (line, proc.stderr.read() if proc.poll() is not None else "")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        totals = []
        for proc in procs:
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
            allowed, fallbacks = map(int, out.split())
            assert fallbacks == 0
            totals.append(allowed)
        assert sum(totals) == 25, totals
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_refill(redis_server):
    """At 100/s, after an empty bucket waits about 0.1 s, about 10 more are allowed."""
    async def body():
        baseline = asyncio.all_tasks()
        local = Limiter(1, 1)
        interval = SECOND // 100
        async with ClusterLimits(redis_server.url, timeout=1.0) as limits:
            for _ in range(200):  # empty the bucket (it refills meanwhile)
                if await limits.acquire(b"refill", b"k", interval, 50, local, 0) < 0:
                    break
            else:
                pytest.fail("a burst of 50 at 100/s never refused")
            emptied = time.monotonic()
            await asyncio.sleep(0.1)
            allowed = 0
            while await limits.acquire(b"refill", b"k", interval, 50, local, 0) >= 0:
                allowed += 1
                assert allowed < 50
            expected = (time.monotonic() - emptied) * 100
            assert expected * 0.5 - 1 <= allowed <= expected + 2, (allowed, expected)
            assert limits.fallbacks == 0
        assert not tasks_left(baseline)  # closed: nothing of it runs on

    run(body())


def test_answers_and_expiry(redis_server, redis_admin):
    """Tokens left count down; a refusal waits more than 0 and at most one interval, in
    nanoseconds; the key expires when its bucket is full again."""
    async def body():
        baseline = asyncio.all_tasks()
        local = Limiter(1, 1)
        async with ClusterLimits(redis_server.url, timeout=1.0) as limits:
            answers = [await limits.acquire(b"count", b"k", SECOND, 5, local, 0) for _ in range(5)]
            assert answers == [4, 3, 2, 1, 0]
            first = await limits.acquire(b"count", b"k", SECOND, 5, local, 0)
            await asyncio.sleep(0.02)
            second = await limits.acquire(b"count", b"k", SECOND, 5, local, 0)
            assert -SECOND <= first < 0 and -SECOND <= second < 0
            assert first % 1000 == 0  # Redis counts microseconds
            assert -first - -second >= 10_000_000  # the wait shrinks as time goes on
            ttl = redis_admin.pttl(b"fastgw:rl:count:k")
            assert 4000 < ttl <= 5000  # five tokens of one second to refill
            # a fast bucket: full again within milliseconds, and then gone
            assert await limits.acquire(b"count", b"fast", 1_000_000, 2, local, 0) == 1
            await asyncio.sleep(0.1)
            assert redis_admin.exists(b"fastgw:rl:count:fast") == 0
            assert await limits.acquire(b"count", b"fast", 1_000_000, 2, local, 0) == 1
            # a TAT in the past (a key that outlived its expiry) is a full bucket
            seconds, micros = redis_admin.time()
            redis_admin.set(b"fastgw:rl:count:old", seconds * 1_000_000 + micros - 60_000_000)
            assert await limits.acquire(b"count", b"old", SECOND, 5, local, 0) == 4
            assert limits.fallbacks == 0
        assert not tasks_left(baseline)  # closed: nothing of it runs on

    run(body())


# -- micro-batching ---------------------------------------------------------------------------


def evalsha_calls(admin, command: str = "evalsha") -> int:
    return admin.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_concurrent_requests_share_one_round_trip(redis_server, redis_admin, loop):
    """100 requests of one iteration: one script call each (exact), all on one
    connection, in a few reads of Redis's (one batch), not 100."""
    async def body():
        local = Limiter(1000, 1000)
        async with ClusterLimits(redis_server.url, timeout=2.0) as limits:
            assert await limits.acquire(b"warm", b"up", SECOND, 10, local, 0) == 9  # connected
            writer = limits._link.writer = CountingWriter(limits._link)
            calls = evalsha_calls(redis_admin)
            reads = redis_admin.info("stats")["total_reads_processed"]
            answers = await asyncio.gather(*(
                limits.acquire(b"batch", b"k", 10 * SECOND, 25, local, 0) for _ in range(100)))
            # (less the INFO's read)
            round_trips = redis_admin.info("stats")["total_reads_processed"] - reads - 1
            assert sorted(a for a in answers if a >= 0) == list(range(25))
            assert evalsha_calls(redis_admin) - calls == 100  # one script call a request
            assert writer.writes == 1  # one batch, in one write
            assert 1 <= round_trips <= 5, round_trips
            assert redis_admin.info("clients")["connected_clients"] == 2  # the admin's and ours
            assert limits.fallbacks == 0 and limits.up

    run(body(), loop=loop)


class CountingWriter:
    """A connection's writer that counts the writes (one a batch) and the most batches
    in flight at a write."""

    def __init__(self, link) -> None:
        self.link = link
        self.writer = link.writer
        self.transport = self.writer.transport
        self.writes = 0
        self.most_in_flight = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.most_in_flight = max(self.most_in_flight, self.link.batches)
        self.writer.write(data)


def test_batches_in_flight_are_bounded(redis_server, redis_admin):
    """Redis slow (paused 0.3 s, within the timeout): a batch every iteration, but at
    most MAX_BATCHES_IN_FLIGHT of them sent; the rest wait and go as one batch when
    the first is answered; every answer exact."""
    async def body():
        local = Limiter(1000, 1000)
        async with ClusterLimits(redis_server.url, timeout=2.0) as limits:
            assert await limits.acquire(b"warm", b"up", SECOND, 10, local, 0) == 9
            writer = limits._link.writer = CountingWriter(limits._link)
            redis_admin.client_pause(300, all=True)
            tasks = []
            for _ in range(10):  # ten iterations, ten requests each
                tasks += [asyncio.ensure_future(limits.acquire(b"waves", b"k", 10 * SECOND, 25, local, 0))
                          for _ in range(10)]
                await asyncio.sleep(0)
            answers = await asyncio.gather(*tasks)
            assert sorted(a for a in answers if a >= 0) == list(range(25))
            assert limits.fallbacks == 0 and limits.up
            assert writer.most_in_flight == MAX_BATCHES_IN_FLIGHT
            assert writer.writes == MAX_BATCHES_IN_FLIGHT + 1, writer.writes

    run(body())


def test_batch_timeout_falls_back_every_request(redis_server, redis_admin, caplog):
    """Redis paused: the 100 requests of one batch are all answered here after about
    ``timeout``, logged once; then the probe brings Redis back."""
    caplog.set_level(logging.INFO, logger="fastgw")

    async def body():
        local = Limiter(1, 5)
        async with ClusterLimits(redis_server.url, timeout=0.1) as limits:
            assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) == 99
            redis_admin.client_pause(500, all=True)
            started = time.monotonic()
            answers = await asyncio.gather(*(
                limits.acquire(b"k", b"a", 10 * SECOND, 100, local, time.monotonic_ns())
                for _ in range(100)))
            elapsed = time.monotonic() - started
            assert 0.08 <= elapsed < 0.4, elapsed
            assert sorted(a for a in answers if a >= 0) == [0, 1, 2, 3, 4]  # the local burst
            assert limits.fallbacks == 100 and not limits.up
            assert len(records(caplog, "unreachable")) == 1
            assert "no answer within 100 ms" in records(caplog, "unreachable")[0].getMessage()
            assert await wait_up(limits, 5.0), "not back within 5 s"
            assert 0 <= await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) <= 98
            assert limits.fallbacks == 100

    run(body())


def test_noscript_sends_the_script_again(redis_server, redis_admin):
    """The scripts flushed under a live connection: the calls answered NOSCRIPT are
    sent again as EVAL (which loads it), none falls back, and the next go by EVALSHA."""
    async def body():
        local = Limiter(1000, 1000)
        async with ClusterLimits(redis_server.url, timeout=2.0) as limits:
            assert await limits.acquire(b"ns", b"k", 10 * SECOND, 100, local, 0) == 99
            redis_admin.script_flush()
            evals = evalsha_calls(redis_admin, "eval")
            answers = await asyncio.gather(*(
                limits.acquire(b"ns", b"k", 10 * SECOND, 100, local, 0) for _ in range(30)))
            assert sorted(answers) == list(range(69, 99))
            assert evalsha_calls(redis_admin, "eval") - evals == 30
            calls = evalsha_calls(redis_admin)
            assert await limits.acquire(b"ns", b"k", 10 * SECOND, 100, local, 0) == 68
            assert evalsha_calls(redis_admin) - calls == 1
            assert evalsha_calls(redis_admin, "eval") - evals == 30
            assert limits.fallbacks == 0 and limits.up

    run(body())


def test_cancelled_requests(redis_server, redis_admin):
    """A request cancelled before its batch is sent is not sent; one cancelled after
    has its answer dropped; the connection goes on in step."""
    async def body():
        local = Limiter(1000, 1000)
        async with ClusterLimits(redis_server.url, timeout=2.0) as limits:
            assert await limits.acquire(b"c", b"k", 10 * SECOND, 100, local, 0) == 99
            calls = evalsha_calls(redis_admin)
            tasks = [asyncio.ensure_future(limits.acquire(b"c", b"k", 10 * SECOND, 100, local, 0))
                     for _ in range(20)]
            await asyncio.sleep(0)
            assert limits._batch is not None and len(limits._batch.items) == 20  # queued, not sent
            for task in tasks[:10]:
                task.cancel()
            answers = await asyncio.gather(*tasks[10:])
            assert sorted(answers) == list(range(89, 99))
            assert all(task.cancelled() for task in tasks[:10])
            assert evalsha_calls(redis_admin) - calls == 10
            tasks = [asyncio.ensure_future(limits.acquire(b"c", b"k", 10 * SECOND, 100, local, 0))
                     for _ in range(10)]
            while limits._link is None or not limits._link.sent:
                await asyncio.sleep(0)
            for task in tasks[:5]:  # sent: Redis runs them, their answers are dropped
                task.cancel()
            answers = await asyncio.gather(*tasks[5:])
            assert len(answers) == 5 and all(79 <= a < 89 for a in answers)
            assert await limits.acquire(b"c", b"k", 10 * SECOND, 100, local, 0) == 78
            assert limits.fallbacks == 0 and limits.up

    run(body())


def test_idle_connection_closed_by_redis(redis_server, redis_admin, caplog):
    """Redis closes the connection while no call is in flight (as its idle timeout
    does): not a failure; the next request opens another connection."""
    caplog.set_level(logging.INFO, logger="fastgw")

    async def body():
        local = Limiter(1, 5)
        async with ClusterLimits(redis_server.url, timeout=1.0) as limits:
            assert await limits.acquire(b"idle", b"k", 10 * SECOND, 100, local, 0) == 99
            assert redis_admin.client_kill_filter(_type="normal", skipme=True) == 1
            await asyncio.sleep(0.1)
            assert await limits.acquire(b"idle", b"k", 10 * SECOND, 100, local, 0) == 98
            assert limits.fallbacks == 0 and limits.up
            assert not records(caplog, "unreachable")

    run(body())


# -- Redis failing ------------------------------------------------------------------------------


async def wait_up(limits: ClusterLimits, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if limits.up:
            return True
        await asyncio.sleep(0.02)
    return limits.up


def test_redis_killed_and_restarted(redis_server, caplog):
    caplog.set_level(logging.INFO, logger="fastgw")

    async def body():
        baseline = asyncio.all_tasks()
        local = Limiter(1, 3)  # the answers tell the two apart: burst 3 here, 100 in Redis
        async with ClusterLimits(redis_server.url) as limits:  # timeout 50 ms
            assert await limits.acquire(b"k", b"a", SECOND, 100, local, time.monotonic_ns()) == 99
            redis_server.kill()
            # 20 at once, all failing together: each answered by this machine, one warning
            started = time.monotonic()
            answers = await asyncio.gather(*(
                limits.acquire(b"k", b"a", SECOND, 100, local, time.monotonic_ns()) for _ in range(20)))
            assert time.monotonic() - started < 0.5
            assert sorted(a for a in answers if a >= 0) == [0, 1, 2]
            # (their now_ns were all taken before the first ran: a wait may pass 1 s a bit)
            assert all(-SECOND - 100_000_000 <= a < 0 for a in answers if a < 0), answers
            assert not limits.up and limits.fallbacks == 20
            # while it is down, Redis is not tried: answers at once, all counted
            started = time.monotonic()
            answers = [await limits.acquire(b"k", b"a", SECOND, 100, local, time.monotonic_ns())
                       for _ in range(100)]
            assert time.monotonic() - started < 0.2
            assert all(-SECOND <= a < 0 for a in answers), answers
            assert limits.fallbacks == 120
            assert len(records(caplog, "unreachable")) == 1
            record = records(caplog, "unreachable")[0]
            assert record.levelno == logging.WARNING
            assert f"redis at 127.0.0.1:{redis_server.port} unreachable" in record.getMessage()
            assert "fall back to this machine's" in record.getMessage()
            assert not records(caplog, "reachable again")

            redis_server.start()  # the same port, empty (and without the script)
            assert await wait_up(limits, 5.0), "not back within 5 s"
            assert len(records(caplog, "reachable again")) == 1
            assert await limits.acquire(b"k", b"a", SECOND, 100, local, time.monotonic_ns()) == 99
            assert await limits.acquire(b"k", b"a", SECOND, 100, local, time.monotonic_ns()) == 98
            assert limits.fallbacks == 120
            assert len(records(caplog, "unreachable")) == 1
        assert not tasks_left(baseline)

    run(body())


def test_redis_never_reachable(caplog):
    """Nothing listens: the first request already falls back, nothing hangs, and close()
    stops the probing."""
    caplog.set_level(logging.INFO, logger="fastgw")

    async def body():
        baseline = asyncio.all_tasks()
        local = Limiter(1, 5)
        async with ClusterLimits(f"redis://127.0.0.1:{free_port()}/0") as limits:
            started = time.monotonic()
            answers = [await limits.acquire(b"k", b"a", SECOND, 100, local, time.monotonic_ns())
                       for _ in range(10)]
            assert time.monotonic() - started < 0.5
            assert answers[:5] == [4, 3, 2, 1, 0] and all(a < 0 for a in answers[5:])
            assert limits.fallbacks == 10 and not limits.up
            await asyncio.sleep(1.3)  # a probe or two fail: still down, still logged once
            assert not limits.up
            assert len(records(caplog, "unreachable")) == 1
        assert not tasks_left(baseline)

    run(body())


def test_redis_accepts_but_never_answers(caplog):
    """A listener that never answers (a hung Redis): the request falls back after about
    ``timeout``, and later ones at once."""
    caplog.set_level(logging.INFO, logger="fastgw")
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # the kernel completes connections; nothing is ever read or written

    async def body():
        baseline = asyncio.all_tasks()
        local = Limiter(1, 5)
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        async with ClusterLimits(url, timeout=0.1) as limits:
            started = time.monotonic()
            assert await limits.acquire(b"k", b"a", SECOND, 100, local, 0) == 4
            elapsed = time.monotonic() - started
            assert 0.08 <= elapsed < 0.5, elapsed
            started = time.monotonic()
            assert await limits.acquire(b"k", b"a", SECOND, 100, local, 0) == 3
            assert time.monotonic() - started < 0.05
            assert limits.fallbacks == 2
            message = records(caplog, "unreachable")[0].getMessage()
            assert "no answer within 100 ms" in message
        assert not tasks_left(baseline)  # closed: nothing of it runs on

    try:
        run(body())
    finally:
        hung.close()


def test_slow_redis(redis_server, redis_admin, caplog):
    """Redis paused for a second (every command waits): the request falls back after
    about ``timeout``; while down no command goes to Redis; when it answers again the
    probe brings the cluster limits back."""
    caplog.set_level(logging.INFO, logger="fastgw")

    async def body():
        baseline = asyncio.all_tasks()
        local = Limiter(1, 5)
        async with ClusterLimits(redis_server.url, timeout=0.05) as limits:
            assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) == 99
            before = redis_admin.info("commandstats")["cmdstat_evalsha"]["calls"]
            redis_admin.client_pause(1000, all=True)
            started = time.monotonic()
            assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) == 4
            elapsed = time.monotonic() - started
            assert 0.04 <= elapsed < 0.3, elapsed
            assert not limits.up
            started = time.monotonic()
            for _ in range(100):
                await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0)
            assert time.monotonic() - started < 0.1  # not one of them waited for Redis
            assert limits.fallbacks == 101
            assert await wait_up(limits, 5.0), "not back within 5 s"
            assert len(records(caplog, "unreachable")) == 1
            assert len(records(caplog, "reachable again")) == 1
            # (the request that timed out may have been run once the pause ended)
            assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) in (98, 97)
            calls = redis_admin.info("commandstats")["cmdstat_evalsha"]["calls"] - before
            assert calls <= 2, calls  # perhaps the timed-out one, and the last one
        assert not tasks_left(baseline)  # closed: nothing of it runs on

    run(body())


def test_redis_refusing_writes_stays_down(redis_server, redis_admin, caplog):
    """A Redis that answers PING but refuses the script's write (out of memory) is down:
    the probe runs the script, so the limits do not flap back to it."""
    caplog.set_level(logging.INFO, logger="fastgw")

    async def body():
        local = Limiter(1, 5)
        async with ClusterLimits(redis_server.url, timeout=0.5) as limits:
            assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) == 99
            redis_admin.config_set("maxmemory-policy", "noeviction")
            redis_admin.config_set("maxmemory", 1)
            assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) == 4
            assert not limits.up
            assert "maxmemory" in records(caplog, "unreachable")[0].getMessage()
            await asyncio.sleep(2.3)  # two probes: PING answers, the script does not
            assert not limits.up and not records(caplog, "reachable again")
            redis_admin.config_set("maxmemory", 0)
            assert await wait_up(limits, 5.0), "not back within 5 s"
            assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) == 98
            assert limits.fallbacks == 1

    run(body())


def test_bad_url_fails_at_construction():
    with pytest.raises(ValueError, match="scheme"):
        ClusterLimits("http://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="timeout"):
        ClusterLimits("redis://127.0.0.1:6379/0", timeout=0)


def test_new_event_loop_and_close():
    """Down in one event loop, a new loop (a forked worker's) tries Redis afresh; after
    close() requests are answered locally and nothing is left running."""
    server = RedisServer()
    limits = ClusterLimits(server.url)
    local = Limiter(1, 5)

    async def down():
        assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) == 4
        assert not limits.up

    async def back():
        baseline = asyncio.all_tasks()
        assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) == 99
        assert limits.up
        await limits.close()
        assert not tasks_left(baseline)
        assert await limits.acquire(b"k", b"a", 10 * SECOND, 100, local, 0) == 3
        assert limits.fallbacks == 2 and not tasks_left(baseline)

    try:
        run(down())
        server.start()
        run(back())
    finally:
        server.kill()


def test_a_unix_socket_url(tmp_path):
    """``unix:///path``: the same calls over a Unix socket (no TCP options)."""
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.02)

        async def body():
            async with ClusterLimits(f"unix://{sock}", timeout=1.0) as limits:
                answers = [await limits.acquire(b"u", b"k", SECOND, 3, Limiter(1, 1), 0) for _ in range(4)]
                assert answers[:3] == [2, 1, 0] and answers[3] < 0
                assert limits.up and limits.fallbacks == 0

        run(body())
    finally:
        proc.kill()
        proc.wait(5)
