# fastgw._core.router: C-level declarations, for ``cimport`` by the request path.
#
# What lives here: the cdef classes of router.pyx with their typed attributes, and
# ``normalize_path``, so that another Cython module (the protocols, the proxy) can read a
# RouteMatch, call Router.match or normalise a path at C speed.
# Python callers read router.pyi instead (types and docs).
# May cimport: Cython's own ``cpython`` declarations only (_core is a leaf).

cdef enum:
    # NOTE: a pattern may have at most this many segments. It bounds the trie's
    # height, hence the C recursion of a lookup and the per-call arrays below.
    MAX_SEGMENTS = 64
    HOST_MEMO_MAX = 4096  # hosts whose roots a router remembers


cpdef str normalize_path(str raw)


cdef class Rule:
    cdef readonly object target
    cdef readonly tuple paths
    cdef readonly tuple methods
    cdef readonly tuple hosts
    cdef readonly tuple headers
    cdef readonly object priority


cdef enum:
    INLINE_CAPTURES = 4   # a match keeps up to this many {param} captures as offsets


cdef class RouteMatch:
    cdef readonly object target
    cdef readonly tuple allowed
    cdef readonly object pattern
    # ``params`` (a property) is made on first use from the captures: offsets into the
    # matched path (PERF: most requests never read theirs, so they make no dict and no
    # substrings). A match with more captures than INLINE_CAPTURES makes it at once.
    cdef dict _params
    cdef str _path
    cdef tuple _names                     # the {param} names, in capture order
    cdef Py_ssize_t _ncaptures
    cdef Py_ssize_t _starts[INLINE_CAPTURES]   # capture k is _path[_starts[k]:_ends[k]]
    cdef Py_ssize_t _ends[INLINE_CAPTURES]
    cdef Py_ssize_t _rest_start           # the catch-all took path[_rest_start:]; -1: none

    cdef dict param_dict(self)


cdef class _Entry:
    # One (rule, path pattern) pair, stored at the trie node where the pattern ends.
    cdef readonly Py_ssize_t index        # the rule's position in Router(rules)
    cdef readonly Rule rule
    cdef readonly object target
    cdef readonly str pattern             # as written in the rule
    cdef readonly tuple param_names       # one per {param} segment, in order
    cdef readonly bint catchall
    cdef readonly frozenset methods       # None: any method
    cdef readonly tuple header_names      # lower-case, parallel to header_values
    cdef readonly tuple header_values
    cdef readonly object priority


cdef class _Node:
    cdef dict children                    # literal segment -> _Node
    cdef _Node param                      # the one {param} child, or None
    cdef tuple terminal                   # _Entry ending here, best first
    cdef tuple catchall                   # _Entry ending here with "/*", best first
    cdef Py_ssize_t min_need              # fewest further segments any entry below takes
    cdef Py_ssize_t max_need              # most (PY_SSIZE_T_MAX below a catch-all)


ctypedef struct _Walk:
    # The state of one lookup: borrowed references, offsets into the path.
    void* path
    void* method
    void* headers                         # NULL when the caller passed None
    void* allowed                         # a set while collecting methods for a 405, else NULL
    Py_ssize_t n                          # segments in the path ("/" has one, empty)
    Py_ssize_t starts[MAX_SEGMENTS + 2]   # segment d is path[starts[d]:ends[d]]
    Py_ssize_t ends[MAX_SEGMENTS + 2]
    Py_ssize_t pstart[MAX_SEGMENTS + 2]   # the {param} captures along the current branch
    Py_ssize_t pend[MAX_SEGMENTS + 2]
    void* entry                           # the _Entry found
    Py_ssize_t nparams                    # captures valid for it
    Py_ssize_t rest_at                    # its catch-all remainder starts at segment rest_at; -1: none
    bint partial                          # some entry matched all but the method


cdef class Router:
    cdef readonly frozenset header_names
    cdef tuple _rules
    cdef list _entries                    # every _Entry, for explain/shadowed
    cdef list _duplicates                 # (index, kept pattern, dropped pattern) within one rule
    cdef dict _exact                      # host -> root _Node
    cdef dict _wild                       # suffix after "*." -> root _Node
    cdef _Node _any                       # rules without hosts, or None
    cdef Py_ssize_t _height               # most edges on a root-to-node path
    cdef unsigned char _wild_lens[256]    # 1 at the length of each wildcard suffix
    cdef dict _host_memo                  # host -> the roots it tries, in order (_roots_for)

    cdef _Node _root_for(self, host)
    cdef tuple _roots_for(self, str host)
    cdef int _walk(self, _Node node, Py_ssize_t d, Py_ssize_t np, _Walk* w) except -1
    cdef int _find(self, str host, _Walk* w) except -1
    cdef RouteMatch _result(self, _Walk* w)
    cpdef RouteMatch match(self, str method, str host, str path, headers=*)
