"""The policy chain and its built-in policies: the chain's order and phases (``Chain`` with
fake policies), and end to end through a real gateway with real backends: ``ip`` (route
and ``[global]``, deny over allow, behind trusted proxies), ``request_headers`` and
``response_headers`` (set, add, remove, variables; every way a response head is written),
and ``cors`` (preflights with curl, actual requests, its config errors).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

import httpx
import pytest

from fastgw.exchange import ResponseEdit
from fastgw.policies.ip import IpFilter
from fastgw.policy import Chain, Policy
from tests.conftest import config_for, free_port, raw_request


# -- the chain ---------------------------------------------------------------------------------


class Fake(Policy):
    """A policy of the test: it records the phases it was asked in."""

    def __init__(self, name, owner="r", priority=0, request=False, response=False, log=False, **kwargs):
        super().__init__(name, owner, priority, request=request, response=response, log=log, **kwargs)


def test_the_chain_runs_by_priority_global_first_among_equals():
    a = Fake("a", "global", 10, request=True)
    b = Fake("b", "r", 10, request=True, log=True)
    c = Fake("c", "r", 50, response=True)
    d = Fake("d", "r", 0)
    chain = Chain([a, b, c, d])
    assert chain.policies == (c, a, b, d)
    assert chain.request_phase == (a, b)
    assert chain.response_phase == (c,)
    assert chain.log_phase == (b,)
    assert chain.on_exchange and chain.dynamic
    assert chain.describe() == "c → a [global] → b → d"


def test_static_edits_are_gathered_in_order_and_keep_the_shortcut():
    chain = Chain([Fake("x", priority=1, drops=[b"Server"], adds=[(b"x-a", b"1")]),
                   Fake("y", priority=2, drops=[b"x-powered-by"], adds=[(b"x-b", b"2")])])
    assert chain.drop_names == (b"x-powered-by", b"server")
    assert chain.static_fields == [(b"x-b", b"2"), (b"x-a", b"1")]
    assert chain.static_lines == b"x-b: 2\r\nx-a: 1\r\n"
    assert chain.on_exchange and not chain.dynamic  # no hook reads the head: the shortcut stays


def test_an_empty_chain_costs_nothing_on_the_exchange():
    chain = Chain([])
    assert (chain.policies, chain.request_phase, chain.on_exchange, chain.drop_names) == ((), (), False, None)
    assert chain.describe() == "none"
    assert isinstance(chain, ResponseEdit)


@pytest.mark.parametrize(("ip", "allowed"), [
    ("10.1.2.3", True), ("10.9.9.9", False), ("192.0.2.1", False), ("2001:db8::1", True),
    ("2001:db8::bad", False), ("::ffff:10.1.2.3", True), ("not an address", False), ("", False)])
def test_ip_deny_wins_over_allow_and_mapped_addresses_are_ipv4(ip, allowed):
    policy = IpFilter("r", [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")],
                      [ipaddress.ip_network("10.9.0.0/16"), ipaddress.ip_network("2001:db8::bad/128")])
    assert policy.judge(ip) is allowed


def test_ip_without_allow_lets_all_but_the_denied_pass():
    policy = IpFilter("r", [], [ipaddress.ip_network("192.0.2.0/24")])
    assert policy.judge("198.51.100.1") and not policy.judge("192.0.2.77")


# -- ip, end to end ----------------------------------------------------------------------------


def refused(r: httpx.Response) -> bool:
    return r.status_code == 403 and r.json() == {"error": "client address not allowed", "status": 403,
                                                  "request_id": r.headers["x-request-id"]}


def test_ip_on_a_route_and_in_global(backend, gateway):
    toml, port = config_for(backend, server='trusted_proxies = ["127.0.0.1"]', routes="""
        [global]
        ip = { deny = ["192.0.2.0/24"] }
        [[routes]]
        name = "inside"
        paths = ["/inside/*"]
        upstream = "app"
        strip_prefix = "/inside"
        ip = { allow = ["10.0.0.0/8"], deny = ["10.9.0.0/16"] }
        [[routes]]
        name = "open"
        paths = ["/*"]
        upstream = "app"
        """)
    gw = gateway(toml, port)
    with httpx.Client(base_url=gw.url) as client:
        assert refused(client.get("/inside/echo"))  # 127.0.0.1 is not in 10/8
        assert client.get("/inside/echo", headers={"x-forwarded-for": "10.1.2.3"}).status_code == 200
        assert refused(client.get("/inside/echo", headers={"x-forwarded-for": "10.9.0.1"}))  # deny wins
        assert client.get("/echo").status_code == 200
        assert refused(client.get("/echo", headers={"x-forwarded-for": "192.0.2.7"}))  # [global]'s deny
        assert refused(client.get("/inside/echo", headers={"x-forwarded-for": "192.0.2.7"}))
    assert backend.count("/echo") == 2  # nothing refused went upstream


# -- request_headers and response_headers ------------------------------------------------------


HEADERS_ROUTE = """
    [[routes]]
    name = "edited"
    paths = ["/*"]
    upstream = "app"
    [routes.request_headers]
    set = { "x-gateway" = "fastgw", "x-seen" = "{request_id} {route} {client_ip}[{consumer}]" }
    add = { "x-tag" = "edge" }
    remove = ["x-internal"]
    [routes.response_headers]
    set = { "x-backend" = "hidden", "x-rid" = "{request_id}" }
    add = { "x-extra" = "1" }
    remove = ["content-type"]
    [routes.rate_limit]
    rate = "1/m"
    burst = 3
    """


def test_request_headers_set_add_and_remove(backend, gateway):
    toml, port = config_for(backend, routes=HEADERS_ROUTE)
    gw = gateway(toml, port)
    r = httpx.get(gw.url + "/echo", headers=[("x-gateway", "client's"), ("x-tag", "client"),
                                             ("X-Internal", "secret"), ("x-kept", "yes")])
    assert r.status_code == 200
    sent = r.json()["headers"]
    rid = r.headers["x-request-id"]
    assert [v for k, v in sent if k == "x-gateway"] == ["fastgw"]
    assert [v for k, v in sent if k == "x-tag"] == ["client", "edge"]
    assert [v for k, v in sent if k == "x-seen"] == [f"{rid} edited 127.0.0.1[]"]
    assert not [k for k, _ in sent if k == "x-internal"]
    assert [v for k, v in sent if k == "x-kept"] == ["yes"]


def fields(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(n.lower(), v) for n, _, v in (line.partition(": ") for line in lines if line)]


@pytest.mark.parametrize("path", ["/echo", "/chunked?n=2&size=5", "/status/503"],
                         ids=["shortcut", "llhttp", "error-answer"])
def test_response_headers_on_every_way_a_head_is_written(backend, gateway, path):
    toml, port = config_for(backend, routes=HEADERS_ROUTE, upstream_extra="retries = 0")
    gw = gateway(toml, port)
    answer = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head = answer.partition(b"\r\n\r\n")[0]
    got = fields(head)
    rid = dict(got)["x-request-id"]
    assert [v for n, v in got if n == "x-backend"] == ["hidden"]  # set: the upstream's is gone
    assert [v for n, v in got if n == "x-rid"] == [rid]
    assert [v for n, v in got if n == "x-extra"] == ["1"]
    assert "content-type" not in dict(got)  # removed
    assert dict(got)["ratelimit-limit"] == "3"  # the other policies' fields still ride along


def test_response_headers_on_fastgws_own_answers(backend, gateway):
    toml, port = config_for(backend, routes=HEADERS_ROUTE.replace('upstream = "app"', 'upstream = "dead"')
                            + f'\n[upstreams.dead]\ntargets = ["127.0.0.1:{free_port()}"]\n')
    gw = gateway(toml, port)
    statuses = []
    for _ in range(4):
        r = httpx.get(gw.url + "/x")
        statuses.append(r.status_code)
        assert r.headers["x-backend"] == "hidden" and r.headers["x-rid"] == r.headers["x-request-id"]
        assert "content-type" not in r.headers
        assert json.loads(r.content)["status"] == r.status_code
    assert statuses == [502, 502, 502, 429]


# -- cors ----------------------------------------------------------------------------------------


CORS_ROUTES = """
    [[routes]]
    name = "api"
    paths = ["/api/*"]
    methods = ["GET", "POST"]
    upstream = "app"
    strip_prefix = "/api"
    [routes.cors]
    origins = ["https://app.example.com", "http://localhost:3000"]
    methods = ["GET", "POST"]
    headers = ["content-type", "authorization"]
    expose_headers = ["x-request-id"]
    max_age = "10m"
    credentials = true
    [routes.rate_limit]
    rate = "1/m"
    burst = 1
    [[routes]]
    name = "public"
    paths = ["/public/*"]
    upstream = "app"
    strip_prefix = "/public"
    cors = { origins = ["*"] }
    """


def curl(url: str, *args: str) -> tuple[int, dict[str, str]]:
    """curl -s -i: the status and the head's fields (lower-case names; repeated ones joined)."""
    out = subprocess.run(["curl", "-s", "-i", "--max-time", "5", *args, url], capture_output=True, text=True,
                         timeout=10).stdout
    head = out.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")
    got: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(": ")
        got[name.lower()] = f"{got[name.lower()]}, {value}" if name.lower() in got else value
    return int(head[0].split()[1]), got


def test_cors_preflight_is_answered_at_the_gateway(backend, gateway):
    toml, port = config_for(backend, routes=CORS_ROUTES)
    gw = gateway(toml, port)
    preflight = ("-X", "OPTIONS", "-H", "Access-Control-Request-Method: POST")
    for _ in range(2):  # the rate limit (burst 1) never refuses a preflight: cors runs first
        status, got = curl(gw.url + "/api/echo", *preflight, "-H", "Origin: https://app.example.com",
                           "-H", "Access-Control-Request-Headers: content-type")
        assert status == 204
        assert got["access-control-allow-origin"] == "https://app.example.com"
        assert got["access-control-allow-methods"] == "GET, POST"
        assert got["access-control-allow-headers"] == "content-type, authorization"
        assert got["access-control-max-age"] == "600"
        assert got["access-control-allow-credentials"] == "true"
        assert got["vary"] == "Origin"
    status, got = curl(gw.url + "/api/echo", *preflight, "-H", "Origin: https://evil.example.com")
    assert status == 204 and not [n for n in got if n.startswith("access-control-")]
    # "*": any origin, no Vary; the headers asked for are echoed when none are configured
    status, got = curl(gw.url + "/public/echo", *preflight, "-H", "Origin: https://anyone.example",
                       "-H", "Access-Control-Request-Headers: x-custom")
    assert status == 204 and got["access-control-allow-origin"] == "*" and "vary" not in got
    assert got["access-control-allow-headers"] == "x-custom"
    assert backend.requests == 0  # never forwarded


def test_cors_actual_requests(backend, gateway):
    toml, port = config_for(backend, routes=CORS_ROUTES)
    gw = gateway(toml, port)
    status, got = curl(gw.url + "/api/echo", "-H", "Origin: http://localhost:3000")
    assert status == 200
    assert got["access-control-allow-origin"] == "http://localhost:3000"
    assert got["access-control-allow-credentials"] == "true"
    assert got["access-control-expose-headers"] == "x-request-id"
    assert got["vary"] == "Origin"
    status, got = curl(gw.url + "/api/echo", "-H", "Origin: https://evil.example.com")
    assert status == 429 and not [n for n in got if n.startswith("access-control-")]  # burst 1, spent above
    assert got["vary"] == "Origin"  # on fastgw's own answers too
    status, got = curl(gw.url + "/public/echo", "-H", "Origin: https://anyone.example")
    assert status == 200 and got["access-control-allow-origin"] == "*" and "vary" not in got
    status, got = curl(gw.url + "/public/echo")
    assert status == 200 and "access-control-allow-origin" not in got


def test_cors_config_errors():
    from fastgw.config import parse_config
    from fastgw.errors import ConfigError

    base = '[upstreams.a]\ntargets = ["127.0.0.1:1"]\n[[routes]]\nname = "r"\npaths = ["/"]\nupstream = "a"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(base + '[routes.cors]\norigins = ["*"]\ncredentials = true\n')
    assert info.value.errors == ['fastgw.toml: routes[0] "r".cors.credentials: cannot go with origins = ["*"]: '
                                 'browsers refuse credentials for any origin; list the origins']
    with pytest.raises(ConfigError) as info:
        parse_config(base + '[routes.cors]\norigins = ["app.example.com"]\nmethod = ["GET"]\n')
    assert info.value.errors == [
        'fastgw.toml: routes[0] "r".cors: unknown key "method" (did you mean "methods"?)',
        'fastgw.toml: routes[0] "r".cors.origins: "app.example.com" is not an origin (scheme://host[:port], '
        'as "https://app.example.com", or "*")']
    with pytest.raises(ConfigError) as info:
        parse_config(base + '[routes.cors]\nmethods = ["GET"]\n')
    assert info.value.errors == ['fastgw.toml: routes[0] "r".cors: missing required key "origins"']
