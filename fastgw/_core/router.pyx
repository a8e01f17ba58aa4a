# cython: language_level=3
"""The request router and the path normaliser: fastgw's first per-request decision.

What lives here:

* ``normalize_path(raw)``: one spelling per path (docs/routing.md), or ``None``
  for a path that must be refused with 400.
* ``Rule``: one route's matching conditions, as plain values.
* ``Router(rules)``: the rules compiled once into per-host tries; ``match`` is the
  hot path, ``explain`` and ``shadowed`` are cold helpers for the CLI.
* ``RouteMatch``: what ``match`` returns.

May import: the standard library, Cython's ``cpython`` declarations, and
``fastgw._core.errors``; nothing else of fastgw (``_core`` is a leaf).

Theory of operation
-------------------
Rules are sorted into host tiers: one trie per exact host, one per wildcard suffix
("*.example.com" is keyed "example.com"), and one for rules without hosts. A
lookup tries the exact tier of the request host, then the wildcard tiers from the
longest matching suffix, then the host-less tier, and stops at the first tier that
yields a full match. Each tier's cost is a dict lookup, so the number of rules
never enters it; and a host's list of tiers is found once and remembered (for up to
HOST_MEMO_MAX hosts, then the memo starts over), so a request pays one lookup for all.

A match keeps its captures as offsets into the path; ``params`` makes the dict (and
the substrings) when first read, which most requests never do.

A trie node has literal children (a dict keyed by the segment text), at most one
``{param}`` child, the entries whose pattern ends at this node, and the entries
whose pattern is this node followed by ``/*``. Parameter *names* live on the
entries, not on the nodes, so "/u/{id}" and "/u/{uid}/x" share a node. The walk
is depth first: literal child, then param child, then catch-all; this order *is*
the specificity order (literal < {param} < catch-all, segment by segment). Every
node reached lies on a distinct root-to-node path matching a prefix of the request,
so a walk visits each node at most once, and per-node min/max counts of the
segments still needed cut branches that cannot end on this path's length. The
recursion depth is bounded by the trie height, at most MAX_SEGMENTS.

Entries at one node are sorted once, at build time: more header conditions
first, then higher priority, then lower rule index. A 405 needs the union of
allowed methods over *every* rule that matched all but the method; that is a
second walk, run only when the first one found no full match but saw such a
rule, so the common paths never build a set.
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject
from cpython.unicode cimport (
    PyUnicode_1BYTE_DATA,
    PyUnicode_Count,
    PyUnicode_DecodeASCII,
    PyUnicode_FindChar,
    PyUnicode_READ_CHAR,
)
from libc.string cimport memcpy

import json

from fastgw._core.errors import RouteError

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    const Py_ssize_t PY_SSIZE_T_MAX

cdef extern from *:
    """
    #ifndef FASTGW_DEBUG
    #define FASTGW_DEBUG 0
    #endif
    """
    bint FASTGW_DEBUG

__all__ = ["Router", "RouteMatch", "Rule", "normalize_path"]

cdef str _EMPTY = ""
cdef str _SLASH = "/"
cdef tuple _NO_METHODS = ()

# Characters that refuse a whole request path (docs/routing.md). Encoded, the
# same plus ";" (%3B): a backend that decodes and then splits path parameters must
# never see a ";" the router did not. Raw, "?" cannot occur (it ends the path).
cdef inline bint _refused_escape(int v) noexcept nogil:
    return v == 0x2F or v == 0x5C or v == 0x00 or v == 0x23 or v == 0x3F or v == 0x3B


cdef inline bint _refused_raw(int c) noexcept nogil:
    return c < 0x21 or c == 0x7F or c == 0x5C or c == 0x23 or c == 0x3B


cdef inline bint _unreserved(int c) noexcept nogil:
    # RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~"
    return ((c >= 0x61 and c <= 0x7A) or (c >= 0x41 and c <= 0x5A) or (c >= 0x30 and c <= 0x39)
            or c == 0x2D or c == 0x2E or c == 0x5F or c == 0x7E)


cdef inline int _hexval(int c) noexcept nogil:
    if c >= 0x30 and c <= 0x39:
        return c - 0x30
    if c >= 0x41 and c <= 0x46:
        return c - 0x41 + 10
    if c >= 0x61 and c <= 0x66:
        return c - 0x61 + 10
    return -1


cdef inline unsigned char _upper(unsigned char c) noexcept nogil:
    return c - 0x20 if c >= 0x61 and c <= 0x7A else c


cpdef str normalize_path(str raw):
    """normalize_path(raw: str) -> str | None  (docs in router.pyi; cpdef: the protocols
    call it as C, once per request)"""
    if raw is None:
        raise TypeError("normalize_path() needs a str")
    cdef Py_ssize_t n = len(raw), i
    cdef const unsigned char* s
    cdef unsigned char c, prev = 0
    cdef bint slow = False
    # Non-ASCII is refused outright, which also makes the 1-byte view below valid.
    if n == 0 or not PyUnicode_IS_ASCII(raw):
        return None
    s = PyUnicode_1BYTE_DATA(raw)
    if s[0] != 0x2F:
        return None
    # PERF: one scan decides; a path that is already normal is returned as is.
    for i in range(n):
        c = s[i]
        if _refused_raw(c):
            return None
        if c == 0x25:
            slow = True
        elif (c == 0x2F or c == 0x2E) and prev == 0x2F:
            slow = True
        prev = c
    if not slow:
        return raw
    return _normalize_slow(s, n)


cdef object _normalize_slow(const unsigned char* s, Py_ssize_t n):
    # Two passes over C buffers: (1) percent-decoding of unreserved characters, so
    # that "%2e%2E" is seen as ".." by (2), RFC 3986 §5.2.4 dot-segment removal
    # with empty segments dropped (merged slashes). Decoding only shrinks, and
    # never makes a "/", so segment boundaries are the raw ones.
    cdef unsigned char* dec = <unsigned char*>PyMem_Malloc(2 * n + 2)
    cdef Py_ssize_t* stack = <Py_ssize_t*>PyMem_Malloc((n + 1) * sizeof(Py_ssize_t))
    cdef unsigned char* out
    cdef Py_ssize_t i = 0, m = 0, j, r = 0, top = 0, seglen
    cdef int h1, h2, v
    cdef unsigned char c
    cdef bint last, trailing = False
    if dec is NULL or stack is NULL:
        PyMem_Free(dec)
        PyMem_Free(stack)
        raise MemoryError()
    out = dec + n + 1
    try:
        while i < n:
            c = s[i]
            if c != 0x25:
                dec[m] = c
                m += 1
                i += 1
                continue
            if i + 2 >= n:
                return None
            h1 = _hexval(s[i + 1])
            h2 = _hexval(s[i + 2])
            if h1 < 0 or h2 < 0:
                return None
            v = h1 * 16 + h2
            if _refused_escape(v):
                return None
            if _unreserved(v):
                dec[m] = <unsigned char>v
                m += 1
            else:
                dec[m] = 0x25
                dec[m + 1] = _upper(s[i + 1])
                dec[m + 2] = _upper(s[i + 2])
                m += 3
            i += 3
        # dec[0] is the leading "/"; walk the segments after it.
        i = 1
        while True:
            j = i
            while j < m and dec[j] != 0x2F:
                j += 1
            seglen = j - i
            last = j >= m
            if seglen == 0 or (seglen == 1 and dec[i] == 0x2E):
                trailing = last
            elif seglen == 2 and dec[i] == 0x2E and dec[i + 1] == 0x2E:
                if top > 0:  # never above the root
                    top -= 1
                    r = stack[top]
                trailing = last
            else:
                stack[top] = r
                top += 1
                out[r] = 0x2F
                memcpy(out + r + 1, dec + i, seglen)
                r += 1 + seglen
                trailing = False
            if last:
                break
            i = j + 1
        if r == 0:
            return _SLASH
        if trailing:
            out[r] = 0x2F
            r += 1
        return PyUnicode_DecodeASCII(<char*>out, r, NULL)
    finally:
        PyMem_Free(dec)
        PyMem_Free(stack)


@cython.auto_pickle(False)
cdef class Rule:
    """Rule(target, paths, methods=(), hosts=(), headers=(), priority=0)  (docs in router.pyi)"""

    def __init__(self, target, paths, methods=(), hosts=(), headers=(), priority=0):
        # A bare str would be iterated character by character: a silent mistake.
        for what, value in (("paths", paths), ("methods", methods), ("hosts", hosts)):
            if isinstance(value, str):
                raise TypeError(f"{what} must be a sequence of str, not the str {value!r}")
        self.target = target
        self.paths = tuple(paths)
        self.methods = tuple(methods)
        self.hosts = tuple(hosts)
        # A mapping (a TOML table) is accepted as well as a sequence of pairs.
        self.headers = tuple(headers.items()) if hasattr(headers, "items") else tuple(headers)
        self.priority = priority

    def __repr__(self):
        return (f"Rule({self.target!r}, paths={self.paths!r}, methods={self.methods!r}, "
                f"hosts={self.hosts!r}, headers={self.headers!r}, priority={self.priority!r})")


@cython.freelist(32)
@cython.auto_pickle(False)
cdef class RouteMatch:
    """RouteMatch(target, params, allowed=(), pattern=None)  (docs in router.pyi)"""

    def __init__(self, target, dict params not None, tuple allowed not None=(), pattern=None):
        self.target = target
        self._params = params
        self.allowed = allowed
        self.pattern = pattern

    @property
    def params(self):
        return self.param_dict()

    cdef dict param_dict(self):
        """The captures by name ("*": a catch-all's remainder), made once."""
        if self._params is None:
            self._params = _params_of(self._path, self._names, self._starts, self._ends, self._ncaptures,
                                      self._rest_start)
        return self._params

    def __repr__(self):
        return (f"RouteMatch(target={self.target!r}, params={self.params!r}, "
                f"allowed={self.allowed!r}, pattern={self.pattern!r})")

    def __eq__(self, other):
        if not isinstance(other, RouteMatch):
            return NotImplemented
        cdef RouteMatch o = other
        return (self.target == o.target and self.params == o.params
                and self.allowed == o.allowed and self.pattern == o.pattern)

    __hash__ = None


cdef dict _params_of(str path, tuple names, const Py_ssize_t* starts, const Py_ssize_t* ends, Py_ssize_t n,
                     Py_ssize_t rest_start):
    """A match's params: capture k is path[starts[k]:ends[k]], named names[k]; "*" the
    catch-all's remainder path[rest_start:] (-1: none)."""
    cdef dict params = {}
    cdef Py_ssize_t k
    for k in range(n):
        params[names[k]] = path[starts[k]:ends[k]]
    if rest_start >= 0:
        params["*"] = path[rest_start:]
    return params


@cython.auto_pickle(False)
cdef class _Entry:
    def __repr__(self):
        return f"<_Entry rule {self.index} {self.pattern}>"


@cython.auto_pickle(False)
cdef class _Node:
    def __cinit__(self):
        self.children = {}
        self.param = None
        self.terminal = ()
        self.catchall = ()


# ---------------------------------------------------------------------------
# The hot path

cdef inline int _headers_hold(_Entry e, _Walk* w) except -1:
    cdef Py_ssize_t k, nh = len(e.header_names)
    cdef PyObject* got
    cdef object headers
    if nh == 0:
        return 1
    if w.headers is NULL:
        return 0
    headers = <object>w.headers
    if type(headers) is dict:
        for k in range(nh):
            got = PyDict_GetItem(headers, e.header_names[k])
            if got is NULL or not (<object>got == e.header_values[k]):
                return 0
    else:
        for k in range(nh):
            value = headers.get(e.header_names[k])
            if value is None or not (value == e.header_values[k]):
                return 0
    return 1


cdef inline int _try_entries(tuple entries, _Walk* w) except -1:
    # 1 when an entry matches fully (w.entry is set); while collecting for a 405
    # (w.allowed is a set) it never stops, and adds each near miss's methods.
    cdef _Entry e
    for e in entries:
        if not _headers_hold(e, w):
            continue
        if e.methods is None or (<object>w.method) in e.methods:
            if w.allowed is NULL:
                w.entry = <void*>e
                return 1
        elif w.allowed is NULL:
            w.partial = True
        else:
            (<set>w.allowed).update(e.methods)
    return 0


@cython.auto_pickle(False)
cdef class Router:
    """Router(rules)  (docs in router.pyi)"""

    def __init__(self, rules):
        cdef _Node root, node
        cdef _Entry e
        cdef Py_ssize_t index, height = 0
        self._rules = tuple(rules)
        self._exact = {}
        self._wild = {}
        self._host_memo = {}
        self._any = None
        self._entries = []
        self._duplicates = []
        for index in range(256):
            self._wild_lens[index] = 0
        problems = []
        header_names = set()
        pending = {}  # _Node -> ([terminal entries], [catch-all entries]) while building

        for index, rule in enumerate(self._rules):
            if not isinstance(rule, Rule):
                problems.append((index, f"expected a Rule, got {type(rule).__name__}"))
                continue
            compiled = _compile_rule(<Rule>rule, index, problems)
            if compiled is None:
                continue
            methods, hosts, hnames, hvalues, parsed = compiled
            header_names.update(hnames)
            seen = {}
            for pattern, shape, names, catchall in parsed:
                key = (shape, catchall)
                if key in seen:
                    # "/u/{a}" and "/u/{b}" in one rule: the same node, the first wins,
                    # and "{b}" is never filled in (shadowed() says so). A pattern
                    # simply written twice is harmless and not reported.
                    if pattern != seen[key]:
                        self._duplicates.append((index, seen[key], pattern))
                    continue
                seen[key] = pattern
                e = _Entry.__new__(_Entry)
                e.index = index
                e.rule = rule
                e.target = (<Rule>rule).target
                e.pattern = pattern
                e.param_names = names
                e.catchall = catchall
                e.methods = methods
                e.header_names = hnames
                e.header_values = hvalues
                e.priority = (<Rule>rule).priority
                self._entries.append(e)
                height = max(height, len(shape))
                for host in hosts or (None,):
                    root = self._root_for(host)
                    node = root
                    for part in shape:
                        if part is None:
                            if node.param is None:
                                node.param = _Node()
                            node = node.param
                        else:
                            child = node.children.get(part)
                            if child is None:
                                child = node.children[part] = _Node()
                            node = child
                    lists = pending.get(node)
                    if lists is None:
                        lists = pending[node] = ([], [])
                    lists[1 if catchall else 0].append(e)

        if problems:
            raise RouteError(problems)
        for node, (terminal, catchall) in pending.items():
            node.terminal = tuple(sorted(terminal, key=_entry_order))
            node.catchall = tuple(sorted(catchall, key=_entry_order))
        for root in self._roots():
            _finish(root)
        self._height = height
        self.header_names = frozenset(header_names)

    cdef _Node _root_for(self, host):
        # Build-time helper: the trie root of one host spec (None: no hosts).
        cdef _Node root
        if host is None:
            if self._any is None:
                self._any = _Node()
            return self._any
        if host.startswith("*."):
            suffix = host[2:]
            root = self._wild.get(suffix)
            if root is None:
                root = self._wild[suffix] = _Node()
                self._wild_lens[len(suffix)] = 1
            return root
        root = self._exact.get(host)
        if root is None:
            root = self._exact[host] = _Node()
        return root

    def _roots(self):
        roots = list(self._exact.values()) + list(self._wild.values())
        if self._any is not None:
            roots.append(self._any)
        return roots

    # -- lookup ------------------------------------------------------------

    cpdef RouteMatch match(self, str method, str host, str path, headers=None):
        """match(method, host, path, headers=None) -> RouteMatch | None  (docs in router.pyi)
        (cpdef: the proxy calls it as C, once per request)"""
        if method is None or path is None:
            raise TypeError("match() needs a method and a path")
        cdef _Walk w
        cdef Py_ssize_t plen = len(path), i = 1, j, d = 0, limit
        cdef RouteMatch m
        if plen == 0 or PyUnicode_READ_CHAR(path, 0) != 0x2F:
            return None
        if host is None:
            host = _EMPTY
        w.path = <void*>path
        w.method = <void*>method
        w.headers = NULL if headers is None else <void*>headers
        w.allowed = NULL
        w.entry = NULL
        w.nparams = 0
        w.rest_at = -1
        w.partial = False
        w.n = PyUnicode_Count(path, _SLASH, 0, plen)
        # Segment offsets, but only as deep as the trie goes: a longer path can
        # only end under a catch-all, which takes the rest as one string.
        limit = self._height + 1
        while d < w.n and d < limit:
            j = PyUnicode_FindChar(path, 0x2F, i, plen, 1)
            if j < 0:
                j = plen
            w.starts[d] = i
            w.ends[d] = j
            d += 1
            i = j + 1
        if self._find(host, &w):
            return self._result(&w)
        if not w.partial:
            return None
        # 405: walk again, this time gathering the methods of every near miss.
        allowed = set()
        w.allowed = <void*>allowed
        self._find(host, &w)
        m = RouteMatch.__new__(RouteMatch)
        m.target = None
        m._params = {}
        m.allowed = tuple(sorted(allowed))
        m.pattern = None
        return m

    cdef int _find(self, str host, _Walk* w) except -1:
        # The host tiers, most specific first; see "Theory of operation".
        cdef PyObject* roots
        if not self._exact and not self._wild:
            return self._any is not None and self._walk(self._any, 0, 0, w)
        # PERF: a host's roots are found once (a gateway sees few hosts; the memo starts
        # over when it holds HOST_MEMO_MAX of them)
        roots = PyDict_GetItem(self._host_memo, host)
        if roots is NULL:
            found = self._roots_for(host)
            if len(self._host_memo) >= HOST_MEMO_MAX:
                self._host_memo.clear()
            self._host_memo[host] = found
            roots = <PyObject*>found
        for node in <tuple>roots:
            if self._walk(<_Node>node, 0, 0, w):
                return 1
        return 0

    cdef tuple _roots_for(self, str host):
        """The roots of the tiers ``host`` falls under, in the order they are tried: its
        exact host, its wildcards longest suffix first, the rules without hosts."""
        cdef Py_ssize_t hl = len(host), i, sl
        found = []
        root = self._exact.get(host)
        if root is not None:
            found.append(root)
        # A dot at 0 would leave the wildcard label empty, one at the end the suffix.
        for i in range(1, hl - 1):
            if PyUnicode_READ_CHAR(host, i) != 0x2E:
                continue
            sl = hl - i - 1
            # (slice and look up only suffixes of a length some rule has)
            if sl < 256 and self._wild_lens[sl]:
                root = self._wild.get(host[i + 1:])
                if root is not None:
                    found.append(root)
        if self._any is not None:
            found.append(self._any)
        return tuple(found)

    cdef int _walk(self, _Node node, Py_ssize_t d, Py_ssize_t np, _Walk* w) except -1:
        # Depth first: literal child, {param} child, then this node's catch-all.
        # d: segments consumed; np: params captured on this branch.
        cdef Py_ssize_t rest = w.n - d
        cdef PyObject* child
        if rest < node.min_need or rest > node.max_need:
            return 0
        if rest == 0:
            if node.terminal and _try_entries(node.terminal, w):
                w.nparams = np
                w.rest_at = -1
                return 1
        else:
            if node.children:
                child = PyDict_GetItem(node.children, (<str>w.path)[w.starts[d]:w.ends[d]])
                if child is not NULL and self._walk(<_Node>child, d + 1, np, w):
                    return 1
            # A {param} takes one non-empty segment.
            if node.param is not None and w.ends[d] > w.starts[d]:
                w.pstart[np] = w.starts[d]
                w.pend[np] = w.ends[d]
                if self._walk(node.param, d + 1, np + 1, w):
                    return 1
        if node.catchall and _try_entries(node.catchall, w):
            w.nparams = np
            w.rest_at = d
            return 1
        return 0

    cdef RouteMatch _result(self, _Walk* w):
        cdef _Entry e = <_Entry>w.entry
        cdef str path = <str>w.path
        cdef RouteMatch m = RouteMatch.__new__(RouteMatch)
        cdef Py_ssize_t k
        if FASTGW_DEBUG:
            assert w.nparams == len(e.param_names), (e, w.nparams)
        m.target = e.target
        m.allowed = _NO_METHODS
        m.pattern = e.pattern
        m._path = path
        m._names = e.param_names
        m._ncaptures = w.nparams
        # (a remainder of no segment at all is "": path[len(path):])
        m._rest_start = -1 if w.rest_at < 0 else w.starts[w.rest_at] if w.rest_at < w.n else len(path)
        if w.nparams > INLINE_CAPTURES:
            m._params = _params_of(path, e.param_names, w.pstart, w.pend, w.nparams, m._rest_start)
            return m
        for k in range(w.nparams):
            m._starts[k] = w.pstart[k]
            m._ends[k] = w.pend[k]
        return m

    # -- cold path: CLI helpers -----------------------------------------------

    def explain(self, str method not None, str host, str path not None, headers=None):
        """explain(method, host, path, headers=None) -> (RouteMatch | None, list[str])  (docs in router.pyi)"""
        cdef _Entry e
        lines = []
        if host is None:
            host = _EMPTY
        if not path.startswith("/"):
            return None, [f"404: path {path!r} does not start with \"/\""]
        segs = path[1:].split("/")
        allowed = set()
        near_miss = False
        for label, root in self._tiers(host):
            tried = False
            for e, params in _candidates(root, segs, 0, []):
                tried = True
                head = f"route {_route_name(e.target)} pattern {e.pattern} host {label} : path matches, "
                why = _header_miss(e, headers)
                if why is not None:
                    lines.append(head + why)
                elif e.methods is not None and method not in e.methods:
                    near_miss = True
                    allowed.update(e.methods)
                    lines.append(head + f"method {method} not in {', '.join(sorted(e.methods))}")
                else:
                    lines.append(head + "selected")
                    return RouteMatch(e.target, params, (), e.pattern), lines
            if not tried:
                lines.append(f"host {label} : no pattern matches {path}")
        if near_miss:
            allow = tuple(sorted(allowed))
            lines.append(f"405: the path is routed but not for {method} (Allow: {', '.join(allow)})")
            return RouteMatch(None, {}, allow, None), lines
        if not lines:
            lines.append(f"no rule for host {host!r}")
        lines.append(f"404: no route for host {host!r} path {path}")
        return None, lines

    def _tiers(self, str host):
        # The same tiers, in the same order, as _find (by plain dict membership).
        tiers = []
        if host in self._exact:
            tiers.append((host, self._exact[host]))
        for i in range(1, len(host) - 1):
            if host[i] == "." and host[i + 1:] in self._wild:
                tiers.append(("*." + host[i + 1:], self._wild[host[i + 1:]]))
        if self._any is not None:
            tiers.append(("*", self._any))
        return tiers

    def shadowed(self):
        """shadowed() -> list[tuple[int, int, str]]  (docs in router.pyi)"""
        cdef _Entry e, f
        found = {}
        for index, kept, dropped in self._duplicates:
            found[(index, dropped)] = (index, index, f"pattern {dropped}: the rule's own pattern {kept} "
                                       f"has the same shape and comes first")
        for node in _all_nodes(self._roots()):
            for entries in ((<_Node>node).terminal, (<_Node>node).catchall):
                for pos, e in enumerate(entries):
                    if (e.index, e.pattern) in found:
                        continue
                    for f in entries[:pos]:
                        reason = _shadow_reason(f, e)
                        if reason is not None:
                            found[(e.index, e.pattern)] = (e.index, f.index, reason)
                            break
        return sorted(found.values())

    def __repr__(self):
        return f"<Router {len(self._rules)} rules, {len(self._entries)} patterns>"


# ---------------------------------------------------------------------------
# Build-time helpers (plain Python speed is fine here)

def _entry_order(_Entry e):
    return (-len(e.header_names), -e.priority, e.index)


cdef _finish(_Node node):
    # Fills min_need/max_need bottom-up: how many more segments a match below needs.
    cdef Py_ssize_t lo = PY_SSIZE_T_MAX, hi = -1
    cdef _Node child
    if node.terminal:
        lo = 0
        hi = 0
    if node.catchall:
        lo = 0
        hi = PY_SSIZE_T_MAX
    children = list(node.children.values())
    if node.param is not None:
        children.append(node.param)
    for child in children:
        _finish(child)
        lo = min(lo, child.min_need + 1)
        if hi != PY_SSIZE_T_MAX:
            hi = PY_SSIZE_T_MAX if child.max_need == PY_SSIZE_T_MAX else max(hi, child.max_need + 1)
    node.min_need = lo
    node.max_need = hi


def _all_nodes(roots):
    stack = list(roots)
    while stack:
        node = stack.pop()
        yield node
        stack.extend((<_Node>node).children.values())
        if (<_Node>node).param is not None:
            stack.append((<_Node>node).param)


def _compile_rule(Rule rule, Py_ssize_t index, list problems):
    """Validates one rule. Returns (methods, hosts, header names, header values,
    [(pattern, shape, param names, catch-all)]) or None after appending problems."""
    count = len(problems)

    methods = set()
    for m in rule.methods:
        if not isinstance(m, str) or not m or not m.isascii() or m != m.upper() or any(
                c <= " " or c == "\x7f" for c in m):
            problems.append((index, f"method {_q(m)}: methods are upper-case tokens such as \"GET\""))
        else:
            methods.add(m)

    hosts = []
    for h in rule.hosts:
        problem = _host_problem(h)
        if problem is not None:
            problems.append((index, problem))
        elif h.lower() not in hosts:
            hosts.append(h.lower())

    conditions = {}
    for pair in rule.headers:
        if not (isinstance(pair, tuple) or isinstance(pair, list)) or len(pair) != 2:
            problems.append((index, f"header condition {pair!r}: expected a (name, value) pair"))
            continue
        name, value = pair
        if not isinstance(name, str) or not isinstance(value, str) or not name:
            problems.append((index, f"header condition {pair!r}: name and value must be strings, "
                                    f"the name not empty"))
            continue
        name = name.lower()
        if name in conditions and conditions[name] != value:
            problems.append((index, f"header {name}: required to be both {_q(conditions[name])} and "
                                    f"{_q(value)}; the rule could never match"))
            continue
        conditions[name] = value
    hnames = tuple(sorted(conditions))

    priority = rule.priority
    if not isinstance(priority, int) or isinstance(priority, bool):
        problems.append((index, f"priority {priority!r}: must be an integer"))

    parsed = []
    if not rule.paths:
        problems.append((index, "no paths: a rule needs at least one path pattern"))
    for pattern in rule.paths:
        result = _parse_pattern(pattern)
        if isinstance(result, str):
            problems.append((index, result))
        else:
            parsed.append((pattern,) + result)

    if len(problems) > count:
        return None
    return (frozenset(methods) if methods else None, hosts, hnames,
            tuple(conditions[n] for n in hnames), parsed)


def _host_problem(host):
    if not isinstance(host, str):
        return f"host {_q(host)}: must be a string"
    if host == "":
        return 'host "": empty (leave hosts out to match any host)'
    if host == "*":
        return 'host "*": leave hosts out to match any host'
    if len(host) > 253:
        return f"host {_q(host[:20])}...: longer than 253 characters"
    if "*" in host and (not host.startswith("*.") or "*" in host[2:] or host == "*."):
        return (f"host {_q(host)}: a wildcard must be the whole leftmost label, "
                f"as in \"*.example.com\"")
    if any(c <= " " or c in "/\x7f" for c in host):
        return f"host {_q(host)}: contains a space, a control character or \"/\""
    return None


def _parse_pattern(pattern):
    """Returns (shape, param names, catch-all) for a valid pattern, else an error
    message. The shape is a tuple of literal segments and None for each {param}."""
    if not isinstance(pattern, str):
        return f"pattern {_q(pattern)}: must be a string"
    if not pattern.startswith("/"):
        return f"pattern {_q(pattern)}: must start with \"/\""
    segs = pattern[1:].split("/")
    if len(segs) > MAX_SEGMENTS:
        return f"pattern {_q(pattern)}: more than {MAX_SEGMENTS} segments"
    shape = []
    names = []
    catchall = False
    last = len(segs) - 1
    for k, seg in enumerate(segs):
        if seg == "":
            if k != last:
                return (f"pattern {_q(pattern)}: empty segment in the middle (\"//\"); only the "
                        f"last segment may be empty, for a trailing slash")
            shape.append(seg)
        elif seg == "*":
            if k != last:
                return f"pattern {_q(pattern)}: \"*\" (catch-all) must be the last segment"
            catchall = True
        elif "*" in seg:
            return (f"pattern {_q(pattern)}: \"*\" must be a whole segment "
                    f"(a catch-all is \"/*\" at the end)")
        elif "{" in seg or "}" in seg:
            if not (seg.startswith("{") and seg.endswith("}") and seg.count("{") == 1
                    and seg.count("}") == 1):
                return (f"pattern {_q(pattern)}: segment {_q(seg)} is a partial-segment parameter; "
                        f"a parameter is a whole segment, \"{{name}}\"")
            name = seg[1:len(seg) - 1]
            if not name:
                return f"pattern {_q(pattern)}: empty parameter name \"{{}}\""
            if not (name.isascii() and name.isidentifier()):
                return (f"pattern {_q(pattern)}: parameter name {_q(name)} is not an identifier "
                        f"(letters, digits and \"_\", not starting with a digit)")
            if name in names:
                return f"pattern {_q(pattern)}: parameter name {_q(name)} used twice"
            names.append(name)
            shape.append(None)
        else:
            if seg == "." or seg == "..":
                return (f"pattern {_q(pattern)}: dot segment {_q(seg)} can never match "
                        f"(request paths are normalised)")
            normal = normalize_path("/" + seg)
            if normal is None:
                return (f"pattern {_q(pattern)}: segment {_q(seg)} holds a character that request "
                        f"paths may not carry (they are refused with 400)")
            if normal != "/" + seg:
                return (f"pattern {_q(pattern)}: segment {_q(seg)} can never match: request paths "
                        f"are normalised, and it reads {_q(normal[1:])} after normalisation")
            shape.append(seg)
    return tuple(shape), tuple(names), catchall


# ---------------------------------------------------------------------------
# explain / shadowed helpers

def _candidates(_Node node, list segs, Py_ssize_t d, list captured):
    # The entries whose pattern matches, with their params, in _walk's order
    # (without its length pruning, which only skips branches that yield nothing).
    cdef _Entry e
    rest = len(segs) - d
    if rest == 0:
        for e in node.terminal:
            yield e, dict(zip(e.param_names, captured))
    else:
        seg = segs[d]
        child = node.children.get(seg)
        if child is not None:
            yield from _candidates(child, segs, d + 1, captured)
        if node.param is not None and seg:
            yield from _candidates(node.param, segs, d + 1, captured + [seg])
    for e in node.catchall:
        params = dict(zip(e.param_names, captured))
        params["*"] = "/".join(segs[d:])
        yield e, params


def _q(value):
    # Values in messages are double-quoted, as in the rest of fastgw's errors.
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def _route_name(target):
    name = getattr(target, "name", None)
    return f'"{name}"' if isinstance(name, str) else repr(target)


def _header_miss(_Entry e, headers):
    for name, want in zip(e.header_names, e.header_values):
        got = None if headers is None else headers.get(name)
        if got is None:
            return f"header {name} missing (wants {want!r})"
        if got != want:
            return f"header {name} is {got!r}, not {want!r}"
    return None


def _methods_text(methods):
    return "any method" if methods is None else ", ".join(sorted(methods))


def _shadow_reason(_Entry first, _Entry e):
    """Why entry ``e`` never wins at its node because ``first`` (sorted before it)
    always does, or None. Both sit at the same node, so the patterns have one shape."""
    a = set(first.rule.hosts and [h.lower() for h in first.rule.hosts])
    b = set(e.rule.hosts and [h.lower() for h in e.rule.hosts])
    # Host-less rules sit in their own tier: a rule with hosts never shadows one without.
    if bool(a) != bool(b) or not b <= a:
        return None
    if not (first.methods is None or (e.methods is not None and e.methods <= first.methods)):
        return None
    if not set(zip(first.header_names, first.header_values)) <= set(zip(e.header_names, e.header_values)):
        return None
    if not b:
        hosts = "serves every host, as this one does"
    else:
        hosts = "serves the same hosts" if a == b else "serves these hosts and more"
    if first.priority != e.priority:
        order = f"priority {first.priority} over {e.priority}"
    else:
        order = f"same priority, and rule {first.index} comes before rule {e.index}"
    return (f"pattern {e.pattern}: route {_route_name(first.target)} (rule {first.index}) with pattern "
            f"{first.pattern} always wins: it {hosts}, allows {_methods_text(first.methods)} "
            f"(this one: {_methods_text(e.methods)}), has no header condition this one lacks, and "
            f"goes first ({order})")
