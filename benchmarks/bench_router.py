"""Micro-benchmarks of fastgw._core.router.Router.match against the plain-Python
reference router of the tests (tests/core/reference_router.py), with 10, 1,000
and 10,000 routes mixing exact paths, {param} paths, catch-alls and host rules.

Run: ``python -m pytest benchmarks/bench_router.py -q`` from the repository root
(after ``make compile``). pytest-benchmark prints one group per route count, the
Cython router beside the reference; ``test_speedup_over_reference`` measures both
in the same run and fails when the router is less than 3x faster at any size (a
ratio, never an absolute time, so it holds on any machine). The ratios are
printed at the end of the run.

May import: fastgw._core, tests.core.reference_router, pytest, the standard library.
"""

from __future__ import annotations

import pytest

from benchmarks.timing import best_of
from fastgw._core.router import Router, Rule
from tests.core.reference_router import ReferenceRouter

SIZES = [10, 1_000, 10_000]
MIN_SPEEDUP = 3.0


def make_rules(n: int) -> list[Rule]:
    """n rules, in four kinds taken in turn: exact, {param}, catch-all, host."""
    rules = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            rules.append(Rule(f"exact{i}", [f"/svc{i}/items"], methods=["GET", "HEAD"]))
        elif kind == 1:
            rules.append(Rule(f"param{i}", [f"/svc{i}/items/{{id}}", f"/svc{i}/items/{{id}}/raw"],
                              methods=["GET", "PUT"]))
        elif kind == 2:
            rules.append(Rule(f"static{i}", [f"/svc{i}/static/*"]))
        else:
            hosts = [f"h{i}.example.com"] if i % 8 == 3 else [f"*.t{i}.example.com"]
            rules.append(Rule(f"host{i}", [f"/svc{i}/{{tenant}}/x"], hosts=hosts, headers=[("x-v", "2")]
                              if i % 16 == 7 else ()))
    return rules


def make_requests(n: int) -> list[tuple[str, str, str, dict | None]]:
    """Requests spread over the whole rule list (first, middle, last rules), plus a
    404 and a 405, so a linear scan is not flattered by early hits."""
    picks = sorted({0, 1, 2, 3, n // 2, n // 2 + 1, n // 2 + 2, n // 2 + 3, n - 4, n - 3, n - 2, n - 1})
    requests = []
    for i in picks:
        kind = i % 4
        if kind == 0:
            requests.append(("GET", "", f"/svc{i}/items", None))
        elif kind == 1:
            requests.append(("GET", "", f"/svc{i}/items/42/raw", None))
        elif kind == 2:
            requests.append(("GET", "", f"/svc{i}/static/css/site.css", None))
        else:
            host = f"h{i}.example.com" if i % 8 == 3 else f"a.t{i}.example.com"
            requests.append(("GET", host, f"/svc{i}/acme/x", {"x-v": "2"}))
    requests.append(("GET", "api.example.com", "/nothing/here", None))  # 404
    requests.append(("DELETE", "", "/svc0/items", None))                 # 405
    return requests


def run(router, requests) -> None:
    match = router.match
    for method, host, path, headers in requests:
        match(method, host, path, headers)


_cache: dict[int, tuple[Router, ReferenceRouter, list]] = {}


def setup(n: int) -> tuple[Router, ReferenceRouter, list]:
    if n not in _cache:
        rules = make_rules(n)
        _cache[n] = (Router(rules), ReferenceRouter(rules), make_requests(n))
    return _cache[n]


def test_same_answers():
    # The benchmark is only meaningful if both do the same work.
    for n in SIZES:
        router, reference, requests = setup(n)
        for method, host, path, headers in requests:
            m = router.match(method, host, path, headers)
            got = None if m is None else (m.target, m.params, m.allowed, m.pattern)
            assert got == reference.match(method, host, path, headers)
            assert got is not None or path == "/nothing/here"


@pytest.mark.parametrize("n", SIZES)
def test_cython(benchmark, n):
    benchmark.group = f"router match, {n} routes, {len(setup(n)[2])} requests"
    router, _, requests = setup(n)
    benchmark(run, router, requests)


@pytest.mark.parametrize("n", SIZES)
def test_reference(benchmark, n):
    benchmark.group = f"router match, {n} routes, {len(setup(n)[2])} requests"
    _, reference, requests = setup(n)
    if n >= 10_000:  # a linear scan of 10,000 rules: a few rounds say enough
        benchmark.pedantic(run, args=(reference, requests), rounds=3, iterations=1)
    else:
        benchmark(run, reference, requests)


@pytest.mark.parametrize("n", SIZES)
def test_speedup_over_reference(n, speedups):
    router, reference, requests = setup(n)
    fast_loops = 200
    slow_loops = max(1, 2000 // n)  # the reference's cost grows with n; keep its runs short

    def fast():
        for _ in range(fast_loops):
            run(router, requests)

    def slow():
        for _ in range(slow_loops):
            run(reference, requests)

    ratio = (best_of(slow, 5, 2.0) / slow_loops) / (best_of(fast, 10, 1.0) / fast_loops)
    speedups[f"router, {n:,} routes"] = ratio
    assert ratio >= MIN_SPEEDUP, f"{n} routes: Cython router only {ratio:.1f}x the reference"
