"""A compiled snapshot as Python reads it: the route's fields the proxy reads in C
(``fastgw.plan.RoutePlan``, which ``snapshot.Route`` inherits) readable, and read-only,
as attributes; the snapshot's (``SnapshotPlan``) too; and the path sent upstream
(``Route.upstream_path``, the one implementation the proxy calls in C) for plain,
``strip_prefix`` and ``rewrite`` routes, edge cases included.

May import: fastgw (to build a snapshot in process), pytest, the standard library.
"""

from __future__ import annotations

import ipaddress

import pytest

from fastgw.config import parse_config
from fastgw.plan import RoutePlan, SnapshotPlan
from fastgw.policy import Chain
from fastgw.snapshot import Route, Snapshot, compile_snapshot

TEXT = """
[server]
trusted_proxies = ["10.0.0.0/8"]

[upstreams.app]
targets = ["127.0.0.1:91"]

[upstreams.canary]
targets = ["127.0.0.1:92"]

[[routes]]
name = "plain"
paths = ["/plain/*"]
upstream = "app"

[[routes]]
name = "api"
paths = ["/api/*"]
headers = { "x-tenant" = "acme" }
upstream = "app"
strip_prefix = "/api"
timeout = "2s"
websocket = "proxy"
split = [{ upstream = "canary", weight = 10 }]

[routes.cors]
origins = ["https://example.com"]

[[routes]]
name = "users"
paths = ["/users/{id}/{part}"]
upstream = "app"
rewrite = "/v2/users/{id}/x/{part}"

[[routes]]
name = "blobs"
paths = ["/blobs/*"]
upstream = "app"
rewrite = "/store/{*}"
"""


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return compile_snapshot(parse_config(TEXT, "t.toml"))


def route(snapshot: Snapshot, name: str) -> Route:
    (found,) = [r for r in snapshot.routes if r.name == name]
    return found


def test_a_route_is_a_route_plan_with_its_fields_readable(snapshot):
    api = route(snapshot, "api")
    assert isinstance(api, RoutePlan)
    assert (api.name, api.strip_prefix, api.rewrite, api.timeout, api.websocket) == ("api", "/api", None, 2.0, "proxy")
    assert api.upstream is snapshot.upstreams["app"] and api.splits
    assert isinstance(api.chain, Chain) and api.cors is not None and api.cors.name == "cors"
    assert api.cors in api.chain.policies
    assert api.aggregate is None and api.metrics is not None
    # the Python part, beside it
    assert api.index == 1 and api.config.name == "api" and api.guard is None
    assert [(up.name, w) for up, w in api.split_shares] == [("app", 90), ("canary", 10)]
    plain = route(snapshot, "plain")
    assert (plain.timeout, plain.websocket, plain.cors, plain.splits) == (0.0, None, None, False)
    assert repr(plain) == "Route('plain')"


def test_the_plans_fields_are_read_only(snapshot):
    api = route(snapshot, "api")
    for name, value in [("name", "x"), ("timeout", 1.0), ("upstream", None), ("strip_prefix", "/x")]:
        with pytest.raises(AttributeError):
            setattr(api, name, value)
    with pytest.raises(AttributeError):
        snapshot.router = None
    with pytest.raises(AttributeError):  # __slots__: no attribute outside them
        api.anything = 1


def test_the_snapshot_is_a_snapshot_plan(snapshot):
    assert isinstance(snapshot, SnapshotPlan)
    assert snapshot.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert snapshot.condition_headers == {b"x-tenant": "x-tenant"}
    assert snapshot.router.match("GET", None, "/plain/a").target is route(snapshot, "plain")
    assert snapshot.is_trusted("10.1.2.3") and not snapshot.is_trusted("192.0.2.1")


@pytest.mark.parametrize(("name", "path", "params", "sent"), [
    ("plain", "/plain/a/b", {"*": "a/b"}, "/plain/a/b"),
    ("api", "/api/orders/7", {"*": "orders/7"}, "/orders/7"),
    ("api", "/api", {"*": ""}, "/"),
    ("api", "/api/", {"*": ""}, "/"),
    ("api", "/apiary", {}, "/apiary"),  # not on a segment boundary: sent as it came
    ("api", "/other", {}, "/other"),
    ("users", "/users/7/avatar", {"id": "7", "part": "avatar"}, "/v2/users/7/x/avatar"),
    ("users", "/users/7/avatar", {"id": "7"}, "/v2/users/7/x/"),  # a param it did not capture: ""
    ("blobs", "/blobs/a/b.txt", {"*": "a/b.txt"}, "/store/a/b.txt"),
])
def test_upstream_path(snapshot, name, path, params, sent):
    assert route(snapshot, name).upstream_path(path, params) == sent


def test_upstream_path_of_what_the_router_matched(snapshot):
    """The path and params as the proxy hands them over: the router's own."""
    for path, sent in [("/api/x/y", "/x/y"), ("/users/3/z", "/v2/users/3/x/z"), ("/blobs/k", "/store/k"),
                       ("/plain/q", "/plain/q")]:
        match = snapshot.router.match("GET", None, path, {"x-tenant": "acme"})
        assert match.target.upstream_path(path, match.params) == sent, path


def test_a_route_plan_needs_its_typed_fields(snapshot):
    api = route(snapshot, "api")
    args = dict(name="r", upstream=api.upstream, splits=False, strip_prefix=None, rewrite=["/x"], timeout=0.0,
                chain=api.chain, cors=None, websocket=None, aggregate=None, metrics=api.metrics)
    plan = RoutePlan(**args)
    assert plan.rewrite == ("/x",) and plan.upstream_path("/anything", {}) == "/x"
    with pytest.raises(TypeError):
        RoutePlan(**{**args, "upstream": "app"})
    with pytest.raises(TypeError):
        RoutePlan(**{**args, "chain": None})
