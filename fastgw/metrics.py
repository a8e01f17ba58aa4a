"""The machine's metrics as Prometheus text (exposition format 0.0.4): ``render(snapshot)``.

What lives here: the renderer only. The counters are ``_core.metrics``' shared table,
which every worker adds into as it serves (the proxy records each exchange's end on its
route's block; upstream failures, refusals, connections and Redis fallbacks where they
happen) and which the supervisor maps before it forks; so any process forked after that
(the admin process) reads the machine's totals here, summed over the workers, without
asking them, and a worker's death loses nothing it counted. The target gauges are
``_core.targets``' shared table, read through ``Upstream.targets_view()``.

Labels come from the config only: route and upstream names, target addresses, fixed
method and code classes, never a path or a client's value. Requests that matched no
route count under ``route="(none)"``; routes (upstreams) that found the table full under
``route="(other)"`` (``upstream="(other)"``). docs/operations.md lists every metric.

May import: the standard library, fastgw._core; the snapshot only for types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgw._core.metrics import (
    BUCKET_BOUNDS,
    CODE_NAMES,
    METHOD_NAMES,
    OVERFLOW,
    PROTOCOL_NAMES,
    UNMATCHED,
    MetricsTable,
    shared_metrics,
)

if TYPE_CHECKING:
    from fastgw.snapshot import Snapshot

#: the Content-Type of what ``render`` returns
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LE = tuple(f"{b:g}" for b in BUCKET_BOUNDS) + ("+Inf",)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


class _Family:
    """One metric family's lines: HELP, TYPE, then its samples."""

    def __init__(self, out: list[str], name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        self.out = out
        self.name = name

    def sample(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        if labels:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.out.append(f"{self.name}{suffix}{{{text}}} {_number(value)}")
        else:
            self.out.append(f"{self.name}{suffix} {_number(value)}")


def render(snapshot: Snapshot, table: MetricsTable | None = None) -> str:
    """Every metric of the machine, as Prometheus text format 0.0.4 (``CONTENT_TYPE``), for
    the routes and upstreams of ``snapshot`` (the current config), plus ``(none)`` and,
    when used, ``(other)``. Works in any process that inherited the shared mapping."""
    table = table if table is not None else shared_metrics()
    routes = [(route.name, route.metrics.read()) for route in snapshot.routes]
    routes.append((UNMATCHED, table.unmatched().read()))
    overflow = table.overflow().read()
    if overflow["count"] or overflow["rate_limited"] or overflow["concurrency_refused"]:
        routes.append((OVERFLOW, overflow))
    upstreams = [(up, up.metrics.read()) for up in snapshot.upstreams.values()]

    out: list[str] = []
    family = _Family(out, "fastgw_requests_total", "counter",
                     "Requests answered (or cut), by route, method class and status code.")
    for name, block in routes:
        for (method, code), n in sorted(block["requests"].items()):
            family.sample({"route": name, "method": METHOD_NAMES[method], "code": CODE_NAMES[code]}, n)

    family = _Family(out, "fastgw_request_duration_seconds", "histogram",
                     "Time from the request head to the end of the exchange, by route.")
    for name, block in routes:
        running = 0
        for le, n in zip(_LE, block["buckets"]):
            running += n
            family.sample({"route": name, "le": le}, running, "_bucket")
        family.sample({"route": name}, block["sum_ns"] / 1e9, "_sum")
        family.sample({"route": name}, block["count"], "_count")

    for metric, key, help_text in (
        ("fastgw_request_bytes_total", "request_bytes", "Request body bytes received, by route."),
        ("fastgw_response_bytes_total", "response_bytes", "Response body bytes sent, by route."),
        ("fastgw_rate_limited_total", "rate_limited", "Requests refused by a rate limit (429), by route."),
        ("fastgw_concurrency_refused_total", "concurrency_refused",
         "Requests refused by max_concurrent (503), by route."),
    ):
        family = _Family(out, metric, "counter", help_text)
        for name, block in routes:
            family.sample({"route": name}, block[key])

    overflow_up = table.upstream_overflow().read()
    upstream_rows = [(up.name, counts) for up, counts in upstreams]
    if any(overflow_up.values()):
        upstream_rows.append((OVERFLOW, overflow_up))
    for metric, key, help_text in (
        ("fastgw_upstream_connect_failures_total", "connect_failures",
         "Connects to an upstream's targets that failed (refused, unreachable, timed out)."),
        ("fastgw_upstream_timeouts_total", "timeouts",
         "Upstream timeouts: connect_timeout, read_timeout or the route's timeout."),
        ("fastgw_upstream_retries_total", "retries", "Requests sent again to another target."),
    ):
        family = _Family(out, metric, "counter", help_text)
        for name, counts in upstream_rows:
            family.sample({"upstream": name}, counts[key])

    views = [(up.name, up.targets_view()) for up, _ in upstreams]
    for metric, kind, help_text, value in (
        ("fastgw_upstream_target_healthy", "gauge",
         "1 when active health checks let the target take traffic (or it has none), else 0.",
         lambda v: 0 if v["health"] == "unhealthy" else 1),
        ("fastgw_upstream_target_circuit_open", "gauge",
         "1 when the target's circuit breaker is open or on trial, else 0.",
         lambda v: 1 if v["circuit"] in ("open", "trial") else 0),
        ("fastgw_upstream_target_in_flight", "gauge", "Requests in flight to the target.",
         lambda v: v["in_flight"]),
        ("fastgw_upstream_target_failures_total", "counter",
         "Failures of the target: 5xx answers, failed connects, resets, timeouts.",
         lambda v: v["failures_total"]),
    ):
        family = _Family(out, metric, kind, help_text)
        for name, targets in views:
            for view in targets:
                family.sample({"upstream": name, "target": view["address"]}, value(view))

    family = _Family(out, "fastgw_client_connections", "gauge",
                     "Open client connections, by protocol, summed over the workers.")
    for protocol, n in zip(PROTOCOL_NAMES, table.connections()):
        family.sample({"protocol": protocol}, n)

    family = _Family(out, "fastgw_cluster_fallbacks_total", "counter",
                     "Rate-limit decisions taken by the machine's buckets while Redis was away.")
    family.sample({}, table.cluster_fallbacks)
    out.append("")
    return "\n".join(out)
