"""The ``fastgw`` command line (SPEC "Command line"): run, demo, check, explain.

``check`` and ``explain`` are the config's debugging tools: they compile exactly what
``run`` would, then print the route table (with warnings for routes that can never
match) or walk one request through the router.

May import: fastgw.config, fastgw.snapshot, fastgw.server, fastgw.demo, fastgw._core.
"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit

from fastgw import __version__
from fastgw._core.router import normalize_path
from fastgw.config import Config, RouteConfig
from fastgw.errors import ConfigError
from fastgw.snapshot import Snapshot

DEFAULT_CONFIG = "fastgw.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgw", description="An API gateway with a native hot path.")
    parser.add_argument("--version", action="version", version=f"fastgw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the gateway with a config file")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (default ./fastgw.toml)")

    demo = commands.add_parser("demo", help="run the gateway on the embedded demo config with demo backends")
    demo.add_argument("--port", type=int, default=8080, help="gateway port on 127.0.0.1 (default 8080)")

    check = commands.add_parser("check", help="validate a config and print its route table")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    explain = commands.add_parser("explain", help="which route a request would take, and why")
    explain.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    explain.add_argument("method")
    explain.add_argument("url", help="a path (/users/1) or a URL (http://api.example.com/users/1)")
    explain.add_argument("-H", "--header", action="append", default=[], metavar='"NAME: VALUE"')

    args = parser.parse_args(argv)
    if args.command == "run":
        from fastgw.server import run as run_server
        return run_server(args.config)
    if args.command == "demo":
        from fastgw.demo import run_demo
        return run_demo(args.port)
    snapshot = _load(args.config)
    if snapshot is None:
        return 1
    if args.command == "check":
        return cmd_check(snapshot)
    return cmd_explain(snapshot, args.method, args.url, args.header)


def _load(path: str) -> Snapshot | None:
    # server.load, exactly what ``run`` does: it also refuses an access log that cannot
    # be opened (and, as ``nginx -t`` does, creates the file when it can).
    from fastgw.server import load
    try:
        return load(path)[1]
    except ConfigError as exc:
        print(exc, file=sys.stderr)
    except OSError as exc:
        print(f"fastgw: cannot read {path}: {exc.strerror}", file=sys.stderr)
    return None


def cmd_check(snapshot: Snapshot) -> int:
    config = snapshot.config
    print(f"{config.source}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams, "
          f"digest {config.digest[:12]})")
    print()
    rows = [("#", "ROUTE", "HOSTS", "METHODS", "PATHS", "PRI", "UPSTREAM → TARGETS")]
    for route in snapshot.routes:
        rc = route.config
        targets = ", ".join(p.address + (f"*{p.weight}" if p.weight != 1 else "") for p in route.upstream.pools)
        rows.append((str(rc.index), rc.name, " ".join(rc.hosts) or "*", " ".join(rc.methods) or "*",
                     " ".join(rc.paths), str(rc.priority), f"{rc.upstream} → {targets}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    warnings = snapshot.router.shadowed()
    for shadowed, by, reason in warnings:
        a, b = config.routes[shadowed], config.routes[by]
        print(f'warning: {config.source}: routes[{a.index}] "{a.name}" can never match: '
              f'shadowed by routes[{b.index}] "{b.name}" ({reason})', file=sys.stderr)
    return 0


def cmd_explain(snapshot: Snapshot, method: str, url: str, header_args: list[str]) -> int:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    raw_path = parts.path or "/"
    path = normalize_path(raw_path)
    if path is None:
        print(f"{raw_path}: refused with 400 (the path cannot be normalised safely)")
        return 1
    headers: dict[str, str] = {}
    for item in header_args:
        name, sep, value = item.partition(":")
        if not sep:
            print(f'fastgw: -H wants "NAME: VALUE", got {item!r}', file=sys.stderr)
            return 2
        headers.setdefault(name.strip().lower(), value.strip())
    if "host" in headers and not host:
        host = headers["host"].split(":")[0].lower()
    method = method.upper()
    print(f"request: {method} host={host or '(none)'} path={path}"
          + (f" (normalised from {raw_path})" if path != raw_path else ""))
    match, trace = snapshot.router.explain(method, host, path, headers)
    print("candidates, in the order tried:")
    for line in trace or ["(none: no route pattern matches this host and path)"]:
        print(f"  {line}")
    if match is None:
        print("result: 404 no route")
        return 1
    if match.target is None:
        print(f"result: 405 method not allowed (Allow: {', '.join(match.allowed)})")
        return 1
    route = match.target
    rc = route.config
    upstream_path = route.upstream_path(path, match.params)
    if parts.query:  # the proxy passes the raw query on, after the (rewritten) path
        upstream_path += "?" + parts.query
    print(f'result: route "{route.name}" (routes[{rc.index}]) pattern {match.pattern}')
    if match.params:
        print("params: " + ", ".join(f"{k}={v}" for k, v in match.params.items()))
    print(f"policies: {describe_policies(snapshot.config, rc)}")
    targets = ", ".join(p.address for p in route.upstream.pools)
    print(f"upstream: {rc.upstream} [{targets}] path {upstream_path}"
          + (f" timeout {rc.timeout:g}s" if rc.timeout else ""))
    return 0


def describe_policies(config: Config, rc: RouteConfig) -> str:
    """The policies a request on route ``rc`` passes, in order."""
    chain = []
    for owner, limit in (("[global] ", config.global_policies.rate_limit), ("", rc.rate_limit)):
        if limit is not None:
            chain.append(f"rate_limit {owner}{limit.rate:g}/s burst {limit.burst} per {limit.key} ({limit.scope})")
    if rc.max_concurrent:
        chain.append(f"max_concurrent {rc.max_concurrent}")
    return " → ".join(chain) or "none"
