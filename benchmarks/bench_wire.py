"""Micro-benchmark of the response-head shortcut, fastgw._core.wire.scan_response_head,
against what it replaces for the plainest responses: llhttp through httptools with a
Python ``on_header`` callback per field, then the drop filter (the general path of
fastgw/upstream.pyx).

Both read the same heads (an nginx-like one and a typical API one) and must give the
same field lines; ``test_speedup_over_llhttp`` measures both in the same run and fails
when the shortcut is less than 3x faster (a ratio, never an absolute time). The
shortcut is timed through its Python wrapper, ``scan_response``, which also makes a
writer per call: the fastgw path, a C call on a writer it keeps, is faster still.

May import: fastgw._core, httptools, pytest, the standard library.
"""

from __future__ import annotations

import httptools
import pytest

from benchmarks.timing import best_of
from fastgw._core.wire import NAMES, scan_response

MIN_SPEEDUP = 3.0
DROP = {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
        b"proxy-connection", b"proxy-authenticate", b"proxy-authorization", b"content-length",
        b"x-request-id"}
DROP_MASK = sum(1 << NAMES[name] for name in DROP)

HEADS = {
    "nginx": (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 17:07:43 GMT\r\n"
              b"Content-Type: text/plain\r\nContent-Length: 23\r\nConnection: keep-alive\r\n\r\n"),
    "api": (b"HTTP/1.1 200 OK\r\nDate: Thu, 26 Nov 2026 17:07:43 GMT\r\n"
            b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 4096\r\n"
            b"Cache-Control: no-store\r\nVary: Accept-Encoding\r\nX-Request-Id: abc-123\r\n"
            b"Set-Cookie: session=0123456789abcdef; Path=/; HttpOnly; Secure\r\n"
            b"Strict-Transport-Security: max-age=63072000\r\nETag: \"5f3c-1a2b\"\r\n\r\n"),
}


class LLHTTPPath:
    """The general path: httptools' parser calling back per field, the drop filter."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpResponseParser(self)
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in DROP:
            return
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.done = True

    def read(self, head: bytes) -> bytes:
        self.fields = []
        self.parser = httptools.HttpResponseParser(self)
        self.parser.feed_data(head)
        return b"".join(n + b": " + v + b"\r\n" for n, v in self.fields)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_same_fields(kind):
    head = HEADS[kind]
    got = scan_response(head, DROP_MASK)
    assert got is not None and got[3] == len(head)
    assert got[1] == LLHTTPPath().read(head)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_shortcut(benchmark, kind):
    benchmark.group = f"response head, {kind}"
    benchmark(scan_response, HEADS[kind], DROP_MASK)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_llhttp_with_callbacks(benchmark, kind):
    benchmark.group = f"response head, {kind}"
    benchmark(LLHTTPPath().read, HEADS[kind])


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_speedup_over_llhttp(kind, speedups):
    head = HEADS[kind]
    general = LLHTTPPath()
    loops = 2000

    def fast():
        for _ in range(loops):
            scan_response(head, DROP_MASK)

    def slow():
        for _ in range(loops):
            general.read(head)

    ratio = best_of(slow, 7) / best_of(fast, 7)
    speedups[f"response head shortcut, {kind}"] = ratio
    assert ratio >= MIN_SPEEDUP, f"{kind}: shortcut only {ratio:.1f}x the llhttp path"
