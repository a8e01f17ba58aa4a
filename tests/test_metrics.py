"""End to end: the metrics of a real gateway with 2 workers, read from the shared memory by
a process that is neither the supervisor nor a worker (tests/metrics_helper.py, as the
admin process will), parsed with prometheus_client's parser and checked against the
requests the test sent: by route, method and code, durations, bytes, rate-limit
refusals, connect failures and retries, target gauges, open connections by worker slot
(and a killed worker's vanishing), and a reload that keeps a route's counts.

May import: tests.conftest, tests.backend, fastgw (in the helper), prometheus_client,
pytest, the standard library.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port, raw_request, wait_port

pytestmark = pytest.mark.slow


class MeteredGateway:
    """``python -m tests.metrics_helper`` on a config: a gateway whose metrics we can ask."""

    def __init__(self, folder: Path, toml: str, port: int) -> None:
        self.port = port
        self.config = folder / "fastgw.toml"
        self.config.write_text(toml)
        self.stderr_path = folder / "stderr.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.metrics_helper", str(self.config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr_path.open("wb"), cwd=folder, env=env, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("started "), (line, self.stderr_path.read_text())
        self.supervisor = int(line.split()[1])
        wait_port(port, proc=self.proc)

    def ask(self, command: str) -> list[str]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if command.startswith("slot "):
            return [self.proc.stdout.readline()]
        lines = []
        while (line := self.proc.stdout.readline()) != ".end\n":
            assert line, self.stderr_path.read_text()
            lines.append(line)
        return lines

    def samples(self) -> dict[tuple[str, tuple], float]:
        """Every sample: (name, sorted labels) -> value."""
        text = "".join(self.ask("render"))
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def slot(self, n: int) -> tuple[int, ...]:
        return tuple(map(int, self.ask(f"slot {n}")[0].split()))

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.supervisor}/task/{self.supervisor}/children")
        return [int(p) for p in path.read_text().split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def metered(tmp_path):
    started = []

    def start(toml: str, port: int) -> MeteredGateway:
        gw = MeteredGateway(tmp_path, toml, port)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def config(tmp_path: Path, backend, dead_port: int, port: int) -> str:
    return textwrap.dedent(f"""\
        [server]
        listen = ["127.0.0.1:{port}"]
        workers = 2

        [log]
        access = "{tmp_path / 'access.log'}"

        [upstreams.app]
        targets = ["{backend.address}"]

        [upstreams.flaky]
        targets = ["127.0.0.1:{dead_port}", "{backend.address}"]
        retries = 1
        balance = "round_robin"

        [upstreams.dead]
        targets = ["127.0.0.1:{dead_port}"]

        [[routes]]
        name = "api"
        paths = ["/api/*"]
        strip_prefix = "/api"
        upstream = "app"

        [[routes]]
        name = "limited"
        paths = ["/limited/*"]
        strip_prefix = "/limited"
        upstream = "app"
        rate_limit = {{ rate = "1/h", burst = 5, key = "route" }}

        [[routes]]
        name = "flaky"
        paths = ["/flaky-route/*"]
        strip_prefix = "/flaky-route"
        upstream = "flaky"

        [[routes]]
        name = "dead"
        paths = ["/dead/*"]
        strip_prefix = "/dead"
        upstream = "dead"
        """)


def request(port: int, method: str, path: str, body: bytes = b"") -> int:
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    answer = raw_request(port, head.encode() + body)
    return int(answer.split(b" ", 2)[1])


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def test_counts_across_two_workers_match_what_was_sent(tmp_path, backend, metered):
    dead_port = free_port()  # nothing listens there
    port = free_port()
    gw = metered(config(tmp_path, backend, dead_port, port), port)
    sent = [("GET", "/api/echo", b"")] * 120 + [("POST", "/api/echo", b"x" * 100)] * 40 \
        + [("DELETE", "/api/echo", b"")] * 10 + [("PROPFIND", "/api/echo", b"")] * 5 \
        + [("GET", "/nowhere", b"")] * 15 + [("GET", "/limited/echo", b"")] * 12 \
        + [("GET", "/dead/echo", b"")] * 4 + [("GET", "/flaky-route/echo", b"")] * 6
    with ThreadPoolExecutor(16) as pool:  # a new connection each: both workers serve
        statuses = list(pool.map(lambda r: request(port, *r), sent))
    by_path = {}
    for (method, path, _), status in zip(sent, statuses):
        by_path.setdefault((method, path), []).append(status)
    assert set(by_path["GET", "/api/echo"]) == {200} and set(by_path["POST", "/api/echo"]) == {200}
    assert set(by_path["GET", "/nowhere"]) == {404}
    assert sorted(by_path["GET", "/limited/echo"]) == [200] * 5 + [429] * 7
    assert set(by_path["GET", "/dead/echo"]) == {502}
    assert set(by_path["GET", "/flaky-route/echo"]) == {200}  # retried on the live target

    time.sleep(0.3)  # the access log's batch, and the last exchanges' ends
    s = gw.samples()
    req = "fastgw_requests_total"
    assert value(s, req, route="api", method="GET", code="200") == 120
    assert value(s, req, route="api", method="POST", code="200") == 40
    assert value(s, req, route="api", method="DELETE", code="200") == 10
    assert value(s, req, route="api", method="other", code="200") == 5
    assert value(s, req, route="(none)", method="GET", code="404") == 15
    assert value(s, req, route="limited", method="GET", code="200") == 5
    assert value(s, req, route="limited", method="GET", code="429") == 7
    assert value(s, req, route="dead", method="GET", code="502") == 4
    assert value(s, req, route="flaky", method="GET", code="200") == 6
    assert sum(v for (name, _), v in s.items() if name == req) == len(sent)
    assert value(s, "fastgw_rate_limited_total", route="limited") == 7
    assert value(s, "fastgw_rate_limited_total", route="api") == 0
    assert value(s, "fastgw_request_bytes_total", route="api") == 40 * 100
    assert value(s, "fastgw_response_bytes_total", route="api") > 0
    # the histogram: cumulative, +Inf is the count, the sum plausible
    h = "fastgw_request_duration_seconds"
    assert value(s, h + "_count", route="api") == 175
    assert value(s, h + "_bucket", route="api", le="+Inf") == 175
    assert value(s, h + "_bucket", route="api", le="0.001") <= value(s, h + "_bucket", route="api", le="10")
    assert 0 < value(s, h + "_sum", route="api") < 175 * 10
    # upstreams: every request to "dead" failed its connect; "flaky" failed on its dead
    # target and was retried on the live one (round robin: half of them, per worker)
    assert value(s, "fastgw_upstream_connect_failures_total", upstream="dead") == 4
    flaky_failures = value(s, "fastgw_upstream_connect_failures_total", upstream="flaky")
    assert flaky_failures >= 1
    assert value(s, "fastgw_upstream_retries_total", upstream="flaky") == flaky_failures
    assert value(s, "fastgw_upstream_retries_total", upstream="app") == 0
    assert value(s, "fastgw_upstream_target_healthy", upstream="app", target=backend.address) == 1
    assert value(s, "fastgw_upstream_target_circuit_open", upstream="app", target=backend.address) == 0
    assert value(s, "fastgw_cluster_fallbacks_total") == 0


def test_open_connections_by_worker_slot_and_a_dead_workers_vanish(tmp_path, backend, metered):
    port = free_port()
    gw = metered(config(tmp_path, backend, free_port(), port), port)
    held = []
    try:
        for _ in range(24):  # SO_REUSEPORT spreads them over the two workers
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /api/echo HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(sock)
        s = gw.samples()
        assert value(s, "fastgw_client_connections", protocol="http1") == 24
        slots = [gw.slot(0)[0], gw.slot(1)[0]]
        assert sum(slots) == 24 and min(slots) > 0, slots  # both workers serve
        # SIGKILL one worker: the supervisor forks another in its slot, which starts
        # its gauges from zero; the other worker's stay
        victim = gw.workers()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            workers = gw.workers()
            if victim not in workers and len(workers) == 2:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        after = [gw.slot(0)[0], gw.slot(1)[0]]
        assert after in ([0, slots[1]], [slots[0], 0]), (slots, after)
        assert value(gw.samples(), "fastgw_client_connections", protocol="http1") == sum(after) < 24
        assert value(gw.samples(), "fastgw_requests_total", route="api", method="GET", code="200") == 24
    finally:
        for sock in held:
            sock.close()


def test_a_reload_keeps_the_counts_of_a_route_it_keeps(tmp_path, backend, metered):
    port = free_port()
    toml = config(tmp_path, backend, free_port(), port)
    gw = metered(toml, port)
    for _ in range(6):
        assert request(port, "GET", "/api/echo") == 200
    # a new route added; "api" stays
    (tmp_path / "fastgw.toml").write_text(toml + '\n[[routes]]\nname = "new"\npaths = ["/new/*"]\nstrip_prefix = "/new"\nupstream = "app"\n')
    os.kill(gw.supervisor, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and request(port, "GET", "/new/echo") == 404:
        time.sleep(0.1)
    for _ in range(4):
        assert request(port, "GET", "/api/echo") == 200
    time.sleep(0.3)
    s = gw.samples()
    assert value(s, "fastgw_requests_total", route="api", method="GET", code="200") == 10
