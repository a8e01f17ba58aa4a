"""End to end through a real gateway process: the pick step of an upstream with several
targets (``balance``, ``hash_on``), against real backends on 127.0.0.1 that say who
answered (``x-backend``).

May import: tests.backend, tests.conftest, httpx, pytest, the standard library.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import free_port


def upstream_config(backends, port: int, extra: str, server: str = "") -> str:
    targets = ", ".join(f'"{b.address}"' for b in backends)
    return (f'[server]\nlisten = ["127.0.0.1:{port}"]\n{server}\n[log]\naccess = "off"\n\n'
            f'[upstreams.app]\ntargets = [{targets}]\n{extra}\n'
            f'[[routes]]\nname = "all"\npaths = ["/*"]\nupstream = "app"\n')


@pytest.fixture
def three(make_backend):
    return [make_backend(f"b{i}") for i in range(3)]


def who(client: httpx.Client, path: str = "/echo", **kwargs) -> str:
    r = client.get(path, **kwargs)
    assert r.status_code == 200, r.text
    return r.headers["x-backend"]


def test_round_robin_spreads_by_weight(make_backend, gateway):
    a, b = make_backend("a"), make_backend("b")
    port = free_port()
    toml = upstream_config([], port, "").replace(
        "targets = []", f'targets = [{{ address = "{a.address}", weight = 1 }}, {{ address = "{b.address}", weight = 3 }}]')
    gw = gateway(toml, port)
    with httpx.Client(base_url=gw.url) as c:
        assert Counter(who(c) for _ in range(40)) == {"a": 10, "b": 30}


@pytest.mark.parametrize(("hash_on", "send"), [
    ("header:X-User", lambda user: {"headers": {"x-user": user}}),
    ("cookie:session", lambda user: {"headers": {"cookie": f"theme=dark; session={user}"}}),
    ("query:user", lambda user: {"params": {"user": user}}),
    ("path", None),
])
def test_consistent_hash_keeps_a_key_on_one_target(three, gateway, hash_on, send):
    port = free_port()
    gw = gateway(upstream_config(three, port, f'balance = "consistent_hash"\nhash_on = "{hash_on}"\n'), port)
    owners = {}
    with httpx.Client(base_url=gw.url) as c:
        for user in (f"user-{i}" for i in range(30)):
            if send is None:
                seen = {who(c, f"/echo/{user}") for _ in range(3)}
            else:
                seen = {who(c, **send(user)) for _ in range(3)}
            assert len(seen) == 1, (user, seen)  # always the same target
            owners[user] = seen.pop()
    assert len(set(owners.values())) == 3  # and the keys spread over all of them


def test_consistent_hash_without_the_key_falls_back_to_round_robin(three, gateway):
    port = free_port()
    gw = gateway(upstream_config(three, port, 'balance = "consistent_hash"\nhash_on = "header:x-user"\n'), port)
    with httpx.Client(base_url=gw.url) as c:
        assert Counter(who(c) for _ in range(9)) == {"b0": 3, "b1": 3, "b2": 3}


def test_consistent_hash_on_ip_believes_only_trusted_proxies(three, gateway):
    port = free_port()
    ring = 'balance = "consistent_hash"\nhash_on = "ip"\n'
    trusting = gateway(upstream_config(three, port, ring, server='trusted_proxies = ["127.0.0.1/32"]'), port)
    with httpx.Client(base_url=trusting.url) as c:
        direct = {who(c) for _ in range(5)}
        assert len(direct) == 1  # one client address, one target
        spread = {who(c, headers={"x-forwarded-for": f"198.51.100.{i}"}) for i in range(40)}
        assert len(spread) == 3  # the clients behind the trusted proxy spread
    port2 = free_port()
    wary = gateway(upstream_config(three, port2, ring), port2)
    with httpx.Client(base_url=wary.url) as c:
        assert len({who(c, headers={"x-forwarded-for": f"198.51.100.{i}"}) for i in range(20)}) == 1


def test_least_conn_avoids_the_busy_target(make_backend, gateway):
    a, b = make_backend("a"), make_backend("b")
    port = free_port()
    gw = gateway(upstream_config([a, b], port, 'balance = "least_conn"\n'), port)
    with httpx.Client(base_url=gw.url) as c:
        assert who(c) == "a"  # equals take turns: a first, then b
        assert who(c) == "b"
        slow = threading.Thread(target=lambda: httpx.get(f"{gw.url}/slow?ms=1500", timeout=5))
        slow.start()  # a's turn: it goes to a and keeps it busy
        deadline = time.monotonic() + 3
        while a.requests < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [who(c) for _ in range(6)] == ["b"] * 6
        slow.join()


def test_random_uses_every_target(three, gateway):
    port = free_port()
    gw = gateway(upstream_config(three, port, 'balance = "random"\n'), port)
    with httpx.Client(base_url=gw.url) as c:
        counts = Counter(who(c) for _ in range(60))
    assert set(counts) == {"b0", "b1", "b2"}


def split_config(main, canary, port: int, route_extra: str) -> str:
    return (f'[server]\nlisten = ["127.0.0.1:{port}"]\n[log]\naccess = "off"\n\n'
            f'[upstreams.main]\ntargets = ["{main.address}"]\n'
            f'[upstreams.canary]\ntargets = ["{canary.address}"]\n'
            f'[[routes]]\nname = "all"\npaths = ["/*"]\nupstream = "main"\nstrip_prefix = "/api"\n'
            f'{route_extra}\n')


def test_split_sends_its_percent_to_the_canary(make_backend, gateway):
    main, canary = make_backend("main"), make_backend("canary")
    port = free_port()
    gw = gateway(split_config(main, canary, port, 'split = [{ upstream = "canary", weight = 25 }]'), port)
    with httpx.Client(base_url=gw.url) as c:
        assert Counter(who(c, "/api/echo") for _ in range(100)) == {"main": 75, "canary": 25}
        r = c.get("/api/echo/x")
    assert r.json()["path"] == "/echo/x"  # the route's rewriting holds on either upstream


def test_match_split_by_header_wins_over_split(make_backend, gateway):
    main, canary = make_backend("main"), make_backend("canary")
    port = free_port()
    extra = ('split = [{ upstream = "canary", weight = 50 }]\n'
             'match_split = [{ header = "X-Canary", value = "no", upstream = "main" },'
             ' { header = "X-Beta", value = "1", upstream = "canary" }]')
    gw = gateway(split_config(main, canary, port, extra), port)
    with httpx.Client(base_url=gw.url) as c:
        assert {who(c, "/api/echo", headers={"x-canary": "no"}) for _ in range(10)} == {"main"}
        assert {who(c, "/api/echo", headers={"x-beta": "1"}) for _ in range(10)} == {"canary"}
        # a value that does not match leaves the request to the split
        assert Counter(who(c, "/api/echo", headers={"x-beta": "2"}) for _ in range(10)) == {"main": 5, "canary": 5}


def test_a_failed_connect_is_retried_on_another_target(make_backend, gateway):
    live = make_backend("live")
    dead = free_port()  # nothing listens there
    port = free_port()
    toml = upstream_config([live], port, "").replace(
        f'targets = ["{live.address}"]', f'targets = ["127.0.0.1:{dead}", "{live.address}"]')
    gw = gateway(toml, port)
    with httpx.Client(base_url=gw.url) as c:
        assert {who(c) for _ in range(6)} == {"live"}  # round robin sends half to the dead one
        r = c.post("/echo", content=b"x" * 1000)  # any method: nothing of it went anywhere
        assert r.status_code == 200 and r.headers["x-backend"] == "live"


def test_retries_zero_answers_the_failure(make_backend, gateway):
    live = make_backend("live")
    dead = free_port()
    port = free_port()
    toml = upstream_config([live], port, "retries = 0\n").replace(
        f'targets = ["{live.address}"]', f'targets = ["127.0.0.1:{dead}", "{live.address}"]')
    gw = gateway(toml, port)
    with httpx.Client(base_url=gw.url) as c:
        assert Counter(c.get("/echo").status_code for _ in range(6)) == {502: 3, 200: 3}


def test_502_and_503_are_retried_for_idempotent_requests_without_a_body(make_backend, gateway):
    sick, well = make_backend("sick"), make_backend("well")
    sick.flaky_status = 503
    port = free_port()
    gw = gateway(upstream_config([sick, well], port, "retries = 1\n"), port)
    with httpx.Client(base_url=gw.url) as c:
        assert {c.get("/flaky").status_code for _ in range(6)} == {200}
        assert {c.delete("/flaky").status_code for _ in range(4)} == {200}
        # POST is not idempotent, and a body is not kept: the 503 is the answer
        posts = Counter(c.post("/flaky", content=b"{}").status_code for _ in range(6))
        assert posts == {503: 3, 200: 3}
    assert sick.requests >= 5  # the sick one was asked, and its answers dropped


def test_when_every_target_fails_the_last_answer_stands(make_backend, gateway):
    a, b = make_backend("a"), make_backend("b")
    a.flaky_status = b.flaky_status = 502
    port = free_port()
    gw = gateway(upstream_config([a, b], port, "retries = 3\n"), port)
    with httpx.Client(base_url=gw.url) as c:
        r = c.get("/flaky")
    assert r.status_code == 502 and r.json()["backend"] in ("a", "b")  # the upstream's own answer
    assert a.requests + b.requests == 2  # each target once, not four tries


def breaker(failures: int = 2, cooldown: str = "1s") -> str:
    return f"retries = 0\n[upstreams.app.circuit_breaker]\nfailures = {failures}\ncooldown = \"{cooldown}\"\n"


def test_circuit_opens_after_consecutive_failures_and_a_trial_closes_it(make_backend, gateway):
    sick, well = make_backend("sick"), make_backend("well")
    sick.flaky_status = 500
    port = free_port()
    gw = gateway(upstream_config([sick, well], port, breaker()), port)
    with httpx.Client(base_url=gw.url) as c:
        first = [c.get("/flaky").status_code for _ in range(4)]
        assert first == [500, 200, 500, 200]  # round robin, until sick has failed twice
        asked = sick.requests
        assert {c.get("/flaky").status_code for _ in range(10)} == {200}  # open: all to well
        assert sick.requests == asked
        time.sleep(1.1)  # the cooldown: one trial goes to sick, fails, and opens it again
        trial = [c.get("/flaky").status_code for _ in range(6)]
        assert trial.count(500) == 1 and sick.requests == asked + 1
        sick.flaky_status = 200
        time.sleep(1.1)  # the next trial succeeds: closed, round robin again
        backends = [who(c, "/flaky") for _ in range(6)]
        assert backends.count("sick") == 3


def test_every_circuit_open_is_503_with_retry_after(make_backend, gateway):
    a, b = make_backend("a"), make_backend("b")
    a.flaky_status = b.flaky_status = 503
    port = free_port()
    gw = gateway(upstream_config([a, b], port, breaker(failures=1, cooldown="30s")), port)
    with httpx.Client(base_url=gw.url) as c:
        assert [c.get("/flaky").status_code for _ in range(2)] == [503, 503]  # the targets' own
        r = c.get("/flaky")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    assert 28 <= int(r.headers["retry-after"]) <= 30
    assert "can take requests" in r.json()["error"] and a.requests + b.requests == 2


def test_a_dropped_503_with_no_target_left_is_still_a_503(make_backend, gateway):
    """A 503 dropped for a retry, when the other target's circuit is open after all: the
    client gets 503, not a 502 of ours."""
    a, b = make_backend("a"), make_backend("b")
    b.flaky_status = 500
    port = free_port()
    extra = "retries = 1\n[upstreams.app.circuit_breaker]\nfailures = 1\ncooldown = \"30s\"\n"
    gw = gateway(upstream_config([a, b], port, extra), port)
    with httpx.Client(base_url=gw.url) as c:
        assert [c.get("/flaky").status_code for _ in range(2)] == [200, 500]  # b's circuit opens
        a.flaky_status = 503
        r = c.get("/flaky")  # a answers 503: dropped for a retry, but no target is left
    assert r.status_code == 503 and r.json()["error"] == "upstream unavailable"
