# cython: boundscheck=True, wraparound=True
"""``cors``: cross-origin requests from browsers, answered as Kong's ``cors`` plugin and
Envoy's CORS filter do.

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
  answered here, 204, and never forwarded: for an allowed origin with
  ``Access-Control-Allow-Origin``, ``-Allow-Methods``, ``-Allow-Headers`` (the configured
  ``headers``, or else the ones the browser asked for), ``-Max-Age``, and
  ``-Allow-Credentials`` when ``credentials``; for another origin with none of them, so
  the browser refuses. A route whose ``methods`` leave out OPTIONS still gets its
  preflights: the proxy routes a preflight by the method it announces.
- An actual request from an allowed origin gets ``Access-Control-Allow-Origin`` (its own
  origin; ``*`` when ``origins = ["*"]``), ``-Allow-Credentials`` and ``-Expose-Headers``
  as configured; from another origin, nothing. The upstream's own
  ``Access-Control-Allow-*`` and ``-Expose-Headers`` fields are dropped: on a route with
  ``cors`` the gateway speaks for it. ``Vary: Origin`` is on every response of a route
  whose answer depends on the origin (any list but ``["*"]``), for caches.

It runs first (priority 4000), so that an ``ip`` or rate limit refusal never answers a
preflight without its CORS fields.

May import: fastgw.policy, fastgw.exchange.
"""

from fastgw.exchange cimport Exchange
from fastgw.policy cimport CONTINUE, Policy, answer
from fastgw.policy import REQUIRED, PolicySpec

PRIORITY = 4000
DEFAULT_METHODS = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE")

cdef bytes ORIGIN = b"origin"
cdef bytes REQUEST_METHOD = b"access-control-request-method"
cdef bytes REQUEST_HEADERS = b"access-control-request-headers"


cdef class Cors(Policy):
    cdef readonly object settings
    cdef frozenset origins          # lower-case bytes
    cdef bint any_origin
    cdef list preflight_fixed       # fields every allowed preflight gets
    cdef bytes allow_headers        # configured, or None: echo the request's
    cdef list actual_fixed          # fields every allowed actual request gets (but the origin)

    def __init__(self, str owner, settings):
        self.settings = settings
        self.any_origin = "*" in settings["origins"]
        self.origins = frozenset(o.encode("latin-1") for o in settings["origins"] if o != "*")
        credentials = settings["credentials"]
        adds = [] if self.any_origin and not self.origins else [(b"vary", b"Origin")]
        Policy.__init__(self, "cors", owner, PRIORITY, request=True,
                        drops=[b"access-control-allow-origin", b"access-control-allow-credentials",
                               b"access-control-expose-headers", b"access-control-allow-methods",
                               b"access-control-allow-headers", b"access-control-max-age"],
                        adds=adds)
        self.preflight_fixed = [(b"access-control-allow-methods", ", ".join(settings["methods"]).encode())]
        if settings["max_age"] is not None:
            self.preflight_fixed.append((b"access-control-max-age", b"%d" % int(settings["max_age"])))
        self.actual_fixed = []
        if credentials:
            self.preflight_fixed.append((b"access-control-allow-credentials", b"true"))
            self.actual_fixed.append((b"access-control-allow-credentials", b"true"))
        if settings["expose_headers"]:
            self.actual_fixed.append((b"access-control-expose-headers",
                                      ", ".join(settings["expose_headers"]).encode()))
        self.allow_headers = ", ".join(settings["headers"]).encode() if settings["headers"] else None

    cdef bytes _allowed(self, bytes origin):
        """The Access-Control-Allow-Origin value for ``origin``, or None when it is not
        allowed."""
        if origin is None:
            return None
        if origin.lower() in self.origins:
            return origin
        if self.any_origin:
            # "*" cannot go with credentials (the config refuses it), so "*" it is
            return b"*"
        return None

    cpdef int request(self, Exchange ex) except -1:
        origin = ex.header(ORIGIN)
        if ex.method == "OPTIONS" and origin is not None and ex.header(REQUEST_METHOD) is not None:
            return self.preflight(ex, origin)
        allowed = self._allowed(origin)
        if allowed is not None:
            fields = [(b"access-control-allow-origin", allowed)] + self.actual_fixed
            if ex.response_fields is None:
                ex.response_fields = fields
            else:
                ex.response_fields.extend(fields)
        return CONTINUE

    cpdef int preflight(self, Exchange ex, bytes origin) except -1:
        """Answer a preflight: 204, with the CORS fields when the origin is allowed."""
        allowed = self._allowed(origin)
        if allowed is None:
            return answer(ex, 204, None, [])
        fields = [(b"access-control-allow-origin", allowed)] + self.preflight_fixed
        requested = self.allow_headers if self.allow_headers is not None else ex.header(REQUEST_HEADERS)
        if requested:
            fields.append((b"access-control-allow-headers", requested))
        return answer(ex, 204, None, fields)

    def describe(self):
        s = self.settings
        return (f"cors origins {' '.join(s['origins'])} methods {' '.join(s['methods'])}"
                + (" credentials" if s["credentials"] else ""))


def _check(settings):
    problems = []
    if not settings["origins"]:
        problems.append(("origins", "needs at least one origin"))
    elif "*" in settings["origins"] and settings["credentials"]:
        problems.append(("credentials", 'cannot go with origins = ["*"]: browsers refuse credentials '
                                        'for any origin; list the origins'))
    return problems


SPECS = (
    PolicySpec("cors", PRIORITY, {
        "origins": ("origins", REQUIRED),
        "methods": ("methods", DEFAULT_METHODS),
        "headers": ("header_names_any", ()),
        "expose_headers": ("header_names_any", ()),
        "max_age": ("duration", None),
        "credentials": ("bool", False),
    }, lambda owner, settings, context: Cors(owner, settings), check=_check),
)
