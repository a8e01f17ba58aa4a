"""The config file: TOML in, validated frozen dataclasses out.

``load_config(path)`` / ``parse_config(text)`` return a :class:`Config` or raise
:class:`~fastgw.errors.ConfigError` listing *every* problem, each one full line
``SOURCE: PLACE: MESSAGE`` (``fastgw.toml: server.workers: must be at least 1, got 0``).
Only a TOML syntax error stops early, since nothing after it can be read. A valid
file may still carry ``Config.warnings``: problems that do not stop it but that its
user must hear about (``/users/:id`` is matched literally), in the same one-line form.

How it is built: a :class:`Place` is a value of the file together with its dotted
path (``routes[0] "users".methods[1]``) and the shared error and warning lists. Its
typed getters (``get_int``, ``get_str``, ``get_duration``...) convert a key of the
table it holds, record an error at the key's place when the value is wrong, and
return the default instead, so that validation always goes on to the end. The value syntaxes
(durations, sizes, rates, addresses, secrets) are plain functions that raise
``ValueError`` with the human message, usable on their own.

Nothing here opens sockets, creates files or builds routers: the result is data,
compiled later by ``snapshot`` (log files are only checked: can they be written?).
Keys reserved for features still to come are refused with "is not supported yet",
never ignored.

The route policies of ``fastgw.policies`` (and plugins) declare their keys' schema beside
their code (``fastgw.policy.PolicySpec``); ``policy_settings`` validates a policy's
table against it with the same machinery, the kinds of value being ``SCHEMA_KINDS``.

May import: the standard library, ``fastgw.errors``, ``fastgw._core`` (the router
judges path pattern syntax), ``fastgw.policy`` and ``fastgw.policies`` (their specs).
"""

from __future__ import annotations

import ast
import datetime
import difflib
import hashlib
import ipaddress
import json
import os
import re
import stat
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fastgw._core.errors import RouteError
from fastgw._core.router import Router, Rule
from fastgw.errors import ConfigError
from fastgw.plugin import load_plugins
from fastgw.tls import check_certificate
from fastgw.policies import BUILTIN as BUILTIN_POLICIES
from fastgw.policies.jwt import JWT_SPEC
from fastgw.policy import REQUIRED

__all__ = [
    "Address",
    "AdminConfig",
    "ClusterConfig",
    "ConsumerConfig",
    "Config",
    "GlobalConfig",
    "HealthCheck",
    "LogConfig",
    "RouteConfig",
    "ServerConfig",
    "TlsCertificate",
    "TlsConfig",
    "Target",
    "UpstreamConfig",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_rate",
    "parse_size",
    "resolve_secret",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """A listen address or an upstream target's address."""

    host: str
    port: int

    def __str__(self) -> str:
        return _join_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """One ``[[server.tls.certificates]]``: absolute file paths, and the server names
    (exact, or ``*.`` one label) it is chosen for by SNI."""

    cert: str
    key: str
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[server.tls]``: HTTPS listeners; the first certificate is the default."""

    listen: tuple[Address, ...]
    certificates: tuple[TlsCertificate, ...]
    min_version: str = "1.2"


@dataclass(frozen=True, slots=True)
class Http2Config:
    """``[server.http2]``: what an HTTP/2 client may do (docs/config.md compares each with
    nginx's and Envoy's defaults). Sizes are bytes, durations seconds."""

    #: streams open at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused
    max_concurrent_streams: int = 100
    #: a request's header list, RFC 9113 sizes (name + value + 32 per field); 431 beyond
    max_header_list_bytes: int = 16384
    #: the HPACK table the client may use to compress its requests (SETTINGS_HEADER_TABLE_SIZE)
    max_header_table_bytes: int = 4096
    #: CONTINUATION frames after one HEADERS frame; beyond, the connection is closed
    max_continuation_frames: int = 8
    #: RST_STREAM frames a client may send per second (Rapid Reset); beyond, GOAWAY
    #: ENHANCE_YOUR_CALM, as when that many streams in a row are reset before their answer
    max_resets_per_second: int = 100
    #: PING, SETTINGS, PRIORITY and empty DATA frames per second; beyond, GOAWAY ENHANCE_YOUR_CALM
    max_control_frames_per_second: int = 1000
    #: SETTINGS and PING acknowledgements waiting for a client that does not read; beyond,
    #: the connection is closed
    max_queued_control_frames: int = 1000
    #: WINDOW_UPDATE frames per DATA frame we sent (after a first hundred); beyond, GOAWAY
    #: ENHANCE_YOUR_CALM (window-update abuse)
    max_window_updates_per_data_frame: int = 10
    #: malformed requests and invalid frames one connection may send; beyond, GOAWAY
    #: ENHANCE_YOUR_CALM
    max_malformed_per_connection: int = 100
    #: flow-control windows we offer: per stream (a slow upstream holds back only its own
    #: stream's) and per connection
    stream_window_bytes: int = 65535
    connection_window_bytes: int = 1024 * 1024
    #: a stream whose request body, or whose client's reading, stalls this long is ended
    stream_idle_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``. Durations are seconds, sizes bytes."""

    listen: tuple[Address, ...] = (Address("0.0.0.0", 8080),)
    workers: int = 1
    max_connections: int = 10000
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    drain_timeout: float = 10.0
    max_header_bytes: int = 16384
    max_body_bytes: int = 10 * 1024 * 1024
    trusted_proxies: tuple[IPNetwork, ...] = ()
    #: the supervisor's pid, written at start for ``fastgw reload|stop|reopen`` and init
    #: systems (an absolute path), or "" for none
    pid_file: str = ""
    tls: TlsConfig | None = None
    http2: Http2Config = Http2Config()


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``. ``access`` is "stdout", "stderr", "off" or an absolute file path;
    ``error`` the same, but never "off"."""

    access: str = "stdout"
    format: str = "json"
    #: where startup, reload and error lines go
    error: str = "stderr"
    #: the least severe error log lines written: "debug", "info", "warning" or "error"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Target:
    """One server of an upstream."""

    host: str
    port: int
    weight: int = 1

    def __str__(self) -> str:
        return _join_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """``[upstreams.NAME.health_check]``: active checks. Durations are seconds."""

    path: str = "/"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """``[upstreams.NAME]``. Timeouts are seconds."""

    name: str
    targets: tuple[Target, ...]
    balance: str = "round_robin"
    #: what consistent_hash hashes: "ip", "path", "header:<lower-case name>", "cookie:NAME", "query:NAME"
    hash_on: str = "ip"
    #: further targets a request may try: after a failed connect, or a 502/503 to an
    #: idempotent request without a body
    retries: int = 1
    #: (consecutive failures that open a target's circuit, seconds before a trial), or None
    circuit_breaker: tuple[int, float] | None = None
    #: active checks, or None
    health_check: HealthCheck | None = None
    keepalive: int = 64
    connect_timeout: float = 2.0
    read_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """``[consumers.NAME]``: who may call, and how it proves it. ``api_keys`` and
    ``basic_password`` are secrets (``env:`` resolved): never printed, logged or shown."""

    name: str
    groups: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    jwt_subject: str | None = None
    basic_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``[cluster]``: state shared by several gateway machines."""

    redis: str
    #: how long a Redis call may take before the machine's own state answers instead
    timeout: float = 0.05


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    """``[global]``: policies applied to every route, before the route's own."""

    #: (policy key, validated settings) of the chain's policies, each declared by a spec
    policies: tuple[tuple[str, dict[str, Any]], ...] = ()


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One ``[[routes]]`` entry; ``index`` is its position in that array."""

    name: str
    index: int
    paths: tuple[str, ...]
    upstream: str
    hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    priority: int = 0
    strip_prefix: str | None = None
    rewrite: str | None = None
    timeout: float | None = None
    #: (upstream, percent of the traffic) canaries; the route's upstream takes the rest
    split: tuple[tuple[str, int], ...] = ()
    #: (lower-case header, value, upstream): a request whose header equals value goes there
    match_split: tuple[tuple[str, str, str], ...] = ()
    #: requests in flight on this route, machine-wide (0: unlimited)
    max_concurrent: int = 0
    #: (policy key, validated settings) of the chain's policies, each declared by a spec
    policies: tuple[tuple[str, dict[str, Any]], ...] = ()
    #: what a WebSocket handshake on this route becomes: "proxy" (a tunnel to the
    #: upstream), "http" (fastgw speaks WebSocket, the upstream gets POSTs), or None
    #: (served as plain HTTP)
    websocket: str | None = None
    #: websocket = "http": the largest message a client may send (bytes; 1009 beyond),
    #: messages per second per connection (1008 beyond), seconds between keep-alive pings
    websocket_max_message: int = 1024 * 1024
    websocket_message_rate: float = 100.0
    websocket_ping_interval: float = 20.0
    #: ``[routes.aggregate]``: the route answers with a composition of backend calls
    aggregate: AggregateConfig | None = None


#: A compiled template (``compile_template``): literal strings and references, each a
#: tuple: ("path"|"query"|"header", name), ("body", *keys), ("call", call, "status"),
#: ("call", call, "body", *keys).
Template = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class CallConfig:
    """One backend call of an aggregate (or a call's compensation)."""

    name: str
    upstream: str
    method: str
    path: Template
    #: (name, template) pairs
    query: tuple[tuple[str, Template], ...] = ()
    headers: tuple[tuple[str, Template], ...] = ()
    #: the JSON body, compiled (``compile_json_template``), or None for no body
    body: Any = None
    #: seconds this call may take (within the composition's ``timeout``); a
    #: compensation's default is its call's; None: the upstream's own timeouts
    timeout: float | None = None
    compensate: CallConfig | None = None


@dataclass(frozen=True, slots=True)
class AggregateConfig:
    """``[routes.aggregate]``: backend calls run in ``mode`` ("parallel" or "sequence")."""

    mode: str
    timeout: float
    max_body_bytes: int
    calls: tuple[CallConfig, ...]
    #: every reference the calls and compensations make to the client's request, once
    #: each: looked up before any call is sent (a missing one: 400, nothing sent)
    request_refs: tuple[tuple[Any, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``[admin]``: the admin API (fastgw.admin), served by its own process."""

    listen: Address
    #: the bearer token every request must carry (a secret, ``env:`` resolved), or ""
    #: for none (allowed on a loopback address only)
    token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid config file."""

    server: ServerConfig
    log: LogConfig
    upstreams: tuple[UpstreamConfig, ...]
    routes: tuple[RouteConfig, ...]
    source: str
    digest: str
    global_policies: GlobalConfig = GlobalConfig()
    cluster: ClusterConfig | None = None
    #: problems that do not stop the file, each one full line as an error is
    #: (``SOURCE: PLACE: MESSAGE``; the printers add "warning: ")
    warnings: tuple[str, ...] = ()
    #: the plugins of ``[plugins].paths``, loaded (fastgw.policy.PolicySpec each)
    plugins: tuple[Any, ...] = ()
    consumers: tuple[ConsumerConfig, ...] = ()
    #: ``[auth.jwt]``'s settings (fastgw.policies.jwt), or None
    jwt: dict[str, Any] | None = field(default=None, repr=False)
    #: ``[admin]``, or None: no admin API
    admin: AdminConfig | None = None

    def upstream(self, name: str) -> UpstreamConfig:
        """The upstream called ``name``; ``KeyError`` when there is none."""
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], text_from: str | None = None) -> Config:
    """Read and validate the config file at ``path``.

    Errors are prefixed with ``path`` as given; relative file paths inside the
    file are resolved against the file's folder. With ``text_from``, the text is read
    from that file instead (a worker reads the copy its supervisor validated), all else
    being ``path``'s.

    Raises:
        ConfigError: with every problem found (or the one reason the file cannot
            be read or parsed).
    """
    source = os.fspath(path)
    try:
        with open(source if text_from is None else text_from, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError([f"{source}: cannot read the file: {e.strerror or e}"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{source}: not UTF-8 text (bad byte at offset {e.start})"]) from None
    base_dir = os.path.dirname(os.path.abspath(source))
    return _build(text, source, source, base_dir, hashlib.sha256(data).hexdigest())


def parse_config(text: str, source: str | None = None, base_dir: str = ".") -> Config:
    """Validate config ``text``.

    Args:
        text: the TOML document.
        source: the name errors are prefixed with ("fastgw.toml" when not given),
            and the resulting ``Config.source`` ("" when not given).
        base_dir: the folder relative file paths are resolved against.

    Raises:
        ConfigError: with every problem found.
    """
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    prefix = "fastgw.toml" if source is None else source
    return _build(text, prefix, source or "", base_dir, digest)


def _build(text: str, prefix: str, source: str, base_dir: str, digest: str) -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{prefix}: {_syntax_error(str(e), text)}"]) from None
    errors: list[str] = []
    warnings: list[str] = []
    config = _Builder(Place(prefix, errors, warnings, doc), base_dir).config(source, digest)
    if errors:
        # (a refused file's warnings wait: its user has errors to fix first)
        raise ConfigError(errors)
    return replace(config, warnings=tuple(warnings))


# ---------------------------------------------------------------------------
# Value syntaxes
# ---------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"([0-9]+)(B|KiB|MiB|GiB)")
_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)/(s|m|h|d)")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _unit_words(words: dict[str, str], units: Iterable[str]) -> dict[str, str]:
    """``{word: unit}`` for each of ``units``, from ``words`` (a unit → its words)."""
    return {word: unit for unit in units for word in words[unit].split()}


# Near misses: a number and a unit word, in any case and with spaces around. They are
# refused all the same (is "10MB" 10**7 bytes or 10 MiB?), with the value most likely
# meant as a hint; a bare number is seconds or bytes, as integers are elsewhere.
_NEAR_MISS = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_NEAR_MISS_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:r|reqs?|requests?)?\s*(?:/|per\b)\s*([A-Za-z]*)\s*",
                             re.IGNORECASE)
_TIME_WORDS = {
    "ms": "ms msec msecs millisecond milliseconds",
    "s": "s sec secs second seconds",
    "m": "m min mins minute minutes",
    "h": "h hr hrs hour hours",
    "d": "d day days",
}
_DURATION_WORDS = {"": "s", **_unit_words(_TIME_WORDS, _DURATION_UNITS)}
_RATE_WORDS = _unit_words(_TIME_WORDS, _RATE_UNITS)
_SIZE_WORDS = {"": "B", **_unit_words({"B": "b byte bytes", "KiB": "k kb kib", "MiB": "m mb mib", "GiB": "g gb gib"},
                                      _SIZE_UNITS)}


def _not_a(what: str, s: str, examples: str, syntax: re.Pattern[str], near: re.Pattern[str],
           words: dict[str, str], sep: str = "") -> ValueError:
    """``"10MB" is not a size (did you mean "10MiB"? use e.g. ...)``: the guess is the
    number of ``s`` (split by ``near``) with the unit its unit word names, when that is
    valid ``syntax``."""
    hint = ""
    m = near.fullmatch(s)
    unit = words.get(m[2].lower()) if m else None
    if unit is not None and syntax.fullmatch(f"{m[1]}{sep}{unit}"):
        hint = f"did you mean {_q(f'{m[1]}{sep}{unit}')}? "
    return ValueError(f"{_q(s)} is not {what} ({hint}use e.g. {examples})")


def parse_duration(s: Any) -> float:
    """``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"`` (decimals allowed) → seconds, > 0.

    Raises:
        ValueError: not a string, not a duration, or zero.
    """
    if not isinstance(s, str):
        # ("timeout = 5": seconds, as in most other configs; still refused, since the
        # next reader cannot tell)
        hint = f" (did you mean {_q(f'{s}s')}?)" if type(s) is int and s > 0 else ""
        raise ValueError(_expected('a duration like "5s"', s) + hint)
    m = _DURATION.fullmatch(s)
    if m is None:
        raise _not_a("a duration", s, '"250ms", "5s", "2m", "1h"', _DURATION, _NEAR_MISS, _DURATION_WORDS)
    seconds = float(m[1]) * _DURATION_UNITS[m[2]]
    if seconds <= 0:
        raise ValueError(f"a duration must be greater than 0, got {_q(s)}")
    return seconds


def parse_size(s: Any) -> int:
    """``"512B"``, ``"16KiB"``, ``"10MiB"``, ``"1GiB"``, or an integer number of bytes.

    Raises:
        ValueError: not a size, or negative.
    """
    if type(s) is int:
        if s < 0:
            raise ValueError(f"a size cannot be negative, got {s}")
        return s
    if not isinstance(s, str):
        raise ValueError(_expected('a size like "16KiB" or a number of bytes', s))
    m = _SIZE.fullmatch(s)
    if m is None:
        raise _not_a("a size", s, '"512B", "16KiB", "10MiB", "1GiB"', _SIZE, _NEAR_MISS, _SIZE_WORDS)
    return int(m[1]) * _SIZE_UNITS[m[2]]


def parse_rate(s: Any) -> float:
    """``"100/s"``, ``"6000/m"``, ``"50000/h"``, ``"1000/d"`` → events per second, > 0.

    Raises:
        ValueError: not a string, not a rate, or zero.
    """
    if not isinstance(s, str):
        raise ValueError(_expected('a rate like "100/s"', s))
    m = _RATE.fullmatch(s)
    if m is None:
        raise _not_a("a rate", s, '"100/s", "6000/m", "50000/h"', _RATE, _NEAR_MISS_RATE, _RATE_WORDS, "/")
    rate = float(m[1]) / _RATE_UNITS[m[2]]
    if rate <= 0:
        raise ValueError(f"a rate must be greater than 0, got {_q(s)}")
    return rate


def resolve_secret(value: str) -> str:
    """``"env:NAME"`` → the environment variable NAME; any other string as it is.

    Raises:
        ValueError: the variable is not set.
    """
    if not value.startswith("env:"):
        return value
    name = value[4:]
    if not name:
        raise ValueError('"env:" names no environment variable')
    try:
        return os.environ[name]
    except KeyError:
        raise ValueError(f"environment variable {name} is not set") from None


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,6}")


def parse_address(s: Any, default_host: str | None = None) -> Address:
    """``"host:port"`` or ``"[v6]:port"``; ``":port"`` too when ``default_host`` is given.

    Raises:
        ValueError: ``"x" is not host:port (why)``.
    """
    if not isinstance(s, str):
        raise ValueError(_expected('an address like "127.0.0.1:8080"', s))

    def bad(why: str) -> ValueError:
        return ValueError(f"{_q(s)} is not host:port ({why})")

    if "://" in s:
        # A URL where an address goes: the colon after its scheme would otherwise read as
        # an IPv6 address's. What was meant is the host:port it names.
        meant = _url_address(s)
        raise bad(f"no scheme here: write {_q(meant)}" if meant else "no scheme here: write host:port")
    if s.startswith("["):
        host, bracket, rest = s[1:].partition("]")
        if not bracket:
            raise bad("missing ']'")
        if not rest.startswith(":"):
            raise bad("no port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"bad IPv6 address {_q(host)}") from None
    else:
        host, colon, port_text = s.rpartition(":")
        if not colon:
            raise bad("no port")
        if ":" in host:
            raise bad('an IPv6 address needs brackets, e.g. "[::1]:8080"')
        if not host:
            if default_host is None:
                raise bad("no host")
            host = default_host
        elif not _is_hostname(host):
            raise bad(f"bad host name {_q(host)}")
    if not _PORT.fullmatch(port_text):
        raise bad("no port" if not port_text else "port is not a number")
    port = int(port_text)
    if port > 65535:
        raise bad("port > 65535")
    if port < 1:
        raise bad("port < 1")
    return Address(host, port)


_SCHEME_PORTS = {"http": 80, "https": 443}


def _url_address(url: str) -> str | None:
    """The host:port of ``url`` (its scheme's port when it names none); None when it has
    no host or port to take."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or _SCHEME_PORTS.get(parts.scheme.lower())
    except ValueError:  # a bad port or IPv6 literal
        return None
    if not parts.hostname or port is None:
        return None
    return _join_host_port(parts.hostname, port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _is_hostname(host: str) -> bool:
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in host.split("."))


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------
# Places and getters
# ---------------------------------------------------------------------------

_REQUIRED: Any = object()
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
Convert = Callable[[Any], Any]


class Place:
    """A value of the file, where it is, and the shared list errors go to.

    The getters read one key of the table this place holds: an absent key gives
    the default (or a "missing required key" error when there is none), a wrong
    value gives an error at the key's place and the default.
    """

    __slots__ = ("_errors", "_source", "_warnings", "path", "value")

    def __init__(self, source: str, errors: list[str], warnings: list[str], value: Any, path: str = "") -> None:
        self._source = source
        self._errors = errors
        self._warnings = warnings
        self.value = value
        self.path = path

    def _at(self, value: Any, path: str) -> Place:
        return Place(self._source, self._errors, self._warnings, value, path)

    def key(self, name: str) -> Place:
        """The place of ``name`` in this table (its value ``None`` when absent)."""
        part = name if _BARE_KEY.fullmatch(name) else _q(name)
        path = f"{self.path}.{part}" if self.path else part
        return self._at(self.value.get(name) if isinstance(self.value, dict) else None, path)

    def item(self, index: int) -> Place:
        """The place of this array's element ``index``."""
        return self._at(self.value[index], f"{self.path}[{index}]")

    def named(self, name: str) -> Place:
        """This place, its path followed by ``name`` in quotes (``routes[2] "orders"``)."""
        return self._at(self.value, f"{self.path} {_q(name)}")

    def error(self, message: str) -> None:
        self._errors.append(self._line(message))

    def warn(self, message: str) -> None:
        """A problem that does not stop the file (``Config.warnings``)."""
        self._warnings.append(self._line(message))

    def _line(self, message: str) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self._source}: {where}{message}"

    def convert(self, convert: Convert, default: Any = None) -> Any:
        """This place's value through ``convert``; on ``ValueError``, an error and ``default``."""
        try:
            return convert(self.value)
        except ValueError as e:
            self.error(str(e))
            return default

    # -- table access -------------------------------------------------------

    def check_unknown(
        self, known: Iterable[str], later: Iterable[str] = (), elsewhere: Mapping[str, str] | None = None
    ) -> None:
        """An error for every key that is neither ``known`` nor ``later`` (not supported yet);
        one that belongs ``elsewhere`` gets that map's message, at the key's place."""
        known, later = tuple(known), tuple(later)
        for name in self.value:
            if name in later:
                self.error(f"{_q(name)} is not supported yet")
            elif name in known:
                continue
            elif elsewhere and name in elsewhere:
                self.key(name).error(elsewhere[name])
            else:
                self.error(f"unknown key {_q(name)}{_did_you_mean(name, known + later)}")

    def get(self, name: str, convert: Convert, default: Any = _REQUIRED) -> Any:
        """Key ``name`` through ``convert``; ``default`` when absent or wrong.

        Without a default the key is required; its value is ``None`` when absent or wrong.
        """
        if name not in self.value:
            if default is _REQUIRED:
                self.error(f"missing required key {_q(name)}")
                return None
            return default
        return self.key(name).convert(convert, None if default is _REQUIRED else default)

    def get_int(self, name: str, default: Any = _REQUIRED, minimum: int | None = None) -> Any:
        return self.get(name, _integer(minimum), default)

    def get_str(self, name: str, default: Any = _REQUIRED) -> Any:
        return self.get(name, _string, default)

    def get_choice(self, name: str, default: str, accepted: Iterable[str], ignore_case: bool = False) -> str:
        return self.get(name, _choice(tuple(accepted), ignore_case), default)

    def get_duration(self, name: str, default: Any = _REQUIRED) -> Any:
        return self.get(name, parse_duration, default)

    def get_size(self, name: str, default: int, minimum: int = 0) -> int:
        return self.get(name, _at_least(parse_size, minimum), default)

    def get_table(self, name: str) -> Place | None:
        """The place of sub-table ``name``; ``None`` when absent or not a table."""
        if name not in self.value:
            return None
        place = self.key(name)
        return place if place.convert(_table) is not None else None

    def get_items(
        self, name: str, *, single: bool = False, required: bool = False, nonempty: str = ""
    ) -> list[Place]:
        """The places of array ``name``'s elements; ``[]`` when absent or not an array.

        Args:
            single: a lone value stands for an array of one (its place is the key's).
            required: the key must be present.
            nonempty: what an element is called, when the array must not be empty.
        """
        if name not in self.value:
            if required:
                self.error(f"missing required key {_q(name)}")
            return []
        place = self.key(name)
        if single and not isinstance(place.value, list):
            return [place]
        if place.convert(_array) is None:
            return []
        if nonempty and not place.value:
            place.error(f"must have at least one {nonempty}")
        return [place.item(i) for i in range(len(place.value))]

    def get_tuple(self, name: str, convert: Convert, **kwargs: Any) -> tuple[Any, ...]:
        """Array ``name`` (see ``get_items``) with each element through ``convert``;
        bad ones are left out."""
        values = (item.convert(convert) for item in self.get_items(name, **kwargs))
        return tuple(v for v in values if v is not None)


def _expected(what: str, value: Any) -> str:
    return f"expected {what}, got {_describe(value)}"


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"string {_q(value)}"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime.datetime):
        return f"date-time {value.isoformat()}"
    if isinstance(value, datetime.date):
        return f"date {value.isoformat()}"
    if isinstance(value, datetime.time):
        return f"time {value.isoformat()}"
    return type(value).__name__


def _q(s: str, limit: int = 80) -> str:
    """``s`` in double quotes, escaped like JSON, cut when very long."""
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return json.dumps(s, ensure_ascii=False)


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {_q(close[0])}?)" if close else ""


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(_expected("a string", value))
    return value


def _table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(_expected("a table", value))
    return value


def _array(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(_expected("an array", value))
    return value


def _integer(minimum: int | None = None) -> Convert:
    def convert(value: Any) -> int:
        if type(value) is not int:
            raise ValueError(_expected("an integer", value))
        return value

    return convert if minimum is None else _at_least(convert, minimum)


def _at_least(convert: Convert, minimum: int) -> Convert:
    def checked(value: Any) -> Any:
        result = convert(value)
        if result < minimum:
            raise ValueError(f"must be at least {minimum}, got {_q(value) if isinstance(value, str) else value}")
        return result

    return checked


def _choice(accepted: tuple[str, ...], ignore_case: bool = False) -> Convert:
    """One of ``accepted`` (lower-case ones, with ``ignore_case``: in any case)."""

    def convert(value: Any) -> str:
        word = value.lower() if ignore_case and isinstance(value, str) else value
        if isinstance(word, str) and word in accepted:
            return word
        what = _list(accepted) if len(accepted) == 1 else f"one of {_list(accepted)}"
        hint = _did_you_mean(word, accepted) if isinstance(word, str) else ""
        raise ValueError(_expected(what, value) + hint)

    return convert


def _list(words: Iterable[str]) -> str:
    return ", ".join(_q(w) for w in words)


# ---------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------

_TOP_KEYS = ("server", "log", "upstreams", "routes", "global", "cluster", "plugins", "consumers", "auth", "admin")
_TOP_LATER: tuple[str, ...] = ()
_ADMIN_KEYS = ("listen", "token")
_AUTH_KEYS = ("jwt",)
_CONSUMER_KEYS = ("groups", "api_keys", "jwt_subject", "basic_password")
_PLUGINS_KEYS = ("paths",)
_GLOBAL_KEYS: tuple[str, ...] = ()  # (its policies: those of BUILTIN_POLICIES in_global)
_GLOBAL_LATER = ()
_CLUSTER_KEYS = ("redis", "timeout")
_SERVER_KEYS = (
    "listen",
    "workers",
    "max_connections",
    "header_timeout",
    "idle_timeout",
    "drain_timeout",
    "max_header_bytes",
    "max_body_bytes",
    "trusted_proxies",
    "pid_file",
    "tls",
    "http2",
)
_SERVER_LATER: tuple[str, ...] = ()
_TLS_KEYS = ("listen", "min_version", "certificates")
_HTTP2_KEYS = tuple(Http2Config.__dataclass_fields__)
# The protocol's own bounds on some of them (RFC 9113 §6.5.2, §6.9.1).
_HTTP2_MAXIMA = {"stream_window_bytes": 2**31 - 1, "connection_window_bytes": 2**31 - 1,
                 "max_header_table_bytes": 2**32 - 1, "max_concurrent_streams": 2**31 - 1}
_CERTIFICATE_KEYS = ("cert", "key", "hosts")
_LOG_KEYS = ("access", "format", "error", "level")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_UPSTREAM_KEYS = ("targets", "balance", "hash_on", "retries", "keepalive", "connect_timeout", "read_timeout",
                  "circuit_breaker", "health_check")
_HEALTH_CHECK_KEYS = ("path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold")
#: the streaks the shared state counts saturate at 65,535; a threshold is far below
_THRESHOLD_MAX = 1000
_BALANCE = ("round_robin", "least_conn", "consistent_hash", "random")
_HASH_ON = ("ip", "path")
_HASH_ON_NAMED = ("header", "cookie", "query")


def _hash_on(value: Any) -> str:
    """``ip``, ``path``, or ``header:NAME`` / ``cookie:NAME`` / ``query:NAME``."""
    value = _string(value)
    if value in _HASH_ON:
        return value
    kind, sep, name = value.partition(":")
    if sep and kind in _HASH_ON_NAMED:
        if not name:
            raise ValueError(f"{_q(value)} names no {kind}")
        if kind == "header":
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{_q(name)} is not a header name")
            return f"header:{name.lower()}"
        return value
    raise ValueError(f'expected "ip", "path", "header:NAME", "cookie:NAME" or "query:NAME", got {_q(value)}')
_TARGET_KEYS = ("address", "weight")
_ROUTE_KEYS = (
    "name",
    "hosts",
    "paths",
    "methods",
    "headers",
    "priority",
    "upstream",
    "strip_prefix",
    "rewrite",
    "timeout",
    "split",
    "match_split",
    "max_concurrent",
    "websocket",
    "websocket_max_message",
    "websocket_message_rate",
    "websocket_ping_interval",
    "aggregate",
)
_ROUTE_LATER: tuple[str, ...] = ()
_WEBSOCKET_MODES = ("proxy", "http")
_AGGREGATE_KEYS = ("mode", "timeout", "max_body_bytes", "calls")
_CALL_KEYS = ("name", "upstream", "method", "path", "query", "headers", "body", "timeout", "compensate")
_COMPENSATE_KEYS = ("method", "path", "query", "headers", "body", "timeout")
MAX_AGGREGATE_CALLS = 16
_CALL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: what a template reference may start with, besides a call's name
_TEMPLATE_SOURCES = ("path", "query", "header", "body")
_TEMPLATE_REF = re.compile(r"\{([^{}]*)\}")


def compile_template(text: str, earlier: tuple[str, ...], mode: str = "sequence",
                     names: Iterable[str] = ()) -> Template:
    """``"/accounts/{body.from}/x"`` as literal parts and references (see ``Template``);
    a ValueError names what is wrong: an unknown source, a call not run before this one
    (``earlier``: the calls whose responses it may read; ``names``: every call so far)."""
    parts: list[Any] = []
    at = 0
    for m in _TEMPLATE_REF.finditer(text):
        if m.start() > at:
            parts.append(text[at:m.start()])
        parts.append(_reference(m[1], earlier, mode, tuple(names)))
        at = m.end()
    rest = text[at:]
    if "{" in rest or "}" in rest or any(isinstance(p, str) and ("{" in p or "}" in p) for p in parts):
        raise ValueError(f"{_q(text)} has an unbalanced brace (a reference is {{source.name}})")
    if rest:
        parts.append(rest)
    return tuple(parts)


def template_text(template: Template) -> str:
    """A compiled template written back as text (``check``, ``explain``, error messages)."""
    return "".join(part if isinstance(part, str) else
                   "{" + ".".join(part[1:] if part[0] == "call" else part) + "}" for part in template)


def _reference(ref: str, earlier: tuple[str, ...], mode: str, names: tuple[str, ...]) -> tuple[Any, ...]:
    keys = ref.strip().split(".")
    head = keys[0]
    if any(not k for k in keys):
        raise ValueError(f"{{{ref}}} is not a reference (e.g. {{body.amount}}, {{path.id}}, {{balance.body.total}})")
    if head in ("path", "query", "header"):
        if len(keys) != 2:
            raise ValueError(f"{{{ref}}}: {head} takes one name, as in {{{head}.name}}")
        return (head, keys[1].lower() if head == "header" else keys[1])
    if head == "body":
        return ("body", *keys[1:])
    if head in earlier:
        if len(keys) == 2 and keys[1] == "status":
            return ("call", head, "status")
        if keys[1:2] == ["body"]:
            return ("call", head, "body", *keys[2:])
        raise ValueError(f"{{{ref}}}: a call's response is {{{head}.status}} or {{{head}.body...}}")
    if head in names:
        if mode == "parallel":
            raise ValueError(f"{{{ref}}} names call {_q(head)}, but parallel calls run at once "
                             "(use mode = \"sequence\")")
        raise ValueError(f"{{{ref}}} names call {_q(head)}, which runs later")
    hint = _did_you_mean(head, (*_TEMPLATE_SOURCES, *earlier))
    raise ValueError(f"{{{ref}}} names an unknown call or source {_q(head)}{hint}")


def compile_json_template(value: Any, earlier: tuple[str, ...], mode: str = "sequence",
                          names: Iterable[str] = ()) -> Any:
    """A JSON body with templates in its strings, as tuples: ("obj", ((key, v), ...)),
    ("list", (v, ...)), ("ref", reference) for a string that is one reference (its
    value inserted as JSON, a number staying a number), ("str", template), ("lit", value)."""
    names = tuple(names)
    if isinstance(value, dict):
        return ("obj", tuple((k, compile_json_template(v, earlier, mode, names)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(compile_json_template(v, earlier, mode, names) for v in value))
    if isinstance(value, str):
        template = compile_template(value, earlier, mode, names)
        if len(template) == 1 and isinstance(template[0], tuple):
            return ("ref", template[0])
        return ("str", template) if any(isinstance(p, tuple) for p in template) else ("lit", value)
    if isinstance(value, (datetime.date, datetime.time)):
        return ("lit", value.isoformat())
    return ("lit", value)


def template_refs(call: CallConfig) -> Iterator[tuple[Any, ...]]:
    """The references of a call's (or compensation's) path, query, headers and body."""
    for template in (call.path, *(t for _, t in call.query), *(t for _, t in call.headers)):
        yield from (part for part in template if isinstance(part, tuple))
    nodes = [] if call.body is None else [call.body]
    while nodes:
        kind, value = nodes.pop()
        if kind == "ref":
            yield value
        elif kind == "str":
            yield from (part for part in value if isinstance(part, tuple))
        elif kind == "obj":
            nodes.extend(v for _, v in reversed(value))
        elif kind == "list":
            nodes.extend(reversed(value))


def _request_refs(calls: list[CallConfig]) -> tuple[tuple[Any, ...], ...]:
    refs = (ref for call in calls for one in (call, call.compensate) if one is not None
            for ref in template_refs(one) if ref[0] != "call")
    return tuple(dict.fromkeys(refs))


def _call_path(value: Any, earlier: tuple[str, ...], mode: str, names: Iterable[str]) -> Template:
    """A call's path: absolute, never ``.`` or ``..`` (a value inserted is percent-encoded,
    so only the literal text could climb out of it)."""
    text = _string(value)
    if not text.startswith("/"):
        raise ValueError(_expected("a path starting with /", text))
    if "?" in text or "#" in text:
        raise ValueError(f"{_q(text)}: a call's query goes in its query table")
    template = compile_template(text, earlier, mode, names)
    plain = "".join(p if isinstance(p, str) else "x" for p in template)
    if any(seg in (".", "..") for seg in plain.split("/")):
        raise ValueError(f"{_q(text)} escapes with . or .. segments")
    return template
#: the keys of websocket = "http" alone
_WEBSOCKET_HTTP_KEYS = ("websocket_max_message", "websocket_message_rate", "websocket_ping_interval")


def _stray_key_errors() -> dict[str, str]:
    """The error for each key of a section written at the top level (above the section's
    header, or with the header forgotten), which says where it goes."""
    homes: dict[str, list[str]] = {}
    in_global = tuple(name for name, spec in BUILTIN_POLICIES.items() if spec.in_global)
    for table, keys in (("[server]", _SERVER_KEYS), ("[log]", _LOG_KEYS), ("[cluster]", _CLUSTER_KEYS),
                        ("[global]", _GLOBAL_KEYS + in_global), ("[upstreams.NAME]", _UPSTREAM_KEYS),
                        ("[[routes]]", _ROUTE_KEYS + tuple(BUILTIN_POLICIES))):
        for key in keys:
            homes.setdefault(key, []).append(table)
    errors = {}
    for key, tables in homes.items():
        # (a route is one of many tables: "[[routes]].paths" would read as a path)
        meant = " or ".join("a key of [[routes]]" if t == "[[routes]]" else f"{t}.{key}" for t in tables)
        where = f" (it goes under {tables[0]})" if tables[0] != "[[routes]]" and len(tables) == 1 else ""
        errors[key] = f"unknown top-level key; did you mean {meant}?{where}"
    return errors


_STRAY_KEY_ERRORS = _stray_key_errors()

# llhttp's HTTP (not RTSP) method list, as httptools parses it.
HTTP_METHODS = frozenset(
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    "SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    "SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM = re.compile(r"\{([^{}]*)\}")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: an Express or Rails parameter segment, ``/:id``: a literal here
_COLON_PARAM = re.compile(r"(?<=/):([A-Za-z_][A-Za-z0-9_]*)(?=/|$)")


class _Builder:
    """Walks the document once, section by section, so that errors always come in
    the same order: top level, server, log, cluster, global, upstreams, routes (each in
    file order)."""

    def __init__(self, root: Place, base_dir: str) -> None:
        self.root = root
        self.base_dir = base_dir
        self.cluster_config: ClusterConfig | None = None

    def config(self, source: str, digest: str) -> Config:
        root = self.root
        root.check_unknown(_TOP_KEYS, _TOP_LATER, _STRAY_KEY_ERRORS)
        server = self.server(root.get_table("server"))
        log = self.log(root.get_table("log"))
        self.plugin_specs = self.plugins(root.get_table("plugins"))
        #: every policy a route (or [global]) may name a table of
        self.policy_specs = {**BUILTIN_POLICIES, **{spec.name: spec for spec in self.plugin_specs}}
        self.cluster_config = self.cluster(root.get_table("cluster"))
        global_policies = self.global_policies(root.get_table("global"))
        consumers = self.consumer_configs = self.consumers(root.get_table("consumers"))
        self.jwt_settings = self.auth(root.get_table("auth"))
        admin = self.admin(root.get_table("admin"), server)
        upstreams = root.get_table("upstreams")
        # Routes are checked against every upstream *name*, valid upstream or not;
        # when [upstreams] itself is broken (reported already), not at all.
        names: tuple[str, ...] | None = ()
        if upstreams is not None:
            names = tuple(upstreams.value)
        elif "upstreams" in root.value:
            names = None
        upstream_configs = self.upstreams(upstreams)
        routes = self.routes(root.get_items("routes"), names)
        if not routes:
            root.warn("no routes: every request will be answered 404 (add a [[routes]] table)")
        return Config(
            server=server,
            log=log,
            upstreams=upstream_configs,
            routes=routes,
            source=source,
            digest=digest,
            global_policies=global_policies,
            cluster=self.cluster_config,
            plugins=self.plugin_specs,
            consumers=consumers,
            jwt=self.jwt_settings,
            admin=admin,
        )

    def admin(self, place: Place | None, server: ServerConfig) -> AdminConfig | None:
        """``[admin]``: its address (none of the gateway's own) and its token, which a
        non-loopback address must have."""
        if place is None:
            return None
        place.check_unknown(_ADMIN_KEYS)
        listen = place.get("listen", lambda v: parse_address(v, "127.0.0.1"))
        token = place.get("token", _secret, "")
        if listen is None:
            return None
        taken = set(server.listen) | set(server.tls.listen if server.tls else ())
        if listen in taken:
            place.key("listen").error(f"{listen} is a gateway listen address too")
            return None
        if not token and not _is_loopback(listen.host):
            place.key("listen").error(f"{listen} is not a loopback address: set [admin].token "
                                      '(e.g. token = "env:FASTGW_ADMIN_TOKEN"), or listen on 127.0.0.1')
            return None
        return AdminConfig(listen, token)

    def cluster(self, place: Place | None) -> ClusterConfig | None:
        if place is None:
            return None
        place.check_unknown(_CLUSTER_KEYS)
        redis = place.get("redis", _redis_url)
        timeout = place.get_duration("timeout", 0.05)
        if redis is None or timeout is None:
            return None
        return ClusterConfig(redis, timeout)

    def global_policies(self, place: Place | None) -> GlobalConfig:
        if place is None:
            return GlobalConfig()
        specs = {name: spec for name, spec in self.policy_specs.items() if spec.in_global}
        place.check_unknown((*_GLOBAL_KEYS, *specs), _GLOBAL_LATER)
        return GlobalConfig(policies=self.policies(place, specs))

    def plugins(self, place: Place | None) -> tuple[Any, ...]:
        """``[plugins].paths``: every module of those folders loaded as a policy spec;
        a module that cannot be loaded is an error at its folder's place."""
        if place is None:
            return ()
        place.check_unknown(_PLUGINS_KEYS)
        folders = []
        for item in place.get_items("paths", nonempty="folder"):
            folder = item.convert(_string)
            if folder is not None:
                folders.append((item, self._path(folder)))
        reserved = {*BUILTIN_POLICIES, *_ROUTE_KEYS, *_ROUTE_LATER}
        specs = []
        for item, folder in folders:
            found, problems = load_plugins([folder], reserved | {s.name for s in specs})
            for path, message in problems:
                item.error(f"{os.path.relpath(path, self.base_dir) if path != folder else folder}: {message}")
            specs.extend(found)
        return tuple(specs)

    def policies(self, place: Place, specs: dict[str, Any]) -> tuple[tuple[str, dict[str, Any]], ...]:
        """The tables of ``place`` that name a policy of ``specs``, each validated."""
        found = []
        for name, spec in specs.items():
            table = place.get_table(name)
            if table is not None:
                settings = policy_settings(table, spec, self._path)
                if settings is not None and settings.get("scope") == "cluster" and not self._has_cluster():
                    table.key("scope").error('"cluster" needs [cluster] redis = "redis://host:port"')
                    settings = None
                if settings is not None:
                    found.append((name, settings))
        return tuple(found)

    def _check_auth(self, place: Place, policies: dict[str, dict[str, Any]]) -> None:
        """What a route's policies say of each other and of the file: ``acl`` and a
        ``rate_limit`` keyed by consumer need the route's ``auth``; ``jwt`` waits for
        ``[auth.jwt]``; ``auth`` with no consumer lets nobody in."""
        auth = policies.get("auth")
        if "acl" in policies and auth is None:
            place.key("acl").error("needs [routes.auth] on the route: groups belong to a proven consumer")
        limit = policies.get("rate_limit")
        if limit is not None and limit["key"] == "consumer" and auth is None:
            place.key("rate_limit").key("key").error('"consumer" needs [routes.auth] on the route')
        if auth is not None and "jwt" in auth["methods"] and "auth" not in self.root.value:
            place.key("auth").key("methods").error('"jwt" needs [auth.jwt] (how tokens are verified)')
        if auth is not None and not self.consumer_configs:
            place.key("auth").warn("no [consumers.NAME] is defined: every request will be refused with 401")

    def _has_cluster(self) -> bool:
        # ([cluster] written but broken counts: its own error says what is wrong)
        return self.cluster_config is not None or "cluster" in self.root.value

    def server(self, place: Place | None) -> ServerConfig:
        d = ServerConfig()
        if place is None:
            return d
        place.check_unknown(_SERVER_KEYS, _SERVER_LATER)
        listen = _unique(
            place.get_items("listen", single=True, nonempty="address"),
            lambda item: item.convert(lambda v: parse_address(v, "0.0.0.0")),
            "address",
        )
        return ServerConfig(
            listen=listen or d.listen,
            workers=place.get("workers", _workers, d.workers),
            max_connections=place.get_int("max_connections", d.max_connections, minimum=1),
            header_timeout=place.get_duration("header_timeout", d.header_timeout),
            idle_timeout=place.get_duration("idle_timeout", d.idle_timeout),
            drain_timeout=place.get_duration("drain_timeout", d.drain_timeout),
            max_header_bytes=place.get_size("max_header_bytes", d.max_header_bytes, minimum=1),
            max_body_bytes=place.get_size("max_body_bytes", d.max_body_bytes),
            trusted_proxies=place.get_tuple("trusted_proxies", _network),
            pid_file=place.get("pid_file", self._pid_file, d.pid_file),
            tls=self.tls(place.get_table("tls"), listen or d.listen),
            http2=self.http2(place.get_table("http2")),
        )

    def http2(self, place: Place | None) -> Http2Config:
        d = Http2Config()
        if place is None:
            return d
        place.check_unknown(_HTTP2_KEYS)
        values: dict[str, Any] = {}
        for name in _HTTP2_KEYS:
            default = getattr(d, name)
            if name == "stream_idle_timeout":
                values[name] = place.get_duration(name, default)
            elif name.endswith("_bytes"):
                values[name] = place.get_size(name, default, minimum=0 if name == "max_header_table_bytes" else 1)
            else:
                values[name] = place.get_int(name, default, minimum=1)
            maximum = _HTTP2_MAXIMA.get(name)
            if maximum is not None and isinstance(values[name], int) and values[name] > maximum:
                place.key(name).error(f"{values[name]} is over HTTP/2's limit of {maximum}")
                values[name] = default
        if isinstance(values["stream_window_bytes"], int) and values["stream_window_bytes"] < 65535:
            place.key("stream_window_bytes").error("must be at least 65535 (64KiB - 1)")
        if isinstance(values["connection_window_bytes"], int) and values["connection_window_bytes"] < 65535:
            place.key("connection_window_bytes").error("must be at least 65535 (64KiB - 1)")
        return Http2Config(**values)

    def tls(self, place: Place | None, plain: tuple[Address, ...]) -> TlsConfig | None:
        """``[server.tls]``: its addresses (none of them a plain one's too) and its
        certificates, each checked now (readable, its key's, not expired)."""
        if place is None:
            return None
        place.check_unknown(_TLS_KEYS)
        listen = _unique(place.get_items("listen", single=True, required=True, nonempty="address"),
                         lambda item: item.convert(lambda v: parse_address(v, "0.0.0.0")), "address")
        for address in listen:
            if address in plain:
                place.key("listen").error(f"{address} is a plain listen address too")
        min_version = place.get_choice("min_version", "1.2", ("1.2", "1.3"))
        certificates = []
        for item in place.get_items("certificates", required=True, nonempty="certificate"):
            if item.convert(_table) is None:
                continue
            item.check_unknown(_CERTIFICATE_KEYS)
            cert = item.get("cert", _nonempty_string)
            key = item.get("key", _nonempty_string)
            hosts = tuple(dict.fromkeys(item.get_tuple("hosts", _route_host)))
            if cert is None or key is None:
                continue
            cert, key = self._path(cert), self._path(key)
            errors, warnings, names = check_certificate(cert, key)
            for message in errors:
                item.error(message)
            for message in warnings:
                item.warn(message)
            if not errors:
                certificates.append(TlsCertificate(cert, key, hosts or tuple(names)))
        if not certificates:
            return None
        return TlsConfig(listen=listen, certificates=tuple(certificates), min_version=min_version)

    def log(self, place: Place | None) -> LogConfig:
        d = LogConfig()
        if place is None:
            return d
        place.check_unknown(_LOG_KEYS)
        return LogConfig(
            access=place.get("access", lambda v: self._log_target(v, ("stdout", "stderr", "off")), d.access),
            format=place.get_choice("format", d.format, ("json",)),
            error=place.get("error", self._error_log, d.error),
            level=place.get_choice("level", d.level, _LOG_LEVELS, ignore_case=True),
        )

    def _pid_file(self, value: Any) -> str:
        text = _string(value)
        return text and _writable_file(self._path(text))

    def _path(self, text: str) -> str:
        """A file path of the config, absolute: relative ones are from the file's folder."""
        return os.path.normpath(os.path.join(os.path.abspath(self.base_dir), text))

    def _error_log(self, value: Any) -> str:
        # (what the gateway says about itself, a failing upstream included, is never lost)
        if isinstance(value, str) and value.lower() == "off":
            raise ValueError('the error log cannot be turned off, use level = "error" to quiet it')
        return self._log_target(value, ("stdout", "stderr"))

    def _log_target(self, value: Any, keywords: tuple[str, ...]) -> str:
        """One of ``keywords`` in any case (as lower-case), or a file path, resolved
        against the config file's folder, that a log can be written to."""
        text = _string(value)
        if text.lower() in keywords:
            return text.lower()
        if not text or "\0" in text:
            raise ValueError(_expected(f"{_list(keywords)} or a file path", text))
        return _writable_file(self._path(text))

    def auth(self, place: Place | None) -> dict[str, Any] | None:
        """``[auth.jwt]``, validated against its spec (fastgw.policies.jwt)."""
        if place is None:
            return None
        place.check_unknown(_AUTH_KEYS)
        table = place.get_table("jwt")
        return None if table is None else policy_settings(table, JWT_SPEC, self._path)

    def consumers(self, place: Place | None) -> tuple[ConsumerConfig, ...]:
        """``[consumers.NAME]`` tables. An API key belongs to one consumer only."""
        if place is None:
            return ()
        result = []
        owners: dict[str, str] = {}
        for name in place.value:
            table = place.key(name)
            if table.convert(_table) is None:
                continue
            table.check_unknown(_CONSUMER_KEYS)
            if not _CONSUMER_NAME.fullmatch(name):
                table.error("a consumer's name is letters, digits, and . _ - @ (it is sent as X-Consumer-Id)")
            keys = []
            for item in table.get_items("api_keys"):
                key = item.convert(_secret)
                if key is None:
                    continue
                if key in owners:  # (the key itself is a secret: never in the message)
                    item.error(f"this key is consumer {_q(owners[key])}'s too: a key names one consumer")
                owners.setdefault(key, name)
                keys.append(key)
            password = table.get("basic_password", _password_hash, None)
            result.append(ConsumerConfig(
                name=name, groups=tuple(dict.fromkeys(table.get_tuple("groups", _group))), api_keys=tuple(keys),
                jwt_subject=table.get("jwt_subject", _nonempty_string, None), basic_password=password))
        return tuple(result)

    def upstreams(self, place: Place | None) -> tuple[UpstreamConfig, ...]:
        if place is None:
            return ()
        result = []
        for name in place.value:
            upstream = place.key(name)
            if upstream.convert(_table) is not None:
                result.append(self.upstream(name, upstream))
        return tuple(result)

    def upstream(self, name: str, place: Place) -> UpstreamConfig:
        d = UpstreamConfig(name, ())
        place.check_unknown(_UPSTREAM_KEYS)
        targets = _unique(place.get_items("targets", required=True, nonempty="target"), _target, "target")
        balance = place.get_choice("balance", d.balance, _BALANCE)
        hash_on = place.get("hash_on", _hash_on, d.hash_on)
        if "hash_on" in place.value and balance != "consistent_hash":
            place.key("hash_on").error('applies only to balance = "consistent_hash"')
        return UpstreamConfig(
            name=name,
            targets=targets,
            balance=balance,
            hash_on=hash_on,
            retries=place.get_int("retries", d.retries, minimum=0),
            circuit_breaker=self._circuit_breaker(place),
            health_check=self._health_check(place),
            keepalive=place.get_int("keepalive", d.keepalive, minimum=0),
            connect_timeout=place.get_duration("connect_timeout", d.connect_timeout),
            read_timeout=place.get_duration("read_timeout", d.read_timeout),
        )

    def routes(self, items: list[Place], upstream_names: tuple[str, ...] | None) -> tuple[RouteConfig, ...]:
        result = []
        first_use: dict[str, int] = {}
        for index, place in enumerate(items):
            if place.convert(_table) is None:
                continue
            name = place.value.get("name")
            if isinstance(name, str) and name:
                place = place.named(name)
                if name in first_use:
                    place.error(f"name {_q(name)} is already used by routes[{first_use[name]}]")
                else:
                    first_use[name] = index
            result.append(self.route(place, index, upstream_names))
        return tuple(result)

    def route(self, place: Place, index: int, upstream_names: tuple[str, ...] | None) -> RouteConfig:
        place.check_unknown((*_ROUTE_KEYS, *self.policy_specs), _ROUTE_LATER)
        name = place.get("name", _nonempty_string)
        path_list = []
        for item in place.get_items("paths", required=True, nonempty="path"):
            path = item.convert(_route_path)
            if path is not None:
                _warn_colon_params(item, "matched")
                path_list.append(path)
        paths = tuple(path_list)
        upstream = self._route_upstream(place, upstream_names)
        strip_prefix = place.get("strip_prefix", _strip_prefix, None)
        rewrite = place.get_str("rewrite", None)
        if "strip_prefix" in place.value and "rewrite" in place.value:
            place.error('"strip_prefix" and "rewrite" cannot be used together')
        elif rewrite is not None:
            rewrite = place.key("rewrite").convert(lambda v: _check_rewrite(v, paths))
            if rewrite is not None:
                _warn_colon_params(place.key("rewrite"), "sent")
        # (in this order, so that errors come in the file's: the route's own keys, then
        # its policies' tables)
        fields = dict(
            hosts=place.get_tuple("hosts", _route_host),
            methods=tuple(dict.fromkeys(place.get_tuple("methods", _method))),
            headers=self._route_headers(place),
            priority=place.get_int("priority", 0),
            timeout=place.get_duration("timeout", None),
            split=self._split(place, upstream_names),
            match_split=self._match_split(place, upstream_names),
        )
        policies = self.policies(place, self.policy_specs)
        self._check_auth(place, dict(policies))
        max_concurrent = place.get_int("max_concurrent", 0, minimum=0)
        websocket = self._websocket(place, fields["methods"])
        aggregate = self._aggregate(place, upstream_names)
        if aggregate is not None and websocket["websocket"] is not None:
            place.key("websocket").error("cannot be used with [routes.aggregate]")
        return RouteConfig(name=name, index=index, paths=paths, upstream=upstream, strip_prefix=strip_prefix,
                           rewrite=rewrite, policies=policies, max_concurrent=max_concurrent,
                           aggregate=aggregate, **websocket, **fields)

    def _aggregate(self, place: Place, upstream_names: tuple[str, ...] | None) -> AggregateConfig | None:
        """``[routes.aggregate]``: its calls, their templates compiled once, here; a
        template may name the client's request and, in a sequence, the calls before."""
        table = place.get_table("aggregate")
        if table is None:
            return None
        table.check_unknown(_AGGREGATE_KEYS)
        mode = table.get_choice("mode", "parallel", ("parallel", "sequence"))
        timeout = table.get_duration("timeout", 30.0)
        max_body = table.get_size("max_body_bytes", 1024 * 1024, minimum=1)
        items = table.get_items("calls", required=True, nonempty="call")
        if len(items) > MAX_AGGREGATE_CALLS:
            table.key("calls").error(f"has {len(items)} calls; at most {MAX_AGGREGATE_CALLS}")
        names: list[str] = []
        #: every call's name, so that a template naming a later one says so
        self._call_names = tuple(i.value["name"] for i in items
                                 if isinstance(i.value, dict) and isinstance(i.value.get("name"), str))
        calls = []
        for item in items:
            if item.convert(_table) is None:
                continue
            name = item.value.get("name")
            if isinstance(name, str) and name:
                item = item.named(name)
            call = self._call(item, upstream_names, mode, names, None)
            if call is not None:
                calls.append(call)
        return AggregateConfig(mode=mode, timeout=timeout, max_body_bytes=max_body, calls=tuple(calls),
                               request_refs=_request_refs(calls))

    def _call(self, item: Place, upstream_names: tuple[str, ...] | None, mode: str, names: list[str],
              owner: CallConfig | None) -> CallConfig | None:
        """One call (``owner`` None) or a call's ``compensate`` table (which inherits its
        call's name and upstream, and may name that call's response too)."""
        if owner is None:
            item.check_unknown(_CALL_KEYS)
            name = item.get("name", _nonempty_string)
            if name is not None:
                if not _CALL_NAME.fullmatch(name):
                    item.key("name").error("a call's name is a letter or _, then letters, digits, _ or -")
                elif name in _TEMPLATE_SOURCES:
                    item.key("name").error(f"{_q(name)} names a part of the client's request; choose another")
                elif name in names:
                    item.key("name").error(f"call {_q(name)} is already defined")
            upstream = item.get_str("upstream")
            if upstream is not None and upstream_names is not None and upstream not in upstream_names:
                item.key("upstream").error(f"upstream {_q(upstream)} is not defined"
                                           f"{_did_you_mean(upstream, upstream_names)}")
            earlier = tuple(names) if mode == "sequence" else ()
        else:
            item.check_unknown(_COMPENSATE_KEYS)
            name, upstream = owner.name, owner.upstream
            earlier = tuple(names) + (name,)
        every = self._call_names
        method = item.get("method", _method, "GET")
        path = item.get("path", lambda v: _call_path(v, earlier, mode, every))
        query = self._templates(item, "query", earlier, mode, every)
        headers = self._templates(item, "headers", earlier, mode, every)
        body = None
        if "body" in item.value:
            body = item.key("body").convert(lambda v: compile_json_template(_table(v), earlier, mode, every))
        timeout = item.get_duration("timeout", None if owner is None else owner.timeout)
        call = None
        if name is not None and upstream is not None and path is not None and method is not None:
            call = CallConfig(name=name, upstream=upstream, method=method, path=path, query=query,
                              headers=headers, body=body, timeout=timeout)
        if owner is None:
            if name is not None:
                names.append(name)
            table = item.get_table("compensate")
            if table is not None and mode != "sequence":
                # (parallel calls all run at once: there is no "already succeeded" to undo)
                item.key("compensate").error('runs only in a sequence (mode = "sequence")')
            elif table is not None and call is not None:
                compensate = self._call(table, upstream_names, mode, names, call)
                call = replace(call, compensate=compensate)
        return call

    @staticmethod
    def _templates(item: Place, key: str, earlier: tuple[str, ...], mode: str,
                   names: tuple[str, ...]) -> tuple[tuple[str, Template], ...]:
        table = item.get_table(key)
        if table is None:
            return ()
        result = []
        for name in table.value:
            value = table.key(name).convert(
                lambda v: compile_template(_string(v) if not isinstance(v, (int, float)) or isinstance(v, bool)
                                           else str(v), earlier, mode, names))
            if key == "headers" and not _TOKEN.fullmatch(name):
                table.key(name).error(f"{_q(name)} is not a valid header name")
            elif value is not None:
                result.append((name.lower() if key == "headers" else name, value))
        return tuple(result)

    @staticmethod
    def _websocket(place: Place, methods: tuple[str, ...]) -> dict[str, Any]:
        """``websocket = "proxy"`` or ``"http"`` (and the latter's limits): what the
        route does with a WebSocket handshake (a GET, so a route that names its methods
        must name GET)."""
        d = RouteConfig("", 0, (), "")
        mode = place.get_choice("websocket", None, _WEBSOCKET_MODES)  # type: ignore[arg-type]
        if mode is not None and methods and "GET" not in methods:
            place.key("methods").error(f'has no "GET": a WebSocket handshake is a GET (websocket = {_q(mode)})')
        if mode != "http" and (mode is not None or "websocket" not in place.value):  # (a bad mode: said already)
            for key in _WEBSOCKET_HTTP_KEYS:
                if key in place.value:
                    place.key(key).error('applies only to websocket = "http"')
        return dict(
            websocket=mode,
            websocket_max_message=place.get_size("websocket_max_message", d.websocket_max_message, minimum=1),
            websocket_message_rate=place.get("websocket_message_rate", parse_rate, d.websocket_message_rate),
            websocket_ping_interval=place.get_duration("websocket_ping_interval", d.websocket_ping_interval),
        )

    @staticmethod
    def _circuit_breaker(place: Place) -> tuple[int, float] | None:
        table = place.get_table("circuit_breaker")
        if table is None:
            return None
        table.check_unknown(("failures", "cooldown"))
        failures = table.get_int("failures", 5, minimum=1)
        cooldown = table.get_duration("cooldown", 30.0)
        return (failures, cooldown)

    @staticmethod
    def _health_check(place: Place) -> HealthCheck | None:
        table = place.get_table("health_check")
        if table is None:
            return None
        d = HealthCheck()
        table.check_unknown(_HEALTH_CHECK_KEYS)
        interval = table.get_duration("interval", d.interval)
        # A check is over before the next is due; an interval under the default timeout
        # (1s) is the timeout too, unless one is given.
        timeout = table.get_duration("timeout", min(d.timeout, interval or d.timeout))
        if interval is not None and timeout is not None and timeout > interval:
            table.key("timeout").error(f"must not be longer than interval ({_q(table.value.get('interval', '5s'))})")
        thresholds = [table.get_int(name, getattr(d, name), minimum=1)
                      for name in ("healthy_threshold", "unhealthy_threshold")]
        for name, value in zip(("healthy_threshold", "unhealthy_threshold"), thresholds):
            if value is not None and value > _THRESHOLD_MAX:
                table.key(name).error(f"must be at most {_THRESHOLD_MAX}, got {value}")
        return HealthCheck(table.get("path", _probe_path, d.path), interval, timeout, *thresholds)

    @staticmethod
    def _split_upstream(item: Place, upstream_names: tuple[str, ...] | None) -> str | None:
        upstream = item.get_str("upstream")
        if upstream is not None and upstream_names is not None and upstream not in upstream_names:
            item.error(f"upstream {_q(upstream)} is not defined{_did_you_mean(upstream, upstream_names)}")
            return None
        return upstream

    def _split(self, place: Place, upstream_names: tuple[str, ...] | None) -> tuple[tuple[str, int], ...]:
        """``split = [{ upstream = "v2", weight = 10 }]``: weights are percents, 100 at most in all."""
        result = []
        for item in place.get_items("split"):
            if item.convert(_table) is None:
                continue
            item.check_unknown(("upstream", "weight"))
            upstream = self._split_upstream(item, upstream_names)
            weight = item.get("weight", _integer(1))
            if weight is not None and weight > 100:
                item.key("weight").error(f"is a percent of the traffic, at most 100, got {weight}")
            elif upstream is not None and weight is not None:
                result.append((upstream, weight))
        if sum(w for _, w in result) > 100:
            place.key("split").error(f"weights add up to {sum(w for _, w in result)}%, more than 100%")
        return tuple(result)

    def _match_split(self, place: Place, upstream_names: tuple[str, ...] | None) -> tuple[tuple[str, str, str], ...]:
        """``match_split = [{ header = "x-canary", value = "1", upstream = "v2" }]``, first match wins."""
        result = []
        for item in place.get_items("match_split"):
            if item.convert(_table) is None:
                continue
            item.check_unknown(("header", "value", "upstream"))
            header = item.get_str("header")
            if header is not None and not _TOKEN.fullmatch(header):
                item.key("header").error(f"{_q(header)} is not a valid header name")
                header = None
            value = item.get_str("value")
            upstream = self._split_upstream(item, upstream_names)
            if header is not None and value is not None and upstream is not None:
                result.append((header.lower(), value, upstream))
        return tuple(result)

    @staticmethod
    def _route_upstream(place: Place, upstream_names: tuple[str, ...] | None) -> str | None:
        upstream = place.get_str("upstream")
        if upstream is not None and upstream_names is not None and upstream not in upstream_names:
            hint = _did_you_mean(upstream, upstream_names)
            place.error(f"upstream {_q(upstream)} is not defined{hint}")
        return upstream

    @staticmethod
    def _route_headers(place: Place) -> tuple[tuple[str, str], ...]:
        table = place.get_table("headers")
        if table is None:
            return ()
        result: dict[str, str] = {}
        for name in table.value:
            header = table.key(name)
            value = header.convert(_string)
            lower = name.lower()
            if not _TOKEN.fullmatch(name):
                header.error(f"{_q(name)} is not a valid header name")
            elif lower in result:
                header.error(f"header {_q(lower)} is listed twice")
            elif value is not None:
                result[lower] = value
        return tuple(result.items())


def _unique(items: list[Place], convert: Callable[[Place], Any], what: str) -> tuple[Any, ...]:
    """``convert(item)`` of each item that converts, refusing a value listed twice."""
    first_use: dict[str, int] = {}
    result = []
    for index, item in enumerate(items):
        value = convert(item)
        if value is None:
            continue
        key = str(value)
        if key in first_use:
            item.error(f"{what} {_q(key)} is already listed at [{first_use[key]}]")
        else:
            first_use[key] = index
            result.append(value)
    return tuple(result)


def _target(place: Place) -> Target | None:
    """``"host:port"`` or ``{address = "host:port", weight = N}``."""
    if isinstance(place.value, dict):
        place.check_unknown(_TARGET_KEYS)
        address = place.get("address", parse_address)
        weight = place.get_int("weight", 1, minimum=1)
        return None if address is None else Target(address.host, address.port, weight)
    address = place.convert(_target_address)
    return None if address is None else Target(address.host, address.port)


def _target_address(value: Any) -> Address:
    if not isinstance(value, str):
        raise ValueError(_expected('"host:port" or a table {address, weight}', value))
    return parse_address(value)


def _writable_file(path: str) -> str:
    """``path``, when a log can be written there: an existing regular file (or a device,
    such as /dev/null) that may be written, or a new file in a folder that may be
    written in. Nothing is created: ``fastgw check`` leaves no trace, and a file that
    cannot be opened is found here, with every other error, not by each worker."""

    def cannot(why: str) -> ValueError:
        return ValueError(f"cannot write {path}: {why}")

    try:
        mode: int | None = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as exc:
        raise cannot(exc.strerror or str(exc)) from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise cannot("it is a folder")
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            raise cannot("not a regular file")
        if not os.access(path, os.W_OK):
            raise cannot("permission denied")
        return path
    folder = os.path.dirname(path)
    try:
        mode = os.stat(folder).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise cannot(f"folder {folder} does not exist") from None
    except OSError as exc:
        raise cannot(f"folder {folder}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(mode):
        raise cannot(f"{folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise cannot(f"permission denied in folder {folder}")
    return path


def _nonempty_string(value: Any) -> str:
    if _string(value) == "":
        raise ValueError("must not be empty")
    return value


def _workers(value: Any) -> int:
    if isinstance(value, str) and value == "auto":
        return os.cpu_count() or 1
    if type(value) is not int:
        raise ValueError(_expected('an integer or "auto"', value))
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _network(value: Any) -> IPNetwork:
    text = _string(value)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f'{_q(text)} is not an IP network (use e.g. "10.0.0.0/8" or "192.0.2.1")') from None


def _route_path(value: Any) -> str:
    if not _string(value).startswith("/"):
        raise ValueError(f'{_q(value)} does not start with "/"')
    # The router is the one judge of pattern syntax; asking it here, path by path,
    # puts its complaints among the other errors of the file, each at its place.
    try:
        Router([Rule(None, (value,))])
    except RouteError as exc:
        raise ValueError("; ".join(message for _, message in exc.problems)) from None
    return value


_CONSUMER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,128}")


def _group(value: Any) -> str:
    text = _string(value)
    if not _CONSUMER_NAME.fullmatch(text) or "," in text:
        raise ValueError(f"{_q(text)} is not a group name (letters, digits, and . _ - @)")
    return text


def _secret(value: Any) -> str:
    """A secret: ``"env:NAME"`` resolved, never empty. Its messages never quote it."""
    if not isinstance(value, str):  # (the value itself is not shown: it may be the secret)
        raise ValueError('expected a string (or "env:NAME")')
    secret = resolve_secret(value)
    if not secret:
        raise ValueError("is empty" + (f" (environment variable {value[4:]})" if value.startswith("env:") else ""))
    return secret


def _password_hash(value: Any) -> str:
    from fastgw.policies.auth import parse_password_hash  # (the format is the auth policy's)

    secret = _secret(value)
    parse_password_hash(secret)
    return secret


def _rate_limit_key(value: Any) -> str:
    """``ip``, ``route``, ``consumer`` (the route's authenticated consumer), or
    ``header:NAME`` (the name lower-cased)."""
    text = _string(value)
    if text in ("ip", "route"):
        return text
    if text == "consumer":
        return text
    kind, sep, name = text.partition(":")
    if kind == "header" and sep:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{_q(name)} is not a header name")
        return f"header:{name.lower()}"
    raise ValueError(f'expected "ip", "route", "header:NAME" or "consumer", got {_q(text)}')


def _redis_url(value: Any) -> str:
    """``redis://[user:password@]host:port[/db]``, ``rediss://…`` (TLS) or ``unix:///path``."""
    text = _string(value)
    try:
        url = urllib.parse.urlsplit(text)
        url.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{_q(text)} is not a Redis URL ({exc})") from None
    if url.scheme in ("redis", "rediss") and url.hostname:
        return text
    if url.scheme == "unix" and url.path:
        return text
    raise ValueError(f'{_q(text)} is not a Redis URL (use e.g. "redis://127.0.0.1:6379/0")')


def _probe_path(value: Any) -> str:
    """A health check's request target: an origin-form path, with a query if wanted."""
    path = _string(value)
    if not path.startswith("/"):
        raise ValueError(f'{_q(value)} does not start with "/"')
    if any(c <= " " or c == "\x7f" or not c.isascii() for c in path):
        raise ValueError(f"{_q(value)} has a space, a control or a non-ASCII character (percent-encode it)")
    return path


def _route_host(value: Any) -> str:
    host = _string(value).lower()
    name = host[2:] if host.startswith("*.") else host
    if not _is_hostname(name):
        raise ValueError(f'{_q(value)} is not a host name (use e.g. "api.example.com" or "*.example.com")')
    return host


# -- policy schemas ------------------------------------------------------------

def policy_settings(place: Place, spec: Any, path: Callable[[str], str] = os.path.abspath) -> dict[str, Any] | None:
    """``place`` (a policy's table) checked against ``spec.schema`` and ``spec.check``:
    the settings, each key converted or its default; None when something is wrong (the
    errors are recorded, each at its place). ``path`` makes a "file" key's value absolute
    (from the config file's folder)."""
    errors_before = len(place._errors)
    place.check_unknown(spec.schema)
    settings = {key: place.get(key, schema_kind(kind), _REQUIRED if default is REQUIRED else default)
                for key, (kind, default) in spec.schema.items()}
    for key, (kind, _) in spec.schema.items():
        if kind == "file" and settings[key]:
            settings[key] = path(settings[key])
        elif kind == "files":
            settings[key] = tuple(path(p) for p in settings[key])
    if len(place._errors) > errors_before:
        return None
    return _checked(place, spec, settings)


def _checked(place: Place, spec: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    if spec.complete is not None:  # defaults that depend on other keys
        settings = spec.complete(settings)
    problems = spec.check(settings) if spec.check is not None else []
    for key, message in problems:
        (place if key is None else place.key(key)).error(message)
    return None if problems else settings


# Request and response fields a policy may not write or remove: the framing and the
# hop-by-hop fields fastgw writes itself, and the forwarding fields it sets.
_RESERVED_FIELDS = frozenset((
    "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
    "proxy-connection", "proxy-authenticate", "proxy-authorization", "host", "x-request-id",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip", "traceparent",
))
_TEMPLATE_VARIABLE = re.compile(r"\{([^{}]*)\}")
TEMPLATE_VARIABLES = ("request_id", "route", "client_ip", "consumer")


def _field_name(value: Any) -> str:
    """A header name a policy may write or remove (lower-cased)."""
    name = _any_field_name(value)
    if name in _RESERVED_FIELDS:
        raise ValueError(f"{_q(value)} is written by fastgw itself and cannot be changed here")
    return name


def _each(items: Iterable[Any], convert: Convert) -> list[Any]:
    """``convert`` of every item; a ValueError naming every item that failed (so that a
    policy's list or table reports all its problems at once, in one line)."""
    results, problems = [], []
    for item in items:
        try:
            results.append(convert(item))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return results


def _header_names(value: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_each(_array(value), _field_name)))


def _any_field_name(value: Any) -> str:
    """A header name (lower-cased), to read or to mention."""
    name = _string(value)
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{_q(name)} is not a valid header name")
    return name.lower()


def _any_header_names(value: Any) -> tuple[str, ...]:
    """Header names to mention (CORS lists), reserved ones too."""
    return tuple(dict.fromkeys(_each(_array(value), _any_field_name)))


def _header_fields(value: Any) -> tuple[tuple[str, str], ...]:
    """``{ "x-name" = "value {request_id}" }`` → ((lower name, value), ...)."""
    return tuple(_each(_table(value).items(), _header_field))


def _header_field(item: tuple[str, Any]) -> tuple[str, str]:
    name, text = item
    lower = _field_name(name)
    text = _string(text)
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"the value of {_q(name)} holds a line break or NUL")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"the value of {_q(name)} is not Latin-1 text") from None
    for variable in _TEMPLATE_VARIABLE.findall(text):
        if variable not in TEMPLATE_VARIABLES:
            raise ValueError(f"{{{variable}}} in the value of {_q(name)} is not one of "
                             + ", ".join(f"{{{v}}}" for v in TEMPLATE_VARIABLES)
                             + _did_you_mean(variable, TEMPLATE_VARIABLES))
    return lower, text


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(_expected("true or false", value))
    return value


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(_each(_array(value), _string))


def _networks(value: Any) -> tuple[IPNetwork, ...]:
    return tuple(_each(_array(value), _network))


def _methods(value: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_each(_array(value), _method)))


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|\*", re.IGNORECASE)


def _origins(value: Any) -> tuple[str, ...]:
    return tuple(_each(_array(value), _origin))


def _origin(value: Any) -> str:
    text = _string(value)
    if not _ORIGIN.fullmatch(text):
        raise ValueError(f'{_q(text)} is not an origin (scheme://host[:port], as "https://app.example.com", '
                         'or "*")')
    return text.lower()


def schema_kind(kind: str | tuple[Any, ...]) -> Convert:
    """A schema's kind as a converter: a name of ``SCHEMA_KINDS``, or a tuple naming a
    kind with arguments: ``("int", minimum, maximum)``, ``("choice", word, ...)``."""
    if isinstance(kind, tuple):
        name, *args = kind
        return SCHEMA_KIND_FACTORIES[name](*args)
    return SCHEMA_KINDS[kind]


def _int_between(minimum: int | None = None, maximum: int | None = None) -> Convert:
    convert = _integer(minimum)

    def checked(value: Any) -> int:
        result = convert(value)
        if maximum is not None and result > maximum:
            raise ValueError(f"must be at most {maximum}, got {result}")
        return result

    return checked


SCHEMA_KIND_FACTORIES: dict[str, Callable[..., Convert]] = {
    "int": _int_between,
    "choice": lambda *words: _choice(words),
    "choices": lambda *words: lambda value: tuple(dict.fromkeys(_each(_array(value), _choice(words)))),
}

#: the kinds of value a policy's schema may name (fastgw.policy.PolicySpec, and plugins)
SCHEMA_KINDS: dict[str, Convert] = {
    "rate": parse_rate,
    "rate_limit_key": _rate_limit_key,
    "string": _string,
    "table": _table,
    "bool": _boolean,
    "int": _integer(0),
    "duration": parse_duration,
    "cidrs": _networks,
    "header_names": _header_names,
    "header_names_any": _any_header_names,
    "header_name": _any_field_name,
    "secret": _secret,
    "file": _nonempty_string,
    "files": lambda value: tuple(_each(_array(value), _nonempty_string)),
    "header_fields": _header_fields,
    "methods": _methods,
    "origins": _origins,
    "strings": _strings,
}


def _method(value: Any) -> str:
    method = _string(value).upper()
    if method not in HTTP_METHODS:
        raise ValueError(f"{_q(value)} is not an HTTP method{_did_you_mean(method, sorted(HTTP_METHODS))}")
    return method


def _strip_prefix(value: Any) -> str:
    if not _string(value).startswith("/") or value.endswith("/"):
        raise ValueError(f'{_q(value)} must start with "/" and not end with "/"')
    return value


def _warn_colon_params(place: Place, how: str) -> None:
    """A warning for a path (or rewrite: ``how`` it is used) with ``:name`` segments,
    Express's and Rails's parameters: here they are literal text, a valid path that
    would only ever match itself."""
    names = [f":{name}" for name in _COLON_PARAM.findall(place.value)]
    if not names:
        return
    what = f"{_q(names[0])} is not a parameter" if len(names) == 1 else f"{_list(names)} are not parameters"
    meant = _COLON_PARAM.sub(r"{\1}", place.value)
    place.warn(f"{_q(place.value)} is {how} literally ({what}); did you mean {_q(meant)}?")


def _check_rewrite(rewrite: str, paths: tuple[str, ...]) -> str:
    """``rewrite`` when its ``{param}``s are defined by every path, and ``{*}`` only
    when every path ends in ``/*``."""
    if not rewrite.startswith("/"):
        raise ValueError(f'{_q(rewrite)} does not start with "/"')
    if "{" in _PARAM.sub("", rewrite) or "}" in _PARAM.sub("", rewrite):
        raise ValueError(f'{_q(rewrite)} has an unmatched "{{" or "}}"')
    for name in _PARAM.findall(rewrite):
        if name == "*":
            for path in paths:
                if not path.endswith("/*"):
                    raise ValueError(f'"{{*}}" needs every path to end in "/*" ({_q(path)} does not)')
        elif not _PARAM_NAME.fullmatch(name):
            raise ValueError(f'"{{{name}}}" is not a parameter (use {{name}} or {{*}})')
        else:
            for path in paths:
                if name not in _PARAM.findall(path):
                    raise ValueError(f'"{{{name}}}" is not defined by path {_q(path)}')
    return rewrite


# ---------------------------------------------------------------------------
# TOML syntax errors
# ---------------------------------------------------------------------------

_TOML_AT = re.compile(r"(.*) \(at (?:line (\d+), column (\d+)|end of document)\)", re.S)
_TOML_MESSAGES = {
    "Expected '=' after a key in a key/value pair": "expected '=' after key",
    "Expected ']' at the end of a table declaration": "expected ']' after the table name",
    "Expected ']]' at the end of an array declaration": "expected ']]' after the array name",
    "Expected newline or end of document after a statement": "expected the end of the line after the value",
    "Invalid value": "invalid value (strings need quotes)",
    "Invalid initial character for a key part": "invalid character at the start of a key",
    "Unclosed array": "unclosed array (missing ']')",
    "Unclosed inline table": "unclosed inline table (missing '}'; an inline table must fit on one line)",
    "Unterminated string": "unterminated string",
    "Illegal character '\\n'": "unterminated string",  # a newline inside a "basic string"
    "Cannot overwrite a value": "a key or table is defined twice",
    "Unescaped '\\' in a string": "invalid backslash escape in a string",
}
_TOML_PATTERNS = (
    (re.compile(r"Cannot declare (\(.*\)) twice"), "table [{}] is defined twice"),
    (re.compile(r"Cannot mutate immutable namespace (\(.*\))"), "cannot add to {}: it was already defined inline"),
    (re.compile(r"Cannot redefine namespace (\(.*\))"), "cannot redefine {}"),
)


def _syntax_error(message: str, text: str) -> str:
    """tomllib's "Expected '=' after a key in a key/value pair (at line 14, column 5)"
    → "line 14: expected '=' after key"."""
    m = _TOML_AT.fullmatch(message)
    if m is None:
        return message[:1].lower() + message[1:]
    what = m[1]
    line = m[2] or str(text.rstrip().count("\n") + 1)
    if what in ("Invalid value", "Unclosed array") and m[2]:
        word = _unquoted_in_array(text.split("\n")[int(m[2]) - 1], int(m[3]) - 1, what == "Unclosed array")
        if word:
            return f"line {line}: invalid value in an array (strings need quotes: {_q(word)})"
    short = _TOML_MESSAGES.get(what)
    if short is None:
        for pattern, template in _TOML_PATTERNS:
            found = pattern.fullmatch(what)
            if found:
                short = template.format(_dotted(found[1]))
                break
        else:
            short = what[:1].lower() + what[1:]
    return f"line {line}: {short}"


#: a bare word: braces are a parameter's ("/users/{id}") unless they open an inline table
_UNQUOTED = re.compile(r"[^\s\"'\[\]{},=#][^\s\"'\[\],=#]*")


def _unquoted_in_array(line: str, at: int, inside: bool) -> str | None:
    """The unquoted word where tomllib stopped, at ``line[at]``, when it is an array's
    element: right after "[" or ",", or first on its line (a multi-line array).

    ``inside``: tomllib stopped inside the word, not at its start. It says "Unclosed
    array" for ``[127.0.0.1:8080]``, having read ``127.0`` as a float and found no ","
    or "]" after it; an array that is really left open stops it at a line's start or
    after a space (``[1, 2`` then a new line), which is left to say so.
    """
    start = max(line.rfind(c, 0, at) for c in "[,=") + 1
    if start and line[start - 1] == "=":
        return None  # a plain value, "key = users": the message without "array" says it
    if inside and (at == 0 or line[at - 1].isspace() or at <= start):
        return None
    if not inside and line[start:at].strip():
        return None
    end = min([i for i in (line.find(c, at) for c in ",]#") if i >= 0] or [len(line)])
    word = line[start:end].strip()
    return word if _UNQUOTED.fullmatch(word) else None


def _dotted(key_repr: str) -> str:
    """tomllib's key tuple repr ``('a', 'b c')`` → ``a."b c"``."""
    try:
        parts = ast.literal_eval(key_repr)
    except (ValueError, SyntaxError):
        return key_repr
    return ".".join(p if _BARE_KEY.fullmatch(p) else _q(p) for p in parts)
