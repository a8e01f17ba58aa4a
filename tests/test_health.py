"""End to end through a real gateway process: active health checks and the state every
worker shares (``_core.targets``): checks run once per interval whatever ``workers`` is,
every worker avoids what they find unhealthy, a circuit opens after ``failures`` failures
machine-wide, and a state change is logged once.

May import: fastgw (to build a snapshot in process), tests.backend, tests.conftest,
tests.test_balancing, httpx, pytest, the standard library.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest

from fastgw.config import parse_config
from fastgw.snapshot import compile_snapshot
from tests.conftest import free_port
from tests.test_balancing import upstream_config

CHECKS = ('[upstreams.app.health_check]\npath = "/healthz"\ninterval = "{interval}"\n'
          'timeout = "{timeout}"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n')


def checks(interval: str = "200ms", timeout: str = "100ms") -> str:
    return CHECKS.format(interval=interval, timeout=timeout)


def wait_for(condition, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def fresh_requests(url: str, n: int, path: str = "/flaky") -> list[httpx.Response]:
    """``n`` requests, each on a new connection: the kernel spreads new connections over
    the workers (SO_REUSEPORT), so every worker answers some."""
    answers = []
    for _ in range(n):
        with httpx.Client(base_url=url) as c:
            answers.append(c.get(path))
    return answers


def test_an_unhealthy_target_gets_no_traffic_from_any_worker_until_it_recovers(make_backend, gateway):
    a, b = make_backend("a"), make_backend("b")
    port = free_port()
    gw = gateway(upstream_config([a, b], port, "retries = 0\n" + checks(), server="workers = 2"), port)
    wait_for(lambda: a.count("/healthz") and b.count("/healthz"), what="the first checks")
    b.health_status = 500
    wait_for(lambda: "unhealthy" in gw.stderr, what="b found unhealthy")
    assert f"upstream app target {b.address}: unhealthy after 2 failed checks (last: status 500)" in gw.stderr
    answers = fresh_requests(gw.url, 30)
    assert Counter(r.headers["x-backend"] for r in answers) == {"a": 30}
    b.health_status = 200
    wait_for(lambda: f"upstream app target {b.address}: healthy" in gw.stderr.split("unhealthy after")[-1],
             what="b healthy again")
    answers = fresh_requests(gw.url, 30)
    assert Counter(r.headers["x-backend"] for r in answers)["b"] >= 5  # back in the rotation
    # each change was logged once, by the one worker whose check found it
    assert gw.stderr.count(": unhealthy after") == 1


def test_a_check_that_hangs_or_is_refused_fails(make_backend, gateway):
    a, b, dead = make_backend("a"), make_backend("b"), make_backend("dead")
    b.health_status = None  # accepts, never answers
    dead.close()
    port = free_port()
    gw = gateway(upstream_config([a, b, dead], port, "retries = 0\n" + checks()), port)
    wait_for(lambda: gw.stderr.count(": unhealthy after") == 2, what="two unhealthy targets")
    assert f"target {b.address}: unhealthy after 2 failed checks (last: no answer within 0.1s)" in gw.stderr
    assert f"target {dead.address}: unhealthy after 2 failed checks (last: connection refused)" in gw.stderr
    with httpx.Client(base_url=gw.url) as c:
        assert {c.get("/flaky").headers["x-backend"] for _ in range(9)} == {"a"}


def test_no_healthy_target_is_503_with_retry_after(make_backend, gateway):
    a = make_backend("a")
    a.health_status = 503
    port = free_port()
    gw = gateway(upstream_config([a], port, checks(interval="2s", timeout="100ms")), port)
    wait_for(lambda: "unhealthy" in gw.stderr, timeout=8, what="a found unhealthy")
    asked = a.count("/flaky")
    with httpx.Client(base_url=gw.url) as c:
        r = c.get("/flaky")
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "no healthy target in upstream 'app'"
    assert r.headers["retry-after"] == "2"  # the next check
    assert a.count("/flaky") == asked


def test_checks_run_once_per_interval_whatever_the_workers(make_backend, gateway):
    a = make_backend("a")
    port = free_port()
    gw = gateway(upstream_config([a], port, checks(interval="250ms"), server="workers = 4"), port)
    wait_for(lambda: a.count("/healthz"), what="the first check")
    start, first = time.monotonic(), a.count("/healthz")
    time.sleep(2.5)
    elapsed, made = time.monotonic() - start, a.count("/healthz") - first
    # one worker wins each interval: about 10; four workers checking on their own, 40
    assert elapsed / 0.25 - 3 <= made <= elapsed / 0.25 + 1, (made, elapsed)
    seen = [s for s in a.seen if s["target"] == "/healthz"]
    assert dict(seen[0]["headers"])["host"] == a.address
    assert dict(seen[0]["headers"])["user-agent"].startswith("fastgw-health-check/")
    assert gw.proc.poll() is None


def test_circuit_state_is_shared_by_the_workers(make_backend, gateway):
    sick, well = make_backend("sick"), make_backend("well")
    sick.flaky_status = 500
    port = free_port()
    extra = 'retries = 0\n[upstreams.app.circuit_breaker]\nfailures = 3\ncooldown = "30s"\n'
    gw = gateway(upstream_config([sick, well], port, extra, server="workers = 2"), port)
    answers = fresh_requests(gw.url, 40)
    # machine-wide: the third failure opens it; per worker it would take three in each
    assert sick.count("/flaky") == 3
    assert Counter(r.status_code for r in answers) == {200: 37, 500: 3}
    wait_for(lambda: "circuit open" in gw.stderr, what="the log line")
    assert gw.stderr.count("circuit open after 3 consecutive failures") == 1


def test_a_reload_keeps_what_the_checks_found(make_backend, gateway):
    a, b = make_backend("a"), make_backend("b")
    b.health_status = 500
    port = free_port()
    toml = upstream_config([a, b], port, "retries = 0\n" + checks(interval="1s", timeout="100ms"))
    gw = gateway(toml, port)
    wait_for(lambda: "unhealthy" in gw.stderr, what="b found unhealthy")
    gw.reload(toml.replace("retries = 0", "retries = 1"))  # a new Upstream object, same targets
    wait_for(lambda: "reloaded" in gw.stderr, what="the reload")
    with httpx.Client(base_url=gw.url) as c:
        assert {c.get("/flaky").headers["x-backend"] for _ in range(10)} == {"a"}


def test_targets_view_shows_what_every_worker_shares():
    """What the admin API will show, read from a snapshot built in this process."""

    text = ('[upstreams.app]\ntargets = ["127.0.0.1:91", "127.0.0.1:92"]\n'
            '[upstreams.app.circuit_breaker]\nfailures = 2\n'
            '[upstreams.plain]\ntargets = ["127.0.0.1:1"]\n'
            '[[routes]]\nname = "r"\npaths = ["/*"]\nupstream = "app"\n')
    snapshot = compile_snapshot(parse_config(text, "t.toml"))
    app = snapshot.upstreams["app"]
    for _ in range(2):
        app.pools[1].record(None, False)
    first, second = app.targets_view()
    assert (first["address"], first["health"], first["circuit"], first["failures_total"]) == ("127.0.0.1:91", "off", "closed", 0)
    assert (second["circuit"], second["consecutive_failures"], second["failures_total"]) == ("open", 2, 2)
    assert 29_000 <= second["retry_in_ms"] <= 30_000
    assert snapshot.upstreams["plain"].targets_view()[0]["circuit"] == "off"
