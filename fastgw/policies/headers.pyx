# cython: boundscheck=True, wraparound=True
"""``request_headers`` and ``response_headers``: set, add and remove header fields on
the way upstream and on the way back.

- ``set``: the field has this value, whatever came (fields of that name are removed,
  then it is added); ``add``: one more field of that name, those that came are kept;
  ``remove``: every field of that name goes.
- Values may use ``{request_id}``, ``{route}``, ``{client_ip}`` and ``{consumer}`` (empty
  until authentication lands), filled in per request; other values are encoded once.
- ``request_headers`` edits the request's fields before they go upstream (the forwarding
  and framing fields fastgw writes itself cannot be named: the config refuses them).
- ``response_headers`` applies to every response of the route, whichever way its head
  is written (relayed, or fastgw's own 429, 502 ...): its removals and its fixed values
  are the chain's static edits (``drops`` and ``adds``), which the plain-head shortcut
  applies as it copies the upstream's fields; values with a ``{variable}`` are made by
  its response-head hook, on every head too (such a route's heads go through llhttp).

May import: fastgw.policy, fastgw.exchange.
"""

from fastgw.exchange cimport Exchange
from fastgw.policy cimport CONTINUE, Policy
from fastgw.policy import PolicySpec

REQUEST_HEADERS_PRIORITY = 500
RESPONSE_HEADERS_PRIORITY = 400

# The variables a value may use, each a function of the exchange.
cdef dict VARIABLES = {
    "request_id": lambda ex: ex.request_id,
    "route": lambda ex: ex.route_name,
    "client_ip": lambda ex: ex.client_ip,
    "consumer": lambda ex: ex.consumer.name if ex.consumer is not None else "",
}


cdef class Template:
    """A field value: literal bytes and variables, split once."""
    cdef readonly bytes literal     # the whole value when it has no variable, else None
    cdef tuple parts                # bytes, or a variable's function

    def __init__(self, str text):
        parts = []
        rest = text
        while rest:
            start = rest.find("{")
            end = rest.find("}", start)
            if start < 0 or end < 0 or rest[start + 1:end] not in VARIABLES:
                parts.append(rest.encode("latin-1"))
                break
            if start:
                parts.append(rest[:start].encode("latin-1"))
            parts.append(VARIABLES[rest[start + 1:end]])
            rest = rest[end + 1:]
        self.parts = tuple(parts)
        self.literal = text.encode("latin-1") if all(isinstance(p, bytes) for p in parts) else None

    cdef bytes render(self, Exchange ex):
        if self.literal is not None:
            return self.literal
        return b"".join([p if isinstance(p, bytes) else (<str>p(ex)).encode("latin-1", "replace")
                         for p in self.parts])


cdef tuple _fields(pairs):
    return tuple((name.encode("latin-1"), Template(value)) for name, value in pairs)


cdef class RequestHeaders(Policy):
    """``request_headers``: the request's fields edited before they go upstream."""
    cdef tuple drop             # lower-case names: those removed and those set
    cdef tuple added            # (name, Template): those set and those added
    cdef readonly object settings

    def __init__(self, str owner, settings):
        Policy.__init__(self, "request_headers", owner, REQUEST_HEADERS_PRIORITY, request=True)
        self.drop = tuple(name.encode("latin-1") for name, _ in settings["set"]) + tuple(
            name.encode("latin-1") for name in settings["remove"])
        self.added = _fields(settings["set"]) + _fields(settings["add"])
        self.settings = settings

    cpdef int request(self, Exchange ex) except -1:
        cdef tuple field
        cdef Template template
        headers = ex.headers
        if self.drop:
            drop = self.drop
            headers = [field for field in headers if (<bytes>field[0]).lower() not in drop]
        for name, template in self.added:
            headers.append((name, template.render(ex)))
        ex.headers = headers
        return CONTINUE

    def describe(self):
        return f"{Policy.describe(self)} {_summary(self.settings)}"


cdef class ResponseHeaders(Policy):
    """``response_headers``: every response head of the route edited."""
    cdef tuple templated        # (name, Template) whose values are made per request
    cdef readonly object settings

    def __init__(self, str owner, settings):
        fixed, templated = [], []
        for name, template in _fields(settings["set"]) + _fields(settings["add"]):
            if (<Template>template).literal is not None:
                fixed.append((name, (<Template>template).literal))
            else:
                templated.append((name, template))
        drops = [name for name, _ in settings["set"]] + list(settings["remove"])
        Policy.__init__(self, "response_headers", owner, RESPONSE_HEADERS_PRIORITY, response=bool(templated),
                        drops=[name.encode("latin-1") for name in drops], adds=fixed)
        self.templated = tuple(templated)
        self.settings = settings

    cpdef list response_head(self, Exchange ex, int status, list fields):
        cdef Template template
        for name, template in self.templated:
            fields.append((name, template.render(ex)))
        return fields

    def describe(self):
        return f"{Policy.describe(self)} {_summary(self.settings)}"


def _summary(settings):
    parts = []
    for verb in ("set", "add"):
        if settings[verb]:
            parts.append(f"{verb} " + ", ".join(f"{name}: {value}" for name, value in settings[verb]))
    if settings["remove"]:
        parts.append("remove " + ", ".join(settings["remove"]))
    return "; ".join(parts)


def _check(settings):
    if not (settings["set"] or settings["add"] or settings["remove"]):
        return [(None, 'needs "set", "add" or "remove"')]
    both = {name for name, _ in settings["set"]} & set(settings["remove"])
    return [("remove", f"{name!r} is both set and removed") for name in sorted(both)]


_SCHEMA = {"set": ("header_fields", ()), "add": ("header_fields", ()), "remove": ("header_names", ())}

SPECS = (
    PolicySpec("request_headers", REQUEST_HEADERS_PRIORITY, _SCHEMA,
               lambda owner, settings, context: RequestHeaders(owner, settings), check=_check),
    PolicySpec("response_headers", RESPONSE_HEADERS_PRIORITY, _SCHEMA,
               lambda owner, settings, context: ResponseHeaders(owner, settings), check=_check),
)
