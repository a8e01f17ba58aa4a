"""Tests of fastgw._core.router.Router: one example per rule of docs/routing.md, every
RouteError message, explain and shadowed, then hypothesis property tests that
compare Router with the plain-Python reference in reference_router.py.

May import: fastgw._core, the test helpers beside it, pytest, hypothesis.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw._core.errors import RouteError
from fastgw._core.router import RouteMatch, Router, Rule

from .reference_router import ReferenceRouter


class Route:
    """A stand-in for fastgw's compiled route: the router only hands it back."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Route({self.name!r})"


def router(*rules):
    return Router(list(rules))


def target(m):
    return None if m is None else m.target


# ---------------------------------------------------------------------------
# Path matching


def test_exact_param_and_catchall_capture():
    r = router(Rule("exact", ["/users"]), Rule("param", ["/users/{id}"]), Rule("raw", ["/files/{id}/raw"]),
               Rule("static", ["/static/*"]))
    assert r.match("GET", "", "/users") == RouteMatch("exact", {}, (), "/users")
    assert r.match("GET", "", "/users/42") == RouteMatch("param", {"id": "42"}, (), "/users/{id}")
    assert r.match("GET", "", "/files/7/raw").params == {"id": "7"}
    assert r.match("GET", "", "/static/css/a.css").params == {"*": "css/a.css"}
    assert r.match("GET", "", "/nothing") is None
    assert r.match("GET", "", "/files/7") is None


def test_literal_beats_param_beats_catchall_segment_by_segment():
    r = router(Rule("all", ["/*"]), Rule("p", ["/{a}/x"]), Rule("lit", ["/a/{b}"]), Rule("a-all", ["/a/*"]))
    assert target(r.match("GET", "", "/a/x")) == "lit"     # literal first segment wins over {a}
    assert target(r.match("GET", "", "/b/x")) == "p"
    assert target(r.match("GET", "", "/a/x/y")) == "a-all"  # deeper catch-all before the root one
    assert target(r.match("GET", "", "/b/y")) == "all"


def test_backtracking_out_of_a_literal_branch():
    # "/a/b/c" enters the literal "a" branch, fails at "c", and comes back for {x}.
    r = router(Rule("lit", ["/a/b/d"]), Rule("param", ["/{x}/b/c"]))
    m = r.match("GET", "", "/a/b/c")
    assert (m.target, m.params) == ("param", {"x": "a"})


def test_catchall_matches_the_bare_prefix_and_trailing_slash():
    r = router(Rule("a", ["/a/*"]))
    assert r.match("GET", "", "/a").params == {"*": ""}
    assert r.match("GET", "", "/a/").params == {"*": ""}
    assert r.match("GET", "", "/a/x/y").params == {"*": "x/y"}
    assert r.match("GET", "", "/ab") is None


def test_exact_beats_catchall_at_the_same_prefix():
    r = router(Rule("star", ["/a/*"]), Rule("exact", ["/a"]))
    assert target(r.match("GET", "", "/a")) == "exact"
    assert target(r.match("GET", "", "/a/")) == "star"


def test_root_catchall_matches_everything():
    r = router(Rule("all", ["/*"]))
    assert r.match("GET", "", "/").params == {"*": ""}
    assert r.match("GET", "", "/x/y/").params == {"*": "x/y/"}


def test_root_pattern():
    r = router(Rule("root", ["/"]))
    assert target(r.match("GET", "", "/")) == "root"
    assert r.match("GET", "", "/x") is None


def test_trailing_slash_is_a_different_path():
    r = router(Rule("bare", ["/a"]), Rule("slash", ["/b/"]))
    assert target(r.match("GET", "", "/a")) == "bare"
    assert r.match("GET", "", "/a/") is None
    assert target(r.match("GET", "", "/b/")) == "slash"
    assert r.match("GET", "", "/b") is None


def test_param_needs_a_non_empty_segment():
    r = router(Rule("p", ["/a/{x}"]))
    assert r.match("GET", "", "/a/") is None
    assert r.match("GET", "", "/a/%2A").params == {"x": "%2A"}  # captured as normalised, not decoded


def test_param_names_live_on_the_rule_not_the_node():
    r = router(Rule("id", ["/u/{id}"]), Rule("uid", ["/u/{uid}/x"]))
    assert r.match("GET", "", "/u/1").params == {"id": "1"}
    assert r.match("GET", "", "/u/1/x").params == {"uid": "1"}


def test_params_and_catchall_together():
    r = router(Rule("t", ["/t/{tenant}/files/*"]))
    assert r.match("GET", "", "/t/acme/files/a/b.txt").params == {"tenant": "acme", "*": "a/b.txt"}


def test_paths_longer_than_the_trie_reach_a_catchall():
    r = router(Rule("deep", ["/a/*"]), Rule("short", ["/b"]))
    long = "/a" + "/x" * 500
    assert r.match("GET", "", long).params["*"] == "/".join(["x"] * 500)
    assert r.match("GET", "", "/b" + "/x" * 500) is None


def test_a_path_not_starting_with_slash_matches_nothing():
    r = router(Rule("all", ["/*"]))
    assert r.match("GET", "", "") is None
    assert r.match("GET", "", "a") is None


def test_a_rule_with_several_paths():
    r = router(Rule("users", ["/users/{id}", "/users"]))
    assert r.match("GET", "", "/users").pattern == "/users"
    assert r.match("GET", "", "/users/1").pattern == "/users/{id}"


def test_params_is_a_fresh_dict_each_time():
    r = router(Rule("t", ["/a"]))
    first = r.match("GET", "", "/a").params
    first["x"] = "1"
    assert r.match("GET", "", "/a").params == {}


def test_params_beyond_the_inline_captures_and_with_a_remainder():
    """A match keeps up to four captures as offsets and makes the dict when asked; more
    than four are made at once. Both read the same."""
    names = [f"p{i}" for i in range(7)]
    for count in (0, 1, 4, 5, 7):
        pattern = "/" + "/".join("{%s}" % n for n in names[:count]) + "/*"
        r = router(Rule("t", [pattern.replace("//", "/")]))
        path = "/" + "/".join(f"v{i}" for i in range(count)) + "/rest/of/it"
        expected = {n: f"v{i}" for i, n in enumerate(names[:count])} | {"*": "rest/of/it"}
        m = r.match("GET", "", path.replace("//", "/"))
        assert m.params == expected and m.params is m.params  # made once
        assert r.match("GET", "", "/" + "/".join(f"v{i}" for i in range(count))).params["*"] == ""


# ---------------------------------------------------------------------------
# Hosts


def test_host_tiers_exact_then_longest_wildcard_then_none():
    r = router(Rule("none", ["/*"]), Rule("wide", ["/*"], hosts=["*.example.com"]),
               Rule("narrow", ["/*"], hosts=["*.api.example.com"]), Rule("exact", ["/*"], hosts=["x.api.example.com"]))
    assert target(r.match("GET", "x.api.example.com", "/")) == "exact"
    assert target(r.match("GET", "y.api.example.com", "/")) == "narrow"
    assert target(r.match("GET", "a.b.api.example.com", "/")) == "narrow"
    assert target(r.match("GET", "api.example.com", "/")) == "wide"
    assert target(r.match("GET", "example.com", "/")) == "none"
    assert target(r.match("GET", "", "/")) == "none"


def test_host_tier_beats_path_specificity():
    # The tier comes first: a wildcard host's "/*" beats a host-less exact path.
    r = router(Rule("exact-path", ["/users"]), Rule("host-catchall", ["/*"], hosts=["*.example.com"]))
    assert target(r.match("GET", "a.example.com", "/users")) == "host-catchall"
    assert target(r.match("GET", "other.org", "/users")) == "exact-path"


def test_a_tier_without_a_full_match_falls_through():
    r = router(Rule("host", ["/admin"], hosts=["api.example.com"]), Rule("any", ["/public"]))
    assert target(r.match("GET", "api.example.com", "/public")) == "any"
    assert r.match("GET", "other.org", "/admin") is None


def test_wildcard_does_not_match_the_bare_domain_and_spans_labels():
    r = router(Rule("w", ["/"], hosts=["*.example.com"]))
    assert r.match("GET", "example.com", "/") is None
    assert target(r.match("GET", "a.example.com", "/")) == "w"
    assert target(r.match("GET", "a.b.example.com", "/")) == "w"
    assert r.match("GET", "aexample.com", "/") is None
    assert r.match("GET", ".example.com", "/") is None


def test_wildcard_hosts_stay_right_past_the_memo_of_hosts():
    """A router remembers the roots of 4,096 hosts, then starts over: the
    hosts met after that still match as the first ones did."""
    r = router(Rule("wide", ["/*"], hosts=["*.example.com"]), Rule("narrow", ["/*"], hosts=["*.api.example.com"]),
               Rule("none", ["/x"]))
    for i in range(5000):
        assert target(r.match("GET", f"h{i}.api.example.com", "/")) == "narrow"
        assert target(r.match("GET", f"h{i}.example.com", "/")) == "wide"
        assert target(r.match("GET", f"h{i}.example.org", "/x")) == "none"
    assert target(r.match("GET", "h1.api.example.com", "/")) == "narrow"


def test_rule_hosts_are_case_insensitive():
    r = router(Rule("e", ["/"], hosts=["API.Example.COM"]), Rule("w", ["/w"], hosts=["*.EXAMPLE.org"]))
    assert target(r.match("GET", "api.example.com", "/")) == "e"
    assert target(r.match("GET", "a.example.org", "/w")) == "w"


def test_none_host_is_no_host():
    r = router(Rule("any", ["/"]), Rule("h", ["/h"], hosts=["a.com"]))
    assert target(r.match("GET", None, "/")) == "any"
    assert r.match("GET", None, "/h") is None


# ---------------------------------------------------------------------------
# Methods, headers, priority, order


def test_405_lists_the_union_of_allowed_methods_sorted():
    r = router(Rule("get", ["/u/{id}"], methods=["GET"]), Rule("put", ["/u/{id}"], methods=["PUT", "DELETE"]),
               Rule("elsewhere", ["/other"], methods=["PATCH"]))
    m = r.match("POST", "", "/u/1")
    assert m == RouteMatch(None, {}, ("DELETE", "GET", "PUT"), None)
    assert m.pattern is None


def test_405_union_spans_patterns_and_tiers():
    r = router(Rule("lit", ["/a/b"], methods=["GET"]), Rule("par", ["/a/{x}"], methods=["PUT"]),
               Rule("host", ["/*"], hosts=["h.com"], methods=["PATCH"]))
    assert r.match("POST", "h.com", "/a/b").allowed == ("GET", "PATCH", "PUT")


def test_method_mismatch_falls_through_to_a_less_specific_rule():
    r = router(Rule("lit", ["/a/b"], methods=["GET"]), Rule("par", ["/a/{x}"], methods=["POST"]))
    m = r.match("POST", "", "/a/b")
    assert (m.target, m.params) == ("par", {"x": "b"})


def test_a_rule_without_methods_never_gives_405():
    r = router(Rule("get", ["/a"], methods=["GET"]), Rule("any", ["/a"]))
    assert target(r.match("DELETE", "", "/a")) == "any"
    assert target(r.match("GET", "", "/a")) == "get"


def test_headers_all_must_hold_and_more_conditions_win():
    r = router(Rule("plain", ["/a"]), Rule("v2", ["/a"], headers=[("X-Api-Version", "2")]),
               Rule("v2-beta", ["/a"], headers={"x-api-version": "2", "x-beta": "1"}))
    assert target(r.match("GET", "", "/a")) == "plain"
    assert target(r.match("GET", "", "/a", {"x-api-version": "2"})) == "v2"
    assert target(r.match("GET", "", "/a", {"x-api-version": "2", "x-beta": "1"})) == "v2-beta"
    assert target(r.match("GET", "", "/a", {"x-api-version": "3", "x-beta": "1"})) == "plain"
    assert r.header_names == frozenset({"x-api-version", "x-beta"})


def test_header_values_are_exact():
    r = router(Rule("v", ["/a"], headers=[("x", "Yes")]))
    assert r.match("GET", "", "/a", {"x": "yes"}) is None
    assert target(r.match("GET", "", "/a", {"x": "Yes"})) == "v"


def test_headers_from_any_mapping():
    from types import MappingProxyType

    r = router(Rule("v", ["/a"], headers=[("x", "1")]))
    assert target(r.match("GET", "", "/a", MappingProxyType({"x": "1"}))) == "v"
    assert r.match("GET", "", "/a", MappingProxyType({})) is None


def test_headerless_router_has_no_header_names():
    assert router(Rule("a", ["/a"])).header_names == frozenset()


def test_a_header_miss_is_a_404_not_a_405():
    r = router(Rule("v", ["/a"], methods=["GET"], headers=[("x", "1")]))
    assert r.match("POST", "", "/a", {"x": "2"}) is None
    assert r.match("POST", "", "/a", {"x": "1"}).allowed == ("GET",)


def test_priority_then_config_order():
    r = router(Rule("first", ["/a"]), Rule("second", ["/a"]), Rule("high", ["/b"], priority=-1),
               Rule("higher", ["/b"], priority=5))
    assert target(r.match("GET", "", "/a")) == "first"
    assert target(r.match("GET", "", "/b")) == "higher"


def test_priority_does_not_beat_specificity():
    r = router(Rule("lit", ["/a/b"]), Rule("param", ["/a/{x}"], priority=100))
    assert target(r.match("GET", "", "/a/b")) == "lit"


def test_same_shape_with_different_param_names_is_one_pattern():
    # Order among them is header count, priority, index: the param names do not matter.
    r = router(Rule("id", ["/u/{id}"]), Rule("uid", ["/u/{uid}"], priority=1))
    assert r.match("GET", "", "/u/9") == RouteMatch("uid", {"uid": "9"}, (), "/u/{uid}")


def test_targets_are_returned_as_given():
    route = Route("users")
    assert Router([Rule(route, ["/u"])]).match("GET", "", "/u").target is route


def test_empty_router_matches_nothing():
    assert Router([]).match("GET", "a.com", "/") is None


def test_many_rules_hosts_and_wildcards():
    rules = [Rule(i, [f"/r{i}/{{id}}"], hosts=[f"h{i % 7}.example.com"] if i % 3 == 0 else []) for i in range(2000)]
    rules.append(Rule("wild", ["/r3/{id}"], hosts=["*.example.com"]))
    r = Router(rules)
    assert r.match("GET", "h3.example.com", "/r3/x") == RouteMatch(3, {"id": "x"}, (), "/r3/{id}")
    assert target(r.match("GET", "h4.example.com", "/r3/x")) == "wild"
    assert target(r.match("GET", "", "/r1999/x")) == 1999
    assert r.match("GET", "", "/r3/x") is None


# ---------------------------------------------------------------------------
# Build errors: every message


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Rule("t", ["users"]), 'pattern "users": must start with "/"'),
        (Rule("t", [""]), 'pattern "": must start with "/"'),
        (Rule("t", ["/a//b"]), 'pattern "/a//b": empty segment in the middle ("//"); only the last segment may '
                               'be empty, for a trailing slash'),
        (Rule("t", ["//"]), 'pattern "//": empty segment in the middle'),
        (Rule("t", ["/a/*/b"]), 'pattern "/a/*/b": "*" (catch-all) must be the last segment'),
        (Rule("t", ["/a*"]), 'pattern "/a*": "*" must be a whole segment (a catch-all is "/*" at the end)'),
        (Rule("t", ["/a/{}"]), 'pattern "/a/{}": empty parameter name "{}"'),
        (Rule("t", ["/a/{a"]), 'pattern "/a/{a": segment "{a" is a partial-segment parameter; a parameter is a '
                               'whole segment, "{name}"'),
        (Rule("t", ["/a/{a}b"]), 'pattern "/a/{a}b": segment "{a}b" is a partial-segment parameter'),
        (Rule("t", ["/a/x{a}"]), 'pattern "/a/x{a}": segment "x{a}" is a partial-segment parameter'),
        (Rule("t", ["/a/{a}}"]), 'pattern "/a/{a}}": segment "{a}}" is a partial-segment parameter'),
        (Rule("t", ["/{a}/{a}"]), 'pattern "/{a}/{a}": parameter name "a" used twice'),
        (Rule("t", ["/{1a}"]), 'pattern "/{1a}": parameter name "1a" is not an identifier (letters, digits and '
                               '"_", not starting with a digit)'),
        (Rule("t", ["/a/../b"]), 'pattern "/a/../b": dot segment ".." can never match (request paths are '
                                 'normalised)'),
        (Rule("t", ["/a/./b"]), 'pattern "/a/./b": dot segment "." can never match'),
        (Rule("t", ["/a/%7e"]), 'pattern "/a/%7e": segment "%7e" can never match: request paths are '
                                'normalised, and it reads "~" after normalisation'),
        (Rule("t", ["/a;b"]), 'pattern "/a;b": segment "a;b" holds a character that request paths may not carry '
                              '(they are refused with 400)'),
        (Rule("t", ["/é"]), 'pattern "/é": segment "é" holds a character'),
        (Rule("t", ["/a" * 65]), "more than 64 segments"),
        (Rule("t", [7]), "pattern 7: must be a string"),
        (Rule("t", []), "no paths: a rule needs at least one path pattern"),
        (Rule("t", ["/"], hosts=["a.*.com"]), 'host "a.*.com": a wildcard must be the whole leftmost label, as in '
                                              '"*.example.com"'),
        (Rule("t", ["/"], hosts=["*foo.com"]), 'host "*foo.com": a wildcard must be the whole leftmost label'),
        (Rule("t", ["/"], hosts=["*.a.*"]), 'host "*.a.*": a wildcard must be the whole leftmost label'),
        (Rule("t", ["/"], hosts=["*."]), 'host "*.": a wildcard must be the whole leftmost label'),
        (Rule("t", ["/"], hosts=["*"]), 'host "*": leave hosts out to match any host'),
        (Rule("t", ["/"], hosts=[""]), 'host "": empty (leave hosts out to match any host)'),
        (Rule("t", ["/"], hosts=["a b.com"]), 'host "a b.com": contains a space, a control character or "/"'),
        (Rule("t", ["/"], hosts=["a" * 254]), "longer than 253 characters"),
        (Rule("t", ["/"], hosts=[3]), "host 3: must be a string"),
        (Rule("t", ["/"], methods=["get"]), 'method "get": methods are upper-case tokens such as "GET"'),
        (Rule("t", ["/"], methods=[""]), 'method "": methods are upper-case tokens'),
        (Rule("t", ["/"], methods=["G T"]), 'method "G T": methods are upper-case tokens'),
        (Rule("t", ["/"], headers=[("x", "1"), ("X", "2")]), 'header x: required to be both "1" and "2"; the rule '
                                                             'could never match'),
        (Rule("t", ["/"], headers=[("x",)]), "header condition ('x',): expected a (name, value) pair"),
        (Rule("t", ["/"], headers=[("", "1")]), "header condition ('', '1'): name and value must be strings"),
        (Rule("t", ["/"], headers=[("x", 1)]), "header condition ('x', 1): name and value must be strings"),
        (Rule("t", ["/"], priority="1"), "priority '1': must be an integer"),
        (Rule("t", ["/"], priority=True), "priority True: must be an integer"),
    ],
)
def test_route_error_messages(rule, message):
    with pytest.raises(RouteError) as info:
        Router([Rule("ok", ["/fine"]), rule])
    assert len(info.value.problems) == 1
    index, text = info.value.problems[0]
    assert index == 1
    assert message in text
    assert str(info.value) == f"rule 1: {text}"
    assert isinstance(info.value, ValueError)


def test_route_error_collects_every_problem():
    with pytest.raises(RouteError) as info:
        Router([Rule("a", ["/a//b", "x"]), Rule("ok", ["/ok"]), Rule("c", ["/"], hosts=["a.*.com"]), "not a rule"])
    assert [index for index, _ in info.value.problems] == [0, 0, 2, 3]
    assert "expected a Rule, got str" in info.value.problems[3][1]
    assert str(info.value).count("\n") == 3


def test_valid_unusual_patterns_are_accepted():
    Router([Rule("t", ["/", "/*", "/a/", "/{x}/", "/a/{x}/*", "/a.b/~c/%2A", "/.well-known/x", "/a/{_x1}"])])


def test_rule_refuses_a_bare_string_for_a_sequence():
    with pytest.raises(TypeError, match="paths must be a sequence of str"):
        Rule("t", "/users")
    with pytest.raises(TypeError, match="methods must be a sequence of str"):
        Rule("t", ["/"], methods="GET")


def test_rule_keeps_its_values():
    rule = Rule("t", ["/a"], methods=["GET"], hosts=["a.com"], headers={"x": "1"}, priority=3)
    assert (rule.target, rule.paths, rule.methods, rule.hosts, rule.headers, rule.priority) == (
        "t", ("/a",), ("GET",), ("a.com",), (("x", "1"),), 3)
    assert "Rule('t'" in repr(rule)


# ---------------------------------------------------------------------------
# explain and shadowed


def test_explain_lists_the_candidates_in_order():
    r = router(Rule(Route("users"), ["/users/{id}"], methods=["GET"]),
               Rule(Route("v2"), ["/users/{id}"], headers=[("x-api-version", "2")]),
               Rule(Route("host"), ["/users"], hosts=["*.example.com"]))
    m, lines = r.explain("POST", "a.example.com", "/users/7", {"x-api-version": "1"})
    assert m == RouteMatch(None, {}, ("GET",), None)
    assert lines == [
        "host *.example.com : no pattern matches /users/7",
        "route \"v2\" pattern /users/{id} host * : path matches, header x-api-version is '1', not '2'",
        'route "users" pattern /users/{id} host * : path matches, method POST not in GET',
        "405: the path is routed but not for POST (Allow: GET)",
    ]
    m, lines = r.explain("POST", "", "/users/7", {"x-api-version": "2"})
    assert m == RouteMatch(r.match("POST", "", "/users/7", {"x-api-version": "2"}).target, {"id": "7"}, (),
                           "/users/{id}")
    assert lines == ['route "v2" pattern /users/{id} host * : path matches, selected']


def test_explain_404():
    r = router(Rule("t", ["/a"], headers=[("x", "1")]))
    m, lines = r.explain("GET", "h.com", "/a")
    assert m is None
    assert lines == ["route 't' pattern /a host * : path matches, header x missing (wants '1')",
                     "404: no route for host 'h.com' path /a"]
    assert Router([]).explain("GET", "", "/")[1] == ["no rule for host ''", "404: no route for host '' path /"]


def test_shadowed_same_pattern_and_host_set():
    r = router(Rule(Route("a"), ["/x", "/y/{id}"], methods=["GET", "POST"]),
               Rule(Route("b"), ["/y/{n}"], methods=["GET"]),                        # shadowed by a
               Rule(Route("c"), ["/y/{n}"], methods=["GET"], headers=[("v", "1")]),  # more headers: wins first
               Rule(Route("d"), ["/y/{n}"], methods=["PUT"]),                        # other methods
               Rule(Route("e"), ["/y/{n}"], hosts=["h.com"]),                        # other tier
               Rule(Route("f"), ["/y/{n}"], hosts=["h.com"], methods=["GET"]),       # shadowed by e
               Rule(Route("g"), ["/x"], priority=1),                                  # higher priority: wins
               Rule(Route("h"), ["/z/{a}", "/z/{b}", "/z/{a}"]))                     # {b} never filled in
    found = r.shadowed()
    assert [(i, j) for i, j, _ in found] == [(0, 6), (1, 0), (5, 4), (7, 7)]
    reason = found[1][2]
    assert reason.startswith('pattern /y/{n}: route "a" (rule 0) with pattern /y/{id} always wins')
    assert reason == ('pattern /y/{n}: route "a" (rule 0) with pattern /y/{id} always wins: it serves every '
                      'host, as this one does, allows GET, POST (this one: GET), has no header condition this one '
                      'lacks, and goes first (same priority, and rule 0 comes before rule 1)')
    assert "it serves the same hosts, allows any method (this one: GET)" in found[2][2]
    assert found[3][2] == "pattern /z/{b}: the rule's own pattern /z/{a} has the same shape and comes first"


def test_shadowed_by_a_superset_of_hosts_but_not_by_host_less():
    r = router(Rule("wide", ["/a"], hosts=["a.com", "b.com"]), Rule("narrow", ["/a"], hosts=["B.com"]),
               Rule("any", ["/b"]), Rule("hosted", ["/b"], hosts=["a.com"]))
    assert [(i, j) for i, j, _ in r.shadowed()] == [(1, 0)]


def test_shadowed_catchall_and_any_method():
    r = router(Rule("any", ["/s/*"]), Rule("get", ["/s/*"], methods=["GET"]), Rule("get2", ["/t"], methods=["GET"]),
               Rule("any2", ["/t"]))
    assert [(i, j) for i, j, _ in r.shadowed()] == [(1, 0)]


# ---------------------------------------------------------------------------
# Property tests: Router == reference on random rule sets and requests

LITERALS = ["a", "b", "c"]
HOSTS = ["x.com", "a.x.com", "*.x.com", "*.a.x.com", "y.com", "*.com"]
METHODS = ["GET", "POST", "PUT"]


@st.composite
def patterns(draw):
    n = draw(st.integers(0, 3))
    segs = []
    names = iter(["p", "q", "r", "s"])
    for _ in range(n):
        if draw(st.integers(0, 2)) == 0:
            segs.append("{" + next(names) + "}")
        else:
            segs.append(draw(st.sampled_from(LITERALS)))
    end = draw(st.sampled_from(["", "", "slash", "star"]))
    if end == "star":
        segs.append("*")
    elif end == "slash" or not segs:
        segs.append("")
    return "/" + "/".join(segs)


@st.composite
def rules(draw, index):
    return Rule(
        f"r{index}",
        draw(st.lists(patterns(), min_size=1, max_size=3)),
        methods=draw(st.lists(st.sampled_from(METHODS), max_size=2, unique=True)),
        hosts=draw(st.one_of(st.just([]), st.lists(st.sampled_from(HOSTS), max_size=2, unique=True))),
        headers=draw(st.dictionaries(st.sampled_from(["h1", "h2"]), st.sampled_from(["1", "2"]), max_size=2)),
        priority=draw(st.integers(0, 2)),
    )


@st.composite
def rule_sets(draw):
    n = draw(st.integers(1, 8))
    return [draw(rules(i)) for i in range(n)]


request_paths = st.lists(st.sampled_from(LITERALS + ["d", ""]), max_size=5).map(lambda s: "/" + "/".join(s))
request_hosts = st.sampled_from(["", "x.com", "a.x.com", "b.x.com", "b.a.x.com", "y.com", "z.org", "com"])
request_methods = st.sampled_from(METHODS + ["DELETE"])
request_headers = st.one_of(st.none(), st.dictionaries(st.sampled_from(["h1", "h2"]), st.sampled_from(["1", "2"])))

# Sized to keep tests/core under 20 s; raise max_examples locally when hunting.
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def as_tuple(m):
    return None if m is None else (m.target, m.params, m.allowed, m.pattern)


@st.composite
def paths_of(draw, rule_list):
    """A path that one of the rules' patterns matches, or nearly (a random {param}
    value may be empty-ish, a catch-all tail anything): random paths alone rarely
    reach the deep, host-qualified and catch-all entries."""
    rule = draw(st.sampled_from(rule_list))
    out = []
    for seg in draw(st.sampled_from(rule.paths))[1:].split("/"):
        if seg == "*":
            out.extend(draw(st.lists(st.sampled_from(LITERALS + ["d", ""]), max_size=2)))
        elif seg.startswith("{"):
            out.append(draw(st.sampled_from(LITERALS + ["d"])))
        else:
            out.append(seg)
    return "/" + "/".join(out)


@FAST
@given(rule_sets(), st.data())
def test_router_agrees_with_the_reference(rule_list, data):
    """Same (target, params, allowed, pattern) as the reference; explain agrees; a
    pattern reported by shadowed() never wins."""
    fast = Router(rule_list)
    slow = ReferenceRouter(rule_list)
    # (rule index, pattern) pairs that shadowed() says can never win.
    never = {(i, reason.split(":", 1)[0][len("pattern "):]) for i, _, reason in fast.shadowed()}
    paths = st.one_of(request_paths, paths_of(rule_list))
    requests = data.draw(st.lists(st.tuples(request_methods, request_hosts, paths, request_headers),
                                  min_size=1, max_size=20))
    for method, host, path, headers in requests:
        got = as_tuple(fast.match(method, host, path, headers))
        assert got == slow.match(method, host, path, headers), (method, host, path, headers)
        # explain walks the trie its own way (a generator); it must agree with match.
        assert as_tuple(fast.explain(method, host, path, headers)[0]) == got
        if got is not None and got[0] is not None:
            assert (int(got[0][1:]), got[3]) not in never


@settings(FAST, max_examples=80)
@given(rule_sets(), request_methods, request_hosts, request_paths)
def test_rule_order_only_matters_through_index(rule_list, method, host, path):
    # Reversing the rules and giving each its old index as priority keeps the winner,
    # when header counts cannot differ (no header conditions).
    plain = [Rule(r.target, r.paths, r.methods, r.hosts, (), len(rule_list) - i) for i, r in enumerate(rule_list)]
    flipped = Router(list(reversed(plain)))
    assert as_tuple(Router(plain).match(method, host, path)) == as_tuple(flipped.match(method, host, path))


@settings(FAST, max_examples=150)
@given(st.lists(st.tuples(st.lists(st.sampled_from(HOSTS), max_size=2, unique=True),
                          st.sampled_from([["/*"], ["/a"], ["/a", "/*"]]),
                          st.lists(st.sampled_from(METHODS), max_size=1)),
                min_size=1, max_size=6),
       request_methods, request_hosts, st.sampled_from(["/", "/a", "/b"]))
def test_host_tiers_agree_with_the_reference(specs, method, host, path):
    # Paths kept trivial so that the host tiers decide: exact, then the longest
    # wildcard suffix, then no host.
    rule_list = [Rule(f"r{i}", paths, methods, hosts) for i, (hosts, paths, methods) in enumerate(specs)]
    got = as_tuple(Router(rule_list).match(method, host, path))
    assert got == ReferenceRouter(rule_list).match(method, host, path)
