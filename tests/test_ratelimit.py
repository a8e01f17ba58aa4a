"""End to end through a real gateway process: ``rate_limit`` (routes and ``[global]``,
scope local: exact across the workers of one machine), the 429 answer and the
RateLimit fields, the keys, reload, a route's ``max_concurrent``, and ``scope = "cluster"``
with a real redis-server: exact across two gateways, and Redis killed mid-test; and
``[server].max_connections``, per worker.

May import: tests.backend, tests.conftest, httpx, pytest, the standard library.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter

import httpx

from tests.conftest import closed_by_peer, config_for


def limited(backend, limit: str, server: str = "", extra: str = "", route_extra: str = "") -> tuple[str, int]:
    routes = (f'[[routes]]\nname = "api"\npaths = ["/*"]\nupstream = "app"\n{route_extra}\n'
              f'[routes.rate_limit]\n{limit}\n')
    toml, port = config_for(backend, routes=routes, server=server, log='access = "off"')
    return extra + toml, port


def statuses(url: str, n: int, path: str = "/echo", **kwargs) -> list[int]:
    with httpx.Client(base_url=url) as c:
        return [c.get(path, **kwargs).status_code for _ in range(n)]


def test_two_workers_sixteen_clients_burst_30_exactly_30_pass(backend, gateway):
    toml, port = limited(backend, 'rate = "1/h"\nburst = 30\nkey = "route"', server="workers = 2")
    gw = gateway(toml, port)
    answers: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(5):  # each request on a new connection: both workers serve some
            with httpx.Client(base_url=gw.url) as c:
                status = c.get("/echo").status_code
            with lock:
                answers.append(status)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert Counter(answers) == {200: 30, 429: 50}


def test_the_429_answer_and_the_ratelimit_fields(backend, gateway):
    toml, port = limited(backend, 'rate = "1/m"\nburst = 3')
    gw = gateway(toml, port)
    with httpx.Client(base_url=gw.url) as c:
        allowed = [c.get("/echo") for _ in range(3)]
        refused = c.get("/echo")
    assert [r.headers["ratelimit-remaining"] for r in allowed] == ["2", "1", "0"]
    assert {r.headers["ratelimit-limit"] for r in allowed} == {"3"}
    assert [int(r.headers["ratelimit-reset"]) for r in allowed] == [60, 120, 180]  # full again
    assert refused.status_code == 429 and refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert body == {"error": "rate limit of 'api' exceeded", "status": 429,
                    "request_id": refused.headers["x-request-id"]}
    assert 59 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-remaining"] == "0" and refused.headers["ratelimit-limit"] == "3"
    assert 179 <= int(refused.headers["ratelimit-reset"]) <= 180
    assert backend.count("/echo") == 3  # the refused request never went upstream


def test_keys_ip_behind_trusted_proxies_and_header(backend, gateway):
    toml, port = limited(backend, 'rate = "1/h"\nburst = 2', server='trusted_proxies = ["127.0.0.1/32"]')
    gw = gateway(toml, port)
    for client in ("198.51.100.1", "198.51.100.2"):  # each address its own bucket
        assert statuses(gw.url, 3, headers={"x-forwarded-for": client}) == [200, 200, 429]
    toml, port = limited(backend, 'rate = "1/h"\nburst = 2\nkey = "header:X-User"')
    gw = gateway(toml, port)
    assert statuses(gw.url, 3, headers={"x-user": "alice"}) == [200, 200, 429]
    assert statuses(gw.url, 3, headers={"x-user": "bob"}) == [200, 200, 429]
    # without the header: the client's address, its own bucket (not a way around it)
    assert statuses(gw.url, 3) == [200, 200, 429]


def test_global_limit_is_shared_by_every_route(make_backend, gateway):
    b = make_backend("b")
    routes = ('[[routes]]\nname = "one"\npaths = ["/one/*"]\nupstream = "app"\nstrip_prefix = "/one"\n'
              '[[routes]]\nname = "two"\npaths = ["/two/*"]\nupstream = "app"\nstrip_prefix = "/two"\n'
              'rate_limit = { rate = "1/h", burst = 1 }\n')
    toml, port = config_for(b, routes=routes, log='access = "off"')
    gw = gateway('[global]\nrate_limit = { rate = "1/h", burst = 3, key = "ip" }\n' + toml, port)
    with httpx.Client(base_url=gw.url) as c:
        got = [c.get(p).status_code for p in ("/one/echo", "/two/echo", "/two/echo", "/one/echo", "/one/echo")]
        last = c.get("/one/echo")
    # /two's own limit (1) refuses its second; the global 3 are spent by the first three
    # that passed it (one, two) plus the refused one's global token, so the fourth is 429
    assert got == [200, 200, 429, 429, 429]
    assert last.json()["error"] == "rate limit of 'global' exceeded"


def test_refill_at_the_rate(backend, gateway):
    toml, port = limited(backend, 'rate = "20/s"\nburst = 1\nkey = "route"')
    gw = gateway(toml, port)
    passed = 0
    start = time.monotonic()
    with httpx.Client(base_url=gw.url) as c:
        while time.monotonic() - start < 1.0:
            passed += c.get("/echo").status_code == 200
            time.sleep(0.005)
    assert 15 <= passed <= 23, passed  # 1 + 20 a second, loosely: timings drift here


def test_a_reload_keeps_the_buckets_of_unchanged_limits(backend, gateway):
    toml, port = limited(backend, 'rate = "1/h"\nburst = 2\nkey = "route"')
    gw = gateway(toml, port)
    assert statuses(gw.url, 3) == [200, 200, 429]
    gw.reload(toml.replace('access = "off"', 'access = "stdout"'))  # the limit unchanged
    time.sleep(1.0)
    assert statuses(gw.url, 1) == [429]
    gw.reload(toml.replace("burst = 2", "burst = 4"))  # a new limit starts full
    deadline = time.monotonic() + 5
    while statuses(gw.url, 1) != [200]:
        assert time.monotonic() < deadline, "the changed limit never took effect"
        time.sleep(0.1)


def test_a_flood_of_new_keys_does_not_reset_a_busy_key(backend, gateway):
    toml, port = limited(backend, 'rate = "1/h"\nburst = 2\nkey = "header:x-user"\nmax_keys = 64')
    gw = gateway(toml, port)
    assert statuses(gw.url, 3, headers={"x-user": "busy"}) == [200, 200, 429]
    with httpx.Client(base_url=gw.url) as c:
        flood = Counter(c.get("/echo", headers={"x-user": uuid.uuid4().hex}).status_code for _ in range(600))
    assert flood[200] > 0 and set(flood) <= {200, 429}
    assert statuses(gw.url, 1, headers={"x-user": "busy"}) == [429]  # still spent
    assert gw.proc.poll() is None


def test_max_concurrent_is_503_beyond_it_across_workers(backend, gateway):
    routes = ('[[routes]]\nname = "slow"\npaths = ["/*"]\nupstream = "app"\nmax_concurrent = 2\n')
    toml, port = config_for(backend, routes=routes, server="workers = 2", log='access = "off"')
    gw = gateway(toml, port)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.get("/slow?ms=800")
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(15)
    assert Counter(r.status_code for r in answers) == {200: 2, 503: 4}
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.json()["error"] == "route 'slow' has 2 requests in flight (max_concurrent)"
    assert refused.headers["retry-after"] == "1"
    # all done: the count is back to zero
    assert statuses(gw.url, 3, path="/slow?ms=1") == [200, 200, 200]


# -- scope = "cluster": Redis ------------------------------------------------------------


def cluster_config(backend, redis_url: str, limit: str, timeout: str = "2s") -> tuple[str, int]:
    # A generous [cluster].timeout where a test counts exactly: on this 2-core machine a
    # busy moment could otherwise look like a slow Redis and switch to local counting.
    return limited(backend, limit + '\nscope = "cluster"',
                   extra=f'[cluster]\nredis = "{redis_url}"\ntimeout = "{timeout}"\n')


def test_two_gateways_one_redis_burst_25_exactly_25_pass(backend, gateway, redis_server):
    urls = []
    for _ in range(2):  # two "machines"
        toml, port = cluster_config(backend, redis_server.url, 'rate = "1/h"\nburst = 25\nkey = "route"')
        urls.append(gateway(toml, port).url)
    answers: list[int] = []
    lock = threading.Lock()

    def client(url: str) -> None:
        with httpx.Client(base_url=url) as c:
            for _ in range(5):
                status = c.get("/echo").status_code
                with lock:
                    answers.append(status)

    threads = [threading.Thread(target=client, args=(urls[i % 2],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert Counter(answers) == {200: 25, 429: 55}


def test_redis_killed_mid_test_falls_back_to_the_machine_and_comes_back(backend, gateway, redis_server):
    toml, port = cluster_config(backend, redis_server.url, 'rate = "1/h"\nburst = 5\nkey = "route"',
                                timeout="100ms")
    gw = gateway(toml, port)
    assert statuses(gw.url, 2) == [200, 200]  # two of Redis's five
    redis_server.kill()
    with httpx.Client(base_url=gw.url, timeout=5) as c:
        start = time.monotonic()
        after = [c.get("/echo").status_code for _ in range(8)]
        took = time.monotonic() - start
    # the machine's own buckets answer, full: five pass, then 429; never a 500, no hang
    assert after == [200] * 5 + [429] * 3
    assert took < 3, took
    assert gw.stderr.count("unreachable") == 1
    redis_server.start()
    deadline = time.monotonic() + 10
    while "reachable again" not in gw.stderr:
        assert time.monotonic() < deadline, "never reconnected"
        time.sleep(0.1)
    # Redis is empty after its restart: its bucket is full again
    assert statuses(gw.url, 6) == [200] * 5 + [429]


def test_max_connections_per_worker_closes_the_one_over_at_once(backend, gateway):
    toml, port = config_for(backend, server="max_connections = 3", log='access = "off"')
    gw = gateway(toml, port)
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
    held = []
    for _ in range(3):  # three keep-alive connections, each served once and kept open
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        held.append(sock)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
        extra.sendall(request)
        assert closed_by_peer(extra)  # closed, unanswered
    held.pop().close()
    time.sleep(0.2)  # the gateway sees that close
    assert statuses(gw.url, 1) == [200]  # room again
    for sock in held:
        sock.close()


def test_a_client_that_leaves_frees_its_max_concurrent_place(backend, gateway):
    routes = '[[routes]]\nname = "slow"\npaths = ["/*"]\nupstream = "app"\nmax_concurrent = 1\n'
    toml, port = config_for(backend, routes=routes, log='access = "off"')
    gw = gateway(toml, port)
    leaving = socket.create_connection(("127.0.0.1", port), timeout=5)
    leaving.sendall(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    assert statuses(gw.url, 1) == [503]  # the one place is taken
    leaving.close()  # the client gives up mid-request
    time.sleep(0.5)
    assert statuses(gw.url, 1) == [200]


def test_ratelimit_fields_on_a_chunked_answer_and_on_our_own_errors(backend, gateway):
    """The fields go on every answer to an allowed request: one llhttp read (chunked, not
    the plain-head shortcut), and one fastgw made (502: nothing listens)."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # reserved, then released: nothing listens there
    routes = ('[[routes]]\nname = "api"\npaths = ["/*"]\nupstream = "app"\n'
              'rate_limit = { rate = "1/h", burst = 5, key = "route" }\n'
              '[[routes]]\nname = "dead"\npaths = ["/dead"]\nupstream = "dead"\n'
              'rate_limit = { rate = "1/h", burst = 5, key = "route" }\n')
    toml, port = config_for(backend, routes=routes, log='access = "off"')
    toml += f'[upstreams.dead]\ntargets = ["127.0.0.1:{dead_port}"]\n'
    gw = gateway(toml, port)
    with httpx.Client(base_url=gw.url) as c:
        chunked = c.get("/chunked?n=3&size=10")
        failed = c.get("/dead")
    assert chunked.status_code == 200 and len(chunked.content) == 30
    assert (chunked.headers["ratelimit-limit"], chunked.headers["ratelimit-remaining"]) == ("5", "4")
    assert failed.status_code == 502
    assert (failed.headers["ratelimit-limit"], failed.headers["ratelimit-remaining"]) == ("5", "4")
