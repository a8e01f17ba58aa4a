"""Tests of fastgw._core.metrics, the counters every worker shares: the label mappings
against tests/core/reference_metrics.py (property tests), a route block driven with the
same requests as the reference's, slots by name (a name keeps its block, a full table
counts in "(other)"), connection gauges by worker slot (a slot taken again starts from
zero), and races between forked processes adding into one block (nothing lost).

May import: fastgw._core, tests.core.reference_metrics, tests.core.forking, pytest,
hypothesis, the standard library.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core.metrics import (
    BUCKETS,
    CODE_NAMES,
    METHOD_NAMES,
    P_HTTP1,
    P_HTTP2,
    P_WEBSOCKET,
    MetricsTable,
    bucket_index,
    code_index,
    method_index,
)
from tests.core import reference_metrics as ref
from tests.core.forking import WORKERS, race

methods = st.one_of(st.sampled_from(ref.METHODS), st.sampled_from(["TRACE", "CONNECT", "get", "PROPFIND", ""]),
                    st.text(max_size=8))
statuses = st.one_of(st.sampled_from(ref.EXACT), st.integers(-5, 1200))
durations = st.one_of(st.sampled_from(ref.BOUNDS_NS), st.integers(-10, 20 * 10**9))


@given(methods)
def test_method_class_is_the_references(method):
    assert METHOD_NAMES[method_index(method)] == ref.method_label(method)


def test_method_none_is_other():
    assert METHOD_NAMES[method_index(None)] == "other"


@given(statuses)
def test_code_label_is_the_references(status):
    assert CODE_NAMES[code_index(status)] == ref.code_label(status)


@given(durations)
def test_bucket_is_the_references(duration_ns):
    assert bucket_index(duration_ns) == ref.bucket(duration_ns)


def test_bucket_bounds_are_inclusive():
    assert bucket_index(1_000_000) == 0 and bucket_index(1_000_001) == 1
    assert bucket_index(10 * 10**9) == BUCKETS - 2 and bucket_index(10 * 10**9 + 1) == BUCKETS - 1


requests = st.lists(st.tuples(methods, statuses, durations, st.integers(0, 10**9), st.integers(0, 10**9)),
                    max_size=60)


@settings(max_examples=200)
@given(requests)
def test_a_route_block_counts_as_the_reference(ops):
    counters = MetricsTable(4, 2, 1).route(b"api")
    model = ref.Route()
    for method, status, duration_ns, bytes_in, bytes_out in ops:
        counters.add(method_index(method), status, duration_ns / 1e9, bytes_in, bytes_out)
        model.record(method, status, duration_ns, bytes_in, bytes_out)
    got = counters.read()
    assert {(METHOD_NAMES[m], CODE_NAMES[c]): n for (m, c), n in got["requests"].items()} == model.requests
    assert got["buckets"] == model.buckets
    assert got["count"] == len(ops)
    # (the block keeps whole nanoseconds; the test passes seconds as a float)
    assert abs(got["sum_ns"] - model.sum_ns) <= len(ops)
    assert got["request_bytes"] == model.request_bytes
    assert got["response_bytes"] == model.response_bytes


def test_refusals_are_counted():
    counters = MetricsTable(4, 2, 1).route(b"api")
    counters.rate_limited()
    counters.rate_limited()
    counters.concurrency_refused()
    got = counters.read()
    assert got["rate_limited"] == 2 and got["concurrency_refused"] == 1 and got["count"] == 0


def test_a_name_keeps_its_block():
    table = MetricsTable(8, 4, 1)
    table.route(b"api").add(0, 200, 0.002)
    again = table.route(b"api")
    assert again.named and again.read()["requests"] == {(0, code_index(200)): 1}
    assert table.route(b"other").read()["count"] == 0
    assert table.routes_used == 2


def test_unmatched_and_overflow_are_their_own_blocks():
    table = MetricsTable(3, 2, 1)  # blocks 0 "(none)", 1 "(other)", one named
    first = table.route(b"a")
    assert first.named
    full = table.route(b"b")
    assert not full.named and table.routes_full == 1
    full.add(2, 201, 0.0)
    assert table.overflow().read()["count"] == 1
    assert first.read()["count"] == 0 and table.unmatched().read()["count"] == 0
    table.unmatched().add(0, 404, 0.0)
    assert table.unmatched().read()["requests"] == {(0, code_index(404)): 1}


def test_upstream_lines():
    table = MetricsTable(4, 2, 1)  # line 0 "(other)", one named
    api = table.upstream(b"api")
    assert api.named
    api.connect_failed()
    api.timed_out()
    api.retried()
    api.retried()
    assert table.upstream(b"api").read() == {"connect_failures": 1, "timeouts": 1, "retries": 2}
    spill = table.upstream(b"billing")
    assert not spill.named and table.upstreams_full == 1
    spill.retried()
    assert table.upstream_overflow().read()["retries"] == 1


def test_connections_sum_the_worker_slots_and_a_slot_taken_again_starts_from_zero():
    table = MetricsTable(4, 2, 4)
    table.add_connection(0, P_HTTP1, 3)
    table.add_connection(1, P_HTTP1, 2)
    table.add_connection(1, P_HTTP2, 1)
    table.add_connection(2, P_WEBSOCKET, 1)
    assert table.connections() == (5, 1, 1)
    table.take_worker_slot(1)  # its worker died; the new one starts afresh
    assert table.connections() == (3, 0, 1)


def test_cluster_fallbacks():
    table = MetricsTable(4, 2, 1)
    table.cluster_fallback()
    assert table.cluster_fallbacks == 1


def test_a_bad_name_or_size_is_refused():
    with pytest.raises(TypeError):
        MetricsTable(4, 2, 1).route(None)
    with pytest.raises(ValueError):
        MetricsTable(1, 2, 1)


ROUNDS = 2000


def test_racing_processes_lose_no_count():
    table = MetricsTable(16, 4, WORKERS)

    def body(index, gate):
        counters = table.route(b"api")  # claimed by whichever process comes first
        upstream = table.upstream(b"api")
        for n in range(ROUNDS):
            counters.add(n % 8, 200 if n % 2 else 503, 0.003, 10, 100)
            upstream.retried()
        table.add_connection(index, P_HTTP1, 1)
        return counters.named

    assert all(race(body))
    got = table.route(b"api").read()
    total = WORKERS * ROUNDS
    assert got["count"] == total and sum(got["requests"].values()) == total
    assert got["request_bytes"] == 10 * total and got["response_bytes"] == 100 * total
    assert got["buckets"][bucket_index(3_000_000)] == total
    assert table.upstream(b"api").read()["retries"] == total
    assert table.routes_used == 1
    assert table.connections() == (WORKERS, 0, 0)
