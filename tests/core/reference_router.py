"""A plain-Python model of fastgw._core.router.Router, used as a test oracle and as
the benchmark baseline.

It is deliberately a different algorithm: no trie, no tiers. Every (rule, host,
pattern) triple is checked against the request on its own, and the winner is the
smallest sort key of the docs/routing.md order (host tier, then the pattern's
segment kinds, then header count, priority, rule index). A bug would have to be
made twice, in two shapes, to pass unnoticed.

It trusts its input (the rules are valid; Router validates). It reads the public
attributes of fastgw._core.router.Rule and returns (target, params, allowed,
pattern) tuples, or None.

May import: the standard library only.
"""

from __future__ import annotations

LITERAL, PARAM, CATCHALL = 0, 1, 2


def _parse(pattern):
    """"/a/{x}/*" -> [(LITERAL, "a"), (PARAM, "x"), (CATCHALL, "*")]"""
    items = []
    for seg in pattern[1:].split("/"):
        if seg == "*":
            items.append((CATCHALL, "*"))
        elif seg.startswith("{"):
            items.append((PARAM, seg[1:-1]))
        else:
            items.append((LITERAL, seg))
    return items


def _match_path(items, segs):
    """The params dict when the pattern matches the path's segments, else None."""
    params = {}
    for k, (kind, text) in enumerate(items):
        if kind == CATCHALL:
            params["*"] = "/".join(segs[k:])
            return params
        if k >= len(segs):
            return None
        if kind == LITERAL and segs[k] != text:
            return None
        if kind == PARAM:
            if segs[k] == "":
                return None
            params[text] = segs[k]
    return params if len(items) == len(segs) else None


def _host_rank(spec, host):
    """(tier, -suffix length) when the host spec admits the host, else None."""
    if spec is None:
        return (2, 0)
    spec = spec.lower()
    if spec.startswith("*."):
        suffix = spec[1:]  # ".example.com"
        if host.endswith(suffix) and len(host) > len(suffix):
            return (1, -len(suffix))
        return None
    return (0, 0) if spec == host else None


class ReferenceRouter:
    def __init__(self, rules):
        self.rules = []
        for index, rule in enumerate(rules):
            headers = {name.lower(): value for name, value in rule.headers}
            paths = [(pos, p, _parse(p)) for pos, p in enumerate(rule.paths)]
            self.rules.append((index, rule, headers, paths))

    def candidates(self, host, path):
        """Every (key, rule, headers, params, pattern) whose host and path match, best first."""
        if not path.startswith("/"):
            return []
        segs = path[1:].split("/")
        found = []
        for index, rule, headers, paths in self.rules:
            ranks = [r for r in (_host_rank(h, host) for h in rule.hosts or [None]) if r]
            if not ranks:
                continue
            rank = min(ranks)
            for pos, pattern, items in paths:
                params = _match_path(items, segs)
                if params is None:
                    continue
                shape = [kind for kind, _ in items]
                key = (rank, shape, -len(headers), -rule.priority, index, pos)
                found.append((key, rule, headers, params, pattern))
        found.sort(key=lambda c: c[0])
        return found

    def match(self, method, host, path, headers=None):
        """(target, params, allowed, pattern), (None, {}, allowed, None) for a 405, or None."""
        headers = headers or {}
        allowed = set()
        near_miss = False
        for _key, rule, conditions, params, pattern in self.candidates(host, path):
            if any(headers.get(name) != value for name, value in conditions.items()):
                continue
            if not rule.methods or method in rule.methods:
                return (rule.target, params, (), pattern)
            near_miss = True
            allowed.update(rule.methods)
        if near_miss:
            return (None, {}, tuple(sorted(allowed)), None)
        return None
