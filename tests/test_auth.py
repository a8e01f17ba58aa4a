"""Who may call what, end to end: consumers, API keys (header and query, ``env:`` secrets),
Basic passwords (scrypt, ``fastgw hash-password``), ACL groups, the consumer forwarded
upstream and keyed in rate limits and templates; the config errors; and a catalogue of
spellings of a protected path that must all be refused or reach the same policies.

Real gateway processes, a real h11 backend, real clients (httpx, raw sockets).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import httpx
import pytest

from fastgw.policies.auth import hash_password, parse_password_hash, verify_password
from tests.conftest import ROOT, config_for, raw_request
from tests.test_server import fresh_get, run_fastgw, wait_for

PASSWORD_HASH = hash_password("open sesame")

ROUTES = f"""
    [consumers.alice]
    groups = ["admin", "staff"]
    api_keys = ["alice-key-1", "env:ALICE_KEY"]
    basic_password = "{PASSWORD_HASH}"
    [consumers.bob]
    groups = ["staff"]
    api_keys = ["bob-key"]

    [[routes]]
    name = "admin"
    paths = ["/admin/*"]
    upstream = "app"
    strip_prefix = "/admin"
    auth = {{ methods = ["key", "basic"] }}
    acl = {{ allow_groups = ["admin"] }}
    [routes.request_headers]
    set = {{ "x-who" = "{{consumer}}" }}

    [[routes]]
    name = "staff"
    paths = ["/staff/*"]
    upstream = "app"
    strip_prefix = "/staff"
    auth = {{ methods = ["key"], key_header = "x-api-key", key_query = true }}
    acl = {{ deny_groups = ["admin"] }}
    rate_limit = {{ rate = "1/m", burst = 2, key = "consumer" }}

    [[routes]]
    name = "open"
    paths = ["/open/*"]
    upstream = "app"
    strip_prefix = "/open"
    auth = {{ methods = ["key"], hide_credentials = false }}

    [[routes]]
    name = "public"
    paths = ["/public/*"]
    upstream = "app"
    strip_prefix = "/public"
    """


@pytest.fixture
def guarded(backend, gateway, monkeypatch):
    monkeypatch.setenv("ALICE_KEY", "alice-key-from-env")
    toml, port = config_for(backend, routes=ROUTES)
    return gateway(toml, port)


def basic(name: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert body["status"] == r.status_code and body["request_id"] == r.headers["x-request-id"]
    return body["error"]


def sent_headers(r: httpx.Response) -> dict[str, str]:
    return dict(r.json()["headers"])


def test_missing_and_invalid_credentials_are_401_with_the_challenges(guarded, backend):
    r = fresh_get(guarded.url + "/admin/echo")
    assert (r.status_code, error_of(r)) == (401, "missing credentials")
    assert r.headers.get_list("www-authenticate") == ['Key realm="fastgw"', 'Basic realm="fastgw"']
    for headers in ({"apikey": "wrong"}, {"apikey": ""}, basic("alice", "wrong"), basic("nobody", "open sesame"),
                    {"authorization": "Basic !!!notbase64"}, {"authorization": "Basic " + base64.b64encode(b"x").decode()}):
        r = fresh_get(guarded.url + "/admin/echo", headers=headers)
        assert (r.status_code, error_of(r)) == (401, "invalid credentials"), headers
    assert backend.count("/echo") == 0


def test_a_key_names_the_consumer_and_stays_at_the_gateway(guarded):
    for key in ("alice-key-1", "alice-key-from-env"):  # the second from the environment
        r = fresh_get(guarded.url + "/admin/echo", headers={"apikey": key, "x-consumer-id": "mallory",
                                                            "X-Consumer-Groups": "admin"})
        assert r.status_code == 200, r.text
        sent = r.json()["headers"]
        assert [v for k, v in sent if k == "x-consumer-id"] == ["alice"]  # the client's copy is gone
        assert [v for k, v in sent if k == "x-consumer-groups"] == ["admin,staff"]
        assert "apikey" not in dict(sent)  # hide_credentials (the default)
        assert dict(sent)["x-who"] == "alice"  # {consumer} in a template
    r = fresh_get(guarded.url + "/open/echo", headers={"apikey": "bob-key"})
    assert dict(r.json()["headers"])["apikey"] == "bob-key"  # hide_credentials = false
    # A route without auth never forwards a client's X-Consumer-* either.
    r = fresh_get(guarded.url + "/public/echo", headers={"x-consumer-id": "alice", "x-consumer-groups": "admin"})
    assert "x-consumer-id" not in sent_headers(r) and "x-consumer-groups" not in sent_headers(r)


def test_a_key_proven_once_is_still_the_only_one_let_in(guarded):
    """A worker remembers the keys it proved (no digest per request): the same key keeps
    passing, its near misses keep failing, and the credential field is dropped whatever
    its case and place among the others."""
    for _ in range(3):
        r = fresh_get(guarded.url + "/admin/echo", headers=[("x-before", "1"), ("ApiKey", "alice-key-1"),
                                                             ("x-after", "2")])
        assert r.status_code == 200, r.text
        sent = dict(r.json()["headers"])
        assert "apikey" not in {k.lower() for k in sent} and (sent["x-before"], sent["x-after"]) == ("1", "2")
    for near in ("alice-key-1x", "alice-key-", "ALICE-KEY-1", "alice-key-1 x"):
        r = fresh_get(guarded.url + "/admin/echo", headers={"apikey": near})
        assert (r.status_code, error_of(r)) == (401, "invalid credentials"), near
    with httpx.Client(http1=False, http2=True) as client:  # HTTP/2's fields come as a list
        r = client.get(guarded.url + "/admin/echo", headers=[("x-before", "1"), ("apikey", "alice-key-1"),
                                                             ("x-after", "2")])
        assert (r.http_version, r.status_code) == ("HTTP/2", 200), r.text
        sent = dict(r.json()["headers"])
        assert "apikey" not in sent and (sent["x-before"], sent["x-after"]) == ("1", "2")


def test_a_key_in_the_query_when_allowed_and_stripped(guarded):
    r = fresh_get(guarded.url + "/staff/echo?a=1&apikey=bob-key&b=2")
    assert r.status_code == 200, r.text
    assert r.json()["query"] == "a=1&b=2"
    assert dict(r.json()["headers"])["x-consumer-id"] == "bob"
    r = fresh_get(guarded.url + "/admin/echo?apikey=alice-key-1")  # key_query is off there
    assert r.status_code == 401


def test_basic_password_then_cached(guarded):
    for _ in range(3):
        r = fresh_get(guarded.url + "/admin/echo", headers=basic("alice", "open sesame"))
        assert r.status_code == 200, r.text
        sent = sent_headers(r)
        assert sent["x-consumer-id"] == "alice" and "authorization" not in sent
    r = fresh_get(guarded.url + "/admin/echo", headers=basic("bob", "open sesame"))  # bob has no password
    assert r.status_code == 401


def test_acl_allow_and_deny_groups(guarded):
    r = fresh_get(guarded.url + "/admin/echo", headers={"apikey": "bob-key"})  # staff, not admin
    assert (r.status_code, error_of(r)) == (403, "consumer not allowed")
    r = fresh_get(guarded.url + "/staff/echo", headers={"x-api-key": "alice-key-1"})  # admin is denied there
    assert (r.status_code, error_of(r)) == (403, "consumer not allowed")


def test_rate_limit_keyed_by_consumer(guarded):
    bob = [fresh_get(guarded.url + "/staff/echo", headers={"x-api-key": "bob-key"}).status_code for _ in range(3)]
    assert bob == [200, 200, 429]  # burst 2, per consumer


def test_the_access_log_names_the_consumer(guarded):
    r = fresh_get(guarded.url + "/admin/echo", headers={"apikey": "alice-key-1"})
    rid = r.headers["x-request-id"]
    line = wait_for(lambda: [json.loads(x) for x in guarded.access_lines if rid in x], what="the line")
    assert line[0]["consumer"] == "alice"
    r = fresh_get(guarded.url + "/admin/echo")
    rid = r.headers["x-request-id"]
    line = wait_for(lambda: [json.loads(x) for x in guarded.access_lines if rid in x], what="the line")
    assert line[0]["consumer"] is None and line[0]["status"] == 401


def test_hash_password_reads_stdin_and_its_hash_verifies(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastgw", "hash-password"], input="correct horse\n",
                            capture_output=True, text=True, timeout=20, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    hashed = parse_password_hash(result.stdout.strip())
    assert verify_password(b"correct horse", hashed) and not verify_password(b"correct horsE", hashed)
    result = subprocess.run([sys.executable, "-m", "fastgw", "hash-password"], input="\n", capture_output=True,
                            text=True, timeout=20, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert (result.returncode, result.stderr) == (1, "fastgw: an empty password\n")


def test_auth_config_errors_never_show_a_secret(backend, tmp_path):
    toml, _ = config_for(backend, routes="""
        [consumers.alice]
        api_keys = ["shared-key", "env:NO_SUCH_VARIABLE_HERE"]
        basic_password = "plaintext-password"
        [consumers.bob]
        api_keys = ["shared-key"]
        groups = ["a,b"]
        [consumers."bad name"]
        [[routes]]
        name = "a"
        paths = ["/a"]
        upstream = "app"
        acl = { allow_groups = ["x"] }
        rate_limit = { rate = "1/s", key = "consumer" }
        [[routes]]
        name = "b"
        paths = ["/b"]
        upstream = "app"
        auth = { methods = ["jwt", "pin"] }
        [[routes]]
        name = "c"
        paths = ["/c"]
        upstream = "app"
        auth = { methods = ["jwt"] }
        acl = { allow_groups = ["x"], deny_groups = ["y"] }
        """)
    (tmp_path / "fastgw.toml").write_text(toml)
    result = run_fastgw(["check"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "fastgw.toml: consumers.alice.api_keys[1]: environment variable NO_SUCH_VARIABLE_HERE is not set",
        "fastgw.toml: consumers.alice.basic_password: is not a password hash (make one with `fastgw hash-password`)",
        'fastgw.toml: consumers.bob.api_keys[0]: this key is consumer "alice"\'s too: a key names one consumer',
        'fastgw.toml: consumers.bob.groups[0]: "a,b" is not a group name (letters, digits, and . _ - @)',
        'fastgw.toml: consumers."bad name": a consumer\'s name is letters, digits, and . _ - @ (it is sent as '
        'X-Consumer-Id)',
        'fastgw.toml: routes[0] "a".acl: needs [routes.auth] on the route: groups belong to a proven consumer',
        'fastgw.toml: routes[0] "a".rate_limit.key: "consumer" needs [routes.auth] on the route',
        'fastgw.toml: routes[1] "b".auth.methods: expected one of "key", "jwt", "basic", got string "pin"',
        'fastgw.toml: routes[2] "c".acl: needs "allow_groups" or "deny_groups" (one of them)',
        'fastgw.toml: routes[2] "c".auth.methods: "jwt" needs [auth.jwt] (how tokens are verified)',
    ]
    assert "shared-key" not in result.stderr and "plaintext-password" not in result.stderr


# -- no bypass --------------------------------------------------------------------------------

# Spellings of /admin/secret (and of a Host): each must be refused (400, 404) or reach the
# admin route and its policies (401 without credentials), never the backend.
SPELLINGS = [
    "/admin/secret", "/admin//secret", "//admin/secret", "/./admin/secret", "/admin/./secret",
    "/public/../admin/secret", "/public/%2e%2e/admin/secret", "/public/%2E%2E/admin/secret",
    "/public/.%2e/admin/secret", "/%61dmin/secret", "/%61%64%6d%69%6e/secret", "/admin/%73ecret",
    "/admin/%2e/secret", "/admin/./././secret", "/admin/secret/", "/admin/secret.", "/admin/secret?x=/../public",
    "/admin%2Fsecret", "/admin%2fsecret", "/%2Fadmin/secret", "/public/..%2fadmin/secret",
    "/public%2f..%2fadmin/secret", "/admin/secret%00", "/admin/secret;jsessionid=1", "/admin;x/secret",
    "/admin\\secret", "/public\\..\\admin/secret", "/admin/secret#frag", "/ADMIN/secret", "/Admin/secret",
    "http://gw.test/admin/secret", "http://gw.test:80/admin/secret", "/admin/secret%2F", "/admin/..%2F/secret",
    "/public/../../admin/secret", "/admin/secret%23", "/admin/%2e%2e/admin/secret",
]


def test_no_spelling_of_a_protected_path_reaches_the_backend(guarded, backend):
    assert len(SPELLINGS) >= 25
    wrong = []
    for host in ("gw.test", "gw.test:80", "GW.TEST", "gw.test."):
        for target in SPELLINGS:
            answer = raw_request(guarded.port, f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                                 .encode())
            status = int(answer.split(b" ", 2)[1])
            if status not in (400, 401, 404) or backend.requests:
                wrong.append((target, host, status, backend.requests))
    assert wrong == []
    # The same spellings with alice's key: those that reach the admin route send the
    # backend the one normalised path, never a spelling of it.
    for target in SPELLINGS:
        answer = raw_request(guarded.port, f"GET {target} HTTP/1.1\r\nHost: gw.test\r\napikey: alice-key-1\r\n"
                             "Connection: close\r\n\r\n".encode())
        assert int(answer.split(b" ", 2)[1]) in (200, 400, 404), target
    assert {seen["target"].split("?")[0] for seen in backend.seen} <= {"/secret", "/secret/", "/secret."}


def test_consumers_parsed_and_their_secrets_never_shown(backend, tmp_path, monkeypatch):
    from fastgw.config import parse_config

    monkeypatch.setenv("BOB_KEY", "bob-secret-key")
    config = parse_config(f'[consumers.bob]\ngroups = ["a", "b", "a"]\napi_keys = ["env:BOB_KEY"]\n'
                          f'basic_password = "{PASSWORD_HASH}"\n')
    bob = config.consumers[0]
    assert (bob.name, bob.groups, bob.api_keys, bob.basic_password) == ("bob", ("a", "b"), ("bob-secret-key",),
                                                                         PASSWORD_HASH)
    assert "bob-secret-key" not in repr(config) and PASSWORD_HASH not in repr(config)
    toml, _ = config_for(backend, routes=ROUTES.replace('"env:ALICE_KEY"', '"env:BOB_KEY"'))
    (tmp_path / "fastgw.toml").write_text(toml)
    for args in (["check"], ["explain", "GET", "/admin/x", "-H", "apikey: bob-secret-key"]):
        result = run_fastgw(args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "auth key, basic → acl allow admin" in result.stdout
        for secret in ("bob-secret-key", "alice-key-1", PASSWORD_HASH):
            assert secret not in result.stdout + result.stderr
