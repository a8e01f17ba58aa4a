"""Config → one immutable ``Snapshot``: the router, the compiled routes, the upstreams.

Everything a request needs is decided here, once per (re)load: route patterns are
checked and built into the Cython trie, rewrite templates are split into parts, upstream
groups get their pools, each target its slot of the state every worker shares
(``_core.targets``: the supervisor's first load maps that table, before it forks), and
each route its policy chain (``fastgw.policy.Chain``: [global]'s policies and its own,
by priority), the limits' state in the shared arena of ``_core.limiter``, and the
cluster's Redis connection (``fastgw.cluster``). Each route and upstream gets its block
of the machine's counters (``_core.metrics``, found by name, so a reload keeps them).
``compile_snapshot(config, previous)`` keeps an ``Upstream`` (and
its warm keep-alive pools) whose settings did not change, so a reload does not cold-start
upstream connections; the ones that left the config are retired by the caller once the
new snapshot is in place.

A ``Route`` and the ``Snapshot`` keep what the proxy reads per request in their C part,
the classes of ``fastgw.plan`` they inherit (``RoutePlan``, ``SnapshotPlan``): the proxy
cimports those, never this module, and reads typed fields instead of looking attributes
up. Python reads them as attributes, as it reads the rest.

May import: the standard library, fastgw.config, fastgw.errors, fastgw.plan,
fastgw.upstream, fastgw.policy, fastgw.policies, fastgw.cluster, fastgw._core.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastgw._core.balancer import SmoothWeighted
from fastgw._core.errors import RouteError
from fastgw._core.router import Router, Rule
from fastgw._core.limiter import ConcurrencyGuard, shared_arena
from fastgw._core.metrics import shared_metrics
from fastgw._core.targets import shared_table
from fastgw.errors import ConfigError
from fastgw.plan import RoutePlan, SnapshotPlan
from fastgw.policies import BUILTIN as BUILTIN_POLICIES
from fastgw.policies.auth import Consumers
from fastgw.policies.jwt import JwtVerifier
from fastgw.policies.limits import MaxConcurrent, RateLimitPolicy, RateLimits
from fastgw.policy import Chain
from fastgw.upstream import Pool, Upstream

if TYPE_CHECKING:
    from fastgw.config import Config, RouteConfig, UpstreamConfig
    from fastgw.exchange import Exchange

log = logging.getLogger("fastgw")


class Route(RoutePlan):
    """A route as a request sees it: where it goes and how its path is rewritten. What the
    proxy reads per request (name, upstream, splits, strip_prefix, rewrite, timeout, chain,
    cors, websocket, aggregate, metrics) is the C part, ``fastgw.plan.RoutePlan``, set once
    here; the rest is for the split's pick, ``fastgw explain`` and the admin API."""

    __slots__ = ("index", "config", "split_shares", "_match_split", "_split_upstreams", "_split",
                 "guard", "upstreams_by_name")

    def __init__(self, config: RouteConfig, upstreams: dict[str, Upstream], policies: Policies) -> None:
        upstream = upstreams[config.upstream]
        self.index = config.index
        #: the upstreams [routes.aggregate]'s calls name
        self.upstreams_by_name = ({call.upstream: upstreams[call.upstream] for call in config.aggregate.calls}
                                  if config.aggregate is not None else {})
        self.config = config
        #: (lower-case header name, value, upstream) as bytes: the first that matches wins
        self._match_split = tuple((header.encode("latin-1"), value.encode("latin-1"), upstreams[name])
                                  for header, value, name in config.match_split)
        # The split: the route's upstream takes what the canaries leave (smooth weighted
        # round robin over percents, so 10 is exactly 1 request in 10).
        shares = [(upstream, 100 - sum(w for _, w in config.split))]
        shares += [(upstreams[name], weight) for name, weight in config.split]
        #: (upstream, percent) of ``split``, the route's own upstream first; () without one
        self.split_shares = tuple((up, w) for up, w in shares if w > 0) if config.split else ()
        self._split_upstreams = [up for up, _ in self.split_shares]
        self._split = SmoothWeighted([w for _, w in self.split_shares]) if config.split else None
        #: max_concurrent, counted for the machine; or None (its policy holds it too)
        self.guard = policies.guard_of(config)
        chain = policies.chain_of(config, self.guard)
        metrics = policies.metrics.route(config.name.encode())
        if not metrics.named:
            log.warning("route %s: the metrics table is full (%d routes); its requests count "
                        'under route="(other)"', config.name, policies.metrics.route_capacity - 2)
        super().__init__(
            name=config.name,
            upstream=upstream,
            # some requests go elsewhere than ``upstream``: ``pick_upstream`` decides
            splits=bool(config.split or config.match_split),
            strip_prefix=config.strip_prefix,
            rewrite=_split_template(config.rewrite) if config.rewrite else None,
            timeout=config.timeout or 0.0,
            chain=chain,
            # a preflight its methods leave out is still its own
            cors=next((p for p in chain.policies if p.name == "cors"), None),
            # what a WebSocket handshake becomes: "proxy" (a tunnel), "http", or None (plain HTTP)
            websocket=config.websocket,
            # [routes.aggregate] (fastgw.aggregate runs it)
            aggregate=config.aggregate,
            # the proxy records each exchange's end there (``_core.metrics``)
            metrics=metrics,
        )

    def pick_upstream(self, header: Callable[[bytes], bytes | None]) -> Upstream:
        """The upstream for a request whose field values ``header`` gives (the proxy
        passes ``Exchange.header``, which reads the exchange's field block without making
        its list): ``match_split``, then ``split`` (the proxy's choice, per request;
        ``fastgw explain`` asks ``match_split_entry`` and reads ``split_shares``, so both
        decide by the same code)."""
        if self._match_split:
            entry = self.match_split_entry(header)
            if entry is not None:
                return entry[2]
        if self._split is not None:
            return self._split_upstreams[self._split.pick()]
        return self.upstream

    def match_split_entry(self, header: Callable[[bytes], bytes | None]) -> tuple[bytes, bytes, Upstream] | None:
        """The ``match_split`` entry (lower-case header name, value, upstream) that takes
        a request, or None: the first entry whose header's first occurrence (``header``:
        lower-case name -> the value of its first field, or None) equals its value."""
        for entry in self._match_split:
            name, value, _ = entry
            if header(name) == value:
                return entry
        return None

    def __repr__(self) -> str:
        return f"Route({self.name!r})"


def _split_template(template: str) -> list[str]:
    """"/v2/users/{id}" → ["/v2/users/", "\\0id"]: literals, and param names marked by NUL."""
    parts: list[str] = []
    rest = template
    while rest:
        start = rest.find("{")
        end = rest.find("}", start)
        if start < 0 or end < 0:
            parts.append(rest)
            break
        if start:
            parts.append(rest[:start])
        parts.append("\0" + rest[start + 1:end])
        rest = rest[end + 1:]
    return parts


class Policies:
    """What the routes' policies are built from: the shared arena (``_core.limiter``), the
    cluster connection, the worker count (a concurrency guard keeps a share per worker),
    and ``[global]``'s policies, built once and shared by every route. It is the
    ``context`` a ``PolicySpec``'s ``build`` gets."""

    def __init__(self, config: Config, cluster: Any) -> None:
        self.arena = shared_arena()
        self.metrics = shared_metrics()
        self.cluster = cluster
        self.workers = config.server.workers
        #: the consumers of [consumers], for the routes' auth
        self.consumers = Consumers(config.consumers, JwtVerifier(config.jwt) if config.jwt is not None else None)
        #: the specs of the policies a route may name: the built-ins and the plugins
        self.specs = {**BUILTIN_POLICIES, **{spec.name: spec for spec in config.plugins}}
        #: [global]'s policies, built once: every route's chain shares them
        self.global_policies = [self.specs[name].build("global", settings, self)
                                for name, settings in config.global_policies.policies]

    def chain_of(self, route: RouteConfig, guard: ConcurrencyGuard | None) -> Chain:
        """The route's chain: [global]'s policies and its own. Its rate limits, [global]'s
        first, become one policy (a request spends a token of each, and its response
        carries the tightest one's fields)."""
        built = self.global_policies + [self.specs[name].build(route.name, settings, self)
                                        for name, settings in route.policies]
        limits = tuple(p for p in built if isinstance(p, RateLimitPolicy))
        policies = [p for p in built if not isinstance(p, RateLimitPolicy)]
        if limits:
            policies.append(RateLimits(route.name, limits))
        if guard is not None:
            policies.append(MaxConcurrent(route.name, guard))
        return Chain(policies)

    def guard_of(self, route: RouteConfig) -> ConcurrencyGuard | None:
        if not route.max_concurrent:
            return None
        # Named by its settings, so a reload that keeps them keeps the count going.
        name = f"concurrency\0{route.name}\0{route.max_concurrent}\0{self.workers}".encode()
        return ConcurrencyGuard(route.max_concurrent, self.workers, self.arena, name)


def _cluster_limits(config: Config, previous: Snapshot | None) -> Any:
    """The Redis connection of ``[cluster]``: the previous snapshot's when its settings
    are unchanged (its connections stay warm), else a new one, or None."""
    if config.cluster is None:
        return None
    if previous is not None and previous.config.cluster == config.cluster and previous.cluster is not None:
        return previous.cluster
    # Imported here: redis is loaded only by configs that use it.
    from fastgw.cluster import ClusterLimits

    return ClusterLimits(config.cluster.redis, config.cluster.timeout)


class Snapshot(SnapshotPlan):
    """What one config compiles to. Never mutated after ``compile_snapshot`` returns. What
    the proxy reads per request (router, condition_headers, trusted_proxies) is the C
    part, ``fastgw.plan.SnapshotPlan``."""

    __slots__ = ("config", "routes", "upstreams", "cluster", "_trust_cache")

    def __init__(self, config: Config, router: Router, routes: tuple[Route, ...],
                 upstreams: dict[str, Upstream], cluster: Any = None) -> None:
        super().__init__(
            router=router,
            # lower-case header name as received (bytes) -> the router's key, for the headers
            # some route conditions on; empty when none does (then no dict is built at all)
            condition_headers={name.encode("latin-1"): name for name in router.header_names},
            trusted_proxies=config.server.trusted_proxies,
        )
        self.config = config
        #: fastgw.cluster.ClusterLimits of [cluster], or None
        self.cluster = cluster
        self.routes = routes
        self.upstreams = upstreams
        self._trust_cache: dict[str, bool] = {}

    def is_trusted(self, ip: str) -> bool:
        """Whether ``ip`` is in ``trusted_proxies`` (memoised: peers repeat)."""
        trusted = self._trust_cache.get(ip)
        if trusted is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                trusted = False
            else:
                trusted = any(addr in net for net in self.trusted_proxies)
            if len(self._trust_cache) < 4096:
                self._trust_cache[ip] = trusted
        return trusted

    def client_ip_from(self, ex: Exchange) -> str:
        """The client address behind trusted proxies: the right-most X-Forwarded-For entry
        that is not itself a trusted proxy (entries left of it could be forged)."""
        hops: list[str] = []
        for name, value in ex.headers:
            if name.lower() == b"x-forwarded-for":
                hops.extend(h.strip() for h in value.decode("latin-1").split(","))
        for hop in reversed(hops):
            if not hop:
                continue
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return ex.peer_ip  # garbage in the chain: believe nothing of it
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops and hops[0] else ex.peer_ip


def _upstream_signature(up: UpstreamConfig) -> tuple:
    return (tuple((t.host, t.port, t.weight) for t in up.targets), up.balance, up.hash_on,
            up.retries, up.circuit_breaker, up.health_check, up.keepalive, up.connect_timeout,
            up.read_timeout)


def build_upstream(up: UpstreamConfig, previous: Snapshot | None = None) -> Upstream:
    signature = _upstream_signature(up)
    if previous is not None:
        old = previous.upstreams.get(up.name)
        if old is not None and old.signature == signature:
            return old
    table = shared_table()
    pools = [Pool(t.host, t.port, t.weight, up.keepalive, up.connect_timeout, up.read_timeout,
                  table.state(f"{up.name}\0{t}".encode()))
             for t in up.targets]
    for pool in pools:
        pool.upstream_name = up.name
        if up.circuit_breaker is not None:
            pool.breaker_failures, pool.breaker_cooldown = up.circuit_breaker
        if up.health_check is not None:
            pool.health_checked, pool.health_interval = True, up.health_check.interval
        if not pool.state.shared:
            log.warning("upstream %s target %s: the shared target table is full (%d slots); "
                        "this worker keeps the target's health and circuit on its own",
                        up.name, pool.address, table.capacity)
    upstream = Upstream(up.name, pools, signature, up.balance, up.hash_on, up.retries, up.health_check)
    upstream.metrics = shared_metrics().upstream(up.name.encode())
    if not upstream.metrics.named:
        log.warning('upstream %s: the metrics table is full; it counts under upstream="(other)"', up.name)
    return upstream


def served_methods(methods: tuple[str, ...]) -> tuple[str, ...]:
    """The methods a route with ``methods`` is routed for: HEAD wherever GET is, as in
    nginx (a GET route answers HEAD rather than 405); empty (any method) stays empty."""
    if "GET" in methods and "HEAD" not in methods:
        return (*methods, "HEAD")
    return methods


def compile_snapshot(config: Config, previous: Snapshot | None = None) -> Snapshot:
    """Build the snapshot, or raise ``ConfigError`` listing every route pattern the router
    refuses (config.py has already checked everything else)."""
    upstreams = {up.name: build_upstream(up, previous) for up in config.upstreams}
    cluster = _cluster_limits(config, previous)
    policies = Policies(config, cluster)
    routes = tuple(Route(rc, upstreams, policies) for rc in config.routes)
    rules = [
        Rule(route, rc.paths, served_methods(rc.methods), rc.hosts, rc.headers, rc.priority)
        for route, rc in zip(routes, config.routes)
    ]
    try:
        router = Router(rules)
    except RouteError as exc:
        source = config.source or "fastgw.toml"
        raise ConfigError([f'{source}: routes[{config.routes[i].index}] "{config.routes[i].name}": {message}'
                           for i, message in exc.problems]) from None
    return Snapshot(config, router, routes, upstreams, cluster)


def retire_replaced(old: Snapshot, new: Snapshot) -> None:
    """Close the idle pools of upstreams the new snapshot no longer uses."""
    kept = {id(up) for up in new.upstreams.values()}
    for up in old.upstreams.values():
        if id(up) not in kept:
            up.retire()
