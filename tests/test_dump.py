"""``fastgw check --dump``: the effective config as TOML, every default filled in,
secrets masked.

Run as a user runs it (``python -m fastgw check -c FILE --dump``, a process), on the demo
config and on a config with every section. The dump of a config without secrets loads
back (from the same folder, so relative paths resolve alike) to a config equal to the
original; with secrets, to the original with ``"***"`` in their places, and no secret is
anywhere in the output. The TOML writer and the value formats are checked with
hypothesis, as is the load-back of generated configs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.config import Config, load_config, parse_config, parse_duration, parse_rate, parse_size
from fastgw.demo import demo_config, make_certificate
from fastgw.dump import (MASK, Table, Tables, dump_config, format_duration, format_rate, format_size, mask_url,
                         write_toml)
from tests.conftest import ROOT


def dump(path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m fastgw check -c PATH --dump``, run to its end in the file's folder."""
    return subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", path.name, "--dump", *extra],
                          cwd=path.parent, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


def comparable(config: Config) -> Config:
    """``config`` without what differs between two files of equal meaning: the name,
    digest and warnings, and the plugins' spec objects (loaded afresh: by name)."""
    return dataclasses.replace(config, source="", digest="", warnings=(),
                               plugins=tuple(spec.name for spec in config.plugins))


def load_back(path: Path, text: str) -> Config:
    """``text`` loaded as a file beside ``path`` (relative paths resolve alike)."""
    copy = path.with_name("dumped.toml")
    copy.write_text(text)
    return load_config(copy)


def body(text: str) -> str:
    """A dump without its header comment (which names the file and its digest)."""
    first, _, rest = text.partition("\n")
    assert first.startswith("# fastgw check --dump of "), first
    return rest


# ---------------------------------------------------------------------------
# The demo config, and one with every section
# ---------------------------------------------------------------------------


def test_the_demo_config_dumps_every_default_and_loads_back_equal(tmp_path):
    path = tmp_path / "demo.toml"
    path.write_text(demo_config(8080, {"users_a": 9001, "users_b": 9002, "echo": 9003, "bank_a": 9004, "bank_b": 9005,
                                       "dead": 9006}))
    original = load_config(path)
    result = dump(path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (f"# fastgw check --dump of demo.toml (sha256 {original.digest}): every default filled in, "
                        'secrets masked as "***"')
    doc = tomllib.loads(result.stdout)
    # every key of [server] and [server.http2], [log]; written values exactly as written
    assert set(doc["server"]) == {"listen", "workers", "max_connections", "header_timeout", "idle_timeout",
                                  "drain_timeout", "max_header_bytes", "max_body_bytes", "trusted_proxies",
                                  "pid_file", "http2"}
    assert doc["server"]["max_body_bytes"] == "1MiB" and doc["server"]["idle_timeout"] == "60s"
    assert doc["server"]["max_header_bytes"] == "16KiB"
    assert doc["server"]["http2"]["stream_window_bytes"] == 65535  # not a whole KiB: an integer
    assert doc["server"]["http2"]["connection_window_bytes"] == "1MiB"
    assert doc["log"] == {"access": "stdout", "format": "json", "error": "stderr", "level": "info"}
    users = doc["upstreams"]["users"]
    assert users["circuit_breaker"] == {"failures": 5, "cooldown": "10s"}
    assert users["health_check"] == {"path": "/healthz", "interval": "5s", "timeout": "1s",
                                     "healthy_threshold": 2, "unhealthy_threshold": 3}
    assert users["balance"] == "round_robin" and "hash_on" not in users
    assert doc["upstreams"]["dead"]["connect_timeout"] == "1s" and doc["upstreams"]["echo"]["connect_timeout"] == "2s"
    routes = {route["name"]: route for route in doc["routes"]}
    assert routes["users"]["rate_limit"] == {"rate": "10/s", "burst": 20, "key": "ip", "scope": "local",
                                             "max_keys": 16384}
    assert routes["slow"]["priority"] == 0 and routes["slow"]["timeout"] == "1s"
    assert "websocket" not in routes["slow"] and "timeout" not in routes["users"]
    assert routes["api"]["cors"]["methods"] == ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"]
    assert routes["tenants"]["tenant_header"]["header"] == "x-tenant"  # a plugin's schema default
    assert comparable(load_back(path, result.stdout)) == comparable(original)


def write_every_section(folder: Path) -> Path:
    """A config with every section and most keys, some left to their defaults, no secret."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    (folder / "logs").mkdir()
    make_certificate(str(folder))
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    (folder / "jwt.pem").write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    path = folder / "fastgw.toml"
    path.write_text(f"""\
[server]
listen = ["127.0.0.1:18080", ":18081"]
workers = "auto"
idle_timeout = "1.5m"
max_body_bytes = 0
trusted_proxies = ["10.0.0.0/8", "::1"]
pid_file = "logs/fastgw.pid"

[server.http2]
max_concurrent_streams = 50
stream_idle_timeout = "250ms"

[server.tls]
listen = "127.0.0.1:18443"

[[server.tls.certificates]]
cert = "demo-cert.pem"
key = "demo-key.pem"

[log]
access = "logs/access.log"
level = "WARNING"

[admin]
listen = "127.0.0.1:19901"

[cluster]
redis = "redis://127.0.0.1:6379/2"

[plugins]
paths = ["{ROOT / 'fastgw' / 'examples'}"]

[global]
ip = {{ deny = ["192.0.2.0/24"] }}
rate_limit = {{ rate = "6000/m", key = "header:X-Client" }}

[consumers.alice]
groups = ["staff"]
jwt_subject = "alice"

[consumers."bob@example.com"]

[auth.jwt]
algorithms = ["ES256"]
public_keys = ["jwt.pem"]
issuer = "https://issuer.example.com"
leeway = "30s"

[upstreams.users]
targets = ["127.0.0.1:9001", {{ address = "[::1]:9002", weight = 2 }}]
balance = "consistent_hash"
hash_on = "header:X-User"
circuit_breaker = {{ failures = 3 }}

[upstreams.users.health_check]
interval = "400ms"

[upstreams."v2 canary"]
targets = ["backend.internal:80"]
balance = "least_conn"
retries = 0
keepalive = 0
read_timeout = "2m"

[[routes]]
name = "users"
hosts = ["API.example.com", "*.example.org"]
paths = ["/users/{{id}}"]
methods = ["get", "POST"]
headers = {{ "X-Version" = "2" }}
priority = 7
upstream = "users"
rewrite = "/v2/users/{{id}}"
timeout = "5s"
split = [{{ upstream = "v2 canary", weight = 10 }}]
match_split = [{{ header = "X-Canary", value = "1", upstream = "v2 canary" }}]
max_concurrent = 100

[routes.auth]
methods = ["jwt"]

[routes.acl]
allow_groups = ["staff"]

[routes.rate_limit]
rate = "7/s"
key = "consumer"
scope = "cluster"

[routes.cors]
origins = ["https://app.example.com"]
max_age = "10m"
credentials = true

[routes.response_headers]
remove = ["server"]

[routes.tenant_header]
tenants = {{ "k-1" = "acme" }}

[[routes]]
name = "chat"
paths = ["/chat"]
upstream = "users"
websocket = "http"
websocket_ping_interval = "5s"

[[routes]]
name = "tunnel"
paths = ["/ws/*"]
upstream = "v2 canary"
strip_prefix = "/ws"
websocket = "proxy"

[routes.ip]
allow = ["127.0.0.1"]

[routes.request_headers]
add = {{ "x-from" = "{{client_ip}}" }}
""")
    return path


def test_every_section_dumps_its_defaults_and_loads_back_equal(tmp_path):
    path = write_every_section(tmp_path)
    original = load_config(path)
    result = dump(path)
    assert result.returncode == 0, result.stderr
    doc = tomllib.loads(result.stdout)
    server = doc["server"]
    assert server["workers"] == "auto" and server["idle_timeout"] == "1.5m" and server["max_body_bytes"] == 0
    assert server["pid_file"] == "logs/fastgw.pid"  # relative, as written
    assert server["header_timeout"] == "10s" and server["max_connections"] == 10000
    assert server["http2"]["max_concurrent_streams"] == 50 and server["http2"]["max_header_table_bytes"] == "4KiB"
    assert server["tls"]["min_version"] == "1.2"
    assert server["tls"]["certificates"] == [{"cert": "demo-cert.pem", "key": "demo-key.pem",
                                              "hosts": ["localhost"]}]  # the certificate's DNS names
    assert doc["log"] == {"access": "logs/access.log", "format": "json", "error": "stderr", "level": "WARNING"}
    assert doc["admin"] == {"listen": "127.0.0.1:19901"}  # no token: none is written
    assert doc["cluster"] == {"redis": "redis://127.0.0.1:6379/2", "timeout": "50ms"}
    assert doc["global"]["rate_limit"] == {"rate": "6000/m", "key": "header:X-Client", "burst": 100,
                                           "scope": "local", "max_keys": 16384}
    assert doc["global"]["ip"] == {"allow": [], "deny": ["192.0.2.0/24"]}
    assert doc["consumers"]["alice"] == {"groups": ["staff"], "api_keys": [], "jwt_subject": "alice"}
    assert doc["consumers"]["bob@example.com"] == {"groups": [], "api_keys": []}
    assert doc["auth"]["jwt"] == {"algorithms": ["ES256"], "public_keys": ["jwt.pem"],
                                  "issuer": "https://issuer.example.com", "leeway": "30s", "require_exp": True}
    users, canary = doc["upstreams"]["users"], doc["upstreams"]["v2 canary"]
    assert users["hash_on"] == "header:X-User" and "hash_on" not in canary
    assert users["circuit_breaker"] == {"failures": 3, "cooldown": "30s"}
    # the health check's timeout defaults to its interval when that is under a second
    assert users["health_check"] == {"path": "/", "interval": "400ms", "timeout": "400ms",
                                     "healthy_threshold": 2, "unhealthy_threshold": 3}
    assert canary["retries"] == 0 and canary["keepalive"] == 0 and canary["connect_timeout"] == "2s"
    route, chat, tunnel = doc["routes"]
    assert route["methods"] == ["get", "POST"] and route["hosts"] == ["API.example.com", "*.example.org"]
    assert route["rate_limit"]["burst"] == 7  # one second of the rate
    assert route["auth"] == {"methods": ["jwt"], "key_header": "apikey", "key_query": False,
                             "hide_credentials": True}
    assert route["acl"] == {"allow_groups": ["staff"], "deny_groups": []}
    assert route["cors"]["max_age"] == "10m" and route["cors"]["headers"] == []
    assert route["response_headers"] == {"set": {}, "add": {}, "remove": ["server"]}
    assert route["tenant_header"] == {"tenants": {"k-1": "acme"}, "header": "x-tenant", "key_header": "x-api-key"}
    assert "websocket" not in route and "websocket_max_message" not in route
    assert chat["websocket"] == "http" and chat["websocket_max_message"] == "1MiB"
    assert chat["websocket_message_rate"] == "100/s" and chat["websocket_ping_interval"] == "5s"
    assert tunnel["websocket"] == "proxy" and "websocket_ping_interval" not in tunnel
    assert comparable(load_back(path, result.stdout)) == comparable(original)


def test_a_dump_dumps_to_itself(tmp_path):
    """Every key is in a dump already, as it is written: dumping it again changes nothing
    but the header's file name and digest."""
    path = write_every_section(tmp_path)
    first = dump(path)
    assert first.returncode == 0, first.stderr
    again = tmp_path / "again.toml"
    again.write_text(first.stdout)
    second = dump(again)
    assert second.returncode == 0, second.stderr
    assert body(second.stdout) == body(first.stdout)


# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------

SECRETS = {
    "token": "admin-token-4f1c9e",
    "key": "api-key-7d2b0a",
    "jwt": "jwt-hmac-secret-93ac51",
    "redis": "redis-password-1b8e",
}


def test_secrets_are_masked_and_the_dump_loads_with_the_mask_in_their_place(tmp_path):
    path = tmp_path / "fastgw.toml"
    path.write_text(f"""\
[admin]
listen = "127.0.0.1:19901"
token = "env:DUMP_ADMIN_TOKEN"

[cluster]
redis = "redis://gateway:{SECRETS['redis']}@127.0.0.1:6379/0"

[consumers.alice]
api_keys = ["{SECRETS['key']}"]

[auth.jwt]
algorithms = ["HS256"]
secret = "env:DUMP_JWT_SECRET"

[upstreams.a]
targets = ["127.0.0.1:9001"]

[[routes]]
name = "a"
paths = ["/*"]
upstream = "a"
auth = {{ methods = ["key", "jwt"] }}
""")
    env = {"DUMP_ADMIN_TOKEN": SECRETS["token"], "DUMP_JWT_SECRET": SECRETS["jwt"]}
    result = dump(path, env=env)
    assert result.returncode == 0, result.stderr
    for secret in SECRETS.values():
        assert secret not in result.stdout and secret not in result.stderr
    assert "env:" not in result.stdout  # not even where a secret comes from
    doc = tomllib.loads(result.stdout)
    assert doc["admin"]["token"] == MASK
    assert doc["cluster"]["redis"] == f"redis://gateway:{MASK}@127.0.0.1:6379/0"
    assert doc["consumers"]["alice"]["api_keys"] == [MASK]
    assert doc["auth"]["jwt"]["secret"] == MASK
    os.environ.update(env)
    try:
        original = load_config(path)
    finally:
        for name in env:
            del os.environ[name]
    masked = dataclasses.replace(
        original,
        admin=dataclasses.replace(original.admin, token=MASK),
        cluster=dataclasses.replace(original.cluster, redis=f"redis://gateway:{MASK}@127.0.0.1:6379/0"),
        consumers=tuple(dataclasses.replace(c, api_keys=(MASK,)) for c in original.consumers),
        jwt={**original.jwt, "secret": MASK})
    assert original != masked
    assert comparable(load_back(path, result.stdout)) == comparable(masked)


def test_every_kind_of_secret_is_masked(tmp_path):
    """Password hashes, several keys, a Redis password in the query: none is printed
    (such a dump does not load as it is: "***" is no scrypt hash, and a key names one
    consumer; it is for reading)."""
    from fastgw.policies.auth import hash_password

    password_hash = hash_password("correct horse")
    path = tmp_path / "fastgw.toml"
    path.write_text(f"""\
[cluster]
redis = "rediss://:{SECRETS['redis']}@redis.internal:6380/0?password={SECRETS['redis']}x&db=1"

[consumers.alice]
api_keys = ["{SECRETS['key']}", "{SECRETS['key']}-2"]
basic_password = "{password_hash}"

[consumers.bob]
api_keys = ["{SECRETS['key']}-3"]
basic_password = "env:DUMP_BOB_PASSWORD"
""")
    result = dump(path, env={"DUMP_BOB_PASSWORD": password_hash})
    assert result.returncode == 0, result.stderr
    assert SECRETS["key"] not in result.stdout and SECRETS["redis"] not in result.stdout
    assert password_hash not in result.stdout and "scrypt" not in result.stdout
    doc = tomllib.loads(result.stdout)
    assert doc["consumers"]["alice"] == {"groups": [], "api_keys": [MASK, MASK], "basic_password": MASK}
    assert doc["consumers"]["bob"] == {"groups": [], "api_keys": [MASK], "basic_password": MASK}
    assert doc["cluster"]["redis"] == f"rediss://:{MASK}@redis.internal:6380/0?password={MASK}&db=1"


def test_mask_url_leaves_urls_without_a_password_as_written():
    assert mask_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert mask_url("redis://user@h:1/0") == "redis://user@h:1/0"
    assert mask_url("redis://u:p@h:1") == f"redis://u:{MASK}@h:1"
    assert mask_url("redis://h:1?db=2&password=x#f") == f"redis://h:1?db=2&password={MASK}#f"


# ---------------------------------------------------------------------------
# Exit codes
# ---------------------------------------------------------------------------


def test_an_invalid_file_prints_every_error_and_nothing_else(tmp_path):
    path = tmp_path / "fastgw.toml"
    path.write_text('[server]\nworkers = 0\nheader_timeout = 5\n\n[upstreams.a]\ntargets = ["x"]\n')
    result = dump(path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "fastgw.toml: server.workers: must be at least 1, got 0",
        'fastgw.toml: server.header_timeout: expected a duration like "5s", got integer 5 (did you mean "5s"?)',
        'fastgw.toml: upstreams.a.targets[0]: "x" is not host:port (no port)',
    ]
    missing = dump(tmp_path / "nothing.toml")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "nothing.toml: cannot read the file" in missing.stderr


def test_an_empty_file_dumps_the_defaults_and_its_warning_goes_to_stderr(tmp_path):
    path = tmp_path / "fastgw.toml"
    path.write_text("")
    result = dump(path)
    assert result.returncode == 0
    assert result.stderr == ("warning: fastgw.toml: no routes: every request will be answered 404 "
                             "(add a [[routes]] table)\n")
    doc = tomllib.loads(result.stdout)
    assert sorted(doc) == ["log", "server"]
    assert doc["server"]["listen"] == ["0.0.0.0:8080"]
    assert comparable(load_back(path, result.stdout)) == comparable(load_config(path))


# ---------------------------------------------------------------------------
# Value formats and the writer
# ---------------------------------------------------------------------------


def test_values_are_written_in_the_files_syntax():
    assert [format_duration(s) for s in (0.05, 0.25, 1.0, 2.0, 60.0, 1.5, 3600.0, 0.0015)] == [
        "50ms", "250ms", "1s", "2s", "60s", "1.5s", "3600s", "0.0015s"]
    assert [format_size(n) for n in (0, 1, 1000, 1024, 65535, 16384, 10 << 20, 1 << 30, 3 << 29)] == [
        0, 1, 1000, "1KiB", 65535, "16KiB", "10MiB", "1GiB", "1536MiB"]
    assert [format_rate(r) for r in (100.0, 0.5, 1 / 60, 1 / 3600, 2.5, 1e-6)] == [
        "100/s", "30/m", "1/m", "1/h", "150/m", "0.000001/s"]


@given(st.floats(min_value=1e-6, max_value=1e7, allow_nan=False))
def test_a_duration_reads_back_as_the_same_seconds(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.floats(min_value=1e-6, max_value=1e9, allow_nan=False))
def test_a_rate_reads_back_as_the_same_rate(rate):
    assert parse_rate(format_rate(rate)) == rate


@given(st.integers(min_value=0, max_value=1 << 40))
def test_a_size_reads_back_as_the_same_bytes(size):
    assert parse_size(format_size(size)) == size


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_SCALARS = (_TEXT | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.booleans()
            | st.floats(allow_nan=False) | st.dates() | st.times() | st.datetimes())
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=10)


@given(st.dictionaries(_TEXT, st.dictionaries(_TEXT, _VALUES, max_size=4), max_size=3),
       st.lists(st.dictionaries(_TEXT, _VALUES, max_size=3), max_size=3))
def test_the_writer_writes_toml_that_reads_back_the_same(tables, array):
    tables.pop("an array", None)
    root = Table({name: Table(table) for name, table in tables.items()})
    root["an array"] = Tables(array)
    expected = {**tables, **({"an array": array} if array else {})}
    assert tomllib.loads(write_toml(root)) == expected


# A generated config: some keys of [server], [server.http2], an upstream, a route and
# its rate limit and health check, each written or left to its default.
_DURATIONS = st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 5000), st.sampled_from(["ms", "s", "m"]))
_SIZES = st.integers(65535, 1 << 24) | st.builds(lambda n, unit: f"{n}{unit}", st.integers(64, 1024),
                                                   st.sampled_from(["KiB", "MiB"]))


def _section(keys: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional=keys)


_GENERATED = st.fixed_dictionaries({
    "server": _section({"workers": st.integers(1, 64), "max_connections": st.integers(1, 10**6),
                        "header_timeout": _DURATIONS, "drain_timeout": _DURATIONS,
                        "max_header_bytes": _SIZES, "max_body_bytes": _SIZES}),
    "http2": _section({"max_concurrent_streams": st.integers(1, 1000), "stream_window_bytes": _SIZES,
                       "connection_window_bytes": _SIZES, "stream_idle_timeout": _DURATIONS,
                       "max_header_table_bytes": st.integers(0, 65536)}),
    "upstream": _section({"balance": st.sampled_from(["round_robin", "least_conn", "random", "consistent_hash"]),
                          "retries": st.integers(0, 5), "keepalive": st.integers(0, 500),
                          "connect_timeout": _DURATIONS, "read_timeout": _DURATIONS}),
    "health_check": st.none() | _section({"interval": _DURATIONS, "healthy_threshold": st.integers(1, 10),
                                          "path": st.sampled_from(["/", "/healthz?full=1"])}),
    "route": _section({"priority": st.integers(-5, 5), "max_concurrent": st.integers(0, 100),
                       "methods": st.lists(st.sampled_from(["GET", "post", "PUT"]), max_size=3),
                       "websocket": st.sampled_from(["proxy", "http"])}),
    "rate_limit": st.none() | st.fixed_dictionaries(
        {"rate": st.builds(lambda n, unit: f"{n}/{unit}", st.integers(1, 10**5), st.sampled_from("smhd"))},
        optional={"burst": st.integers(1, 1000), "key": st.sampled_from(["ip", "route", "header:X-Id"]),
                  "max_keys": st.integers(1, 10**5)}),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_GENERATED)
def test_generated_configs_load_back_equal(parts):
    route = dict(parts["route"])
    if "GET" not in [m.upper() for m in route.get("methods", ["GET"])] and "websocket" in route:
        route["methods"] = [*route["methods"], "GET"]
    upstream = {"targets": ["127.0.0.1:9001"], **parts["upstream"]}
    if parts["health_check"] is not None:
        upstream["health_check"] = parts["health_check"]
    if parts["rate_limit"] is not None:
        route["rate_limit"] = parts["rate_limit"]
    root = Table(server=Table({**parts["server"], "http2": Table(parts["http2"])}),
                  upstreams=Table(u=Table(upstream)),
                  routes=Tables([Table(name="r", paths=["/r/*"], upstream="u", **route)]))
    original = parse_config(write_toml(root), "gen.toml")
    text = dump_config(original, write_toml(root))
    assert comparable(parse_config(text, "gen.toml")) == comparable(original)
    assert re.search(r'^idle_timeout = "60s"$', text, re.MULTILINE)  # never generated: a default
