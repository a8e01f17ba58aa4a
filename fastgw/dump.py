"""``fastgw check --dump``: a valid config written back as TOML with every default filled
in and every secret masked, so that an operator sees exactly what runs (nginx's ``-T``).

How: the file's own TOML (``tomllib``) keeps every value its user wrote, exactly as
written (``"5s"`` stays ``"5s"``, ``workers = "auto"`` stays ``"auto"``, a relative path
stays relative); each key it leaves out is added with the value the loaded ``Config``
holds for it, written in the file's syntax (durations ``"250ms"``/``"5s"``, sizes
``"16KiB"`` when exact, rates ``"100/s"``). The defaults are therefore never copied
here: they are what ``fastgw.config`` (its dataclasses and the policies' schemas, with
the defaults that depend on other keys: a rate limit's ``burst``, a health check's
``timeout``) made of the file. A key whose value is "none" (``timeout``,
``strip_prefix``, ``[server.tls]``...) is left out, TOML having no null; keys that apply
to one mode only (``hash_on``, ``websocket_*``) are filled only in that mode.

Secrets (``[admin].token``, ``api_keys``, ``basic_password``, ``[auth.jwt].secret``, any
policy key of kind ``"secret"``, the password of ``[cluster].redis``) are written
``"***"``, ``"env:NAME"`` ones too.

The writer is this module's own (no dependency): ``Table`` and ``Tables`` mark what
gets a ``[header]`` or ``[[header]]``; any other table or array is written inline.

May import: the standard library, fastgw.config, fastgw.policies.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastgw.config import (
    _ADMIN_KEYS,
    _CLUSTER_KEYS,
    _CONSUMER_KEYS,
    _HEALTH_CHECK_KEYS,
    _HTTP2_KEYS,
    _LOG_KEYS,
    _ROUTE_KEYS,
    _SERVER_KEYS,
    _TLS_KEYS,
    _UPSTREAM_KEYS,
    _WEBSOCKET_HTTP_KEYS,
    Address,
    Config,
    Target,
    parse_duration,
    parse_rate,
    parse_size,
)
from fastgw.policies import BUILTIN as BUILTIN_POLICIES
from fastgw.policies.jwt import JWT_SPEC

__all__ = ["MASK", "Table", "Tables", "dump_config", "format_duration", "format_rate", "format_size", "mask_url",
           "toml_value", "write_toml"]

#: what a secret is written as
MASK = "***"

#: the integer keys written as sizes, and the float keys written as rates (any other
#: float of a section is a duration)
_SIZE_KEYS = frozenset(("websocket_max_message",))
_RATE_KEYS = frozenset(("websocket_message_rate",))
#: the circuit breaker's table, held by UpstreamConfig as a (failures, cooldown) tuple
_CIRCUIT_BREAKER_KEYS = ("failures", "cooldown")


class Table(dict):  # type: ignore[type-arg]
    """A table written under its own ``[header]``."""


class Tables(list):  # type: ignore[type-arg]
    """An array of tables, each written under ``[[header]]``."""


def dump_config(config: Config, text: str) -> str:
    """The TOML of ``config`` (loaded from ``text``, the file's text) with every default
    filled in and secrets masked, headed by a comment naming the file and its digest."""
    doc = tomllib.loads(text)
    specs = {**BUILTIN_POLICIES, **{spec.name: spec for spec in config.plugins}}
    root = Table()
    root["server"] = _server(config, doc.get("server", {}))
    root["log"] = _filled(doc.get("log", {}), _LOG_KEYS, lambda key: getattr(config.log, key))
    if config.admin is not None:
        admin = _filled(doc["admin"], _ADMIN_KEYS, lambda key: getattr(config.admin, key) or None)
        if "token" in admin:
            admin["token"] = MASK
        root["admin"] = admin
    if config.cluster is not None:
        cluster = _filled(doc["cluster"], _CLUSTER_KEYS, lambda key: getattr(config.cluster, key))
        cluster["redis"] = mask_url(cluster["redis"])
        root["cluster"] = cluster
    if "plugins" in doc:
        root["plugins"] = Table(doc["plugins"])
    if "global" in doc:
        root["global"] = _policies(Table(), doc["global"], config.global_policies.policies, specs)
    if "consumers" in doc:
        root["consumers"] = _consumers(config, doc["consumers"])
    if "auth" in doc:
        auth = root["auth"] = Table()
        if config.jwt is not None:
            auth["jwt"] = _policy(doc["auth"]["jwt"], config.jwt, JWT_SPEC.schema)
    if "upstreams" in doc:
        root["upstreams"] = _upstreams(config, doc["upstreams"])
    if "routes" in doc:
        root["routes"] = _routes(config, doc["routes"], specs)
    source = config.source.replace("\n", "\\n")
    head = (f"# fastgw check --dump of {source} (sha256 {config.digest}): every default filled in, "
            f'secrets masked as "{MASK}"\n')
    return head + write_toml(root)


# ---------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------


def _filled(written: Mapping[str, Any], keys: Iterable[str], effective: Callable[[str], Any]) -> Table:
    """``keys`` in that order: each as written, else its effective value in config syntax
    (left out when None); then any written key not among ``keys``, as written."""
    keys = tuple(keys)
    table = Table()
    for key in keys:
        value = written[key] if key in written else _syntax(key, effective(key))
        if value is not None:
            table[key] = value
    for key, value in written.items():
        if key not in keys:
            table[key] = value
    return table


def _server(config: Config, written: Mapping[str, Any]) -> Table:
    server = config.server
    table = _filled(written, (k for k in _SERVER_KEYS if k not in ("tls", "http2")), lambda k: getattr(server, k))
    table.pop("tls", None)
    table.pop("http2", None)
    table["http2"] = _filled(written.get("http2", {}), _HTTP2_KEYS, lambda k: getattr(server.http2, k))
    if server.tls is not None:
        tls_written = written["tls"]
        tls = _filled(tls_written, (k for k in _TLS_KEYS if k != "certificates"), lambda k: getattr(server.tls, k))
        tls.pop("certificates", None)
        tls["certificates"] = Tables(
            _filled(item, ("cert", "key", "hosts"), lambda k, c=certificate: getattr(c, k))
            for item, certificate in zip(tls_written["certificates"], server.tls.certificates))
        table["tls"] = tls
    return table


def _upstreams(config: Config, written: Mapping[str, Any]) -> Table:
    result = Table()
    for up in config.upstreams:
        up_written = written[up.name]
        keys = [k for k in _UPSTREAM_KEYS if k not in ("circuit_breaker", "health_check")
                and (k != "hash_on" or up.balance == "consistent_hash")]
        table = _filled(up_written, keys, lambda k, u=up: getattr(u, k))
        table.pop("circuit_breaker", None)
        table.pop("health_check", None)
        if up.circuit_breaker is not None:
            effective = dict(zip(_CIRCUIT_BREAKER_KEYS, up.circuit_breaker))
            table["circuit_breaker"] = _filled(up_written["circuit_breaker"], _CIRCUIT_BREAKER_KEYS, effective.get)
        if up.health_check is not None:
            table["health_check"] = _filled(up_written["health_check"], _HEALTH_CHECK_KEYS,
                                            lambda k, h=up.health_check: getattr(h, k))
        result[up.name] = table
    return result


def _routes(config: Config, written: list[dict[str, Any]], specs: Mapping[str, Any]) -> Tables:
    result = Tables()
    for route in config.routes:
        route_written = written[route.index]
        keys = [k for k in _ROUTE_KEYS if route.websocket == "http" or k not in _WEBSOCKET_HTTP_KEYS]

        def effective(key: str, route: Any = route) -> Any:
            return dict(route.headers) if key == "headers" else getattr(route, key)

        table = _filled({k: v for k, v in route_written.items() if k not in specs}, keys, effective)
        result.append(_policies(table, route_written, route.policies, specs))
    return result


def _policies(table: Table, written: Mapping[str, Any], policies: Iterable[tuple[str, dict[str, Any]]],
              specs: Mapping[str, Any]) -> Table:
    """``table`` with a sub-table for each of ``policies`` (its ``(key, settings)``)."""
    for name, settings in policies:
        table[name] = _policy(written[name], settings, specs[name].schema)
    return table


def _policy(written: Mapping[str, Any], settings: Mapping[str, Any], schema: Mapping[str, Any]) -> Table:
    """A policy's table: its keys as written, the others from its validated settings
    (the schema's defaults, and those its ``complete`` filled), secrets masked."""
    table = Table()
    for key, (kind, _) in schema.items():
        name = kind[0] if isinstance(kind, tuple) else kind
        if key in written:
            value = written[key]
        else:
            value = _setting(name, settings.get(key))
        if value is None:
            continue
        table[key] = MASK if name == "secret" else value
    return table


def _consumers(config: Config, written: Mapping[str, Any]) -> Table:
    result = Table()
    for consumer in config.consumers:
        table = _filled(written[consumer.name], _CONSUMER_KEYS, lambda k, c=consumer: getattr(c, k))
        if "api_keys" in table:
            table["api_keys"] = [MASK] * len(table["api_keys"])
        if "basic_password" in table:
            table["basic_password"] = MASK
        result[consumer.name] = table
    return result


def mask_url(url: str) -> str:
    """``url`` (a Redis URL) with its password, and any ``password`` query parameter,
    as ``***``; the rest as written."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    path, question, query = tail.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        fields = []
        for field in query.split("&"):
            name, equals, _ = field.partition("=")
            fields.append(f"{name}={MASK}" if equals and "password" in name.lower() else field)
        tail = path + "?" + "&".join(fields) + hash_ + fragment
    return f"{scheme}://{netloc}{tail}"


# ---------------------------------------------------------------------------
# Effective values in the file's syntax
# ---------------------------------------------------------------------------


def _syntax(key: str, value: Any) -> Any:
    """A dataclass field's value as the file would write it (None stays None)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return format_size(value) if key.endswith("_bytes") or key in _SIZE_KEYS else value
    if isinstance(value, float):
        return format_rate(value) if key in _RATE_KEYS else format_duration(value)
    if isinstance(value, (Address, Target, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_syntax(key, item) for item in value]
    if isinstance(value, dict):
        return {k: _syntax(key, v) for k, v in value.items()}
    return value


def _setting(kind: str, value: Any) -> Any:
    """A policy setting (validated, of schema ``kind``) as the file would write it."""
    if value is None:
        return None
    if kind == "duration" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_duration(float(value))
    if kind == "rate" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_rate(float(value))
    if kind == "header_fields":
        return dict(value)
    if isinstance(value, (tuple, list)):
        return [str(v) if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else v for v in value]
    return value


def format_duration(seconds: float) -> str:
    """Seconds as a duration that reads back as exactly ``seconds``: whole seconds as
    ``"5s"``, whole milliseconds under a second as ``"250ms"``, else decimal seconds."""
    candidates = []
    if seconds >= 1 and seconds == int(seconds):
        candidates.append(f"{int(seconds)}s")
    if seconds < 1 and seconds * 1000 == round(seconds * 1000):
        candidates.append(f"{round(seconds * 1000)}ms")
    candidates.append(_decimal(seconds) + "s")
    return _first_exact(candidates, parse_duration, seconds)


def format_rate(per_second: float) -> str:
    """Events per second as a rate that reads back as exactly ``per_second``."""
    candidates = []
    for unit, factor in (("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        count = per_second * factor
        if count == round(count):
            candidates.append(f"{round(count)}/{unit}")
    candidates.append(_decimal(per_second) + "/s")
    return _first_exact(candidates, parse_rate, per_second)


def format_size(size: int) -> str | int:
    """Bytes as ``"16KiB"``, ``"10MiB"``, ``"1GiB"`` when exact, else the integer."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size and size % factor == 0:
            text = f"{size // factor}{unit}"
            if parse_size(text) == size:
                return text
    return size


def _decimal(value: float) -> str:
    """The shortest decimal that reads back as ``value``, without an exponent (which the
    file's syntax has not): ``2.5e-06`` → ``0.0000025``."""
    text = format(decimal.Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _first_exact(candidates: list[str], parse: Callable[[str], float], value: float) -> str:
    """The first of ``candidates`` that reads back as ``value`` (the last one always does)."""
    for text in candidates[:-1]:
        try:
            if parse(text) == value:
                return text
        except ValueError:
            continue
    return candidates[-1]


# ---------------------------------------------------------------------------
# The TOML writer
# ---------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def write_toml(root: Table) -> str:
    """``root`` as a TOML document: each table's plain keys, then its ``Table`` and
    ``Tables`` values under their headers (a table holding only tables gets none of its
    own: its sub-tables' headers define it)."""
    lines: list[str] = []
    for key, value in root.items():
        _write_value_tables(lines, [key], value)
    return "\n".join(lines) + "\n"


def _write_value_tables(lines: list[str], path: list[str], value: Any) -> None:
    if isinstance(value, Tables):
        for table in value:
            _write_table(lines, path, table, array=True)
    elif isinstance(value, Table):
        _write_table(lines, path, value, array=False)
    else:
        raise TypeError(f"{'.'.join(path)}: a top-level value must be a table")


def _write_table(lines: list[str], path: list[str], table: Mapping[str, Any], array: bool) -> None:
    plain = [(k, v) for k, v in table.items() if not isinstance(v, (Table, Tables))]
    nested = [(k, v) for k, v in table.items() if isinstance(v, (Table, Tables))]
    if array or plain or not nested:
        if lines:
            lines.append("")
        name = ".".join(_key(part) for part in path)
        lines.append(f"[[{name}]]" if array else f"[{name}]")
    for key, value in plain:
        lines.append(f"{_key(key)} = {toml_value(value)}")
    for key, value in nested:
        _write_value_tables(lines, [*path, key], value)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c)
                         for c in text) + '"'


def toml_value(value: Any) -> str:
    """One value, inline: strings, integers, floats, booleans, dates and times, arrays
    and (inline) tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
