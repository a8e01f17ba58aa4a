"""[routes.aggregate]: its config errors, and compositions run by a real gateway against
real backends on 127.0.0.1 (two small banks keeping balances, answering JSON)."""

from __future__ import annotations

import json
import textwrap
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fastgw.config import ConfigError, parse_config
from tests.conftest import free_port


class Bank:
    """A threaded HTTP bank: GET /accounts/{a}/balance, POST /accounts/{a}/withdraw and
    /deposit ({"amount": n}); 409 on insufficient funds, 404 on an unknown account;
    /slow sleeps. Every request's headers are kept."""

    def __init__(self, balances: dict[str, int], delay: float = 0.0) -> None:
        self.balances = dict(balances)
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.delay = delay
        bank = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _answer(self, status: int, document) -> None:
                body = json.dumps(document).encode() if not isinstance(document, bytes) else document
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with bank.lock:
                    bank.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[0] == "slow":
                    time.sleep(2)
                    return self._answer(200, {"slow": True})
                if parts[0] == "text":
                    return self._answer(200, b"plain words")
                if len(parts) != 3 or parts[0] != "accounts":
                    return self._answer(404, {"error": "no such thing"})
                account, action = parts[1], parts[2]
                with bank.lock:
                    if account not in bank.balances:
                        return self._answer(404, {"error": f"no account {account}"})
                    if action == "balance" and self.command == "GET":
                        return self._answer(200, {"account": account, "balance": bank.balances[account]})
                    amount = json.loads(body or b"{}").get("amount")
                    if not isinstance(amount, int) or amount <= 0:
                        return self._answer(400, {"error": "bad amount"})
                    if action == "withdraw":
                        if bank.balances[account] < amount:
                            return self._answer(409, {"error": "insufficient funds"})
                        bank.balances[account] -= amount
                    elif action == "deposit":
                        bank.balances[account] += amount
                    else:
                        return self._answer(404, {"error": "no such action"})
                    return self._answer(200, {"account": account, "balance": bank.balances[account]})

            do_GET = do_POST = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *args: None  # (a client that gave up: not our concern)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def banks():
    a = Bank({"alice": 100, "bob": 10})
    b = Bank({"carol": 5})
    yield a, b
    a.close()
    b.close()


TRANSFER = """
[[routes]]
name = "transfer"
paths = ["/transfer"]
methods = ["POST"]
upstream = "bank_a"
[routes.aggregate]
mode = "sequence"
timeout = "3s"
max_body_bytes = "1MiB"
[[routes.aggregate.calls]]
name = "balance"
upstream = "bank_a"
method = "GET"
path = "/accounts/{body.from}/balance"
[[routes.aggregate.calls]]
name = "withdraw"
upstream = "bank_a"
method = "POST"
path = "/accounts/{body.from}/withdraw"
body = { amount = "{body.amount}" }
compensate = { method = "POST", path = "/accounts/{body.from}/deposit", body = { amount = "{body.amount}" } }
[[routes.aggregate.calls]]
name = "deposit"
upstream = "bank_b"
method = "POST"
path = "/accounts/{body.to}/deposit"
body = { amount = "{body.amount}" }

[[routes]]
name = "overview"
paths = ["/overview/{account}"]
upstream = "bank_a"
[routes.aggregate]
mode = "parallel"
timeout = "1s"
[[routes.aggregate.calls]]
name = "a"
upstream = "bank_a"
path = "/accounts/{path.account}/balance"
[[routes.aggregate.calls]]
name = "b"
upstream = "bank_b"
path = "/accounts/{query.other}/balance"
[[routes.aggregate.calls]]
name = "note"
upstream = "bank_b"
path = "/text"

[[routes]]
name = "slow"
paths = ["/slow"]
upstream = "bank_a"
[routes.aggregate]
mode = "parallel"
timeout = "300ms"
[[routes.aggregate.calls]]
name = "quick"
upstream = "bank_a"
path = "/accounts/alice/balance"
[[routes.aggregate.calls]]
name = "sleepy"
upstream = "bank_b"
path = "/slow"

[[routes]]
name = "guarded"
paths = ["/guarded"]
upstream = "bank_a"
[routes.ip]
deny = ["127.0.0.0/8"]
[routes.aggregate]
[[routes.aggregate.calls]]
name = "a"
upstream = "bank_a"
path = "/accounts/alice/balance"
"""


@pytest.fixture
def gw(banks, gateway):
    a, b = banks
    port = free_port()
    toml = (f'[server]\nlisten = ["127.0.0.1:{port}"]\n[log]\naccess = "stdout"\n'
            f'[upstreams.bank_a]\ntargets = ["{a.address}"]\n[upstreams.bank_b]\ntargets = ["{b.address}"]\n'
            + TRANSFER)
    return gateway(toml, port)


def call(gw, method: str, path: str, document=None, raw: bytes | None = None, headers=None):
    data = raw if raw is not None else (json.dumps(document).encode() if document is not None else None)
    request = urllib.request.Request(gw.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_parallel_aggregate(gw, banks):
    status, body = call(gw, "GET", "/overview/alice?other=carol")
    assert status == 200, body
    assert body == {"a": {"account": "alice", "balance": 100}, "b": {"account": "carol", "balance": 5},
                    "note": "plain words"}


def test_transfer_sequence(gw, banks):
    a, b = banks
    status, body = call(gw, "POST", "/transfer", {"from": "alice", "to": "carol", "amount": 30},
                        headers={"X-Request-Id": "tx-123"})
    assert status == 200, body
    assert list(body) == ["balance", "withdraw", "deposit"]
    assert body["balance"] == {"account": "alice", "balance": 100}
    assert body["withdraw"]["balance"] == 70 and body["deposit"]["balance"] == 35
    assert a.balances["alice"] == 70 and b.balances["carol"] == 35
    # every call: the client's request id, and an idempotency key per call
    keys = [(h["x-request-id"], h["idempotency-key"]) for _, _, h, _ in a.seen + b.seen]
    assert keys == [("tx-123", "tx-123/balance"), ("tx-123", "tx-123/withdraw"), ("tx-123", "tx-123/deposit")]
    assert [(m, p) for m, p, _, _ in a.seen] == [("GET", "/accounts/alice/balance"),
                                                 ("POST", "/accounts/alice/withdraw")]
    assert json.loads(a.seen[1][3]) == {"amount": 30}


def test_failed_deposit_compensates_the_withdrawal(gw, banks):
    a, b = banks
    status, body = call(gw, "POST", "/transfer", {"from": "alice", "to": "nobody", "amount": 30})
    assert status == 502, body
    assert body["failed"]["call"] == "deposit" and body["failed"]["status"] == 404
    assert body["compensations"] == [{"call": "withdraw", "status": 200, "outcome": "ok"}]
    assert a.balances["alice"] == 100 and b.balances == {"carol": 5}
    compensation = a.seen[-1]
    assert (compensation[0], compensation[1]) == ("POST", "/accounts/alice/deposit")
    assert compensation[2]["idempotency-key"].endswith("/withdraw.compensate")


def test_first_failure_stops_the_sequence(gw, banks):
    a, b = banks
    status, body = call(gw, "POST", "/transfer", {"from": "bob", "to": "carol", "amount": 30})
    assert status == 502
    assert body["failed"] == {"call": "withdraw", "status": 409, "error": "insufficient funds"}
    assert body["compensations"] == []
    assert b.seen == [] and a.balances["bob"] == 10


def test_missing_value_is_a_400_naming_it(gw, banks):
    status, body = call(gw, "POST", "/transfer", {"from": "alice", "amount": 30})
    assert status == 400
    assert "{body.to}" in body["error"]
    # (looked up before any call: nothing was sent)
    assert banks[0].seen == [] and banks[1].seen == []
    status, body = call(gw, "POST", "/transfer", raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = call(gw, "GET", "/overview/alice")
    assert status == 400 and "{query.other}" in body["error"]


def test_path_values_are_percent_encoded(gw, banks):
    a, _ = banks
    status, _ = call(gw, "POST", "/transfer", {"from": "../admin", "to": "carol", "amount": 1})
    assert status == 502
    assert a.seen[0][1] == "/accounts/..%2Fadmin/balance"


def test_deadline_is_a_504_naming_the_running_calls(gw, banks):
    started = time.monotonic()
    status, body = call(gw, "GET", "/slow")
    assert status == 504
    assert body["running"] == ["sleepy"]
    assert time.monotonic() - started < 1.5


def test_the_routes_policies_run_first(gw, banks):
    status, _ = call(gw, "GET", "/guarded")
    assert status == 403
    assert banks[0].seen == []


def test_calls_are_in_the_access_log(gw, banks):
    status, _ = call(gw, "GET", "/overview/alice?other=carol", headers={"X-Request-Id": "ov-1"})
    assert status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in gw.access_lines]
        if len([line for line in lines if "ov-1" in json.dumps(line)]) >= 4:
            break
        time.sleep(0.05)
    assert len([line for line in lines if "ov-1" in json.dumps(line)]) == 4  # 3 calls + the client's


# -- config errors ---------------------------------------------------------------------------


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text))
    return info.value.errors


HEAD = '[upstreams.a]\ntargets = ["h:1"]\n[upstreams.b]\ntargets = ["h:2"]\n'


def test_the_bank_example_loads():
    config = parse_config(HEAD.replace('"a"', '"bank_a"') + TRANSFER.replace("bank_", "").replace(
        'upstream = "a"', 'upstream = "a"'))
    aggregate = config.routes[0].aggregate
    assert aggregate.mode == "sequence" and aggregate.timeout == 3.0 and aggregate.max_body_bytes == 1 << 20
    assert [c.name for c in aggregate.calls] == ["balance", "withdraw", "deposit"]
    assert aggregate.calls[0].path == ("/accounts/", ("body", "from"), "/balance")
    assert aggregate.calls[1].compensate.method == "POST"


def test_config_errors_all_at_once():
    text = HEAD + """
    [[routes]]
    name = "t"
    paths = ["/t"]
    upstream = "a"
    [routes.aggregate]
    mode = "sequence"
    [[routes.aggregate.calls]]
    name = "one"
    upstream = "c"
    path = "/x/{two.body.id}"
    [[routes.aggregate.calls]]
    name = "two"
    upstream = "b"
    path = "/x/../y"
    [[routes.aggregate.calls]]
    name = "three"
    upstream = "b"
    path = "/z/{on.status}"
    body = { id = "{bdy.id}" }
    """
    assert errors_of(text) == [
        'fastgw.toml: routes[0] "t".aggregate.calls[0] "one".upstream: upstream "c" is not defined',
        'fastgw.toml: routes[0] "t".aggregate.calls[0] "one".path: {two.body.id} names call "two", which runs later',
        'fastgw.toml: routes[0] "t".aggregate.calls[1] "two".path: "/x/../y" escapes with . or .. segments',
        'fastgw.toml: routes[0] "t".aggregate.calls[2] "three".path: {on.status} names an unknown call or source'
        ' "on" (did you mean "one"?)',
        'fastgw.toml: routes[0] "t".aggregate.calls[2] "three".body: {bdy.id} names an unknown call or source'
        ' "bdy" (did you mean "body"?)',
    ]


def test_parallel_calls_cannot_read_each_other():
    text = HEAD + """
    [[routes]]
    name = "t"
    paths = ["/t"]
    upstream = "a"
    [[routes.aggregate.calls]]
    name = "one"
    upstream = "a"
    path = "/x"
    [[routes.aggregate.calls]]
    name = "two"
    upstream = "b"
    path = "/y/{one.body.id}"
    """
    assert errors_of(text) == [
        'fastgw.toml: routes[0] "t".aggregate.calls[1] "two".path: {one.body.id} names call "one", but parallel'
        ' calls run at once (use mode = "sequence")']


def test_too_many_calls_and_bad_keys():
    calls = "".join(f'[[routes.aggregate.calls]]\nname = "c{i}"\nupstream = "a"\npath = "/{i}"\n' for i in range(17))
    text = HEAD + '[[routes]]\nname = "t"\npaths = ["/t"]\nupstream = "a"\n[routes.aggregate]\nmode = "fan"\n' + calls
    errors = errors_of(text)
    assert len(errors) == 2, errors
    assert 'routes[0] "t".aggregate.mode' in errors[0] and '"fan"' in errors[0]
    assert errors[1] == 'fastgw.toml: routes[0] "t".aggregate.calls: has 17 calls; at most 16'
