"""Aggregate routes (``[routes.aggregate]``): one client request answered by a
composition of backend calls, run by fastgw itself.

What lives here: ``attach`` (gives a worker's proxy the handler it hands an aggregate
route's request to, once the route's policies passed: ``Proxy.adapters["aggregate"]``),
and ``Aggregation``, one client request's composition: the client's body read whole
(templates read it), each call's path, query, headers and JSON body filled in from the
templates ``fastgw.config`` compiled at load, the calls sent as internal exchanges
(``Proxy.internal_exchange`` / ``send_internal``: the same pools, balancing, retries,
circuits, timeouts and access log as a proxied request), all at once ("parallel") or in
order ("sequence", the ``compensate`` calls of those that succeeded run in reverse
order when one fails), the answer written with ``Proxy.respond`` and the exchange ended
with ``Proxy.finish``.

Answers: 200 with a JSON object, one member per call (its JSON body, or its body as a
string); 400 naming a template value the request lacks (or its invalid JSON body); 502
naming the failed call, its status or transport error, and each compensation's outcome;
504 naming the calls still running at the composition's deadline.

Every call carries ``X-Request-Id`` (the client request's id: its calls share it in the
access log) and ``Idempotency-Key: <request id>/<call name>``.

May import: the standard library, orjson, fastgw.proxy (``Collector``), fastgw.exchange
(``UpstreamSide``); fastgw.config only for types.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson

from fastgw.exchange import UpstreamSide
from fastgw.proxy import Collector

log = logging.getLogger("fastgw.aggregate")

_JSON = [(b"content-type", b"application/json")]


def attach(proxy: Any) -> None:
    """Give ``proxy`` the hand-over of aggregate routes."""
    proxy.adapters["aggregate"] = Aggregation.open


class _Missing(Exception):
    """A template value the request (or an earlier call) lacks: a 400 naming it."""


def _ref_text(ref: tuple[Any, ...]) -> str:
    if ref[0] == "call":
        return "{" + ".".join(ref[1:]) + "}"
    return "{" + ".".join(ref) + "}"


class Aggregation(UpstreamSide):
    """One client request's composition (see the module's docstring)."""

    @classmethod
    def open(cls, proxy: Any, ex: Any, route: Any, params: Any) -> None:
        """The proxy's hand-over: ``ex`` passed ``route``'s policies."""
        cls(proxy, ex, route, params).start()

    def __init__(self, proxy: Any, ex: Any, route: Any, params: Any) -> None:
        self.proxy, self.ex, self.route = proxy, ex, route
        self.spec = route.config.aggregate
        self.upstreams = route.upstreams_by_name
        self.params = dict(params or {})
        self.chunks: list[bytes] = []
        self.body_value: Any = None
        self.body_parsed = False
        self.results: dict[str, Any] = {}      # call name -> (status, body bytes)
        self.running: dict[str, Any] = {}      # call name -> its internal exchange
        self.over = False
        self.timer: Any = None
        self.deadline = 0.0
        self._query: dict[str, str] | None = None
        self._headers: dict[str, str] | None = None
        ex.upstream_side = self

    # -- the client's side ---------------------------------------------------------------------

    def start(self) -> None:
        self.deadline = time.monotonic() + self.spec.timeout
        self.timer = asyncio.get_running_loop().call_later(self.spec.timeout, self._expired)
        self.ex.attach_body(self.chunks.append, self._body_read)

    def cancel(self, error: Any) -> None:
        """The client's connection is gone (or its protocol refused the request)."""
        if self.over:
            return
        status = getattr(error, "status", 400) or 400
        self._fail(status, getattr(error, "public", None) or str(error) or "request failed")

    def client_writable(self, writable: bool) -> None:  # (we write the answer at once)
        pass

    def _body_read(self) -> None:
        if self.over:
            return
        try:
            self._check_request_values()
            if self.spec.mode == "parallel":
                for call in self.spec.calls:
                    self._send(call, self._parallel_done)
            else:
                self.index = 0
                self._next()
        except _Missing as missing:
            self._answer(400, {"error": str(missing)})
        except Exception:  # a bug of ours: answer 500, keep serving
            log.exception("request %s: the aggregate failed", self.ex.request_id)
            self._answer(500, {"error": "internal error"})

    # -- the templates -----------------------------------------------------------------------------

    def _value(self, ref: tuple[Any, ...]) -> Any:
        kind = ref[0]
        if kind == "path":
            value = self.params.get(ref[1])
        elif kind == "query":
            if self._query is None:
                self._query = dict(parse_qsl(self.ex.query.decode("latin-1"), keep_blank_values=True))
            value = self._query.get(ref[1])
        elif kind == "header":
            if self._headers is None:
                self._headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in self.ex.headers}
            value = self._headers.get(ref[1])
        elif kind == "body":
            if not self.body_parsed:
                self.body_parsed = True
                try:
                    self.body_value = orjson.loads(b"".join(self.chunks)) if self.chunks else None
                except orjson.JSONDecodeError:
                    raise _Missing(f"the request body is not valid JSON (needed by {_ref_text(ref)})") from None
            value = _dig(self.body_value, ref[1:])
        else:  # ("call", name, "status") / ("call", name, "body", *keys)
            status, body = self.results[ref[1]]
            if ref[2] == "status":
                return status
            value = _dig(_decoded(body), ref[3:])
        if value is None:
            raise _Missing(f"missing template value {_ref_text(ref)}")
        return value

    def _check_request_values(self) -> None:
        """Every value the templates take from the client's request, looked up before
        any call is sent: one missing is a 400 with nothing done upstream."""
        for call in self.spec.calls:
            for one in (call, call.compensate):
                if one is None:
                    continue
                templates = [one.path, *(t for _, t in one.query), *(t for _, t in one.headers)]
                for template in templates:
                    for part in template:
                        if isinstance(part, tuple) and part[0] != "call":
                            self._value(part)
                if one.body is not None:
                    for ref in _json_refs(one.body):
                        if ref[0] != "call":
                            self._value(ref)

    def _text(self, template: tuple[Any, ...], encode: bool = False) -> str:
        out = []
        for part in template:
            if isinstance(part, str):
                out.append(part)
                continue
            value = self._value(part)
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            if encode:
                text = quote(text, safe="")
                if text in (".", ".."):
                    text = text.replace(".", "%2E")
            out.append(text)
        return "".join(out)

    def _json(self, node: Any) -> Any:
        kind, value = node
        if kind == "lit":
            return value
        if kind == "ref":
            return self._value(value)
        if kind == "str":
            return self._text(value)
        if kind == "obj":
            return {k: self._json(v) for k, v in value}
        return [self._json(v) for v in value]

    # -- the calls ---------------------------------------------------------------------------------

    def _send(self, call: Any, done: Any, label: str | None = None) -> None:
        """Send ``call`` (its templates filled now; a missing value raises ``_Missing``)."""
        path = self._text(call.path, encode=True)
        query = urlencode([(k, self._text(v)) for k, v in call.query]).encode() if call.query else b""
        body = b"" if call.body is None else orjson.dumps(self._json(call.body))
        name = label or call.name
        fields = [(k.encode("latin-1"), self._text(v).encode("latin-1")) for k, v in call.headers]
        fields.append((b"idempotency-key", f"{self.ex.request_id}/{name}".encode("latin-1")))
        if self.ex.authority is not None:
            fields.append((b"host", self.ex.authority))
        if call.body is not None:
            fields.append((b"content-type", b"application/json"))
        collector = Collector(lambda answer: done(call, answer), body, self.spec.max_body_bytes)
        iex = self.proxy.internal_exchange(self.ex, path, query, fields, collector)
        iex.method = call.method
        iex.is_head = call.method == "HEAD"
        iex.request_id = self.ex.request_id
        self.running[name] = iex
        remaining = max(self.deadline - time.monotonic(), 0.001)
        self.proxy.send_internal(iex, self.upstreams[call.upstream], remaining)

    @staticmethod
    def _failure(call: Any, answer: Collector) -> dict[str, Any] | None:
        """What went wrong with ``call``'s answer, or None when it is a whole 2xx."""
        if answer.cut:
            return {"call": call.name, "status": answer.status or None, "error": "the response was cut"}
        if answer.too_large:
            return {"call": call.name, "status": answer.status, "error": "the response is over max_body_bytes"}
        if not 200 <= answer.status < 300:
            failure: dict[str, Any] = {"call": call.name, "status": answer.status}
            error = _decoded(answer.body)
            if isinstance(error, dict) and isinstance(error.get("error"), str):
                failure["error"] = error["error"]
            return failure
        return None

    def _parallel_done(self, call: Any, answer: Collector) -> None:
        self.running.pop(call.name, None)
        if self.over:
            return
        failure = self._failure(call, answer)
        if failure is not None:
            self._answer(502, {"error": f"call {call.name!r} failed", "failed": failure})
            return
        self.results[call.name] = (answer.status, answer.body)
        if len(self.results) == len(self.spec.calls):
            self._answer(200, None)

    def _next(self) -> None:
        calls = self.spec.calls
        if self.index == len(calls):
            self._answer(200, None)
            return
        self._send(calls[self.index], self._sequence_done)

    def _sequence_done(self, call: Any, answer: Collector) -> None:
        self.running.pop(call.name, None)
        if self.over:
            return
        failure = self._failure(call, answer)
        if failure is not None:
            self.failure = failure
            self.done_calls = [c for c in self.spec.calls[:self.index] if c.compensate is not None]
            self.compensations: list[dict[str, Any]] = []
            self._compensate()
            return
        self.results[call.name] = (answer.status, answer.body)
        self.index += 1
        try:
            self._next()
        except _Missing as missing:
            self.failure = {"call": self.spec.calls[self.index].name, "error": str(missing)}
            self.done_calls = [c for c in self.spec.calls[:self.index] if c.compensate is not None]
            self.compensations = []
            self._compensate()

    def _compensate(self) -> None:
        """The next compensation, in reverse order of the calls; then the 502."""
        while self.done_calls:
            call = self.done_calls.pop()
            try:
                self._send(call.compensate, self._compensated, f"{call.name}.compensate")
                return
            except _Missing as missing:
                self.compensations.append({"call": call.name, "outcome": "not sent", "error": str(missing)})
        self._answer(502, {"error": f"call {self.failure['call']!r} failed", "failed": self.failure,
                           "compensations": self.compensations})

    def _compensated(self, call: Any, answer: Collector) -> None:
        self.running.pop(f"{call.name}.compensate", None)
        if self.over:
            return
        failure = self._failure(call, answer)
        outcome: dict[str, Any] = {"call": call.name, "status": answer.status or None,
                                   "outcome": "ok" if failure is None else "failed"}
        if failure is not None and "error" in failure:
            outcome["error"] = failure["error"]
        if failure is not None:
            # Never silently dropped: the client's 502 lists it, and so does the error log.
            log.error("request %s route %s: compensation of %s failed: %s", self.ex.request_id,
                      self.ex.route_name, call.name, failure.get("error") or f"answered {answer.status}")
        self.compensations.append(outcome)
        self._compensate()

    def _expired(self) -> None:
        if self.over:
            return
        running = sorted(self.running)
        self._answer(504, {"error": "the aggregate's deadline passed", "running": running})

    # -- the answer ---------------------------------------------------------------------------------

    def _answer(self, status: int, document: dict[str, Any] | None) -> None:
        if self.over:
            return
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
        ex = self.ex
        ex.detach_body()
        if ex.failure is not None:  # the client is gone: nothing to write, only to log
            self.proxy.fail(ex, ex.failure.status, None)
            self.proxy.finish(ex)
            return
        if document is None:
            result = {name: _decoded(body, as_text=True) for name, (_, body) in
                      sorted(self.results.items(), key=lambda item: self._order(item[0]))}
            body = orjson.dumps(result)
        else:
            document.setdefault("status", status)
            document["request_id"] = ex.request_id
            body = orjson.dumps(document)
        self.proxy.respond(ex, status, list(_JSON), body)
        self.proxy.finish(ex)

    def _fail(self, status: int, message: str) -> None:
        if self.over:
            return
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
        self.proxy.fail(self.ex, status, message)
        self.proxy.finish(self.ex)

    def _order(self, name: str) -> int:
        for i, call in enumerate(self.spec.calls):
            if call.name == name:
                return i
        return len(self.spec.calls)


def _json_refs(node: Any):
    """The references of a compiled JSON template."""
    kind, value = node
    if kind == "ref":
        yield value
    elif kind == "str":
        yield from (p for p in value if isinstance(p, tuple))
    elif kind == "obj":
        for _, v in value:
            yield from _json_refs(v)
    elif kind == "list":
        for v in value:
            yield from _json_refs(v)


def _dig(value: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def _decoded(body: bytes, as_text: bool = False) -> Any:
    """A body's JSON value; else (``as_text``) its text, or None."""
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace") if as_text else None
