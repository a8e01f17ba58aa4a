"""The WebSocket adapter (``websocket = "http"``): fastgw speaks WebSocket to the client
on behalf of an upstream that speaks only HTTP.

What lives here: ``WebSocketAdapter``, one per adapted connection, and ``attach``, which
gives a worker's proxy the adapter and binds the worker's connection registry.

The life of a connection. The handshake passed the route's policies (the proxy hands it
over in ``_forward``). The adapter checks it (``websockets``' sans-I/O ``ServerProtocol``:
Sec-WebSocket-Key and -Version; a bad one is answered 400/426 and no upstream hears of
it), then POSTs ``<path>/$connect`` upstream (the handshake's path as the route rewrites
it, its query and fields, and ``X-Connection-Id``). A 2xx accepts: the client gets the
101 and the exchange becomes a tunnel whose body flows into ``ServerProtocol.receive_data``.
Any other answer refuses: the client gets that status and body as the handshake's answer.

Each text or binary message the client sends (whole, fragments joined, text checked as
UTF-8 frame by frame) is POSTed to ``<path>`` with the message as body, one at a time and
in order; a 2xx answer's body goes back as one message (204: none), of the type of the
message that caused it (binary when a text message's answer is not UTF-8). Frames go out in the order
a synchronous server would send them: each message keeps a place (``_Reply``) in the
outgoing queue, so a pong or a close answered meanwhile waits behind the replies owed
before it. When the connection ends, however it ends, ``<path>/$disconnect`` is POSTed
after the last message's POST.

The POSTs are internal exchanges (``Proxy.internal_exchange``, ``send_internal``): the
route's upstream, its pools, balancing, health, circuits, retries and timeouts, as a
proxied request. Limits per connection: ``websocket_max_message`` (1009 beyond),
``websocket_message_rate`` (1008 beyond), and a ping every ``websocket_ping_interval``
that must be answered before the next (1011 otherwise). A 4xx answer to a message is
logged and the message dropped; a 5xx, or an upstream fastgw cannot reach, closes with
1011. The worker's drain closes with 1001 once the messages received are answered.

The adapter never touches a socket: it reads and writes through the exchange (its body
and its ``Downstream``), so it works over any protocol front end that can switch.

May import: the standard library, websockets (its sans-I/O protocol and frames),
fastgw.proxy, fastgw.exchange, fastgw.errors, fastgw.websocket_registry.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import time
from collections import deque
from typing import Any

from websockets.datastructures import Headers
from websockets.exceptions import ProtocolError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import CLOSED, OPEN
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from fastgw.exchange import UpstreamSide
from fastgw.proxy import Collector
from fastgw.websocket_registry import REGISTRY

log = logging.getLogger("fastgw")
# websockets' own log lines (a connection opened, closed) are not the error log's business;
# what it reports as a failure is.
_protocol_log = logging.getLogger("fastgw.websocket")
_protocol_log.setLevel(logging.WARNING)

TEXT, BINARY, CONT, PING, PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PING, Opcode.PONG
#: messages waiting for their POST before the client is paused (it resumes at half)
MAX_QUEUED = 16
#: how long a closing handshake fastgw began may wait for the client's close
CLOSE_TIMEOUT = 5.0
#: the handshake's fields never sent with $connect: the WebSocket handshake's own, and
#: ours, which fastgw writes (a client's X-Connection-Id is never believed)
_HANDSHAKE_ONLY = frozenset((b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
                             b"sec-websocket-protocol", b"x-connection-id"))
_TEXT_TYPE = b"text/plain; charset=utf-8"
_BINARY_TYPE = b"application/octet-stream"


def attach(proxy: Any, slot: int, supervisor_pid: int) -> None:
    """Give this worker's proxy the adapter for ``websocket = "http"`` routes, and bind
    its connection registry (ids say ``slot``; commands come to its socket)."""
    proxy.adapters["http"] = WebSocketAdapter.open
    REGISTRY.bind(slot, supervisor_pid)


def going_away() -> None:
    """The worker drains: every adapted connection closes with 1001 once the messages it
    received are answered (it reads no more), and the registry stops taking commands."""
    for held in list(REGISTRY.connections.values()):
        if isinstance(held, WebSocketAdapter):
            held.going_away()
    REGISTRY.stop()


class _Reply:
    """A message's place in the outgoing queue: its answer's frame once it came."""

    __slots__ = ("frame", "ready")

    def __init__(self) -> None:
        self.frame = b""
        self.ready = False


_EOF = object()  # in the outgoing queue: close the client connection here


class _Protocol(ServerProtocol):
    """websockets' server protocol, telling the adapter of each frame as it is parsed, so
    that the adapter's queue keeps the order of the stream."""

    def __init__(self, adapter: WebSocketAdapter, **kwargs: Any) -> None:
        super().__init__(logger=_protocol_log, **kwargs)
        self.adapter = adapter

    def recv_frame(self, frame: Frame) -> None:
        super().recv_frame(frame)
        self.events.clear()  # (handled here, frame by frame)
        self.adapter._frame(frame)


def _guarded(method):
    """An entry point from the outside (a read, an answer, a command, the clock): a bug
    of ours is logged and the connection closed, never a traceback to the client."""

    def guarded(self, *args):
        try:
            return method(self, *args)
        except Exception:
            log.exception("websocket connection %s: adapter failed", self.id)
            self._broken()
            return False

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


class WebSocketAdapter(UpstreamSide):
    """One adapted connection: the client's WebSocket on one side, POSTs on the other."""

    #: every open one, for the clock (``_tick``)
    live: set[WebSocketAdapter] = set()
    ticker: asyncio.Task | None = None

    @classmethod
    def open(cls, proxy: Any, ex: Any, route: Any, upstream: Any) -> None:
        """The proxy's hand-over: ``ex`` asks to switch on ``route``, whose policies it passed."""
        cls(proxy, ex, route, upstream).start()

    def __init__(self, proxy: Any, ex: Any, route: Any, upstream: Any) -> None:
        config = route.config
        self.proxy, self.ex, self.route, self.upstream = proxy, ex, route, upstream
        self.id = REGISTRY.new_id()
        self.path = ex.upstream_path.rstrip("/")
        self.max_message = config.websocket_max_message
        self.rate = config.websocket_message_rate
        self.burst = max(1.0, self.rate)
        self.tokens = self.burst
        self.refilled = time.monotonic()
        self.ping_interval = config.websocket_ping_interval
        self.protocol: _Protocol | None = None
        self.response: Any = None
        self.out: deque = deque()       # bytes, _Reply or _EOF, in the order they go out
        self.queue: deque = deque()     # (opcode, message, _Reply) waiting for their POST
        self.posting = False            # a POST is in flight
        self.accepted = False
        self.ended = False
        self.draining = False
        self.paused = False             # we paused the client (queue full, or drain)
        self.blocked = False            # the client cannot take more bytes
        self.message_op: Opcode | None = None
        self.parts: list[bytes] = []
        self.decoder: Any = None
        self.violation: tuple[int, str] | None = None
        self.ping_payload: bytes | None = None
        self.next_ping = 0.0
        self.closing_since = 0.0
        self.disconnect_owed = False
        self.close_code = 1006
        #: the client's Host, sent with every POST as with its handshake
        self._host = [(b"host", ex.authority)] if ex.authority is not None else []
        ex.upstream_side = self

    # -- the handshake ---------------------------------------------------------------------------

    def start(self) -> None:
        ex = self.ex
        if ex.version.startswith("1"):
            # websockets checks the handshake and makes the 101's fields; the connection's
            # own protocol starts OPEN, as the switch is the downstream's to write
            handshake = ServerProtocol(extensions=None, subprotocols=None, logger=_protocol_log)
            headers = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in ex.headers])
            target = ex.path + ("?" + ex.query.decode("latin-1") if ex.query else "")
            response = handshake.accept(Request(target, headers))
            if response.status_code != 101:
                why = handshake.handshake_exc
                self.proxy.fail(ex, response.status_code, f"invalid WebSocket handshake: {why}")
                self.proxy.finish(ex)
                return
            self.response = response
        # (else a protocol that checked the handshake itself: an HTTP/2 extended CONNECT)
        self.protocol = _Protocol(self, max_size=self.max_message, state=OPEN)
        REGISTRY.add(self.id, self)
        fields = [(n, v) for n, v in ex.headers if n.lower() not in _HANDSHAKE_ONLY]
        fields.append((b"x-connection-id", self.id.encode()))
        self._post("/$connect", ex.query, fields, b"", self._connected)

    @_guarded
    def _connected(self, answer: Collector) -> None:
        ex = self.ex
        if self.ended:  # the client left meanwhile: its handshake is logged 499
            self.proxy.fail(ex, 499, "")
            self.proxy.finish(ex)
            if 200 <= answer.status < 300:
                self.accepted = True
                self._disconnect()
            return
        if not 200 <= answer.status < 300 or answer.cut:
            # Refused: the upstream's answer is the handshake's (fastgw's own when it could
            # not reach the upstream: 502, 503, 504, whose request id finds the reason).
            self.ended = True
            REGISTRY.remove(self.id)
            ex.upstream_side = None
            fields = [(n, v) for n, v in answer.headers if n.lower() != b"x-request-id"]
            self.proxy.respond(ex, answer.status or 502, fields, answer.body)
            self.proxy.finish(ex)
            return
        self.accepted = True
        if self.response is not None:
            fields = [(name.lower().encode(), value.encode("latin-1"))
                      for name, value in self.response.headers.raw_items()
                      if name.lower() not in ("date", "server", "upgrade", "connection")]
        else:
            # HTTP/2's extended CONNECT: the key is the one fastgw's front end made for the
            # stream, and the front end answers 200 once the accept matches it.
            keys = [v for n, v in ex.headers if n.lower() == b"sec-websocket-key"]
            fields = [(b"sec-websocket-accept", accept_key(keys[0].decode("latin-1")).encode())] if keys else []
        fields.append((b"x-connection-id", self.id.encode()))
        ex.body_done = False  # a tunnel (Proxy.respond's 101): the client's bytes are the protocol's
        ex.attach_body(self._received, self._client_eof)
        self.proxy.respond(ex, 101, fields, None)
        self.next_ping = time.monotonic() + self.ping_interval
        WebSocketAdapter.live.add(self)
        if WebSocketAdapter.ticker is None or WebSocketAdapter.ticker.done():
            WebSocketAdapter.ticker = asyncio.get_running_loop().create_task(_clock())
        if self.draining:  # the worker began to drain during the $connect
            self.draining = False
            self.going_away()

    # -- from the client ----------------------------------------------------------------------------

    @_guarded
    def _received(self, data: bytes) -> None:
        if self.ended:
            return
        self.protocol.receive_data(data)
        if self.violation is not None and self.protocol.state is OPEN:
            self.protocol.fail(*self.violation)  # (after the answers owed to the messages before it)
        self._take_writes()
        self._flush()

    @_guarded
    def _client_eof(self) -> None:
        if not self.ended:
            self.protocol.receive_eof()
            self._take_writes()
            self._flush()

    def _frame(self, frame: Frame) -> None:
        """One frame parsed (``_Protocol.recv_frame``, which checked its place in the
        stream): pongs and closes answered go out in turn; a whole message is queued."""
        self._take_writes()
        op = frame.opcode
        if op is PONG:
            if self.ping_payload is not None and frame.data == self.ping_payload:
                self.ping_payload = None
            return
        if op is TEXT or op is BINARY:
            self.message_op, self.parts = op, []
            self.decoder = codecs.getincrementaldecoder("utf-8")() if op is TEXT else None
        elif op is not CONT:
            return
        if self.decoder is not None:
            self.decoder.decode(frame.data, frame.fin)  # UnicodeDecodeError: websockets closes 1007
        self.parts.append(frame.data)
        if not frame.fin:
            return
        message, self.parts = b"".join(self.parts), []
        if self.violation is not None or self.protocol.close_sent is not None or self.draining:
            return  # (closing: what comes now is not answered)
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1.0:
            self.violation = (1008, "message rate exceeded")
            return
        self.tokens -= 1.0
        reply = _Reply()
        self.out.append(reply)
        self.queue.append((self.message_op, message, reply))
        if len(self.queue) >= MAX_QUEUED and not self.paused:
            self.paused = True
            self.ex.downstream.pause_reading(self.ex)
        self._next_post()

    # -- to the upstream ------------------------------------------------------------------------------

    def _post(self, suffix: str, query: bytes, fields: list, body: bytes, done: Any) -> None:
        """POST ``body`` to the route's path + ``suffix``, as an internal exchange of the
        route's upstream (the current config's of that name, after a reload)."""
        upstream = self.proxy.snapshot.upstreams.get(self.upstream.name, self.upstream)
        collector = Collector(done, body, max(self.max_message, 1 << 20))
        ex = self.proxy.internal_exchange(self.ex, (self.path + suffix) or "/", query, fields, collector)
        self.proxy.send_internal(ex, upstream, self.route.timeout)

    def _next_post(self) -> None:
        if self.posting or self.blocked:
            return
        if not self.queue:
            if self.disconnect_owed:
                self._disconnect()
            elif self.draining and not self.ended:
                self.close(1001, "going away")
            return
        op, message, reply = self.queue.popleft()
        if self.paused and not self.draining and len(self.queue) <= MAX_QUEUED // 2:
            self.paused = False
            self.ex.downstream.resume_reading(self.ex)
        fields = [*self._host, (b"x-connection-id", self.id.encode()),
                  (b"content-type", _TEXT_TYPE if op is TEXT else _BINARY_TYPE)]
        self.posting = True
        self._post("", b"", fields, message, lambda answer: self._answered(answer, op, reply))

    @_guarded
    def _answered(self, answer: Collector, op: Opcode, reply: _Reply) -> None:
        self.posting = False
        status = answer.status
        reply.ready = True
        if 200 <= status < 300 and not answer.cut:
            body = answer.body
            if answer.too_large:
                log.warning("websocket connection %s: the answer to a message is larger than %d bytes; dropped",
                            self.id, answer.limit)
            elif status != 204:  # (an empty body is an empty message; 204 is no message)
                if op is TEXT:
                    try:
                        body.decode("utf-8")
                    except UnicodeDecodeError:
                        op = BINARY
                reply.frame = Frame(op, body).serialize(mask=False)
        elif status >= 500 or answer.cut or not status:
            log.error("websocket connection %s route %s: POST %s answered %d; closing with 1011",
                      self.id, self.ex.route_name, self.path or "/", status)
            self._flush()
            self.close(1011, "upstream failure")
        else:
            log.warning("websocket connection %s route %s: POST %s answered %d; message dropped",
                        self.id, self.ex.route_name, self.path or "/", status)
        self._flush()
        self._next_post()

    def _disconnect(self) -> None:
        self.disconnect_owed = False
        fields = [*self._host, (b"x-connection-id", self.id.encode()),
                  (b"x-websocket-close-code", str(self.close_code).encode())]
        self.posting = True
        self._post("/$disconnect", b"", fields, b"", self._disconnected)

    @_guarded
    def _disconnected(self, answer: Collector) -> None:
        self.posting = False
        if not 200 <= answer.status < 300:
            log.warning("websocket connection %s route %s: POST %s/$disconnect answered %d",
                        self.id, self.ex.route_name, self.path, answer.status)

    # -- to the client ----------------------------------------------------------------------------------

    def _take_writes(self) -> None:
        """What the protocol wrote (pongs, closes, its end of stream) goes in turn."""
        for data in self.protocol.data_to_send():
            if data:
                self.out.append(data)
            else:
                self.out.append(_EOF)

    def _flush(self) -> None:
        """Send what is ready at the front of the queue; close at its end of stream."""
        out, chunks, eof = self.out, [], False
        while out:
            item = out[0]
            if item is _EOF:
                out.popleft()
                eof = True
                break
            if isinstance(item, bytes):
                chunks.append(item)
            elif item.ready:
                if item.frame:
                    chunks.append(item.frame)
            else:
                break
            out.popleft()
        if chunks and not self.ended:
            self.ex.downstream.send_body(self.ex, b"".join(chunks))
        if eof:
            self._end(lost=False)

    def _send_now(self, frame: bytes) -> None:
        """A frame of our own (a push, a ping) while open: it goes at once, between
        frames already sent and those still owed (control and whole frames only)."""
        self.ex.downstream.send_body(self.ex, frame)

    # -- the end ------------------------------------------------------------------------------------------

    def _end(self, lost: bool) -> None:
        """The connection is over: closed cleanly or not (``lost``: the client is gone)."""
        if self.ended:
            return
        self.ended = True
        protocol = self.protocol
        if protocol is not None:
            if protocol.close_rcvd is not None:
                self.close_code = protocol.close_rcvd.code
            elif protocol.close_sent is not None:
                self.close_code = protocol.close_sent.code
        REGISTRY.remove(self.id)
        WebSocketAdapter.live.discard(self)
        ex = self.ex
        ex.detach_body()
        ex.upstream_side = None
        self._dropped_queue()
        if not lost:
            ex.downstream.send_end(ex)
        self.proxy.finish(ex)
        if self.accepted:
            self.disconnect_owed = True
            if not self.posting:
                self._disconnect()

    def _dropped_queue(self) -> None:
        for _, _, reply in self.queue:
            reply.ready = True
        self.queue.clear()

    def _broken(self) -> None:
        """After a bug of ours: the client is answered 500, or closed without more ado."""
        if self.ended:
            return
        if self.accepted:
            self.ex.downstream.abort(self.ex)
            self._end(lost=True)
            return
        self.ended = True
        REGISTRY.remove(self.id)
        self.ex.upstream_side = None
        self.proxy.fail(self.ex, 500, "internal error")
        self.proxy.finish(self.ex)

    # -- UpstreamSide: what the client's protocol tells us --------------------------------------------------

    @_guarded
    def cancel(self, error: Any) -> None:
        """The client's connection is gone (or its protocol gave up on it)."""
        if self.protocol is not None and self.accepted:
            self._end(lost=True)
        else:
            self.ended = True  # (the $connect under way learns of it when it answers)
            REGISTRY.remove(self.id)

    @_guarded
    def client_writable(self, writable: bool) -> None:
        """Backpressure: no new POST while the client cannot take their answers."""
        self.blocked = not writable
        if writable:
            self._next_post()

    # -- commands: the registry, the clock, the drain ---------------------------------------------------------

    @_guarded
    def push(self, data: str | bytes) -> bool:
        """A message from elsewhere (the registry): sent at once when the connection is open."""
        if self.ended or self.protocol.state is not OPEN or not self.accepted:
            return False
        op = TEXT if isinstance(data, str) else BINARY
        self._send_now(Frame(op, data.encode() if op is TEXT else data).serialize(mask=False))
        return True

    @_guarded
    def close(self, code: int, reason: str = "") -> bool:
        """Begin the closing handshake with ``code`` (messages not yet posted are dropped)."""
        if self.ended or self.protocol is None or self.protocol.state is not OPEN or not self.accepted:
            return False
        try:
            self.protocol.send_close(code, reason)
        except ProtocolError:  # a code no one may send (1005, 1006, 2000...), or a reason too long
            return False
        self.closing_since = time.monotonic()
        self._dropped_queue()
        self._take_writes()
        self._flush()
        if self.paused:  # its close must be read
            self.paused = False
            self.ex.downstream.resume_reading(self.ex)
        return True

    @_guarded
    def going_away(self) -> None:
        if self.ended or self.draining:
            return
        self.draining = True
        if not self.accepted:
            return  # (its $connect's answer finds it draining: refused below by the close)
        if not self.paused:
            self.paused = True
            self.ex.downstream.pause_reading(self.ex)
        self._next_post()

    @_guarded
    def _tick(self, now: float) -> None:
        """The clock, once a second: keep-alive pings, and a closing handshake that the
        client never finished."""
        if self.ended:
            return
        protocol = self.protocol
        if protocol.state is OPEN:
            if self.paused:  # (its pongs are not read meanwhile)
                self.ping_payload, self.next_ping = None, now + self.ping_interval
            elif now >= self.next_ping:
                if self.ping_payload is not None:
                    self.close(1011, "keepalive ping timeout")
                    return
                self.ping_payload = os.urandom(4)
                self._send_now(Frame(PING, self.ping_payload).serialize(mask=False))
                self.next_ping = now + self.ping_interval
        elif self.closing_since and now - self.closing_since > CLOSE_TIMEOUT or protocol.state is CLOSED:
            self.ex.downstream.abort(self.ex)
            self._end(lost=True)


async def _clock() -> None:
    """The adapted connections' clock: one task per worker, not a timer per connection."""
    while WebSocketAdapter.live:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for adapter in list(WebSocketAdapter.live):
            adapter._tick(now)
