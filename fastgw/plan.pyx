"""What the proxy reads of a compiled route and of the snapshot on every request, as C
fields: ``RoutePlan`` (a route's name, upstream, path rewriting, timeout, policy chain,
WebSocket mode, aggregate, counters) and ``SnapshotPlan`` (the router, the headers some
route conditions on, the trusted proxies). ``snapshot.Route`` and ``snapshot.Snapshot``
are these classes' Python subclasses: the snapshot compiles the values and hands them to
``__init__`` once; the proxy cimports the classes (``plan.pxd``) and reads the fields as
C reads, where a Python attribute lookup each would cost more than routing. Python
(``fastgw check``/``explain``, the admin API, the aggregate adapter, tests) reads them as
read-only attributes. ``RoutePlan.path_for`` is the one implementation of the path sent
upstream (``strip_prefix`` or ``rewrite`` applied): the proxy calls it in C, Python as
``upstream_path``.

Why a module of its own: the proxy may not import snapshot at run time (it knows it only
for types), and snapshot's classes inherit these at run time, so they live below both.
Not in ``_core``: the fields are typed by ``fastgw.upstream``'s ``Upstream`` and
``fastgw.policy``'s ``Chain`` and ``Policy``, and ``_core`` is a leaf that knows nothing
of the rest. Not in ``upstream`` or ``policy``: a route names both, and neither may
import the other.

Compiled (Cython, declared in ``plan.pxd``).

May import: fastgw.upstream, fastgw.policy, fastgw._core (for types).
"""

from fastgw._core.metrics cimport RouteCounters
from fastgw._core.router cimport Router
from fastgw.policy cimport Chain, Policy
from fastgw.upstream cimport Upstream


cdef class RoutePlan:
    """A route as the proxy reads it per request (``snapshot.Route`` adds the rest)."""

    def __init__(self, str name not None, Upstream upstream not None, bint splits, str strip_prefix,
                 rewrite, double timeout, Chain chain not None, Policy cors, str websocket, aggregate,
                 RouteCounters metrics not None):
        self.name = name
        self.upstream = upstream
        self.splits = splits
        self.strip_prefix = strip_prefix
        self.rewrite = tuple(rewrite) if rewrite is not None else None
        self.timeout = timeout
        self.chain = chain
        self.cors = cors
        self.websocket = websocket
        self.aggregate = aggregate
        self.metrics = metrics

    cdef str path_for(self, str path, dict params):
        """The path sent upstream: the normalised request path, with ``strip_prefix`` or
        ``rewrite`` applied (a route has at most one of them; most have neither, and
        then the path goes as it came)."""
        if self.rewrite is not None:
            return _rewritten(self.rewrite, params)
        if self.strip_prefix is not None:
            return _stripped(path, self.strip_prefix)
        return path

    def upstream_path(self, str path not None, dict params not None):
        """The path sent upstream for a request on ``path`` whose pattern captured
        ``params`` (``path_for``, for Python: ``fastgw explain``, tests)."""
        return self.path_for(path, params)


cdef str _stripped(str path, str prefix):
    """``path`` without ``prefix`` when it starts with it on a segment boundary ("/api"
    takes "/api" and "/api/x", not "/apix"), "/" when nothing is left; else ``path``."""
    if not path.startswith(prefix):
        return path
    cdef Py_ssize_t n = len(prefix)
    if len(path) == n:
        return "/"
    if path[n] == "/":
        return path[n:]
    return path


cdef str _rewritten(tuple parts, dict params):
    """The rewrite template filled in: its literals, and for each "\\0name" part the
    value the pattern captured as ``name`` ("" when it captured none)."""
    cdef list out = []
    cdef str part
    for part in parts:
        out.append(params.get(part[1:], "") if part[:1] == "\0" else part)
    return "".join(out)


cdef class SnapshotPlan:
    """A snapshot as the proxy reads it per request (``snapshot.Snapshot`` adds the rest)."""

    def __init__(self, Router router not None, dict condition_headers not None, trusted_proxies):
        self.router = router
        self.condition_headers = condition_headers
        self.trusted_proxies = tuple(trusted_proxies)
