"""One request and its response, whatever the wire: the contract between a protocol
front end (``protocols/``) and the proxy.

A protocol builds an ``Exchange`` when a request head is complete, pushes request
body chunks into it, and implements ``Downstream`` so the proxy and upstream can
answer. The proxy never sees sockets or parsers; the protocol never sees routes or
upstreams.

Request body flow, with backpressure: the protocol calls ``feed_body`` per chunk and
``end_body`` once. Until the upstream side attaches a sink (``attach_body``), chunks
are held, and the protocol is asked to stop reading once ``BODY_BUFFER_HIGH`` bytes
are held, so a client that sends faster than we connect cannot grow memory.

May import: the standard library only.
"""

from __future__ import annotations

from typing import Callable, Protocol

# Bytes of request body held while no upstream is attached before the client is paused.
BODY_BUFFER_HIGH = 64 * 1024

BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2


class Downstream(Protocol):
    """What a protocol front end offers the proxy for one connection."""

    def send_head(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]], length: int) -> None:
        """Start the response. ``length`` is the body size, or -1 when unknown
        (the protocol chooses chunked or close-delimited framing)."""

    def send_body(self, ex: Exchange, data: bytes) -> None: ...

    def send_end(self, ex: Exchange) -> None:
        """The response is complete."""

    def flush(self) -> None:
        """Write what ``send_head`` may have held back to join it with body bytes."""

    def abort(self, ex: Exchange) -> None:
        """The response cannot be completed (upstream died mid-body): close the client
        connection so a truncated body can never look complete."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Exchange:
    """Per-request state. ``__slots__`` and plain attributes: one of these per request."""

    __slots__ = (
        "downstream", "method", "path", "query", "host", "authority", "headers", "version", "keep_alive",
        "peer_ip", "client_ip", "trusted_peer", "request_id", "started", "deadline",
        "body_kind", "body_length", "body_held", "body_held_bytes", "body_done", "body_sink",
        "body_end", "bytes_in", "bytes_out", "response_started", "status", "route_name",
        "upstream_addr", "on_writable", "failure", "on_cancel",
    )

    def __init__(self, downstream: Downstream, method: str, path: str, query: bytes, host: str,
                 authority: bytes | None, headers: list[tuple[bytes, bytes]], version: str,
                 keep_alive: bool, peer_ip: str, body_kind: int, body_length: int,
                 started: float) -> None:
        self.downstream = downstream
        self.method = method
        #: the normalised path (what routes, policies and the upstream see)
        self.path = path
        #: the raw query string without "?", b"" when absent
        self.query = query
        #: lower-cased, without port ("" when the client sent none)
        self.host = host
        #: the Host header as received (None when absent), forwarded as it came
        self.authority = authority
        #: raw (name, value) pairs as received; names in their original case
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.peer_ip = peer_ip
        self.client_ip = peer_ip
        #: the peer is in trusted_proxies: its X-Forwarded-* are believed and passed on
        self.trusted_peer = False
        self.request_id = ""
        self.started = started
        self.deadline = 0.0
        self.body_kind = body_kind
        self.body_length = body_length
        self.body_held: list[bytes] = []
        self.body_held_bytes = 0
        self.body_done = body_kind == BODY_NONE
        self.body_sink: Callable[[bytes], None] | None = None
        self.body_end: Callable[[], None] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.response_started = False
        self.status = 0
        self.route_name = ""
        self.upstream_addr = ""
        #: set by the upstream side while it relays a response: called with True when the
        #: client can take more bytes and False when it cannot (backpressure).
        self.on_writable: Callable[[bool], None] | None = None
        #: why the protocol gave up on this request (body too large, too slow), if it did
        self.failure: Exception | None = None
        #: set by the upstream side while a request is in flight: abandons it
        self.on_cancel: Callable[[Exception], None] | None = None

    # -- request body, pushed by the protocol ---------------------------------------------

    def feed_body(self, data: bytes) -> None:
        self.bytes_in += len(data)
        sink = self.body_sink
        if sink is not None:
            sink(data)
            return
        self.body_held.append(data)
        self.body_held_bytes += len(data)
        if self.body_held_bytes > BODY_BUFFER_HIGH:
            self.downstream.pause_reading()

    def end_body(self) -> None:
        self.body_done = True
        if self.body_end is not None:
            self.body_end()

    def attach_body(self, sink: Callable[[bytes], None], end: Callable[[], None]) -> None:
        """Send the held chunks to ``sink`` and stream the rest; ``end`` runs once the
        whole body went through."""
        held = self.body_held
        if held:
            self.body_held = []
            self.body_held_bytes = 0
            for chunk in held:
                sink(chunk)
            self.downstream.resume_reading()
        if self.body_done:
            end()
        else:
            self.body_sink = sink
            self.body_end = end

    def detach_body(self) -> None:
        self.body_sink = None
        self.body_end = None

    def fail(self, error: Exception) -> None:
        """The protocol gives up on this request: the upstream side abandons it and the
        proxy answers ``error.status``."""
        self.failure = error
        self.detach_body()
        if self.on_cancel is not None:
            self.on_cancel(error)
