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
order when one fails, each tried again per its upstream's ``retries``), the answer
written with ``Proxy.respond`` and the exchange ended with ``Proxy.finish``; and
``undoing``, the count of compositions whose compensations run on after the answer
(a worker's drain waits for them).

Answers: 200 with a JSON object, one member per call (its JSON body, or its body as a
string); 400 naming a template value the request (or an earlier response) lacks, or the
request's invalid JSON body; 502 naming the failed call, its status or transport error
(or the earlier call whose response a template needs and is not JSON), and each
compensation's outcome; 504 naming the calls still running at the composition's
deadline, which are cut (a sequence's compensations run on, after the answer). A client
that leaves is the same as the deadline, without the answer.

Every call carries ``X-Request-Id`` (the client request's id: its calls share it in the
access log) and ``Idempotency-Key: <request id>/<call name>``.

May import: the standard library, orjson, fastgw.errors, fastgw.proxy (``Collector``),
fastgw.exchange (``UpstreamSide``), fastgw.config (``template_text``).
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson

from fastgw.errors import ClientClosedRequest
from fastgw.config import template_text
from fastgw.exchange import UpstreamSide
from fastgw.proxy import Collector

log = logging.getLogger("fastgw.aggregate")

_JSON = [(b"content-type", b"application/json")]


def attach(proxy: Any) -> None:
    """Give ``proxy`` the hand-over of aggregate routes."""
    proxy.adapters["aggregate"] = Aggregation.open


#: compositions whose compensations run on after the client's answer (a drain waits
#: for them, as for connections, up to its ``drain_timeout``)
_UNDOING: set[Aggregation] = set()


def undoing() -> int:
    """How many compositions are still undoing calls after their answer."""
    return len(_UNDOING)


class _Missing(Exception):
    """A template value the request (or an earlier call) lacks: a 400 naming it."""


class _NotJSON(Exception):
    """A template reads the body of ``call``, which is not JSON: a 502 naming the call."""

    def __init__(self, call: str, message: str) -> None:
        super().__init__(message)
        self.call = call


_UNPARSED = object()
#: a call's backstop deadline past the composition's (whose timer answers first)
_BACKSTOP = 1.0
#: seconds before a compensation's next try, times the tries so far
_RETRY_DELAY = 0.05


class Aggregation(UpstreamSide):
    """One client request's composition (see the module's docstring).

    Its life: the client's body read, every request value looked up, the calls sent;
    then one answer to the client (``answered``), after which only compensations may
    still run (a sequence stopped by its deadline or by the client leaving), each
    outcome going to the log.
    """

    @classmethod
    def open(cls, proxy: Any, ex: Any, route: Any, params: Any) -> None:
        """The proxy's hand-over: ``ex`` passed ``route``'s policies."""
        cls(proxy, ex, route, params).start()

    def __init__(self, proxy: Any, ex: Any, route: Any, params: Any) -> None:
        self.proxy, self.ex = proxy, ex
        self.spec = route.config.aggregate
        self.upstreams = route.upstreams_by_name
        self.params = dict(params or {})
        self.chunks: list[bytes] = []
        self.body_value: Any = None
        self.body_parsed = False
        self.results: dict[str, Any] = {}      # call name -> (status, body bytes)
        self.documents: dict[str, Any] = {}    # call name -> its body's JSON, once a template read it
        #: label ("deposit", "withdraw.compensate") -> its internal exchange, or None
        #: while a compensation waits to be tried again
        self.running: dict[str, Any] = {}
        self.index = 0                         # a sequence's next call
        self.stopped = False                   # no more calls: failed, expired or abandoned
        self.answered = False
        self.timer: Any = None
        self.loop: Any = None
        self.deadline = 0.0
        self.failure: dict[str, Any] | None = None
        self.status = 502                      # the answer once the compensations ran
        self.to_compensate: list[Any] = []     # calls that succeeded, the last one last
        self.compensations: list[dict[str, Any]] = []
        self._query: dict[str, str] | None = None
        self._headers: dict[str, str] | None = None
        ex.upstream_side = self

    # -- the client's side ---------------------------------------------------------------------

    def start(self) -> None:
        self.deadline = time.monotonic() + self.spec.timeout
        # (the proxy keeps its worker's loop: asyncio.get_running_loop() is a getpid())
        self.loop = self.proxy.event_loop()
        self.timer = self.loop.call_later(self.spec.timeout, self._expired)
        self.ex.attach_body(self.chunks.append, self._body_read)

    def cancel(self, error: Any) -> None:
        """The client's connection is gone (or its protocol refused the request): no
        answer to write; the calls in flight are cut, and what a sequence did is undone."""
        if self.answered:
            return
        self._now_answered()
        status = getattr(error, "status", 400) or 400
        self.proxy.fail(self.ex, status, getattr(error, "public", None) or str(error) or "request failed")
        self.proxy.finish(self.ex)
        if self._abandon("the client left"):
            self._compensate()

    def client_writable(self, writable: bool) -> None:  # (we write the answer at once)
        pass

    def _body_read(self) -> None:
        if self.answered:
            return
        try:
            self._check_request_values()
            if self.spec.mode == "parallel":
                for call in self.spec.calls:
                    self._send(call, self._parallel_done)
            else:
                self._next()
        except _Missing as missing:
            self.stopped = True
            self._answer(400, {"error": str(missing)})
        except Exception:  # a bug of ours: answer 500, keep serving
            log.exception("request %s: the aggregate failed", self.ex.request_id)
            undo = self._abandon("internal error")
            self._answer(500, {"error": "internal error"})
            if undo:
                self._compensate()

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
                    raise _Missing(f"the request body is not valid JSON (needed by {template_text((ref,))})") from None
            value = _dig(self.body_value, ref[1:])
        else:  # ("call", name, "status") / ("call", name, "body", *keys)
            status, body = self.results[ref[1]]
            if ref[2] == "status":
                return status
            # (parsed once per call, however many templates read it)
            document = self.documents.get(ref[1], _UNPARSED)
            if document is _UNPARSED:
                try:
                    document = self.documents[ref[1]] = orjson.loads(body) if body else None
                except orjson.JSONDecodeError:
                    raise _NotJSON(ref[1], f"the response of call {ref[1]!r} is not valid JSON"
                                           f" (needed by {template_text((ref,))})") from None
            value = _dig(document, ref[3:])
        if value is None:
            raise _Missing(f"missing template value {template_text((ref,))}")
        return value

    def _check_request_values(self) -> None:
        """Every value the templates take from the client's request, looked up before
        any call is sent: one missing is a 400 with nothing done upstream."""
        for ref in self.spec.request_refs:
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
        """Send ``call`` (its templates filled now: a value missing raises ``_Missing``,
        an earlier response that is not JSON ``_NotJSON``), labelled ``label`` (its name,
        or "<call>.compensate"): ``done(call, collector)`` hears its end."""
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
        # ``done`` runs on the loop's next turn, not inside the relay that completed the
        # answer: the call's access log line comes first (before the client's, when that
        # answer ends the composition), and no send nests inside another's callback.
        call_soon = self.loop.call_soon
        collector = Collector(lambda answer: call_soon(done, call, answer), body, self.spec.max_body_bytes)
        iex = self.proxy.internal_exchange(self.ex, path, query, fields, collector)
        iex.method = call.method
        iex.is_head = call.method == "HEAD"
        iex.request_id = self.ex.request_id
        self.running[name] = iex
        if label is None:
            # A call runs within the composition's deadline, which our own timer keeps
            # (it answers the 504 and cuts what still runs); the call's deadline is a
            # backstop a little later, unless its own timeout comes first.
            timeout = self.deadline - time.monotonic() + _BACKSTOP
            if call.timeout is not None and call.timeout < timeout:
                timeout = call.timeout
        else:
            # A compensation may run after the client was answered: its own timeout (or
            # its call's), else the upstream's connect and read timeouts bound it.
            timeout = call.timeout or 0.0
        self.proxy.send_internal(iex, self.upstreams[call.upstream], max(timeout, 0.001) if timeout else 0.0)

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
        if self.stopped:
            return
        failure = self._failure(call, answer)
        if failure is not None:
            self.stopped = True
            self._cut_running_calls(f"call {call.name!r} failed")
            self._answer(502, {"error": f"call {call.name!r} failed", "failed": failure})
            return
        self.results[call.name] = (answer.status, answer.body)
        if len(self.results) == len(self.spec.calls):
            self._answer(200, None)

    def _next(self) -> None:
        calls = self.spec.calls
        if self.index == len(calls):
            self.stopped = True
            self._answer(200, None)
            return
        self._send(calls[self.index], self._sequence_done)

    def _sequence_done(self, call: Any, answer: Collector) -> None:
        self.running.pop(call.name, None)
        if self.stopped:
            return
        failure = self._failure(call, answer)
        if failure is not None:
            self._stop(502, failure)
            return
        self.results[call.name] = (answer.status, answer.body)
        if call.compensate is not None:
            self.to_compensate.append(call)
        self.index += 1
        try:
            self._next()
        except _Missing as missing:
            # (a value of an earlier response: the client's were all looked up first)
            self._stop(400, {"call": self.spec.calls[self.index].name, "error": str(missing)})
        except _NotJSON as bad:
            self._stop(502, {"call": bad.call, "status": self.results[bad.call][0], "error": str(bad)})

    def _stop(self, status: int, failure: dict[str, Any]) -> None:
        """A sequence failed at ``failure["call"]``: undo what succeeded, then answer."""
        self.stopped = True
        self.failure = failure
        self.status = status
        self._compensate()

    # -- the compensations -----------------------------------------------------------------------

    def _compensate(self) -> None:
        """The next compensation, in reverse order of the calls; after the last, the
        client's answer (or, when it was answered already, a line in the log)."""
        while self.to_compensate:
            call = self.to_compensate.pop()
            if self._send_compensation(call, 1):
                if self.answered:
                    _UNDOING.add(self)
                return
        if self.answered:
            _UNDOING.discard(self)
            failed = [c["call"] for c in self.compensations if c["outcome"] != "ok"]
            (log.error if failed else log.info)(
                "request %s route %s: compensations after the answer: %s", self.ex.request_id,
                self.ex.route_name, ", ".join(f"{c['call']} {c['outcome']}" for c in self.compensations) or "none")
            return
        failure = self.failure or {}
        error = failure.get("error") if self.status == 400 else f"call {failure.get('call')!r} failed"
        self._answer(self.status, {"error": error, "failed": failure, "compensations": self.compensations})

    def _send_compensation(self, call: Any, attempt: int) -> bool:
        """Send ``call``'s compensation (try ``attempt``): True when it went, False when
        a value it needs is missing (reported "not sent")."""
        label = f"{call.name}.compensate"
        self.running.pop(label, None)
        try:
            self._send(call.compensate, lambda _, answer: self._compensated(call, attempt, answer), label)
            return True
        except (_Missing, _NotJSON) as missing:
            self.compensations.append({"call": call.name, "outcome": "not sent", "error": str(missing)})
            log.error("request %s route %s: compensation of %s not sent: %s", self.ex.request_id,
                      self.ex.route_name, call.name, missing)
            return False

    def _compensate_again(self, call: Any, attempt: int) -> None:
        if not self._send_compensation(call, attempt):
            self._compensate()

    def _compensated(self, call: Any, attempt: int, answer: Collector) -> None:
        label = f"{call.name}.compensate"
        self.running.pop(label, None)
        failure = self._failure(call, answer)
        if failure is not None and attempt <= self.upstreams[call.upstream].retries and _worth_again(answer):
            # Its Idempotency-Key is the same each time: a backend that applied it
            # already can tell. (A 4xx is an answer, not an accident: not tried again.)
            log.warning("request %s route %s: compensation of %s failed (%s), trying again", self.ex.request_id,
                        self.ex.route_name, call.name, failure.get("error") or f"answered {answer.status}")
            self.running[label] = None
            self.loop.call_later(_RETRY_DELAY * attempt, self._compensate_again, call, attempt + 1)
            return
        outcome: dict[str, Any] = {"call": call.name, "status": answer.status or None,
                                   "outcome": "ok" if failure is None else "failed"}
        if attempt > 1:
            outcome["attempts"] = attempt
        if failure is not None:
            if "error" in failure:
                outcome["error"] = failure["error"]
            # Never silently dropped: the client's answer lists it, and so does the error log.
            log.error("request %s route %s: compensation of %s failed after %d attempt(s): %s", self.ex.request_id,
                      self.ex.route_name, call.name, attempt, failure.get("error") or f"answered {answer.status}")
        self.compensations.append(outcome)
        self._compensate()

    # -- the deadline, the client leaving ----------------------------------------------------------

    def _expired(self) -> None:
        if self.answered:
            return
        running = sorted(self.running)
        compensating = [label.removesuffix(".compensate") for label in running if label.endswith(".compensate")]
        undo = self._abandon("the aggregate's deadline passed")
        document: dict[str, Any] = {"error": "the aggregate's deadline passed", "running": running}
        if compensating or undo:
            document["compensating"] = compensating + undo
        self._answer(504, document)
        if undo:
            self._compensate()

    def _abandon(self, why: str) -> list[str]:
        """The composition will not finish (its deadline, the client gone, a bug): cut
        the calls in flight. Returns the calls of a sequence that succeeded, the last
        first: the caller undoes them (``_compensate``) once the client's answer is
        written, so that they run on in the background."""
        if self.stopped:  # (failed already: its compensations, if any, run on)
            return []
        self.stopped = True
        self._cut_running_calls(why)
        if self.spec.mode != "sequence" or not self.to_compensate:
            return []
        self.failure = {"error": why}
        self.status = 504
        return [call.name for call in reversed(self.to_compensate)]

    def _cut_running_calls(self, why: str) -> None:
        """Cut the calls still in flight (not compensations, which always run to their end)."""
        for label, iex in list(self.running.items()):
            if iex is None or label.endswith(".compensate"):
                continue
            del self.running[label]
            if self.spec.mode == "sequence":
                # Sent, not answered: its backend may or may not have applied it. Not
                # compensated (only what succeeded is); its key lets an operator look.
                log.warning("request %s route %s: call %s cut (%s); its outcome is unknown (Idempotency-Key %s/%s)",
                            self.ex.request_id, self.ex.route_name, label, why, self.ex.request_id, label)
            iex.fail(ClientClosedRequest(why))

    # -- the answer ---------------------------------------------------------------------------------

    def _now_answered(self) -> None:
        """The client has its answer (or is gone): what still runs is compensations."""
        self.answered = True
        self.timer.cancel()
        # PERF: the exchange and its timer refer back to us; left, those cycles wait for
        # the cyclic GC, which took ~12% of a worker busy with aggregates. Nothing needs
        # them now: after the answer, the client leaving changes nothing.
        self.timer = None
        self.ex.upstream_side = None
        if any(label.endswith(".compensate") for label in self.running):
            _UNDOING.add(self)

    def _answer(self, status: int, document: dict[str, Any] | None) -> None:
        if self.answered:
            return
        self._now_answered()
        ex = self.ex
        ex.detach_body()
        if ex.failure is not None:  # the client is gone: nothing to write, only to log
            self.proxy.fail(ex, ex.failure.status, None)
            self.proxy.finish(ex)
            return
        if document is None:
            documents = self.documents
            result = {call.name: documents[call.name] if call.name in documents
                      else _decoded(self.results[call.name][1], as_text=True) for call in self.spec.calls}
            body = orjson.dumps(result)
        else:
            document.setdefault("status", status)
            document["request_id"] = ex.request_id
            body = orjson.dumps(document)
        self.proxy.respond(ex, status, list(_JSON), body)
        self.proxy.finish(ex)


def _worth_again(answer: Collector) -> bool:
    """A compensation's failure that another try may mend: no answer, a cut one, a
    5xx, 408 or 429."""
    return answer.cut or answer.status == 0 or answer.status >= 500 or answer.status in (408, 429)


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
