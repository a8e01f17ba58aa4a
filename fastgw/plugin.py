"""User-written plugins: Python modules from ``[plugins].paths`` that become policies of
the route chain, as the built-in ones are. This is the plugin author's API (the names
below ``__all__``) and the adapter that runs their hooks on the chain.

A plugin is a module with:

- ``NAME``: its key under a route (``[routes.NAME]``), a lower-case identifier that is
  no built-in policy's and no route key;
- ``PRIORITY``: an integer; higher runs first (the built-ins: cors 4000, ip 3000,
  rate_limit 1000, max_concurrent 900, request_headers 500, response_headers 400);
- ``SCHEMA`` (optional): ``{key: (kind, default)}``, ``default`` being ``REQUIRED`` for
  a key that must be given; the kinds are those of the config file (``KINDS``);
- ``check(config)`` (optional): a list of ``(key or None, message)`` for what no single
  key can say;
- hooks, each optional, plain or ``async``:
  ``request(req)``: return None to go on, or an ``Answer`` to answer the client;
  ``response(req, resp)``: edit the response head (``resp.set``, ``add``, ``remove``);
  ``log(req)``: after the exchange ended.

``req`` is a ``Request``: a stable view of the request (method, path, query, headers
to read and change, client ip, route, consumer, request id), the route's validated
``config`` for this plugin, and ``state``, a dict of the plugin's own for this request.

A hook that raises answers 500 (its traceback in the error log, under the request id);
the worker goes on. A ``response`` hook that raises leaves the head as it was. A module
that fails to import, or a route table that fails its schema, is a config error: at
``fastgw check``, at start and at reload (the running config stays). Modules are read
afresh at every load, so a reload runs the code as it is on disk.

May import: the standard library, fastgw.policy, fastgw.exchange, fastgw.errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import inspect
import keyword
import logging
import os
import re
import sys
import traceback
from typing import Any

from fastgw.policy import REQUIRED, Outcome, Policy, PolicySpec, answer

CONTINUE, WAIT = int(Outcome.CONTINUE), int(Outcome.WAIT)

__all__ = ["REQUIRED", "KINDS", "Answer", "Request", "Response", "load_plugins"]

log = logging.getLogger("fastgw")

#: the kinds of value a SCHEMA may name (the config file's value syntaxes)
KINDS = ("string", "strings", "int", "bool", "duration", "table", "cidrs", "header_names_any", "header_fields",
         "methods", "origins")

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_BAD_VALUE = re.compile(r"[\r\n\0]")


class Answer:
    """What a ``request`` hook returns to answer the client itself: ``status``, the JSON
    error body's ``message`` (no body when None), and ``headers`` ((name, value) pairs)."""

    __slots__ = ("status", "message", "headers")

    def __init__(self, status: int, message: str | None = None, headers: list[tuple[str, str]] | None = None):
        if not 200 <= status <= 599:
            raise ValueError(f"an answer's status is 200 to 599, got {status}")
        self.status = status
        self.message = message
        self.headers = list(headers or ())


def _field(name: str, value: str) -> tuple[bytes, bytes]:
    if _BAD_VALUE.search(name) or _BAD_VALUE.search(value) or not name:
        raise ValueError(f"header {name!r}: a name or value with a line break or NUL")
    return name.encode("latin-1"), value.encode("latin-1")


class Request:
    """The request as a plugin's hook sees it. ``headers`` lists (name, value) as the
    client sent them (after the policies before this one); ``header``, ``set_header``,
    ``add_header`` and ``remove_header`` read and change what goes upstream."""

    __slots__ = ("_ex", "config", "state")

    def __init__(self, ex: Any, config: dict[str, Any], state: dict[str, Any]) -> None:
        self._ex = ex
        self.config = config
        self.state = state

    method = property(lambda self: self._ex.method)
    path = property(lambda self: self._ex.path, doc="the normalised path")
    query = property(lambda self: self._ex.query.decode("latin-1"), doc='the raw query, "" when none')
    client_ip = property(lambda self: self._ex.client_ip)
    route = property(lambda self: self._ex.route_name)
    request_id = property(lambda self: self._ex.request_id)
    consumer = property(lambda self: None, doc="the authenticated consumer (None until authentication lands)")

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._ex.headers]

    def header(self, name: str) -> str | None:
        """The first field ``name`` (any case), or None."""
        wanted = name.lower().encode("latin-1")
        for n, v in self._ex.headers:
            if n.lower() == wanted:
                return v.decode("latin-1")
        return None

    def set_header(self, name: str, value: str) -> None:
        self.remove_header(name)
        self._ex.headers.append(_field(name, value))

    def add_header(self, name: str, value: str) -> None:
        self._ex.headers.append(_field(name, value))

    def remove_header(self, name: str) -> None:
        wanted = name.lower().encode("latin-1")
        self._ex.headers = [(n, v) for n, v in self._ex.headers if n.lower() != wanted]


class Response:
    """The response head as a ``response`` hook sees it: ``status``, and the fields to
    read and edit."""

    __slots__ = ("status", "_fields")

    def __init__(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self._fields = fields

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._fields]

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for n, v in self._fields:
            if n.lower() == wanted:
                return v.decode("latin-1")
        return None

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self._fields.append(_field(name, value))

    def add(self, name: str, value: str) -> None:
        self._fields.append(_field(name, value))

    def remove(self, name: str) -> None:
        wanted = name.lower().encode("latin-1")
        self._fields[:] = [(n, v) for n, v in self._fields if n.lower() != wanted]


class PluginPolicy(Policy):
    """The adapter: one plugin on one route's chain. Which hooks exist, and which are
    async, is known when the chain is compiled, so a request pays only for those."""

    def __init__(self, owner: str, settings: dict[str, Any], module: Any) -> None:
        self.module = module
        self.settings = settings
        self.on_request_hook = getattr(module, "request", None)
        self.on_response_hook = getattr(module, "response", None)
        self.on_log_hook = getattr(module, "log", None)
        self.request_is_async = inspect.iscoroutinefunction(self.on_request_hook)
        self.log_is_async = inspect.iscoroutinefunction(self.on_log_hook)
        super().__init__(module.NAME, owner, module.PRIORITY, request=self.on_request_hook is not None,
                         response=self.on_response_hook is not None, log=self.on_log_hook is not None)

    def _view(self, ex: Any) -> Request:
        state = ex.state
        if state is None:
            state = ex.state = {}
        mine = state.get(self.name)
        if mine is None:
            mine = state[self.name] = {}
        return Request(ex, self.settings, mine)

    def request(self, ex: Any) -> int:
        if self.request_is_async:
            return WAIT
        return self._outcome(ex, self.on_request_hook(self._view(ex)))

    async def wait(self, ex: Any) -> int:
        return self._outcome(ex, await self.on_request_hook(self._view(ex)))

    def _outcome(self, ex: Any, result: Any) -> int:
        if result is None:
            return CONTINUE
        if isinstance(result, Answer):
            return answer(ex, result.status, result.message, [_field(n, v) for n, v in result.headers])
        raise TypeError(f"plugin {self.name}: request() returned {type(result).__name__}; "
                        "return None to go on, or an Answer")

    def response_head(self, ex: Any, status: int, fields: list) -> list:
        try:
            self.on_response_hook(self._view(ex), Response(status, fields))
        except Exception:  # the head cannot become a 500 any more: it goes as it was
            log.exception("request %s: plugin %s: response() failed; the head goes unedited",
                          ex.request_id, self.name)
        return fields

    def log(self, ex: Any) -> None:
        if self.log_is_async:
            task = asyncio.get_running_loop().create_task(self.on_log_hook(self._view(ex)))
            task.add_done_callback(_report(ex.request_id, self.name))
        else:
            self.on_log_hook(self._view(ex))

    def describe(self) -> str:
        hooks = [name for name, hook in (("request", self.on_request_hook), ("response", self.on_response_hook),
                                         ("log", self.on_log_hook)) if hook is not None]
        return f"{super().describe()} (plugin: {', '.join(hooks) or 'no hook'})"


def _report(request_id: str, name: str):
    def done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("request %s: plugin %s: log() failed:\n%s", request_id, name,
                      "".join(traceback.format_exception(exc)).rstrip())
    return done


# -- loading ----------------------------------------------------------------------------------


def load_plugins(folders: list[str], reserved: set[str]) -> tuple[list[PolicySpec], list[tuple[str, str]]]:
    """Every ``*.py`` module of ``folders`` (absolute paths), executed afresh, as a
    ``PolicySpec``; and the problems found, as (path, message). ``reserved``: the names
    a plugin may not take (the built-in policies, the route keys)."""
    specs: dict[str, PolicySpec] = {}
    problems: list[tuple[str, str]] = []
    for folder in folders:
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_"))
        except OSError as exc:
            problems.append((folder, f"cannot read the folder: {exc.strerror or exc}"))
            continue
        for filename in names:
            path = os.path.join(folder, filename)
            try:
                module = _execute(path)
                spec = _spec_of(module, path)
            except _Refused as exc:
                problems.append((path, str(exc)))
                continue
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a user's module may raise anything, exit too
                problems.append((path, "cannot load: " + _last_line(exc, path)))
                continue
            if spec.name in reserved:
                problems.append((path, f"NAME {spec.name!r} is taken by fastgw itself"))
            elif spec.name in specs:
                problems.append((path, f"NAME {spec.name!r} is taken by another plugin too"))
            else:
                specs[spec.name] = spec
    return list(specs.values()), problems


class _Refused(Exception):
    pass


def _execute(path: str) -> Any:
    """Run the module at ``path`` as a new module, whatever ran before under that path
    (a reload gets the code as it is on disk now)."""
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    name = f"fastgw_plugin_{digest}_{os.path.splitext(os.path.basename(path))[0]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise _Refused("not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses and pickling look modules up there)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _spec_of(module: Any, path: str) -> PolicySpec:
    name = getattr(module, "NAME", None)
    if not isinstance(name, str) or not _NAME.match(name) or keyword.iskeyword(name):
        raise _Refused("NAME must be a lower-case identifier (a string such as \"tenant_header\")")
    priority = getattr(module, "PRIORITY", None)
    if type(priority) is not int:
        raise _Refused("PRIORITY must be an integer (higher runs first)")
    schema = getattr(module, "SCHEMA", {})
    if not isinstance(schema, dict):
        raise _Refused("SCHEMA must be a dict {key: (kind, default)}")
    for key, entry in schema.items():
        if not (isinstance(key, str) and isinstance(entry, tuple) and len(entry) == 2 and entry[0] in KINDS):
            raise _Refused(f"SCHEMA[{key!r}] must be (kind, default), kind one of {', '.join(KINDS)}")
    hooks = [h for h in ("request", "response", "log") if getattr(module, h, None) is not None]
    if not hooks:
        raise _Refused("defines no hook (request, response or log)")
    for hook in hooks:
        if not callable(getattr(module, hook)):
            raise _Refused(f"{hook} must be a function")
    if inspect.iscoroutinefunction(getattr(module, "response", None)):
        raise _Refused("response() cannot be async: the head is on its way")
    check = getattr(module, "check", None)
    return PolicySpec(name, priority, schema, lambda owner, settings, context: PluginPolicy(owner, settings, module),
                      check=check, in_global=True)


def _last_line(exc: BaseException, path: str) -> str:
    """``SyntaxError: invalid syntax (line 3)`` or ``NameError: ... (line 7)``: the error
    and the line of ``path`` it came from."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    if line is None:
        for frame in traceback.extract_tb(exc.__traceback__):
            if os.path.abspath(frame.filename) == os.path.abspath(path):
                line = frame.lineno
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text + (f" (line {line})" if line else "")
