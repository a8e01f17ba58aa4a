# cython: boundscheck=True, wraparound=True
"""The policy chain: what every route policy is, built-in or a user's plugin, and how a
route's policies are compiled into the one ``Chain`` the proxy walks.

A policy acts in up to three phases:

- *request*, when the route is known and before anything goes upstream: ``request(ex)``
  returns ``CONTINUE``; or ``ANSWERED``, having put its answer (status, message, fields)
  in ``Exchange.answer`` through ``answer()`` (the proxy writes it, as every answer of
  fastgw's: a JSON error body, or no body when the message is None); or ``WAIT``, when it
  has an async step (Redis, a call elsewhere): the proxy then runs ``await wait(ex)`` in
  a task for that request only, and goes on as it returns (``CONTINUE`` or ``ANSWERED``).
  A policy may add fields to whatever response head the request gets (RateLimit-*,
  CORS) by extending ``Exchange.response_fields``: that keeps the plain-head shortcut.
- *response head*: ``drops`` and ``adds``, fields known at config time, are removed
  and added on every head written (relayed or fastgw's own); ``response_head(ex, status,
  fields)``, for edits that read the head, returns the new list of fields.
- *log*: ``log(ex)`` once the exchange has ended, however it ended.

``Chain(policies)`` orders them by priority, higher first (among equal priorities, in
the order given: [global]'s before the route's), and keeps per phase a tuple of only
those that act in it, so a route's request costs one C call per policy that acts, and a
route with no policy costs nothing. The chain is the route's ``ResponseEdit`` too.

Built-in priorities (as APISIX orders them: what refuses cheaply runs first; CORS
before anything that could refuse a preflight):

    cors 4000, ip 3000, rate_limit 1000, max_concurrent 900, request_headers 500,
    response_headers 400, plugins: their own

May import: the standard library, fastgw.exchange, fastgw._core.
"""

from fastgw.exchange cimport Exchange, ResponseEdit


cdef class Policy:
    """One policy of one route (or of ``[global]``). Subclasses override the hooks of
    the phases they name in ``__init__``; a Python subclass may too (the plugin
    adapter), at the cost of a Python call."""

    def __init__(self, str name, str owner, int priority, bint request=False, bint response=False,
                 bint log=False, drops=(), adds=()):
        self.name = name
        self.owner = owner
        self.priority = priority
        self.on_request = request
        self.on_response = response
        self.on_log = log
        self.drops = tuple(n.lower() for n in drops)
        self.adds = list(adds)

    cpdef int request(self, Exchange ex) except -1:
        return CONTINUE

    async def wait(self, Exchange ex):
        """The async step after ``request`` returned WAIT: CONTINUE or ANSWERED."""
        return CONTINUE

    cpdef list response_head(self, Exchange ex, int status, list fields):
        return fields

    cpdef log(self, Exchange ex):
        pass

    def describe(self):
        """One line for ``fastgw explain`` and ``fastgw check``."""
        return self.name if self.owner != "global" else f"{self.name} [global]"

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} of {self.owner}>"


cpdef int answer(Exchange ex, int status, str message, list fields=None) except -1:
    """Answer ``ex`` with ``status``: a JSON error body with ``message`` (no body when it
    is None) and ``fields``. Returns ANSWERED, for ``return answer(...)``."""
    ex.answer = (status, message, fields)
    return ANSWERED


class PolicySpec:
    """What the config and the compiler know of a kind of policy, declared beside its
    code: its key (under a route, and in ``[global]`` when ``in_global``), its priority,
    the schema of its keys, a check of the keys together, and how to build it.

    ``schema`` maps each key to ``(kind, default)``; ``default`` is ``REQUIRED`` for a
    key that must be there. The kinds are the config file's value syntaxes
    (``fastgw.config.SCHEMA_KINDS``: "bool", "int", "duration", "cidrs", "header_names"
    (fields a policy may write), "header_names_any", "header_fields", "methods",
    "origins", "strings"), validated through the config's
    error machinery: every error at once, at its place, with the near miss. ``check(settings)``
    returns ``[(key or None, message)]`` for what no single key can say; ``complete``
    fills in defaults that depend on other keys, before it. ``build(owner, settings,
    context)`` makes the ``Policy``; ``context`` is what the snapshot shares between
    policies (``arena``: the shared memory of the limits; ``cluster``: the Redis
    connection, or None; ``workers``)."""

    def __init__(self, name, priority, schema, build, check=None, in_global=False, complete=None):
        self.name = name
        self.priority = priority
        self.schema = dict(schema)
        self.build = build
        self.check = check
        self.in_global = in_global
        self.complete = complete

    def __repr__(self):
        return f"PolicySpec({self.name!r})"


REQUIRED = object()


cdef class Chain(ResponseEdit):
    """A route's policies, compiled once per config (``snapshot``)."""

    def __init__(self, policies=()):
        ordered = sorted(policies, key=lambda p: -(<Policy>p).priority)
        self.policies = tuple(ordered)
        self.request_phase = tuple(p for p in ordered if (<Policy>p).on_request)
        self.response_phase = tuple(p for p in ordered if (<Policy>p).on_response)
        self.log_phase = tuple(p for p in ordered if (<Policy>p).on_log)
        drops = [name for p in ordered for name in (<Policy>p).drops]
        adds = [field for p in ordered for field in (<Policy>p).adds]
        ResponseEdit.__init__(self, drops, adds, bool(self.response_phase))
        self.on_exchange = bool(self.response_phase or self.log_phase or drops or adds)

    cpdef list edit(self, Exchange ex, int status, list fields):
        cdef Policy policy
        for policy in self.response_phase:
            fields = policy.response_head(ex, status, fields)
        return fields

    def describe(self):
        """The policies a request passes, in order (``fastgw explain``, ``check``)."""
        return " → ".join(p.describe() for p in self.policies) or "none"
