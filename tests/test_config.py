"""fastgw.config: value syntaxes, the full valid file, and every error, by its exact text."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import config as config_module
from fastgw.config import (
    Address,
    ClusterConfig,
    Config,
    GlobalConfig,
    HealthCheck,
    LogConfig,
    RouteConfig,
    ServerConfig,
    Target,
    UpstreamConfig,
    load_config,
    parse_address,
    parse_config,
    parse_duration,
    parse_rate,
    parse_size,
    resolve_secret,
)
from fastgw.errors import ConfigError

MINIMAL = """
[upstreams.users]
targets = ["127.0.0.1:9001"]

[[routes]]
name = "users"
paths = ["/users"]
upstream = "users"
"""


def errors_of(text: str, **kwargs) -> list[str]:
    """The error lines of a config that must be refused."""
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), **kwargs)
    return info.value.errors


def only_error(text: str) -> str:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


# ---------------------------------------------------------------------------
# Value syntaxes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0.5h", 1800.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-5s", '"-5s" is not a duration (use e.g. "250ms", "5s", "2m", "1h")'),
        ("", '"" is not a duration (use e.g. "250ms", "5s", "2m", "1h")'),
        ("0s", 'a duration must be greater than 0, got "0s"'),
        ("0ms", 'a duration must be greater than 0, got "0ms"'),
        (10, 'expected a duration like "5s", got integer 10 (did you mean "10s"?)'),
        (1.5, 'expected a duration like "5s", got float 1.5'),
        (True, 'expected a duration like "5s", got boolean true'),
    ],
)
def test_parse_duration_refuses(value, message):
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512B", 512),
        ("0B", 0),
        ("16KiB", 16384),
        ("10MiB", 10 * 1024 * 1024),
        ("1GiB", 1 << 30),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.5MiB", '"1.5MiB" is not a size (use e.g. "512B", "16KiB", "10MiB", "1GiB")'),
        (-1, "a size cannot be negative, got -1"),
        (1.0, 'expected a size like "16KiB" or a number of bytes, got float 1.0'),
        (False, 'expected a size like "16KiB" or a number of bytes, got boolean false'),
    ],
)
def test_parse_size_refuses(value, message):
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("100/s", 100.0),
        ("6000/m", 100.0),
        ("50000/h", 50000 / 3600),
        ("86400/d", 1.0),
        ("0.5/s", 0.5),
    ],
)
def test_parse_rate(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("100", '"100" is not a rate (use e.g. "100/s", "6000/m", "50000/h")'),
        ("0/s", 'a rate must be greater than 0, got "0/s"'),
        (100, 'expected a rate like "100/s", got integer 100'),
    ],
)
def test_parse_rate_refuses(value, message):
    with pytest.raises(ValueError) as info:
        parse_rate(value)
    assert str(info.value) == message


@given(st.integers(min_value=1, max_value=10**9), st.sampled_from(["ms", "s", "m", "h"]))
def test_parse_duration_any_positive_integer(n, unit):
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * factor)


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["B", "KiB", "MiB", "GiB"]))
def test_parse_size_any_integer(n, unit):
    factor = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]
    assert parse_size(f"{n}{unit}") == n * factor
    assert parse_size(n) == n


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9001", Address("127.0.0.1", 9001)),
        ("backend.internal:80", Address("backend.internal", 80)),
        ("localhost:65535", Address("localhost", 65535)),
        ("[::1]:8080", Address("::1", 8080)),
        ("[2001:db8::1]:1", Address("2001:db8::1", 1)),
    ],
)
def test_parse_address(text, address):
    assert parse_address(text) == address
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1:99999", "port > 65535"),
        ("127.0.0.1:0", "port < 1"),
        ("127.0.0.1", "no port"),
        ("127.0.0.1:", "no port"),
        ("127.0.0.1:http", "port is not a number"),
        ("127.0.0.1:-1", "port is not a number"),
        (":8080", "no host"),
        ("::1:8080", 'an IPv6 address needs brackets, e.g. "[::1]:8080"'),
        ("[::1:8080", "missing ']'"),
        ("[::1]", "no port"),
        ("[nope]:80", 'bad IPv6 address "nope"'),
        ("bad host:80", 'bad host name "bad host"'),
        ("a..b:80", 'bad host name "a..b"'),
        ("-a.b:80", 'bad host name "-a.b"'),
    ],
)
def test_parse_address_refuses(text, why):
    with pytest.raises(ValueError) as info:
        parse_address(text)
    assert str(info.value) == f"{json.dumps(text)} is not host:port ({why})"


def test_parse_address_default_host():
    assert parse_address(":8080", "0.0.0.0") == Address("0.0.0.0", 8080)
    assert str(Address("::", 80)) == "[::]:80"


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("http://127.0.0.1:9000", "127.0.0.1:9000"),
        ("https://api.example.com:8443/v1/users?x=1", "api.example.com:8443"),
        ("http://Backend.internal/", "backend.internal:80"),
        ("https://[::1]", "[::1]:443"),
    ],
)
def test_parse_address_refuses_a_url_with_the_address_it_holds(text, meant):
    # Not "an IPv6 address needs brackets": that colon is the scheme's.
    with pytest.raises(ValueError) as info:
        parse_address(text)
    assert str(info.value) == f'{json.dumps(text)} is not host:port (no scheme here: write "{meant}")'


SYNTAXES = {
    parse_size: ("a size", '"512B", "16KiB", "10MiB", "1GiB"'),
    parse_rate: ("a rate", '"100/s", "6000/m", "50000/h"'),
    parse_duration: ("a duration", '"250ms", "5s", "2m", "1h"'),
}


@pytest.mark.parametrize(
    ("parse", "value", "meant"),
    [
        (parse_size, "10MB", "10MiB"),
        (parse_size, "10mb", "10MiB"),
        (parse_size, "10M", "10MiB"),
        (parse_size, "10KB", "10KiB"),
        (parse_size, "1GB", "1GiB"),
        (parse_size, "16kib", "16KiB"),
        (parse_size, "512", "512B"),
        (parse_size, "64 bytes", "64B"),
        (parse_rate, "10/sec", "10/s"),
        (parse_rate, "10/second", "10/s"),
        (parse_rate, "10 /s", "10/s"),
        (parse_rate, "100 / s", "100/s"),
        (parse_rate, "100/min", "100/m"),
        (parse_rate, "5/hour", "5/h"),
        (parse_rate, "1000/day", "1000/d"),
        (parse_rate, "10 per second", "10/s"),
        (parse_rate, "10r/s", "10/s"),
        (parse_rate, "2.5/S", "2.5/s"),
        (parse_duration, "5sec", "5s"),
        (parse_duration, "5 s", "5s"),
        (parse_duration, "5S", "5s"),
        (parse_duration, " 5s", "5s"),
        (parse_duration, "100 ms", "100ms"),
        (parse_duration, "2min", "2m"),
        (parse_duration, "10 seconds", "10s"),
        (parse_duration, "1.5 hours", "1.5h"),
        (parse_duration, "5", "5s"),
    ],
)
def test_near_misses_are_refused_with_the_value_meant(parse, value, meant):
    what, examples = SYNTAXES[parse]
    with pytest.raises(ValueError) as info:
        parse(value)
    assert str(info.value) == f'{json.dumps(value)} is not {what} (did you mean "{meant}"? use e.g. {examples})'


@pytest.mark.parametrize(
    ("parse", "value"),
    [(parse_size, "1.5MiB"), (parse_size, "10 TB"), (parse_rate, "100"), (parse_rate, "10/week"),
     (parse_duration, "-5s"), (parse_duration, "5 days"), (parse_duration, "")],
)
def test_values_without_an_obvious_meaning_get_no_guess(parse, value):
    what, examples = SYNTAXES[parse]
    with pytest.raises(ValueError) as info:
        parse(value)
    assert str(info.value) == f"{json.dumps(value)} is not {what} (use e.g. {examples})"


def test_a_bare_integer_duration_is_refused_with_its_seconds():
    with pytest.raises(ValueError) as info:
        parse_duration(5)
    assert str(info.value) == 'expected a duration like "5s", got integer 5 (did you mean "5s"?)'
    assert only_error(route(BASE + "timeout = 5")) == (
        'fastgw.toml: routes[0] "r".timeout: expected a duration like "5s", got integer 5 (did you mean "5s"?)')
    with pytest.raises(ValueError) as info:
        parse_duration(0)
    assert str(info.value) == 'expected a duration like "5s", got integer 0'


def test_resolve_secret(monkeypatch):
    monkeypatch.setenv("FASTGW_TEST_TOKEN", "s3cret")
    assert resolve_secret("env:FASTGW_TEST_TOKEN") == "s3cret"
    assert resolve_secret("plain value") == "plain value"
    assert resolve_secret("") == ""


def test_resolve_secret_missing(monkeypatch):
    monkeypatch.delenv("FASTGW_TEST_MISSING", raising=False)
    with pytest.raises(ValueError) as info:
        resolve_secret("env:FASTGW_TEST_MISSING")
    assert str(info.value) == "environment variable FASTGW_TEST_MISSING is not set"
    with pytest.raises(ValueError) as info:
        resolve_secret("env:")
    assert str(info.value) == '"env:" names no environment variable'


# ---------------------------------------------------------------------------
# Valid files
# ---------------------------------------------------------------------------

FULL = """\
[server]
listen = ["0.0.0.0:8080", ":8081", "[::1]:9000"]
workers = 4
max_connections = 500
header_timeout = "5s"
idle_timeout = "2m"
drain_timeout = "250ms"
max_header_bytes = "32KiB"
max_body_bytes = 1048576
trusted_proxies = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "172.16.5.4/12"]

[log]
access = "logs/access.log"
format = "json"
error = "logs/error.log"
level = "warning"

[upstreams.users]
targets = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
balance = "round_robin"
keepalive = 0
connect_timeout = "1s"
read_timeout = "1m"

[upstreams.files]
targets = ["[::1]:7000"]

[[routes]]
name = "users"
hosts = ["api.example.com", "*.Example.COM"]
paths = ["/users/{id}", "/people/{id}"]
methods = ["get", "POST", "GET"]
headers = { "X-API-Version" = "2" }
priority = 5
upstream = "users"
rewrite = "/v2/users/{id}"
timeout = "5s"

[[routes]]
name = "files"
paths = ["/files/*", "/static/{kind}/*"]
upstream = "files"
rewrite = "/blobs/{*}"

[[routes]]
name = "api"
paths = ["/api/users"]
upstream = "users"
strip_prefix = "/api"
"""


def test_full_config(tmp_path):
    path = tmp_path / "fastgw.toml"
    path.write_text(FULL)
    (tmp_path / "logs").mkdir()
    config = load_config(path)
    assert config == Config(
        server=ServerConfig(
            listen=(Address("0.0.0.0", 8080), Address("0.0.0.0", 8081), Address("::1", 9000)),
            workers=4,
            max_connections=500,
            header_timeout=5.0,
            idle_timeout=120.0,
            drain_timeout=0.25,
            max_header_bytes=32768,
            max_body_bytes=1048576,
            trusted_proxies=(
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.0.2.1/32"),
                ipaddress.ip_network("2001:db8::/32"),
                ipaddress.ip_network("172.16.0.0/12"),
            ),
        ),
        log=LogConfig(access=str(tmp_path / "logs" / "access.log"), format="json",
                      error=str(tmp_path / "logs" / "error.log"), level="warning"),
        upstreams=(
            UpstreamConfig(
                name="users",
                targets=(Target("127.0.0.1", 9001), Target("127.0.0.1", 9002, weight=3)),
                balance="round_robin",
                keepalive=0,
                connect_timeout=1.0,
                read_timeout=60.0,
            ),
            UpstreamConfig(name="files", targets=(Target("::1", 7000),)),
        ),
        routes=(
            RouteConfig(
                name="users",
                index=0,
                paths=("/users/{id}", "/people/{id}"),
                upstream="users",
                hosts=("api.example.com", "*.example.com"),
                methods=("GET", "POST"),
                headers=(("x-api-version", "2"),),
                priority=5,
                rewrite="/v2/users/{id}",
                timeout=5.0,
            ),
            RouteConfig(
                name="files",
                index=1,
                paths=("/files/*", "/static/{kind}/*"),
                upstream="files",
                rewrite="/blobs/{*}",
            ),
            RouteConfig(name="api", index=2, paths=("/api/users",), upstream="users", strip_prefix="/api"),
        ),
        source=str(path),
        digest=hashlib.sha256(FULL.encode()).hexdigest(),
    )
    assert config.upstream("files") is config.upstreams[1]
    assert str(config.upstreams[1].targets[0]) == "[::1]:7000"


def test_empty_file_gives_the_defaults():
    config = parse_config("")
    assert config == Config(
        server=ServerConfig(),
        log=LogConfig(),
        upstreams=(),
        routes=(),
        source="",
        digest=hashlib.sha256(b"").hexdigest(),
        warnings=("fastgw.toml: no routes: every request will be answered 404 (add a [[routes]] table)",),
    )
    assert config.server.listen == (Address("0.0.0.0", 8080),)
    assert config.server.max_body_bytes == 10 * 1024 * 1024


def test_source_given_to_parse_config():
    assert parse_config("", source="demo.toml").source == "demo.toml"
    assert errors_of("[server]\nworkers = 0\n", source="demo.toml") == [
        "demo.toml: server.workers: must be at least 1, got 0"
    ]


def test_workers_auto(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    assert parse_config('[server]\nworkers = "auto"\n').server.workers == 12
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert parse_config('[server]\nworkers = "auto"\n').server.workers == 1


def test_listen_single_string_and_log_keywords(tmp_path):
    config = parse_config('[server]\nlisten = ":9000"\n[log]\naccess = "off"\n')
    assert config.server.listen == (Address("0.0.0.0", 9000),)
    assert config.log.access == "off"
    assert parse_config(f'[log]\naccess = "{tmp_path}/fastgw.log"\n').log.access == f"{tmp_path}/fastgw.log"


def test_relative_log_path_uses_base_dir(tmp_path):
    (tmp_path / "logs").mkdir()
    config = parse_config('[log]\naccess = "../logs/a.log"\n', base_dir=str(tmp_path / "etc"))
    assert config.log.access == str(tmp_path / "logs" / "a.log")


def test_log_keywords_in_any_case_and_the_error_log_and_level():
    assert LogConfig() == LogConfig(access="stdout", format="json", error="stderr", level="info")
    config = parse_config('[log]\naccess = "STDERR"\nerror = "Stdout"\nlevel = "DEBUG"\n')
    assert config.log == LogConfig(access="stderr", format="json", error="stdout", level="debug")
    assert parse_config('[log]\naccess = "Off"\n').log.access == "off"
    for level in ("debug", "info", "warning", "error"):
        assert parse_config(f'[log]\nlevel = "{level}"\n').log.level == level


def test_log_files_are_checked_but_not_created(tmp_path):
    (tmp_path / "logs").mkdir()
    config = parse_config('[log]\naccess = "logs/access.log"\nerror = "logs/error.log"\n', base_dir=str(tmp_path))
    assert (config.log.access, config.log.error) == (str(tmp_path / "logs" / "access.log"),
                                                     str(tmp_path / "logs" / "error.log"))
    assert list((tmp_path / "logs").iterdir()) == []
    (tmp_path / "logs" / "access.log").write_text("an existing log\n")
    assert parse_config('[log]\naccess = "logs/access.log"\n', base_dir=str(tmp_path)).log.access == (
        str(tmp_path / "logs" / "access.log"))
    assert parse_config('[log]\naccess = "/dev/null"\nerror = "/dev/null"\n').log.error == "/dev/null"


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("access", "nope/access.log", "folder {d}/nope does not exist"),
        ("error", "nope/deeper/error.log", "folder {d}/nope/deeper does not exist"),
        ("access", "folder", "it is a folder"),
        # (tests run as root, who may write anywhere: a file where the folder should be
        # is a folder that cannot be written in whoever runs them)
        ("access", "file.txt/access.log", "{d}/file.txt is not a folder"),
        ("error", "fifo", "not a regular file"),
    ],
)
def test_log_file_that_cannot_be_written(tmp_path, key, value, why):
    (tmp_path / "file.txt").write_text("")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    assert errors_of(f'[log]\n{key} = "{value}"\n', base_dir=str(tmp_path)) == [
        f"fastgw.toml: log.{key}: cannot write {tmp_path}/{value}: {why.format(d=tmp_path)}"
    ]
    assert not (tmp_path / "nope").exists()


def test_log_file_permission_denied(tmp_path, monkeypatch):
    # os.access stands for a user who may not write there (the tests run as root).
    (tmp_path / "access.log").write_text("")
    monkeypatch.setattr(config_module.os, "access", lambda path, mode: False)
    text = '[log]\naccess = "access.log"\nerror = "error.log"\n'
    assert errors_of(text, base_dir=str(tmp_path)) == [
        f"fastgw.toml: log.access: cannot write {tmp_path}/access.log: permission denied",
        f"fastgw.toml: log.error: cannot write {tmp_path}/error.log: permission denied in folder {tmp_path}",
    ]


def test_a_log_file_error_comes_with_every_other_error():
    text = '[log]\naccess = "/nonexistent-fastgw/access.log"\n[upstreams.u]\ntargets = ["h:99999"]\n'
    assert errors_of(text) == [
        "fastgw.toml: log.access: cannot write /nonexistent-fastgw/access.log: "
        "folder /nonexistent-fastgw does not exist",
        'fastgw.toml: upstreams.u.targets[0]: "h:99999" is not host:port (port > 65535)',
    ]


def test_route_without_optional_keys_and_config_with_no_routes():
    config = parse_config(MINIMAL)
    assert config.routes == (RouteConfig(name="users", index=0, paths=("/users",), upstream="users"),)
    assert parse_config('[upstreams.a]\ntargets = ["h:1"]\n').routes == ()


def test_result_is_frozen_and_holds_no_lists(tmp_path):
    (tmp_path / "logs").mkdir()
    config = parse_config(FULL, base_dir=str(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.workers = 2  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        config.server.extra = 1  # type: ignore[attr-defined]

    def walk(value):
        assert not isinstance(value, (list, dict, set)), value
        if dataclasses.is_dataclass(value):
            assert type(value).__dataclass_params__.frozen
            assert hasattr(type(value), "__slots__")
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name))
        elif isinstance(value, tuple):
            for item in value:
                walk(item)

    walk(config)
    hash(config.routes)


def test_upstream_lookup_unknown_name():
    with pytest.raises(KeyError):
        parse_config(MINIMAL).upstream("nope")


# ---------------------------------------------------------------------------
# load_config
# ---------------------------------------------------------------------------


def test_load_config_digest_is_of_the_file_bytes(tmp_path):
    path = tmp_path / "gw.toml"
    data = "\ufeff# a comment with ü\n".encode() + MINIMAL.encode()
    path.write_bytes(data)
    config = load_config(str(path))
    assert config.digest == hashlib.sha256(data).hexdigest()
    assert config.source == str(path)


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: cannot read the file: No such file or directory"]


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"# \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: not UTF-8 text (bad byte at offset 2)"]


def test_load_config_errors_are_prefixed_with_the_path(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text("[server]\nworker = 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f'{path}: server: unknown key "worker" (did you mean "workers"?)']


# ---------------------------------------------------------------------------
# The documented examples (README, docs/config.md), verbatim
# ---------------------------------------------------------------------------


def test_spec_example_undefined_upstream():
    text = MINIMAL + """
    [upstreams.orders]
    targets = ["127.0.0.1:9003"]

    [[routes]]
    name = "a"
    paths = ["/a"]
    upstream = "users"

    [[routes]]
    name = "orders"
    paths = ["/orders"]
    upstream = "order"
    """
    assert errors_of(text) == [
        'fastgw.toml: routes[2] "orders": upstream "order" is not defined (did you mean "orders"?)'
    ]


def test_spec_example_bad_port():
    text = MINIMAL.replace('"127.0.0.1:9001"', '"127.0.0.1:9001", "127.0.0.1:99999"')
    assert errors_of(text) == [
        'fastgw.toml: upstreams.users.targets[1]: "127.0.0.1:99999" is not host:port (port > 65535)'
    ]


def test_spec_example_syntax_error():
    lines = ["# fastgw", "[server]", 'listen = ["0.0.0.0:8080"]', "workers = 1", ""]
    lines += ["[upstreams.users]", 'targets = ["127.0.0.1:9001"]', ""]
    lines += ["[[routes]]", 'name = "users"', 'paths = ["/users"]', 'upstream = "users"', ""]
    lines += ["priority"]  # line 14
    assert len(lines) == 14
    assert errors_of("\n".join(lines) + "\n") == ["fastgw.toml: line 14: expected '=' after key"]


# ---------------------------------------------------------------------------
# Errors, one kind at a time
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        # unknown keys, with and without a near miss
        ("[server]\nworker = 2\n", 'server: unknown key "worker" (did you mean "workers"?)'),
        ("[server]\nzzz = 2\n", 'server: unknown key "zzz"'),
        ("[sever]\n", 'unknown key "sever" (did you mean "server"?)'),
        ('[log]\nacces = "off"\n', 'log: unknown key "acces" (did you mean "access"?)'),
        ("[upstreams.u]\ntargets = ['h:1']\nkeep_alive = 1\n",
         'upstreams.u: unknown key "keep_alive" (did you mean "keepalive"?)'),
        ("[upstreams.u]\ntargets = [{address = 'h:1', wieght = 2}]\n",
         'upstreams.u.targets[0]: unknown key "wieght" (did you mean "weight"?)'),
        ("[[routes]]\nname='r'\npaths=['/']\nupstream='u'\npath = ['/x']\n[upstreams.u]\ntargets=['h:1']\n",
         'routes[0] "r": unknown key "path" (did you mean "paths"?)'),
        ("[[routes]]\nname='r'\npaths=['/']\nupstream='u'\nrate_limt = {}\n[upstreams.u]\ntargets=['h:1']\n",
         'routes[0] "r": unknown key "rate_limt" (did you mean "rate_limit"?)'),
        # types: what was expected and what came
        ('[server]\nmax_connections = "many"\n', 'server.max_connections: expected an integer, got string "many"'),
        ("[server]\nmax_connections = 1.5\n", "server.max_connections: expected an integer, got float 1.5"),
        ("[server]\nmax_connections = true\n", "server.max_connections: expected an integer, got boolean true"),
        ("[server]\nmax_connections = [1]\n", "server.max_connections: expected an integer, got array"),
        ("[server]\nmax_connections = 1979-05-27\n",
         "server.max_connections: expected an integer, got date 1979-05-27"),
        ("server = 5\n", "server: expected a table, got integer 5"),
        ('log = "off"\n', 'log: expected a table, got string "off"'),
        ("upstreams = []\n", "upstreams: expected a table, got array"),
        ("[routes]\n", "routes: expected an array, got table"),
        ("routes = [1]\n", "routes[0]: expected a table, got integer 1"),
        ("[upstreams]\nu = 'h:1'\n", 'upstreams.u: expected a table, got string "h:1"'),
        ('[upstreams."a b"]\ntargets = 5\n', 'upstreams."a b".targets: expected an array, got integer 5'),
        # server values
        ("[server]\nworkers = 0\n", "server.workers: must be at least 1, got 0"),
        ('[server]\nworkers = "many"\n', 'server.workers: expected an integer or "auto", got string "many"'),
        ("[server]\nmax_connections = 0\n", "server.max_connections: must be at least 1, got 0"),
        ('[server]\nheader_timeout = "10 seconds"\n',
         'server.header_timeout: "10 seconds" is not a duration (did you mean "10s"? '
         'use e.g. "250ms", "5s", "2m", "1h")'),
        ("[server]\nidle_timeout = 60\n",
         'server.idle_timeout: expected a duration like "5s", got integer 60 (did you mean "60s"?)'),
        ('[server]\ndrain_timeout = "0s"\n', 'server.drain_timeout: a duration must be greater than 0, got "0s"'),
        ('[server]\nmax_body_bytes = "10MB"\n',
         'server.max_body_bytes: "10MB" is not a size (did you mean "10MiB"? use e.g. "512B", "16KiB", "10MiB", '
         '"1GiB")'),
        ('[server]\nmax_header_bytes = "0B"\n', 'server.max_header_bytes: must be at least 1, got "0B"'),
        ("[server]\nmax_header_bytes = -5\n", "server.max_header_bytes: a size cannot be negative, got -5"),
        ('[server]\nlisten = ["0.0.0.0:80", "0.0.0.0:99999"]\n',
         'server.listen[1]: "0.0.0.0:99999" is not host:port (port > 65535)'),
        ('[server]\nlisten = "localhost"\n', 'server.listen: "localhost" is not host:port (no port)'),
        ("[server]\nlisten = []\n", "server.listen: must have at least one address"),
        ('[server]\nlisten = [":80", "0.0.0.0:80"]\n',
         'server.listen[1]: address "0.0.0.0:80" is already listed at [0]'),
        ('[server]\ntrusted_proxies = ["10.0.0.0/8", "10.0.0.0/33"]\n',
         'server.trusted_proxies[1]: "10.0.0.0/33" is not an IP network (use e.g. "10.0.0.0/8" or "192.0.2.1")'),
        ('[server]\ntrusted_proxies = "10.0.0.0/8"\n',
         'server.trusted_proxies: expected an array, got string "10.0.0.0/8"'),
        # log values
        ('[log]\nformat = "text"\n', 'log.format: expected "json", got string "text"'),
        ('[log]\naccess = ""\n', 'log.access: expected "stdout", "stderr", "off" or a file path, got string ""'),
        ("[log]\naccess = false\n", "log.access: expected a string, got boolean false"),
        ('[log]\nerror = ""\n', 'log.error: expected "stdout", "stderr" or a file path, got string ""'),
        ('[log]\nerror = "OFF"\n', 'log.error: the error log cannot be turned off, use level = "error" to quiet it'),
        ('[log]\nlevel = "warn"\n', 'log.level: expected one of "debug", "info", "warning", "error", '
         'got string "warn" (did you mean "warning"?)'),
        ("[log]\nlevel = 1\n", 'log.level: expected one of "debug", "info", "warning", "error", got integer 1'),
        ('[server]\nlisten = ["http://0.0.0.0:8080/"]\n',
         'server.listen[0]: "http://0.0.0.0:8080/" is not host:port (no scheme here: write "0.0.0.0:8080")'),
        ('[upstreams.u]\ntargets = ["http://127.0.0.1:9000"]\n',
         'upstreams.u.targets[0]: "http://127.0.0.1:9000" is not host:port (no scheme here: write "127.0.0.1:9000")'),
        # upstreams
        ("[upstreams.u]\n", 'upstreams.u: missing required key "targets"'),
        ("[upstreams.u]\ntargets = []\n", "upstreams.u.targets: must have at least one target"),
        ("[upstreams.u]\ntargets = [80]\n",
         'upstreams.u.targets[0]: expected "host:port" or a table {address, weight}, got integer 80'),
        ('[upstreams.u]\ntargets = [":80"]\n', 'upstreams.u.targets[0]: ":80" is not host:port (no host)'),
        ("[upstreams.u]\ntargets = [{weight = 2}]\n", 'upstreams.u.targets[0]: missing required key "address"'),
        ("[upstreams.u]\ntargets = [{address = 'h:1', weight = 0}]\n",
         "upstreams.u.targets[0].weight: must be at least 1, got 0"),
        ("[upstreams.u]\ntargets = [{address = 'h:99999'}]\n",
         'upstreams.u.targets[0].address: "h:99999" is not host:port (port > 65535)'),
        ("[upstreams.u]\ntargets = ['h:1', {address = 'h:1', weight = 2}]\n",
         'upstreams.u.targets[1]: target "h:1" is already listed at [0]'),
        ("[upstreams.u]\ntargets = ['h:1']\nkeepalive = -1\n", "upstreams.u.keepalive: must be at least 0, got -1"),
        ("[upstreams.u]\ntargets = ['h:1']\nbalance = 'roundrobin'\n",
         'upstreams.u.balance: expected one of "round_robin", "least_conn", "consistent_hash", "random", '
         'got string "roundrobin" (did you mean "round_robin"?)'),
        ("[upstreams.u]\ntargets = ['h:1']\nread_timeout = '30'\n",
         'upstreams.u.read_timeout: "30" is not a duration (did you mean "30s"? use e.g. "250ms", "5s", "2m", "1h")'),
    ],
)
def test_error(text, error):
    assert only_error(text) == f"fastgw.toml: {error}"


def route(body: str, index: int = 0) -> str:
    """A file with one valid upstream "users" and, at ``routes[index]``, a route
    named "r" made of ``body`` (filler routes before it)."""
    filler = "".join(f'[[routes]]\nname = "f{i}"\npaths = ["/f{i}"]\nupstream = "users"\n' for i in range(index))
    return f'[upstreams.users]\ntargets = ["h:1"]\n{filler}[[routes]]\n{body}\n'


BASE = 'name = "r"\npaths = ["/users/{id}"]\nupstream = "users"\n'


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('paths = ["/"]\nupstream = "users"', 'routes[0]: missing required key "name"'),
        ('name = ""\npaths = ["/"]\nupstream = "users"', "routes[0].name: must not be empty"),
        ('name = 5\npaths = ["/"]\nupstream = "users"', "routes[0].name: expected a string, got integer 5"),
        ('name = "r"\nupstream = "users"', 'routes[0] "r": missing required key "paths"'),
        ('name = "r"\npaths = []\nupstream = "users"', 'routes[0] "r".paths: must have at least one path'),
        ('name = "r"\npaths = ["users"]\nupstream = "users"',
         'routes[0] "r".paths[0]: "users" does not start with "/"'),
        ('name = "r"\npaths = "/users"\nupstream = "users"',
         'routes[0] "r".paths: expected an array, got string "/users"'),
        ('name = "r"\npaths = ["/"]', 'routes[0] "r": missing required key "upstream"'),
        ('name = "r"\npaths = ["/"]\nupstream = "nothing"', 'routes[0] "r": upstream "nothing" is not defined'),
        ('name = "r"\npaths = ["/"]\nupstream = "user"',
         'routes[0] "r": upstream "user" is not defined (did you mean "users"?)'),
        (BASE + 'methods = ["GET", "GETT"]',
         'routes[0] "r".methods[1]: "GETT" is not an HTTP method (did you mean "GET"?)'),
        (BASE + 'methods = ["FETCH"]',
         'routes[0] "r".methods[0]: "FETCH" is not an HTTP method (did you mean "PATCH"?)'),
        (BASE + 'methods = "GET"', 'routes[0] "r".methods: expected an array, got string "GET"'),
        (BASE + 'hosts = ["a*.example.com"]',
         'routes[0] "r".hosts[0]: "a*.example.com" is not a host name (use e.g. "api.example.com" or "*.example.com")'),
        (BASE + 'hosts = ["*"]',
         'routes[0] "r".hosts[0]: "*" is not a host name (use e.g. "api.example.com" or "*.example.com")'),
        (BASE + 'headers = { "x-a" = 2 }', 'routes[0] "r".headers.x-a: expected a string, got integer 2'),
        (BASE + 'headers = { "x a" = "1" }', 'routes[0] "r".headers."x a": "x a" is not a valid header name'),
        (BASE + 'headers = { "X-A" = "1", "x-a" = "2" }', 'routes[0] "r".headers.x-a: header "x-a" is listed twice'),
        (BASE + 'headers = ["x-a"]', 'routes[0] "r".headers: expected a table, got array'),
        (BASE + 'priority = "high"', 'routes[0] "r".priority: expected an integer, got string "high"'),
        (BASE + "timeout = 5",
         'routes[0] "r".timeout: expected a duration like "5s", got integer 5 (did you mean "5s"?)'),
        (BASE + 'strip_prefix = "/api/"',
         'routes[0] "r".strip_prefix: "/api/" must start with "/" and not end with "/"'),
        (BASE + 'strip_prefix = "api"', 'routes[0] "r".strip_prefix: "api" must start with "/" and not end with "/"'),
        (BASE + 'strip_prefix = "/"', 'routes[0] "r".strip_prefix: "/" must start with "/" and not end with "/"'),
        (BASE + 'strip_prefix = "/api"\nrewrite = "/v2"',
         'routes[0] "r": "strip_prefix" and "rewrite" cannot be used together'),
        (BASE + 'rewrite = "v2/{id}"', 'routes[0] "r".rewrite: "v2/{id}" does not start with "/"'),
        (BASE + 'rewrite = "/v2/{uid}"', 'routes[0] "r".rewrite: "{uid}" is not defined by path "/users/{id}"'),
        (BASE + 'rewrite = "/v2/{*}"',
         'routes[0] "r".rewrite: "{*}" needs every path to end in "/*" ("/users/{id}" does not)'),
        (BASE + 'rewrite = "/v2/{id"', 'routes[0] "r".rewrite: "/v2/{id" has an unmatched "{" or "}"'),
        (BASE + 'rewrite = "/v2/{a-b}"', 'routes[0] "r".rewrite: "{a-b}" is not a parameter (use {name} or {*})'),
        (BASE + "rewrite = 5", 'routes[0] "r".rewrite: expected a string, got integer 5'),
    ],
)
def test_route_error(body, error):
    assert only_error(route(body)) == f"fastgw.toml: {error}"


def test_rewrite_param_must_be_in_every_path():
    body = 'name = "users"\npaths = ["/users/{id}", "/users"]\nupstream = "users"\nrewrite = "/v2/users/{id}"'
    assert only_error(route(body)) == 'fastgw.toml: routes[0] "users".rewrite: "{id}" is not defined by path "/users"'


def test_route_index_in_place():
    assert only_error(route('name = "r"\npaths = ["x"]\nupstream = "users"', index=2)) == (
        'fastgw.toml: routes[2] "r".paths[0]: "x" does not start with "/"'
    )


def test_duplicate_route_names_name_both_indices():
    text = route(BASE, index=1) + "[[routes]]\n" + BASE.replace("/users/{id}", "/other")
    assert errors_of(text) == ['fastgw.toml: routes[2] "r": name "r" is already used by routes[1]']


def test_upstream_of_a_broken_upstream_is_still_defined():
    text = '[upstreams.users]\ntargets = []\n[[routes]]\n' + BASE
    assert errors_of(text) == ["fastgw.toml: upstreams.users.targets: must have at least one target"]


def test_routes_are_not_checked_against_a_broken_upstreams_section():
    text = "upstreams = 5\n[[routes]]\n" + BASE
    assert errors_of(text) == ["fastgw.toml: upstreams: expected a table, got integer 5"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
                                    "PROPFIND", "M-SEARCH", "PURGE", "QUERY", "get"])
def test_known_methods(method):
    assert parse_config(route(BASE + f'methods = ["{method}"]')).routes[0].methods == (method.upper(),)


# ---------------------------------------------------------------------------
# Not supported yet
# ---------------------------------------------------------------------------


def test_admin_listen_token_and_their_errors(monkeypatch):
    assert parse_config("").admin is None
    admin = parse_config('[admin]\nlisten = "127.0.0.1:9901"\n').admin
    assert admin.listen == Address("127.0.0.1", 9901) and admin.token == ""
    monkeypatch.setenv("FASTGW_TEST_ADMIN", "s3cret")
    admin = parse_config('[admin]\nlisten = "0.0.0.0:9901"\ntoken = "env:FASTGW_TEST_ADMIN"\n').admin
    assert admin.token == "s3cret" and "s3cret" not in repr(admin)
    assert only_error("[admin]\n") == 'fastgw.toml: admin: missing required key "listen"'
    assert only_error('[admin]\nlisten = "[::]:9901"\n').startswith(
        "fastgw.toml: admin.listen: [::]:9901 is not a loopback address: set [admin].token")
    assert only_error('[admin]\nlisten = "127.0.0.1:9901"\ntoken = "env:FASTGW_NOT_SET_ANYWHERE"\n'
                      ).startswith("fastgw.toml: admin.token: ")
    assert errors_of('[server]\nlisten = ["127.0.0.1:9901"]\n[admin]\nlisten = "127.0.0.1:9901"\nport = 1\n'
                     ) == ['fastgw.toml: admin: unknown key "port"',
                           "fastgw.toml: admin.listen: 127.0.0.1:9901 is a gateway listen address too"]


def test_server_tls_needs_certificates_and_its_own_addresses():
    text = '[server]\nlisten = ["0.0.0.0:8443"]\n[server.tls]\nlisten = ["0.0.0.0:8443"]\nmin_version = "1.1"\n'
    assert errors_of(text) == [
        'fastgw.toml: server.tls.listen: 0.0.0.0:8443 is a plain listen address too',
        'fastgw.toml: server.tls.min_version: expected one of "1.2", "1.3", got string "1.1" (did you mean "1.3"?)',
        'fastgw.toml: server.tls: missing required key "certificates"',
    ]


def test_health_check_defaults_and_values():
    text = '[upstreams.users]\ntargets = ["h:1"]\n[upstreams.users.health_check]\n'
    assert parse_config(text, "fastgw.toml").upstreams[0].health_check == HealthCheck(
        path="/", interval=5.0, timeout=1.0, healthy_threshold=2, unhealthy_threshold=3)
    text = ('[upstreams.users]\ntargets = ["h:1"]\n[upstreams.users.health_check]\n'
            'path = "/healthz?deep=1"\ninterval = "2s"\ntimeout = "250ms"\n'
            'healthy_threshold = 1\nunhealthy_threshold = 5\n')
    assert parse_config(text, "fastgw.toml").upstreams[0].health_check == HealthCheck(
        "/healthz?deep=1", 2.0, 0.25, 1, 5)
    plain = '[upstreams.users]\ntargets = ["h:1"]\n'
    assert parse_config(plain, "fastgw.toml").upstreams[0].health_check is None
    fast = '[upstreams.users]\ntargets = ["h:1"]\nhealth_check = { interval = "500ms" }\n'
    assert parse_config(fast, "fastgw.toml").upstreams[0].health_check.timeout == 0.5  # at most the interval


def test_health_check_errors_all_at_once():
    text = ('[upstreams.users]\ntargets = ["h:1"]\n[upstreams.users.health_check]\n'
            'path = "healthz"\ninterval = "1s"\ntimeout = "2s"\nhealthy_threshold = 0\n'
            'unhealthy_threshold = 1001\nintervals = "2s"\n')
    assert errors_of(text) == [
        'fastgw.toml: upstreams.users.health_check: unknown key "intervals" (did you mean "interval"?)',
        'fastgw.toml: upstreams.users.health_check.timeout: must not be longer than interval ("1s")',
        "fastgw.toml: upstreams.users.health_check.healthy_threshold: must be at least 1, got 0",
        "fastgw.toml: upstreams.users.health_check.unhealthy_threshold: must be at most 1000, got 1001",
        'fastgw.toml: upstreams.users.health_check.path: "healthz" does not start with "/"',
    ]


def test_health_check_path_must_fit_a_request_line():
    text = ('[upstreams.users]\ntargets = ["h:1"]\n[upstreams.users.health_check]\n'
            'path = "/health check"\n')
    assert only_error(text) == (
        'fastgw.toml: upstreams.users.health_check.path: "/health check" has a space, a control '
        "or a non-ASCII character (percent-encode it)")


@pytest.mark.parametrize("balance", ["round_robin", "least_conn", "consistent_hash", "random"])
def test_every_balance_is_accepted(balance):
    text = f'[upstreams.users]\ntargets = ["h:1"]\nbalance = "{balance}"\n'
    up = parse_config(text, "fastgw.toml").upstreams[0]
    assert (up.balance, up.hash_on) == (balance, "ip")


@pytest.mark.parametrize(("hash_on", "kept"), [
    ("ip", "ip"), ("path", "path"), ("header:X-User", "header:x-user"),
    ("cookie:session", "cookie:session"), ("query:user", "query:user"),
])
def test_hash_on_is_accepted(hash_on, kept):
    text = f'[upstreams.users]\ntargets = ["h:1"]\nbalance = "consistent_hash"\nhash_on = "{hash_on}"\n'
    assert parse_config(text, "fastgw.toml").upstreams[0].hash_on == kept


@pytest.mark.parametrize(("balance", "hash_on", "error"), [
    ("consistent_hash", '"body"',
     'upstreams.users.hash_on: expected "ip", "path", "header:NAME", "cookie:NAME" or "query:NAME", got "body"'),
    ("consistent_hash", '"header:"', 'upstreams.users.hash_on: "header:" names no header'),
    ("consistent_hash", '"header:a b"', 'upstreams.users.hash_on: "a b" is not a header name'),
    ("consistent_hash", "1", "upstreams.users.hash_on: expected a string, got integer 1"),
    ("round_robin", '"ip"', 'upstreams.users.hash_on: applies only to balance = "consistent_hash"'),
])
def test_bad_hash_on(balance, hash_on, error):
    text = f'[upstreams.users]\ntargets = ["h:1"]\nbalance = "{balance}"\nhash_on = {hash_on}\n'
    assert only_error(text) == f"fastgw.toml: {error}"


def test_policies_are_validated_by_their_own_schema_all_at_once():
    text = ('[global]\nip = { allow = ["10.0.0.0/33", "nope"], deny = "10.0.0.1" }\n'
            + route(BASE + '[routes.ip]\nalow = ["10.0.0.0/8"]\n'
                    '[routes.request_headers]\nset = { "content-length" = "5", "x-a" = "{reqest_id}", '
                    '"bad name" = "x", "x-ok" = "a\\nb" }\nremove = ["host"]\n'
                    '[routes.response_headers]\nset = { "x-b" = "1" }\nremove = ["x-b"]\nadd = 5\n'))
    assert errors_of(text) == [
        'fastgw.toml: global.ip.allow: "10.0.0.0/33" is not an IP network (use e.g. "10.0.0.0/8" or "192.0.2.1"); '
        '"nope" is not an IP network (use e.g. "10.0.0.0/8" or "192.0.2.1")',
        'fastgw.toml: global.ip.deny: expected an array, got string "10.0.0.1"',
        'fastgw.toml: routes[0] "r".ip: unknown key "alow" (did you mean "allow"?)',
        'fastgw.toml: routes[0] "r".request_headers.set: "content-length" is written by fastgw itself and cannot '
        'be changed here; {reqest_id} in the value of "x-a" is not one of {request_id}, {route}, {client_ip}, '
        '{consumer} (did you mean "request_id"?); "bad name" is not a valid header name; the value of "x-ok" '
        'holds a line break or NUL',
        'fastgw.toml: routes[0] "r".request_headers.remove: "host" is written by fastgw itself and cannot be '
        'changed here',
        'fastgw.toml: routes[0] "r".response_headers.add: expected a table, got integer 5',
    ]


def test_policies_parsed():
    config = parse_config('[global]\nip = { deny = ["192.0.2.0/24"] }\n' + route(
        BASE + '[routes.response_headers]\nset = { "X-B" = "1 {route}" }\nremove = ["Server"]\n'
               '[routes.request_headers]\nadd = { "x-a" = "2" }\n'))
    assert config.global_policies.policies == (("ip", {"allow": (), "deny": (ipaddress.ip_network("192.0.2.0/24"),)}),)
    assert config.routes[0].policies == (
        ("request_headers", {"set": (), "add": (("x-a", "2"),), "remove": ()}),
        ("response_headers", {"set": (("x-b", "1 {route}"),), "add": (), "remove": ("server",)}))
    text = route(BASE + '[routes.response_headers]\nset = { "x-b" = "1" }\nremove = ["X-B"]\n')
    assert errors_of(text) == ['fastgw.toml: routes[0] "r".response_headers.remove: \'x-b\' is both set and removed']


def test_route_aggregate_table_is_validated():
    text = route(BASE + '[routes.aggregate]\nmode = "sequence"')
    assert errors_of(text) == ['fastgw.toml: routes[0] "r".aggregate: missing required key "calls"']


# ---------------------------------------------------------------------------
# Rate limits, [global], [cluster], max_concurrent
# ---------------------------------------------------------------------------


def test_rate_limit_values_and_defaults():
    text = route(BASE + 'max_concurrent = 7\n[routes.rate_limit]\nrate = "6000/m"\n')
    r = parse_config(text).routes[0]
    assert r.policies == (("rate_limit", {"rate": 100.0, "burst": 100, "key": "ip", "scope": "local",
                                          "max_keys": 16384}),)
    assert r.max_concurrent == 7
    text = route(BASE + '[routes.rate_limit]\nrate = "2.5/s"\nburst = 5\nkey = "header:X-User"\nmax_keys = 64\n')
    assert parse_config(text).routes[0].policies == (
        ("rate_limit", {"rate": 2.5, "burst": 5, "key": "header:x-user", "scope": "local", "max_keys": 64}),)
    assert parse_config(route(BASE)).routes[0].policies == ()
    assert parse_config(route(BASE)).routes[0].max_concurrent == 0


def test_global_and_cluster():
    text = ('[cluster]\nredis = "redis://10.0.0.5:6379/2"\n'
            '[global]\nrate_limit = { rate = "1000/s", burst = 2000, key = "route" }\n'
            + route(BASE + 'rate_limit = { rate = "5/s", scope = "cluster" }\n'))
    config = parse_config(text)
    assert config.cluster == ClusterConfig("redis://10.0.0.5:6379/2", 0.05)
    assert config.global_policies == GlobalConfig(policies=(
        ("rate_limit", {"rate": 1000.0, "burst": 2000, "key": "route", "scope": "local", "max_keys": 16384}),))
    assert config.routes[0].policies[0][1]["scope"] == "cluster"
    assert parse_config(route(BASE)).cluster is None


def test_rate_limit_errors_all_at_once():
    text = ('[global]\nip = {}\nrate_limit = { rate = "0/s", key = "consumer" }\n[cluster]\nredis = "http://x"\n'
            + route(BASE + 'max_concurrent = -1\n[routes.rate_limit]\nrate = "10/s"\nburst = 0\n'
                    'key = "header:bad name"\nmax_keys = 99999999999\nper = "ip"\n'))
    assert errors_of(text) == [
        'fastgw.toml: cluster.redis: "http://x" is not a Redis URL (use e.g. "redis://127.0.0.1:6379/0")',
        'fastgw.toml: global.rate_limit.rate: a rate must be greater than 0, got "0/s"',
        'fastgw.toml: global.ip: needs "allow" or "deny" (or both)',
        'fastgw.toml: routes[0] "r".rate_limit: unknown key "per"',
        'fastgw.toml: routes[0] "r".rate_limit.burst: must be at least 1, got 0',
        'fastgw.toml: routes[0] "r".rate_limit.key: "bad name" is not a header name',
        'fastgw.toml: routes[0] "r".rate_limit.max_keys: must be at most 16777216, got 99999999999',
        'fastgw.toml: routes[0] "r".max_concurrent: must be at least 0, got -1',
    ]


def test_rates_and_bursts_the_limiter_cannot_hold():
    assert only_error(route(BASE + 'rate_limit = { rate = "2000000000/s" }\n')) == (
        'fastgw.toml: routes[0] "r".rate_limit.rate: at most 1000000000/s (one request a nanosecond), '
        'got 2000000000/s')
    assert only_error(route(BASE + 'rate_limit = { rate = "1/d", burst = 100000 }\n')) == (
        'fastgw.toml: routes[0] "r".rate_limit.burst: takes 8.64e+09 s to fill at this rate; at most 1e9 s')


def test_cluster_scope_needs_a_cluster():
    text = route(BASE + 'rate_limit = { rate = "5/s", scope = "cluster" }\n')
    assert only_error(text) == (
        'fastgw.toml: routes[0] "r".rate_limit.scope: "cluster" needs [cluster] redis = "redis://host:port"')
    assert only_error("[cluster]\n") == 'fastgw.toml: cluster: missing required key "redis"'


def test_aggregate_route_still_names_its_upstream():
    text = route('name = "transfer"\npaths = ["/transfer"]\n[routes.aggregate]\nmode = "sequence"')
    assert errors_of(text) == ['fastgw.toml: routes[0] "transfer": missing required key "upstream"',
                               'fastgw.toml: routes[0] "transfer".aggregate: missing required key "calls"']


# ---------------------------------------------------------------------------
# Warnings: the config runs, but its user must hear about these
# ---------------------------------------------------------------------------


def test_colon_parameters_are_warned_about():
    body = ('name = "users"\npaths = ["/users/:id", "/people/:pid/posts/:post_id", "/a:b/:/{id}"]\n'
            'upstream = "users"\nrewrite = "/v2/users/:id"\n')
    assert parse_config(route(body)).warnings == (
        'fastgw.toml: routes[0] "users".paths[0]: "/users/:id" is matched literally (":id" is not a parameter); '
        'did you mean "/users/{id}"?',
        'fastgw.toml: routes[0] "users".paths[1]: "/people/:pid/posts/:post_id" is matched literally '
        '(":pid", ":post_id" are not parameters); did you mean "/people/{pid}/posts/{post_id}"?',
        'fastgw.toml: routes[0] "users".rewrite: "/v2/users/:id" is sent literally (":id" is not a parameter); '
        'did you mean "/v2/users/{id}"?',
    )


def test_no_routes_is_a_warning():
    warning = "no routes: every request will be answered 404 (add a [[routes]] table)"
    assert parse_config("").warnings == (f"fastgw.toml: {warning}",)
    assert parse_config('routes = []\n[upstreams.a]\ntargets = ["h:1"]\n', source="gw.toml").warnings == (
        f"gw.toml: {warning}",)
    assert parse_config(MINIMAL).warnings == ()


def test_warnings_do_not_stop_a_file_with_errors_from_being_refused():
    text = route(BASE.replace("{id}", ":id") + "priority = 'high'")
    assert errors_of(text) == ['fastgw.toml: routes[0] "r".priority: expected an integer, got string "high"']


# ---------------------------------------------------------------------------
# A section's key written at the top level
# ---------------------------------------------------------------------------

SECTIONS = [("server", config_module._SERVER_KEYS), ("log", config_module._LOG_KEYS),
            ("cluster", config_module._CLUSTER_KEYS), ("global", config_module._GLOBAL_KEYS),
            ("upstreams.NAME", config_module._UPSTREAM_KEYS)]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("workers = 2", "workers: unknown top-level key; did you mean [server].workers? (it goes under [server])"),
        ('listen = ["127.0.0.1:8080"]',
         "listen: unknown top-level key; did you mean [server].listen? (it goes under [server])"),
        ('level = "debug"', "level: unknown top-level key; did you mean [log].level? (it goes under [log])"),
        ('targets = ["h:1"]',
         "targets: unknown top-level key; did you mean [upstreams.NAME].targets? (it goes under [upstreams.NAME])"),
        ('upstream = "users"', "upstream: unknown top-level key; did you mean a key of [[routes]]?"),
        ('paths = ["/users"]', "paths: unknown top-level key; did you mean a key of [[routes]]?"),
        ('timeout = "1s"', "timeout: unknown top-level key; did you mean [cluster].timeout or a key of [[routes]]?"),
        ('rate_limit = { rate = "1/s" }',
         "rate_limit: unknown top-level key; did you mean [global].rate_limit or a key of [[routes]]?"),
    ],
)
def test_a_section_key_at_the_top_level_is_sent_home(line, error):
    assert errors_of(f"{line}\n[server]\nworkers = 1\n") == [f"fastgw.toml: {error}"]


@pytest.mark.parametrize(("section", "key"), [(s, k) for s, keys in SECTIONS for k in keys])
def test_every_section_key_at_the_top_level_is_sent_home(section, key):
    assert only_error(f"{key} = 1\n").startswith(
        f"fastgw.toml: {key}: unknown top-level key; did you mean [{section}].{key}")


@pytest.mark.parametrize("key", config_module._ROUTE_KEYS)
def test_every_route_key_at_the_top_level_is_sent_home(key):
    error = only_error(f"{key} = 1\n")
    assert error.startswith(f"fastgw.toml: {key}: unknown top-level key; did you mean ")
    assert error.endswith("a key of [[routes]]?")


def test_the_new_diagnoses_come_with_every_other_error():
    text = """\
    workers = 2

    [server]
    max_body_bytes = "10MB"

    [log]
    access = "/nonexistent-fastgw/access.log"
    error = "off"
    level = "loud"

    [upstreams.users]
    targets = ["http://127.0.0.1:9000"]

    [[routes]]
    name = "users"
    paths = ["/users/:id"]
    upstream = "users"
    timeout = 5
    rate_limit = { rate = "10/sec" }
    """
    assert errors_of(text) == [
        "fastgw.toml: workers: unknown top-level key; did you mean [server].workers? (it goes under [server])",
        'fastgw.toml: server.max_body_bytes: "10MB" is not a size (did you mean "10MiB"? '
        'use e.g. "512B", "16KiB", "10MiB", "1GiB")',
        "fastgw.toml: log.access: cannot write /nonexistent-fastgw/access.log: "
        "folder /nonexistent-fastgw does not exist",
        'fastgw.toml: log.error: the error log cannot be turned off, use level = "error" to quiet it',
        'fastgw.toml: log.level: expected one of "debug", "info", "warning", "error", got string "loud"',
        'fastgw.toml: upstreams.users.targets[0]: "http://127.0.0.1:9000" is not host:port '
        '(no scheme here: write "127.0.0.1:9000")',
        'fastgw.toml: routes[0] "users".timeout: expected a duration like "5s", got integer 5 (did you mean "5s"?)',
        'fastgw.toml: routes[0] "users".rate_limit.rate: "10/sec" is not a rate (did you mean "10/s"? '
        'use e.g. "100/s", "6000/m", "50000/h")',
    ]


# ---------------------------------------------------------------------------
# Many errors at once
# ---------------------------------------------------------------------------


def test_every_error_is_reported_at_once():
    text = """\
    admin = { listen = "0.0.0.0:9901" }

    [server]
    worker = 2
    listen = ["0.0.0.0:8080", "::1:80"]
    max_connections = "many"
    header_timeout = "10 seconds"

    [log]
    format = "text"

    [upstreams.users]
    targets = ["127.0.0.1:9001", "127.0.0.1:99999"]
    health_check = { path = "healthz" }

    [upstreams.orders]
    targets = ["127.0.0.1:9003"]

    [[routes]]
    name = "users"
    paths = ["/users/{id}"]
    methods = ["GET", "GETT"]
    upstream = "users"
    strip_prefix = "/api"
    rewrite = "/v2/{id}"

    [[routes]]
    name = "users"
    paths = ["/u"]
    upstream = "users"

    [[routes]]
    name = "orders"
    paths = ["/orders"]
    upstream = "order"
    [routes.aggregate]
    mode = "parallel"
    """
    assert errors_of(text) == [
        'fastgw.toml: server: unknown key "worker" (did you mean "workers"?)',
        'fastgw.toml: server.listen[1]: "::1:80" is not host:port (an IPv6 address needs brackets, e.g. "[::1]:8080")',
        'fastgw.toml: server.max_connections: expected an integer, got string "many"',
        'fastgw.toml: server.header_timeout: "10 seconds" is not a duration (did you mean "10s"? '
        'use e.g. "250ms", "5s", "2m", "1h")',
        'fastgw.toml: log.format: expected "json", got string "text"',
        'fastgw.toml: admin.listen: 0.0.0.0:9901 is not a loopback address: set [admin].token '
        '(e.g. token = "env:FASTGW_ADMIN_TOKEN"), or listen on 127.0.0.1',
        'fastgw.toml: upstreams.users.targets[1]: "127.0.0.1:99999" is not host:port (port > 65535)',
        'fastgw.toml: upstreams.users.health_check.path: "healthz" does not start with "/"',
        'fastgw.toml: routes[0] "users": "strip_prefix" and "rewrite" cannot be used together',
        'fastgw.toml: routes[0] "users".methods[1]: "GETT" is not an HTTP method (did you mean "GET"?)',
        'fastgw.toml: routes[1] "users": name "users" is already used by routes[0]',
        'fastgw.toml: routes[2] "orders": upstream "order" is not defined (did you mean "orders"?)',
        'fastgw.toml: routes[2] "orders".aggregate: missing required key "calls"',
    ]


def test_errors_come_section_by_section():
    text = 'upstreams = 5\nbogus = 1\n[[routes]]\nname = 5\npaths = ["/"]\nupstream = "u"\n'
    text += "[log]\nformat = 1\n[server]\nworkers = 0\n"
    assert errors_of(text) == [
        'fastgw.toml: unknown key "bogus"',
        "fastgw.toml: server.workers: must be at least 1, got 0",
        'fastgw.toml: log.format: expected "json", got integer 1',
        "fastgw.toml: upstreams: expected a table, got integer 5",
        "fastgw.toml: routes[0].name: expected a string, got integer 5",
    ]


def test_config_error_message_is_all_lines():
    with pytest.raises(ConfigError) as info:
        parse_config("[server]\nworkers = 0\nmax_connections = 0\n")
    assert str(info.value) == (
        "fastgw.toml: server.workers: must be at least 1, got 0\n"
        "fastgw.toml: server.max_connections: must be at least 1, got 0"
    )


# ---------------------------------------------------------------------------
# TOML syntax errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[server]\nworkers 4\n", "line 2: expected '=' after key"),
        ("[server]\nworkers = auto\n", "line 2: invalid value (strings need quotes)"),
        ("[server\n", "line 1: expected ']' after the table name"),
        ("[[routes]\n", "line 1: expected ']]' after the array name"),
        ('a = "abc\n', "line 1: unterminated string"),
        ("a = [1, 2\n", "line 1: unclosed array (missing ']')"),
        ("a = {b = 1\n", "line 1: unclosed inline table (missing '}'; an inline table must fit on one line)"),
        ("\n\n[server]\n[server]\n", "line 4: table [server] is defined twice"),
        ('[log]\naccess = "off"\naccess = "stdout"\n', "line 3: a key or table is defined twice"),
        ('x = 1 2\n', "line 1: expected the end of the line after the value"),
        ('a = {b = 1, b = 2}\n', "line 1: duplicate inline table key 'b'"),
        ('x = {a = 1}\n[x.b]\n', "line 2: table [x.b] is defined twice"),
        ('a = []\n[[a]]\n', "line 2: cannot add to a: it was already defined inline"),
        ('a = "\\q"\n', "line 1: invalid backslash escape in a string"),
        ("= 1\n", "line 1: invalid statement"),
    ],
)
def test_syntax_error(text, error):
    assert errors_of(text) == [f"fastgw.toml: {error}"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        # tomllib: "Unclosed array" (it read 127.0 as a float, then found no "," or "]")
        ("[server]\nlisten = [127.0.0.1:8080]\n",
         'line 2: invalid value in an array (strings need quotes: "127.0.0.1:8080")'),
        ("a = [1.2.3]\n", 'line 1: invalid value in an array (strings need quotes: "1.2.3")'),
        ('a = ["0.0.0.0:80", 10.0.0.1:81]\n', 'line 1: invalid value in an array (strings need quotes: "10.0.0.1:81")'),
        # tomllib: "Invalid value"
        ("methods = [GET, POST]\n", 'line 1: invalid value in an array (strings need quotes: "GET")'),
        ('methods = ["GET", POST]\n', 'line 1: invalid value in an array (strings need quotes: "POST")'),
        ('paths = [\n  "/a",\n  /b,\n]\n', 'line 3: invalid value in an array (strings need quotes: "/b")'),
        ("paths = [/users/{id}]\n", 'line 1: invalid value in an array (strings need quotes: "/users/{id}")'),
        # not a bare value in an array: as before
        ("a = [1,,2]\n", "line 1: invalid value (strings need quotes)"),
        ("a = [{ b = c }]\n", "line 1: invalid value (strings need quotes)"),
        ("a = [1, 2\nb = 3\n", "line 2: unclosed array (missing ']')"),
        ("a = [1, 2\nb=3\n", "line 2: unclosed array (missing ']')"),
        ("a = [\n  1,\n  2\n", "line 3: unclosed array (missing ']')"),
    ],
)
def test_unquoted_value_in_an_array(text, error):
    assert errors_of(text) == [f"fastgw.toml: {error}"]


# ---------------------------------------------------------------------------
# Robustness: any value in any place gives a Config or a ConfigError, never a crash
# ---------------------------------------------------------------------------

scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["5s", "auto", "16KiB", "h:1", ":80", "/x", "/{id}", "{*}", "GET", "10.0.0.0/8", "json"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["address", "weight", "x"]), scalars, max_size=2),
)
ALL_KEYS = sorted(
    set(config_module._SERVER_KEYS + config_module._LOG_KEYS + config_module._UPSTREAM_KEYS + config_module._ROUTE_KEYS)
)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["server", "log", "upstreams.u", "routes"]),
    st.dictionaries(
        st.sampled_from(ALL_KEYS),
        values,
        max_size=5,
    ),
)
def test_any_values_never_crash(section, table):
    header = "[[routes]]" if section == "routes" else f"[{section}]"
    text = header + "\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
    try:
        parse_config(text)
    except ConfigError as e:
        assert e.errors and all(line.startswith("fastgw.toml: ") for line in e.errors)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_never_crashes(text):
    try:
        parse_config(text)
    except ConfigError as e:
        assert e.errors


def test_route_patterns_are_judged_by_the_router_among_the_other_errors():
    text = """
        [upstreams.a]
        targets = ["127.0.0.1:1"]
        [[routes]]
        name = "r1"
        paths = ["/a//b", "/x/*/y", "/fine/{id}"]
        upstream = "a"
        [[routes]]
        name = "r2"
        paths = ["/ok"]
        hosts = ["a.*.com"]
        upstream = "a"
    """
    assert errors_of(text) == [
        'fastgw.toml: routes[0] "r1".paths[0]: pattern "/a//b": empty segment in the middle ("//"); '
        'only the last segment may be empty, for a trailing slash',
        'fastgw.toml: routes[0] "r1".paths[1]: pattern "/x/*/y": "*" (catch-all) must be the last segment',
        'fastgw.toml: routes[1] "r2".hosts[0]: "a.*.com" is not a host name (use e.g. "api.example.com" '
        'or "*.example.com")',
    ]


TWO_UPSTREAMS = '[upstreams.users]\ntargets = ["h:1"]\n[upstreams.v2]\ntargets = ["h:2"]\n[[routes]]\n' + BASE


def test_split_and_match_split_are_read():
    text = TWO_UPSTREAMS + ('split = [{ upstream = "v2", weight = 10 }]\n'
                            'match_split = [{ header = "X-Canary", value = "1", upstream = "v2" }]\n')
    r = parse_config(text, "fastgw.toml").routes[0]
    assert r.split == (("v2", 10),)
    assert r.match_split == (("x-canary", "1", "v2"),)


def test_bad_splits_are_all_reported():
    text = TWO_UPSTREAMS + (
        'split = [{ upstream = "user", weight = 10 }, { upstream = "v2", weight = 101 }, { upstream = "v2" },'
        ' { upstream = "v2", weight = 0 }]\n'
        'match_split = [{ header = "a b", value = "1", upstream = "v2", extra = 1 }, { header = "x", upstream = "v2" }]\n')
    assert errors_of(text) == [
        'fastgw.toml: routes[0] "r".split[0]: upstream "user" is not defined (did you mean "users"?)',
        'fastgw.toml: routes[0] "r".split[1].weight: is a percent of the traffic, at most 100, got 101',
        'fastgw.toml: routes[0] "r".split[2]: missing required key "weight"',
        'fastgw.toml: routes[0] "r".split[3].weight: must be at least 1, got 0',
        'fastgw.toml: routes[0] "r".match_split[0]: unknown key "extra"',
        'fastgw.toml: routes[0] "r".match_split[0].header: "a b" is not a valid header name',
        'fastgw.toml: routes[0] "r".match_split[1]: missing required key "value"',
    ]


def test_split_weights_add_up_to_100_at_most():
    text = TWO_UPSTREAMS + 'split = [{ upstream = "v2", weight = 60 }, { upstream = "users", weight = 50 }]\n'
    assert only_error(text) == 'fastgw.toml: routes[0] "r".split: weights add up to 110%, more than 100%'


def test_circuit_breaker_is_read_with_defaults():
    text = '[upstreams.users]\ntargets = ["h:1"]\n[upstreams.users.circuit_breaker]\nfailures = 3\n'
    assert parse_config(text, "fastgw.toml").upstreams[0].circuit_breaker == (3, 30.0)
    plain = '[upstreams.users]\ntargets = ["h:1"]\n'
    assert parse_config(plain, "fastgw.toml").upstreams[0].circuit_breaker is None


def test_bad_circuit_breaker_is_reported():
    text = ('[upstreams.users]\ntargets = ["h:1"]\n[upstreams.users.circuit_breaker]\n'
            'failures = 0\ncooldown = "0s"\nfailure = 3\n')
    assert errors_of(text) == [
        'fastgw.toml: upstreams.users.circuit_breaker: unknown key "failure" (did you mean "failures"?)',
        "fastgw.toml: upstreams.users.circuit_breaker.failures: must be at least 1, got 0",
        'fastgw.toml: upstreams.users.circuit_breaker.cooldown: a duration must be greater than 0, got "0s"',
    ]
