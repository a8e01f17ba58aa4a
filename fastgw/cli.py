"""The ``fastgw`` command line: run, demo, check, explain, and reload, stop and reopen,
which signal a running gateway found through its ``[server].pid_file``.

``check`` and ``explain`` are the config's debugging tools: they compile exactly what
``run`` would, then print the route table, every route's and upstream's settings (with
warnings for routes that can never match), or with ``check --dump`` the effective
config as TOML (fastgw.dump: every default filled in, secrets masked), or walk one
request through the router and the route's choice of upstream
(``Route.match_split_entry`` and ``split_shares``, what the proxy's
``Route.pick_upstream`` decides by).

May import: fastgw.config, fastgw.snapshot, fastgw.server, fastgw.demo, fastgw.dump,
fastgw._core.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fastgw import __version__
from fastgw._core.router import normalize_path
from fastgw.config import AggregateConfig, Config, UpstreamConfig, template_text
from fastgw.errors import ConfigError
from fastgw.snapshot import Route, Snapshot, served_methods

if TYPE_CHECKING:
    from fastgw.upstream import Upstream

DEFAULT_CONFIG = "fastgw.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgw", description="An API gateway with a native hot path.")
    parser.add_argument("--version", action="version", version=f"fastgw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the gateway with a config file")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (default ./fastgw.toml)")

    demo = commands.add_parser("demo", help="run the gateway on the embedded demo config with demo backends")
    demo.add_argument("--port", type=int, default=8080, help="gateway port on 127.0.0.1 (default 8080)")
    demo.add_argument("--tls-port", type=int, default=None, metavar="PORT",
                      help="also serve HTTPS there, with a certificate for 127.0.0.1 the demo makes")

    check = commands.add_parser("check", help="validate a config and print its route table")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    check.add_argument("--dump", action="store_true",
                       help="print the effective config instead: TOML, every default filled in, secrets masked")

    explain = commands.add_parser("explain", help="which route a request would take, and why")
    explain.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    explain.add_argument("method")
    explain.add_argument("url", help="a path (/users/1) or a URL (http://api.example.com/users/1)")
    explain.add_argument("-H", "--header", action="append", default=[], metavar='"NAME: VALUE"')

    commands.add_parser("hash-password", help="read a password (no echo on a terminal) and print its hash, "
                                              "for [consumers.NAME].basic_password")

    for command, does in (("reload", "reload the running gateway's config (SIGHUP), once it checks out"),
                          ("stop", "drain and stop the running gateway (SIGTERM)"),
                          ("reopen", "reopen the running gateway's log files (SIGUSR1), after logrotate")):
        signaller = commands.add_parser(command, help=does + "; found through [server].pid_file")
        signaller.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    args = parser.parse_args(argv)
    if args.command == "run":
        from fastgw.server import run as run_server
        return run_server(args.config)
    if args.command == "hash-password":
        return cmd_hash_password()
    if args.command in ("reload", "stop", "reopen"):
        from fastgw.server import signal_running
        return signal_running(args.config, args.command)
    if args.command == "demo":
        from fastgw.demo import run_demo
        return run_demo(args.port, args.tls_port)
    snapshot = _load(args.config)
    if snapshot is None:
        return 1
    if args.command == "check":
        return cmd_dump(snapshot, args.config) if args.dump else cmd_check(snapshot)
    return cmd_explain(snapshot, args.method, args.url, args.header)


def _load(path: str) -> Snapshot | None:
    # server.load, exactly what ``run`` does (log files that cannot be written included);
    # it creates nothing.
    from fastgw.server import load
    try:
        return load(path)[1]
    except ConfigError as exc:
        print(exc, file=sys.stderr)
    except OSError as exc:
        print(f"fastgw: cannot read {path}: {exc.strerror}", file=sys.stderr)
    return None


def cmd_hash_password() -> int:
    """Read a password, from the terminal without echo (asked twice) or from stdin's
    first line, and print its scrypt hash."""
    import getpass

    from fastgw.policies.auth import hash_password
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("fastgw: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("fastgw: an empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_check(snapshot: Snapshot) -> int:
    """The route table, each route's settings beneath its row, then the upstreams': every
    key the file sets is shown (with the defaults of those it leaves out)."""
    config = snapshot.config
    print(f"{config.source}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams, "
          f"digest {config.digest[:12]})")
    print()
    rows = [("#", "ROUTE", "HOSTS", "METHODS", "PATHS", "PRI", "UPSTREAM → TARGETS")]
    details: list[list[str]] = [[]]
    for route in snapshot.routes:
        rc = route.config
        if rc.aggregate is not None:  # (its calls' upstreams, not the route's, are used)
            goes_to = "aggregate → " + ", ".join(dict.fromkeys(call.upstream for call in rc.aggregate.calls))
        else:
            goes_to = f"{rc.upstream} → {describe_targets(route.upstream)}"
        rows.append((str(rc.index), rc.name, " ".join(rc.hosts) or "*", describe_methods(rc.methods),
                     " ".join(rc.paths), str(rc.priority), goes_to))
        details.append(describe_route(config, route))
    _print_table(rows, details)
    print()
    rows = [("UPSTREAM", "BALANCE", "RETRIES", "KEEPALIVE", "CONNECT_TIMEOUT", "READ_TIMEOUT", "TARGETS")]
    details = [[]]
    for up in config.upstreams:
        balance = up.balance + (f" on {up.hash_on}" if up.balance == "consistent_hash" else "")
        rows.append((up.name, balance, str(up.retries), str(up.keepalive), _seconds(up.connect_timeout),
                     _seconds(up.read_timeout), describe_targets(snapshot.upstreams[up.name])))
        details.append(describe_upstream(up))
    _print_table(rows, details)
    _print_warnings(snapshot)
    return 0


def cmd_dump(snapshot: Snapshot, path: str) -> int:
    """``check --dump``: the effective config as TOML on stdout (fastgw.dump), the
    warnings on stderr, as ``check`` prints them. The text dumped is the file's, read
    again: it must be the one validated (its digest), else nothing is printed."""
    from fastgw.dump import dump_config
    config = snapshot.config
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        print(f"fastgw: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    if hashlib.sha256(data).hexdigest() != config.digest:
        print(f"fastgw: {path} changed while it was read; run the command again", file=sys.stderr)
        return 1
    sys.stdout.write(dump_config(config, data.decode("utf-8-sig")))
    _print_warnings(snapshot)
    return 0


def _print_warnings(snapshot: Snapshot) -> None:
    """The config's warnings, and the routes that can never match, on stderr."""
    config = snapshot.config
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for shadowed, by, reason in snapshot.router.shadowed():
        a, b = config.routes[shadowed], config.routes[by]
        print(f'warning: {config.source}: routes[{a.index}] "{a.name}" can never match: '
              f'shadowed by routes[{b.index}] "{b.name}" ({reason})', file=sys.stderr)


def _print_table(rows: list[tuple[str, ...]], details: list[list[str]]) -> None:
    """Columns padded to their widest cell (the last one is not), each row's detail lines
    beneath it, indented to the second column."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    indent = " " * (widths[0] + 2)
    for row, lines in zip(rows, details):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
        for line in lines:
            print(indent + line)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def describe_methods(methods: tuple[str, ...]) -> str:
    """A route's methods as the router serves them: HEAD that GET brings is marked "(+HEAD)"."""
    served = served_methods(methods)
    return (" ".join(methods) + (" (+HEAD)" if served != methods else "")) or "*"


def describe_targets(upstream: Upstream) -> str:
    return ", ".join(p.address + (f"*{p.weight}" if p.weight != 1 else "") for p in upstream.pools)


def describe_route(config: Config, route: Route) -> list[str]:
    """What applies to a request on ``route`` besides its table row, one line each."""
    rc = route.config
    lines = []
    if rc.headers:
        lines.append("headers " + ", ".join(f"{name} = {_quoted(value)}" for name, value in rc.headers))
    if rc.rewrite is not None:
        lines.append(f"rewrite {rc.rewrite}")
    if rc.strip_prefix is not None:
        lines.append(f"strip_prefix {rc.strip_prefix}")
    if rc.timeout:
        lines.append(f"timeout {_seconds(rc.timeout)}")
    policies = route.chain.describe()
    if policies != "none":
        lines.append(policies)
    for header, value, name in rc.match_split:
        lines.append(f"match_split {header} = {_quoted(value)} → {name}")
    if route.split_shares:
        lines.append("split " + " / ".join(f"{percent}% {up.name}" for up, percent in route.split_shares))
    if rc.aggregate is not None:
        lines.extend(describe_aggregate(rc.aggregate))
    return lines


def describe_aggregate(spec: AggregateConfig) -> list[str]:
    """An aggregate route's composition: its mode and bounds, then a line per call."""
    lines = [f"aggregate {spec.mode}, timeout {_seconds(spec.timeout)}, "
             f"max_body_bytes {spec.max_body_bytes} per response"]
    for number, call in enumerate(spec.calls, 1):
        line = f"  {number}. {call.name}: {call.method} {call.upstream} {template_text(call.path)}"
        if call.timeout is not None:
            line += f" (timeout {_seconds(call.timeout)})"
        if call.compensate is not None:
            line += f"; compensate {call.compensate.method} {template_text(call.compensate.path)}"
        lines.append(line)
    return lines


def describe_upstream(up: UpstreamConfig) -> list[str]:
    """An upstream's active and passive health settings, one line each."""
    lines = []
    check = up.health_check
    if check is not None:
        lines.append(f"health_check GET {check.path} every {_seconds(check.interval)}, timeout "
                     f"{_seconds(check.timeout)}, healthy after {check.healthy_threshold} passes, "
                     f"unhealthy after {check.unhealthy_threshold} failures")
    if up.circuit_breaker is not None:
        failures, cooldown = up.circuit_breaker
        lines.append(f"circuit_breaker {failures} failures, cooldown {_seconds(cooldown)}")
    return lines


def cmd_explain(snapshot: Snapshot, method: str, url: str, header_args: list[str]) -> int:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    raw_path = parts.path or "/"
    path = normalize_path(raw_path)
    if path is None:
        print(f"{raw_path}: refused with 400 (the path cannot be normalised safely)")
        return 1
    headers: dict[str, str] = {}  # what the router reads: the first of each name, lower-cased
    sent: list[tuple[bytes, bytes]] = []  # what the proxy has: every header as sent, in order
    for item in header_args:
        name, sep, value = item.partition(":")
        if not sep:
            print(f'fastgw: -H wants "NAME: VALUE", got {item!r}', file=sys.stderr)
            return 2
        headers.setdefault(name.strip().lower(), value.strip())
        sent.append((name.strip().encode("latin-1", "replace"), value.strip().encode("latin-1", "replace")))
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
    print(f"policies: {route.chain.describe()}")
    if rc.aggregate is not None:  # answered by its calls, not forwarded
        for line in describe_aggregate(rc.aggregate):
            print(line)
        return 0
    print(f"upstream: {describe_choice(route, sent)} path {upstream_path}"
          + (f" timeout {_seconds(rc.timeout)}" if rc.timeout else ""))
    return 0


def describe_choice(route: Route, headers: list[tuple[bytes, bytes]]) -> str:
    """The upstream a request with these headers goes to, as ``Route.pick_upstream``
    decides it: the ``match_split`` entry that takes it, else the shares of ``split``
    (which one a given request takes depends on the requests before it), else the
    route's upstream."""
    def named(upstream: Upstream) -> str:
        return f"{upstream.name} [{', '.join(p.address for p in upstream.pools)}]"

    first: dict[bytes, bytes] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    entry = route.match_split_entry(first.get)
    if entry is not None:
        header, value, upstream = entry
        return f"{named(upstream)} (match_split: {header.decode('latin-1')} = {_quoted(value.decode('latin-1'))})"
    if route.split_shares:
        choice = "split " + " / ".join(f"{percent}% {named(up)}" for up, percent in route.split_shares)
    else:
        choice = named(route.upstream)
    return choice + (" (no match_split matched)" if route.config.match_split else "")


