"""[routes.aggregate]: its config errors, and compositions run by a real gateway against
real backends on 127.0.0.1 (two small banks keeping balances, answering JSON)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from fastgw.config import ConfigError, parse_config
from tests.conftest import free_port


class Bank:
    """A threaded HTTP bank: GET /accounts/{a}/balance, POST /accounts/{a}/withdraw and
    /deposit ({"amount": n}); 409 on insufficient funds, 404 on an unknown account;
    /slow sleeps; the first ``fail_deposits`` deposits answer 503, and each deposit
    takes ``deposit_delay`` seconds. Every request's headers are kept."""

    def __init__(self, balances: dict[str, int]) -> None:
        self.balances = dict(balances)
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.fail_deposits = 0
        self.deposit_delay = 0.0
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
                if action == "deposit":
                    time.sleep(bank.deposit_delay)
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
                        if bank.fail_deposits > 0:
                            bank.fail_deposits -= 1
                            return self._answer(503, {"error": "try again later"})
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
name = "slow_transfer"
paths = ["/slow-transfer"]
methods = ["POST"]
upstream = "bank_a"
[routes.aggregate]
mode = "sequence"
timeout = "400ms"
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
path = "/slow"
timeout = "{call_timeout}"

[[routes]]
name = "reads_earlier"
paths = ["/reads-earlier"]
methods = ["POST"]
upstream = "bank_a"
[routes.aggregate]
mode = "sequence"
max_body_bytes = "{max_body}"
[[routes.aggregate.calls]]
name = "withdraw"
upstream = "bank_a"
method = "POST"
path = "/accounts/alice/withdraw"
body = { amount = 5 }
compensate = { method = "POST", path = "/accounts/alice/deposit", body = { amount = "{withdraw.body.nothing}" } }
[[routes.aggregate.calls]]
name = "note"
upstream = "bank_b"
path = "/text"
[[routes.aggregate.calls]]
name = "next"
upstream = "bank_b"
path = "/accounts/{body.field}/balance"
query = { n = "{withdraw.body.balance}", x = "{note.body.id}" }

[[routes]]
name = "failing"
paths = ["/failing"]
upstream = "bank_a"
[routes.aggregate]
[[routes.aggregate.calls]]
name = "missing"
upstream = "bank_a"
path = "/accounts/nobody/balance"
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


#: three calls, the first two with a compensation; the third goes to upstream LAST
THREE_STEPS = """
[[routes]]
name = "three_steps_LAST"
paths = ["/three-steps/LAST"]
methods = ["POST"]
upstream = "bank_a"
[routes.aggregate]
mode = "sequence"
[[routes.aggregate.calls]]
name = "first"
upstream = "bank_a"
method = "POST"
path = "/accounts/alice/withdraw"
body = { amount = 5 }
compensate = { method = "POST", path = "/accounts/alice/deposit", body = { amount = 5 } }
[[routes.aggregate.calls]]
name = "second"
upstream = "bank_a"
method = "POST"
path = "/accounts/bob/withdraw"
body = { amount = 5 }
compensate = { method = "POST", path = "/accounts/bob/deposit", body = { amount = "{first.body.balance}" } }
[[routes.aggregate.calls]]
name = "third"
upstream = "LAST"
method = "POST"
path = "/accounts/carol/deposit"
query = { after = "{second.status}" }
body = { amount = 10 }
"""


def transfer_routes(call_timeout: str = "10s", max_body: str = "1MiB") -> str:
    three_steps = "".join(THREE_STEPS.replace("LAST", last) for last in ("bank_b", "nowhere"))
    return TRANSFER.replace("{call_timeout}", call_timeout).replace("{max_body}", max_body) + three_steps


@pytest.fixture
def gw(banks, gateway, request):
    """The gateway of ``TRANSFER``; a test marked ``@pytest.mark.parametrize("gw", [{...}],
    indirect=True)`` replaces its ``{call_timeout}`` and ``{max_body}``."""
    a, b = banks
    port = free_port()
    routes = transfer_routes(**getattr(request, "param", {}))
    toml = (f'[server]\nlisten = ["127.0.0.1:{port}"]\nmax_body_bytes = "4KiB"\n[log]\naccess = "stdout"\n'
            f'[upstreams.bank_a]\ntargets = ["{a.address}"]\nretries = 2\n'
            f'[upstreams.bank_b]\ntargets = ["{b.address}"]\n'
            f'[upstreams.nowhere]\ntargets = ["127.0.0.1:{free_port()}"]\n' + routes)
    return gateway(toml, port)


def eventually(check, seconds: float = 5.0) -> bool:
    """``check()`` became true within ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


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


@pytest.mark.parametrize("last", ["bank_b", "nowhere"])
def test_compensations_run_in_reverse_order(gw, banks, last):
    """The last call fails (a 404 at bank B; or its upstream is unreachable): the two
    before it are undone, the second first; a compensation reads its call's response."""
    a, b = banks
    if last == "bank_b":
        b.balances.pop("carol")
    status, body = call(gw, "POST", f"/three-steps/{last}", {})
    assert status == 502, body
    if last == "bank_b":
        assert body["failed"] == {"call": "third", "status": 404, "error": "no account carol"}
        assert [p for _, p, _, _ in b.seen] == ["/accounts/carol/deposit?after=200"]
    else:
        assert body["failed"]["call"] == "third" and body["failed"]["status"] == 502
        assert "127.0.0.1" not in json.dumps(body)  # (never an internal address)
    assert body["compensations"] == [{"call": "second", "status": 200, "outcome": "ok"},
                                     {"call": "first", "status": 200, "outcome": "ok"}]
    assert [p for _, p, _, _ in a.seen] == ["/accounts/alice/withdraw", "/accounts/bob/withdraw",
                                            "/accounts/bob/deposit", "/accounts/alice/deposit"]
    # bob's compensation deposited alice's balance after the first withdrawal (95)
    assert a.balances == {"alice": 100, "bob": 100}


def test_a_deadline_in_a_sequence_still_compensates(gw, banks):
    a, b = banks
    status, body = call(gw, "POST", "/slow-transfer", {"from": "alice", "amount": 30},
                        headers={"X-Request-Id": "late-1"})
    assert status == 504, body
    assert body["running"] == ["deposit"] and body["compensating"] == ["withdraw"]
    # the answer does not wait for the compensation, which runs on behind it
    assert eventually(lambda: a.balances["alice"] == 100), a.balances
    assert [(m, p) for m, p, _, _ in a.seen] == [("POST", "/accounts/alice/withdraw"),
                                                 ("POST", "/accounts/alice/deposit")]
    assert a.seen[1][2]["idempotency-key"] == "late-1/withdraw.compensate"
    # the call cut at the deadline: in doubt, so logged with its key
    assert eventually(lambda: "late-1/deposit" in gw.stderr), gw.stderr


def test_a_drain_waits_for_compensations_after_the_answer(gw, banks):
    a, _ = banks
    a.deposit_delay = 1.0
    status, body = call(gw, "POST", "/slow-transfer", {"from": "alice", "amount": 30},
                        headers={"X-Request-Id": "drained-1"})
    assert status == 504 and body["compensating"] == ["withdraw"], body
    assert gw.stop() == 0  # at once: the client's connection is closed already
    assert "request drained-1 route slow_transfer: compensations after the answer: withdraw ok" in gw.stderr
    assert a.balances["alice"] == 100


@pytest.mark.parametrize("gw", [{"call_timeout": "150ms"}], indirect=True)
def test_a_calls_own_timeout_fails_the_sequence(gw, banks):
    a, _ = banks
    status, body = call(gw, "POST", "/slow-transfer", {"from": "alice", "amount": 30})
    assert status == 502, body
    assert body["failed"]["call"] == "deposit" and body["failed"]["status"] == 504
    assert body["compensations"] == [{"call": "withdraw", "status": 200, "outcome": "ok"}]
    assert a.balances["alice"] == 100


def test_a_failed_compensation_is_tried_again(gw, banks):
    a, b = banks
    a.fail_deposits = 1
    status, body = call(gw, "POST", "/transfer", {"from": "alice", "to": "nobody", "amount": 30})
    assert status == 502, body
    assert body["compensations"] == [{"call": "withdraw", "status": 200, "outcome": "ok", "attempts": 2}]
    assert a.balances["alice"] == 100
    deposits = [h["idempotency-key"] for m, p, h, _ in a.seen if p.endswith("/deposit")]
    assert len(deposits) == 2 and deposits[0] == deposits[1]  # the same key each time


def test_a_compensation_that_keeps_failing_is_reported_and_logged(gw, banks):
    a, b = banks
    a.fail_deposits = 10
    status, body = call(gw, "POST", "/transfer", {"from": "alice", "to": "nobody", "amount": 30},
                        headers={"X-Request-Id": "comp-fails"})
    assert status == 502, body
    # bank_a's retries = 2: three tries in all
    assert body["compensations"] == [{"call": "withdraw", "status": 503, "outcome": "failed", "attempts": 3,
                                      "error": "try again later"}]
    assert a.balances["alice"] == 70
    assert len([p for _, p, _, _ in a.seen if p.endswith("/deposit")]) == 3
    assert eventually(lambda: any("ERROR" in line and "comp-fails" in line and "compensation of withdraw failed"
                                  in line for line in gw.stderr.splitlines())), gw.stderr


def test_values_of_earlier_responses(gw, banks):
    """A value missing from an earlier response: 400 naming it, after the compensations
    (which may themselves lack a value: "not sent"); a response that is not JSON, which
    a later template reads: 502 naming that call."""
    a, b = banks
    status, body = call(gw, "POST", "/reads-earlier", {"field": "carol"})
    assert status == 502, body
    assert body["failed"]["call"] == "note" and "not valid JSON" in body["failed"]["error"]
    assert body["compensations"] == [{"call": "withdraw", "outcome": "not sent",
                                      "error": "missing template value {withdraw.body.nothing}"}]
    assert [p for _, p, _, _ in b.seen] == ["/text"]  # "next" never went


@pytest.mark.parametrize("gw", [{"max_body": "16B"}], indirect=True)
def test_a_response_over_max_body_bytes_fails_the_call(gw, banks):
    status, body = call(gw, "POST", "/reads-earlier", {"field": "carol"})
    assert status == 502, body
    assert body["failed"] == {"call": "withdraw", "status": 200, "error": "the response is over max_body_bytes"}


def test_a_client_body_over_the_servers_limit_is_a_413(gw, banks):
    status, body = call(gw, "POST", "/transfer", raw=b'{"from": "alice", "pad": "' + b"x" * 5000 + b'"}',
                        headers={"Content-Type": "application/json"})
    assert status == 413, body
    assert banks[0].seen == [] and banks[1].seen == []


def test_a_failed_parallel_call_cuts_the_others(gw, banks):
    started = time.monotonic()
    status, body = call(gw, "GET", "/failing", headers={"X-Request-Id": "cut-1"})
    assert status == 502, body
    assert body["failed"] == {"call": "missing", "status": 404, "error": "no account nobody"}
    assert time.monotonic() - started < 1.5  # not held for the sleepy call (2 s)
    assert eventually(lambda: any('"status":499' in line.replace(" ", "") and "cut-1" in line
                                  for line in gw.access_lines)), gw.access_lines


def test_the_client_leaving_mid_sequence_undoes_what_succeeded(gw, banks):
    a, _ = banks
    body = b'{"from": "alice", "amount": 30}'
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /slow-transfer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert eventually(lambda: a.balances["alice"] == 70)  # the withdrawal went
    assert eventually(lambda: a.balances["alice"] == 100), a.balances


def test_http2_clients_get_aggregates_too(gw, banks):
    with httpx.Client(http1=False, http2=True, base_url=gw.url, timeout=10) as client:
        response = client.post("/transfer", json={"from": "alice", "to": "carol", "amount": 30})
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200, response.text
        assert response.json()["deposit"] == {"account": "carol", "balance": 35}
        overview = client.get("/overview/alice", params={"other": "carol"})
        assert overview.status_code == 200 and set(overview.json()) == {"a", "b", "note"}


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
    ours = [line for line in lines if "ov-1" in json.dumps(line)]
    assert len(ours) == 4  # 3 calls + the client's, last (its calls were over before its answer)
    assert "/overview/alice" in json.dumps(ours[-1]) and "/overview" not in json.dumps(ours[:3]), ours


# -- config errors ---------------------------------------------------------------------------


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text))
    return info.value.errors


HEAD = '[upstreams.a]\ntargets = ["h:1"]\n[upstreams.b]\ntargets = ["h:2"]\n'


def test_the_bank_example_loads():
    upstreams = HEAD + '[upstreams.nowhere]\ntargets = ["h:3"]\n'
    config = parse_config(upstreams + transfer_routes().replace("bank_", ""))
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


def test_call_timeouts_and_compensations_only_in_a_sequence():
    text = HEAD + """
    [[routes]]
    name = "t"
    paths = ["/t"]
    upstream = "a"
    [routes.aggregate]
    mode = "sequence"
    [[routes.aggregate.calls]]
    name = "one"
    upstream = "a"
    path = "/x"
    timeout = "250ms"
    compensate = { method = "DELETE", path = "/x/{one.body.id}" }
    [[routes.aggregate.calls]]
    name = "two"
    upstream = "b"
    path = "/y"
    compensate = { path = "/undo", timeout = "2s" }
    """
    calls = parse_config(textwrap.dedent(text)).routes[0].aggregate.calls
    assert (calls[0].timeout, calls[0].compensate.timeout) == (0.25, 0.25)  # a compensation inherits its call's
    assert (calls[1].timeout, calls[1].compensate.timeout) == (None, 2.0)
    parallel = text.replace('mode = "sequence"', 'mode = "parallel"').replace("{one.body.id}", "1")
    assert errors_of(parallel.replace('"250ms"', '"soon"')) == [
        'fastgw.toml: routes[0] "t".aggregate.calls[0] "one".timeout: "soon" is not a duration'
        ' (use e.g. "250ms", "5s", "2m", "1h")',
        'fastgw.toml: routes[0] "t".aggregate.calls[0] "one".compensate: runs only in a sequence'
        ' (mode = "sequence")',
        'fastgw.toml: routes[0] "t".aggregate.calls[1] "two".compensate: runs only in a sequence'
        ' (mode = "sequence")',
    ]


def test_check_and_explain_show_the_composition(tmp_path):
    config = tmp_path / "fastgw.toml"
    upstreams = "".join(f'[upstreams.{name}]\ntargets = ["127.0.0.1:{n}"]\n'
                        for n, name in enumerate(("bank_a", "bank_b", "nowhere"), 9001))
    config.write_text(upstreams + transfer_routes())
    run = [sys.executable, "-m", "fastgw"]
    check = subprocess.run([*run, "check", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "aggregate → bank_a, bank_b" in check.stdout
    assert ("  2. withdraw: POST bank_a /accounts/{body.from}/withdraw; compensate POST"
            " /accounts/{body.from}/deposit") in check.stdout
    explain = subprocess.run([*run, "explain", "-c", str(config), "POST", "/three-steps/bank_b"],
                             capture_output=True, text=True, timeout=30)
    assert explain.returncode == 0, explain.stderr
    assert "aggregate sequence, timeout 30s" in explain.stdout
    assert "  3. third: POST bank_b /accounts/carol/deposit" in explain.stdout
    assert "upstream:" not in explain.stdout  # (not forwarded)
