"""User-written plugins, end to end: modules in a temporary folder named by
``[plugins].paths``, a real gateway, a real backend, real clients.

Covered: the hooks (request, sync and async; response; log) and what they see; the
chain's order by priority with [global]'s plugins; answers; a hook that raises (500,
the traceback logged, the worker alive), a response hook that raises (the head goes
unedited); modules that fail to import, a bad key in a route's table, taken names (config
errors, at check and at reload); and a reload that changes a plugin's code.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

from tests.conftest import config_for
from tests.test_server import fresh_get, run_fastgw, wait_for

ORDER = '''
NAME = "{name}"
PRIORITY = {priority}

def request(req):
    req.add_header("x-order", "{name}")
'''

TENANT = '''
from fastgw.plugin import Answer

NAME = "tenant"
PRIORITY = 450
SCHEMA = {"header": ("string", "x-tenant"), "tenants": ("table", {})}

def check(config):
    return [("tenants", "must not be empty")] if not config["tenants"] else []

def request(req):
    key = req.header("x-api-key")
    tenant = req.config["tenants"].get(key)
    if tenant is None:
        return Answer(403, "unknown api key", [("x-why", "tenant")])
    req.set_header(req.config["header"], tenant)
    req.remove_header("x-api-key")
    req.state["tenant"] = tenant

def response(req, resp):
    resp.set("x-served-tenant", req.state.get("tenant", "-"))
    resp.remove("x-backend")
'''

SLOW_CHECK = '''
import asyncio
NAME = "slow_check"
PRIORITY = 440

async def request(req):
    await asyncio.sleep(0.01)
    if req.header("x-deny"):
        from fastgw.plugin import Answer
        return Answer(451, "denied after a wait")
    req.set_header("x-waited", req.route + " " + req.request_id)
'''

BROKEN = '''
NAME = "broken"
PRIORITY = 10
COUNT = []

def request(req):
    if req.path.endswith("/boom"):
        raise RuntimeError("the plugin failed")
    if req.path.endswith("/wrong"):
        return 42

def response(req, resp):
    if req.path.endswith("/head-boom"):
        raise ValueError("no head for you")
    resp.add("x-broken", "ok")

def log(req):
    COUNT.append(req.request_id)
    print(f"LOGGED {req.request_id} {len(COUNT)}", flush=True)
'''


def write_plugins(folder: Path, **modules: str) -> None:
    folder.mkdir(exist_ok=True)
    for name, text in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text))


ROUTES = """
    [plugins]
    paths = ["plugins"]
    [global]
    first = {}
    [[routes]]
    name = "app"
    paths = ["/*"]
    upstream = "app"
    [routes.tenant]
    tenants = { "k1" = "acme", "k2" = "globex" }
    [routes.slow_check]
    [routes.broken]
    [routes.second]
    [routes.third]
    """


@pytest.fixture
def plugged(backend, gateway, tmp_path):
    write_plugins(tmp_path / "plugins", tenant=TENANT, slow=SLOW_CHECK, broken=BROKEN,
                  first=ORDER.format(name="first", priority=100),
                  second=ORDER.format(name="second", priority=300),
                  third=ORDER.format(name="third", priority=300))
    toml, port = config_for(backend, routes=ROUTES, log='access = "off"')
    return gateway(toml, port)


def test_hooks_see_the_request_and_run_by_priority(plugged):
    r = fresh_get(plugged.url + "/echo", headers={"x-api-key": "k2"})
    assert r.status_code == 200, r.text
    sent = dict((k, v) for k, v in r.json()["headers"] if k != "x-order")
    order = [v for k, v in r.json()["headers"] if k == "x-order"]
    assert order == ["second", "third", "first"]  # 300, 300 (route's, in file order), then [global]'s 100
    assert sent["x-tenant"] == "globex" and "x-api-key" not in sent
    assert sent["x-waited"] == f"app {r.headers['x-request-id']}"
    assert r.headers["x-served-tenant"] == "globex" and "x-backend" not in r.headers
    assert r.headers["x-broken"] == "ok"
    out = wait_for(lambda: f"LOGGED {r.headers['x-request-id']}" in Path(plugged.stdout_path).read_text(),
                   what="the log hook")
    assert out


def test_answers_sync_and_async(plugged, backend):
    r = fresh_get(plugged.url + "/echo", headers={"x-api-key": "nope"})
    assert (r.status_code, r.json()["error"], r.headers["x-why"]) == (403, "unknown api key", "tenant")
    assert r.headers["x-served-tenant"] == "-"  # the response hook runs on every head
    r = fresh_get(plugged.url + "/echo", headers={"x-api-key": "k1", "x-deny": "1"})
    assert (r.status_code, r.json()["error"]) == (451, "denied after a wait")
    assert backend.count("/echo") == 0


def test_a_hook_that_raises_is_a_500_and_the_worker_goes_on(plugged):
    r = fresh_get(plugged.url + "/boom", headers={"x-api-key": "k1"})
    assert r.status_code == 500 and r.json()["error"] == "internal error"
    rid = r.headers["x-request-id"]
    wait_for(lambda: f"request {rid} failed" in plugged.stderr, what="the traceback")
    assert "RuntimeError: the plugin failed" in plugged.stderr
    r = fresh_get(plugged.url + "/wrong", headers={"x-api-key": "k1"})
    assert r.status_code == 500
    wait_for(lambda: "request() returned int; return None to go on, or an Answer" in plugged.stderr, what="why")
    r = fresh_get(plugged.url + "/head-boom", headers={"x-api-key": "k1"})
    assert r.status_code == 404 and "x-broken" not in r.headers  # the backend's 404, unedited by broken
    wait_for(lambda: "plugin broken: response() failed; the head goes unedited" in plugged.stderr, what="log")
    assert fresh_get(plugged.url + "/echo", headers={"x-api-key": "k1"}).status_code == 200
    assert "died" not in plugged.stderr


def test_a_reload_runs_the_plugin_as_it_is_on_disk(plugged, tmp_path):
    assert fresh_get(plugged.url + "/echo", headers={"x-api-key": "k1"}).headers["x-served-tenant"] == "acme"
    (tmp_path / "plugins" / "tenant.py").write_text(textwrap.dedent(TENANT).replace(
        'resp.set("x-served-tenant", req.state.get("tenant", "-"))', 'resp.set("x-served-tenant", "v2")'))
    plugged.signal(signal.SIGHUP)
    wait_for(lambda: fresh_get(plugged.url + "/echo", headers={"x-api-key": "k1"}).headers.get(
        "x-served-tenant") == "v2", what="the new code")
    # A module that no longer loads: the reload is refused, the running code stays.
    (tmp_path / "plugins" / "tenant.py").write_text("NAME = 'tenant'\nPRIORITY = 1\ndef request(req):\n  return (\n")
    plugged.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in plugged.stderr, what="the refusal")
    assert "plugins/tenant.py: cannot load: SyntaxError" in plugged.stderr
    assert fresh_get(plugged.url + "/echo", headers={"x-api-key": "k1"}).headers["x-served-tenant"] == "v2"


def test_plugin_config_errors(tmp_path, backend):
    write_plugins(tmp_path / "plugins",
                  tenant=TENANT,
                  crash="NAME = 'crash'\nPRIORITY = 1\n\nraise ImportError('no such thing')\n",
                  noname="PRIORITY = 1\ndef request(req):\n    pass\n",
                  nohook="NAME = 'nohook'\nPRIORITY = 1\n",
                  taken="NAME = 'cors'\nPRIORITY = 1\ndef request(req):\n    pass\n",
                  badschema="NAME = 'badschema'\nPRIORITY = 1\nSCHEMA = {'x': ('colour', 1)}\n"
                            "def request(req):\n    pass\n")
    toml, _ = config_for(backend, routes="""
        [plugins]
        paths = ["plugins", "missing"]
        [[routes]]
        name = "app"
        paths = ["/*"]
        upstream = "app"
        [routes.tenant]
        header = 5
        tenant = {}
        [routes.crash]
        """)
    (tmp_path / "fastgw.toml").write_text(toml)
    result = run_fastgw(["check"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "fastgw.toml: plugins.paths[0]: plugins/badschema.py: SCHEMA['x'] must be (kind, default), kind one of "
        "string, strings, int, bool, duration, table, cidrs, header_names_any, header_fields, methods, origins",
        "fastgw.toml: plugins.paths[0]: plugins/crash.py: cannot load: ImportError: no such thing (line 4)",
        "fastgw.toml: plugins.paths[0]: plugins/nohook.py: defines no hook (request, response or log)",
        'fastgw.toml: plugins.paths[0]: plugins/noname.py: NAME must be a lower-case identifier (a string such as '
        '"tenant_header")',
        "fastgw.toml: plugins.paths[0]: plugins/taken.py: NAME 'cors' is taken by fastgw itself",
        f"fastgw.toml: plugins.paths[1]: {tmp_path}/missing: cannot read the folder: No such file or directory",
        'fastgw.toml: routes[0] "app": unknown key "crash" (did you mean "cors"?)',
        'fastgw.toml: routes[0] "app".tenant: unknown key "tenant" (did you mean "tenants"?)',
        'fastgw.toml: routes[0] "app".tenant.header: expected a string, got integer 5',
    ]
    # The check of the keys together runs once every key is right.
    (tmp_path / "fastgw.toml").write_text(toml.replace("header = 5\n", "").replace("tenant = {}", "tenants = {}")
                                          .replace('paths = ["plugins", "missing"]', 'paths = ["only"]')
                                          .replace("[routes.crash]", ""))
    write_plugins(tmp_path / "only", tenant=TENANT)
    result = run_fastgw(["check"], cwd=tmp_path)
    assert result.stderr.splitlines() == ['fastgw.toml: routes[0] "app".tenant.tenants: must not be empty']


def test_explain_shows_the_plugins_in_the_chain(tmp_path, backend):
    write_plugins(tmp_path / "plugins", tenant=TENANT, slow=SLOW_CHECK)
    toml, _ = config_for(backend, routes="""
        [plugins]
        paths = ["plugins"]
        [[routes]]
        name = "app"
        paths = ["/*"]
        upstream = "app"
        ip = { deny = ["192.0.2.0/24"] }
        slow_check = {}
        tenant = { tenants = { "k" = "t" } }
        """)
    (tmp_path / "fastgw.toml").write_text(toml)
    result = run_fastgw(["explain", "GET", "/x"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("policies: ip deny 192.0.2.0/24 → tenant (plugin: request, response) → slow_check (plugin: request)"
            in result.stdout.splitlines())


# -- the shipped examples (docs/plugins.md teaches with them) ----------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "fastgw" / "examples"


def test_the_docs_show_the_examples_as_they_are():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    for name in ("tenant_header.py", "external_check.py"):
        assert f"```python\n{(EXAMPLES / name).read_text().rstrip()}\n```" in doc, name


def test_the_examples_work(make_backend, gateway, tmp_path):
    app, checker = make_backend("app"), make_backend("checker")
    toml, port = config_for({"app": app}, log='access = "off"', routes=f"""
        [plugins]
        paths = ["{EXAMPLES}"]
        [[routes]]
        name = "tenants"
        paths = ["/tenants/*"]
        upstream = "app"
        strip_prefix = "/tenants"
        tenant_header = {{ tenants = {{ "k-1" = "acme" }} }}
        [[routes]]
        name = "checked"
        paths = ["/checked/{{answer}}"]
        upstream = "app"
        rewrite = "/echo"
        [routes.external_check]
        url = "http://{checker.address}/status/204"
        timeout = "300ms"
        [[routes]]
        name = "refused"
        paths = ["/refused"]
        upstream = "app"
        rewrite = "/echo"
        external_check = {{ url = "http://{checker.address}/status/401" }}
        [[routes]]
        name = "slow"
        paths = ["/slow"]
        upstream = "app"
        rewrite = "/echo"
        external_check = {{ url = "http://{checker.address}/hang", timeout = "200ms" }}
        """)
    gw = gateway(toml, port)
    r = fresh_get(gw.url + "/tenants/echo", headers={"x-api-key": "k-1", "authorization": "Bearer t"})
    sent = dict(r.json()["headers"])
    assert (r.status_code, sent["x-tenant"], "x-api-key" in sent) == (200, "acme", False)
    assert r.headers["x-served-tenant"] == "acme"
    r = fresh_get(gw.url + "/tenants/echo", headers={"x-api-key": "k-2"})
    assert (r.status_code, r.json()["error"], r.headers["x-served-tenant"]) == (403, "unknown API key", "-")

    r = fresh_get(gw.url + "/checked/x", headers={"authorization": "Bearer t"})
    assert r.status_code == 200
    asked = [seen for seen in checker.seen if seen["target"].startswith("/status/204")]
    assert asked and dict(asked[-1]["headers"])["authorization"] == "Bearer t"
    assert dict(asked[-1]["headers"])["x-original-path"] == "/checked/x"
    r = fresh_get(gw.url + "/refused")
    assert (r.status_code, r.json()["error"]) == (403, "refused by the authorization service")
    r = fresh_get(gw.url + "/slow")
    assert (r.status_code, r.headers["retry-after"]) == (503, "1")
    assert app.count("/echo") == 2  # the tenant's and the checked one's
