# C-level declarations of fastgw/plan.pyx, cimported by the proxy: what it reads of a
# compiled route and of the snapshot per request, as typed fields (C reads, not
# attribute lookups). snapshot.Route and snapshot.Snapshot inherit these classes and set
# the fields once, through __init__; Python reads them as read-only attributes.

from fastgw._core.metrics cimport RouteCounters
from fastgw._core.router cimport Router
from fastgw.policy cimport Chain, Policy
from fastgw.upstream cimport Upstream


cdef class RoutePlan:
    cdef readonly str name
    cdef readonly Upstream upstream      # the route's own upstream
    cdef readonly bint splits            # some requests go elsewhere (Route.pick_upstream decides)
    cdef readonly str strip_prefix       # or None
    cdef readonly tuple rewrite          # the template's parts: literals, "\0name" params; or None
    cdef readonly double timeout         # seconds for the whole exchange; 0: none
    cdef readonly Chain chain            # its policies ([global]'s and its own), compiled
    cdef readonly Policy cors            # its cors policy (one of chain's), or None
    cdef readonly str websocket          # "proxy", "http", or None
    cdef readonly object aggregate       # its config.AggregateConfig, or None
    cdef readonly RouteCounters metrics  # its block of the machine's counters

    cdef str path_for(self, str path, dict params)


cdef class SnapshotPlan:
    cdef readonly Router router
    cdef readonly dict condition_headers  # lower-case header name (bytes) -> the router's key
    cdef readonly tuple trusted_proxies   # ip networks; empty: no peer is trusted
