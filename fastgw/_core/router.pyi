"""Types and documentation of fastgw._core.router for Python callers (the
implementation is router.pyx, compiled; router.pxd declares it for cimport).

What lives here: ``normalize_path``, ``Rule``, ``RouteMatch`` and ``Router``.
The matching rules are written out, with examples, in docs/routing.md.

May import: the standard library only.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Router", "RouteMatch", "Rule", "normalize_path"]

def normalize_path(raw: str) -> str | None:
    """Give a request path its one normal spelling, or refuse it.

    Route, policies and the forwarded request all use the result, so that no
    spelling of a path escapes its route (RFC 3986 §5.2.4; docs/routing.md).

    In order: ``%XX`` is decoded when it stands for an unreserved character
    (ALPHA, DIGIT, ``-``, ``.``, ``_``, ``~``) and otherwise kept with upper-case
    hex; empty segments are dropped (``//`` becomes ``/``); ``.`` and ``..``
    segments are removed, also those that were encoded (``%2e%2E``), never going
    above the root. A final ``.``, ``..`` or empty segment leaves a trailing
    slash (``/a/b/..`` is ``/a/``).

    An already normal path (no ``%``, no ``//``, no ``/.``) is returned as the
    same object after one scan.

    Args:
        raw: The path part of the request target (before ``?``) as the client
            sent it, latin-1 decoded.

    Returns:
        The normal path, which starts with ``/``; or ``None`` when the request
        must be refused with 400: the path does not start with ``/``; it holds a
        raw ``\\``, ``#``, ``;``, a control character (below 0x21, or 0x7F) or
        a non-ASCII character; an escape is malformed (``%G1``, ``%4``); or an
        escape encodes ``/``, ``\\``, NUL, ``#``, ``?`` or ``;`` (``%2F``,
        ``%5C``, ``%00``, ``%23``, ``%3F``, ``%3B``).

    Raises:
        TypeError: ``raw`` is not a str.
    """

class Rule:
    """One route's matching conditions, as plain values.

    Construction only stores the values (as tuples); ``Router`` validates them,
    all rules at once.

    Args:
        target: Anything; ``Router.match`` returns it in ``RouteMatch.target``
            (fastgw passes its compiled route).
        paths: Path patterns, each starting with ``/``. A segment is a literal
            (``users``), a parameter (``{id}``, a whole segment whose name is
            an identifier) or, as the last segment only, the catch-all ``*``.
            ``/*`` alone matches every path. A trailing slash is part of the
            pattern: ``/a`` and ``/a/`` are different paths.
        methods: Upper-case method names; empty means any method.
        hosts: Exact host names (``api.example.com``) or one leading wildcard
            label (``*.example.com``: any host ending in ``.example.com``, at
            any depth, but not ``example.com`` itself). Compared without regard
            to case. Empty means any host.
        headers: ``(name, value)`` pairs, or a mapping. Every one must hold: the
            request has the header (names compared in lower case) with exactly
            this value.
        priority: Higher wins among rules with the same pattern shape and the
            same number of header conditions.

    Raises:
        TypeError: ``paths``, ``methods`` or ``hosts`` is a bare str.
    """

    @property
    def target(self) -> Any: ...
    @property
    def paths(self) -> tuple[str, ...]: ...
    @property
    def methods(self) -> tuple[str, ...]: ...
    @property
    def hosts(self) -> tuple[str, ...]: ...
    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def priority(self) -> int: ...
    def __init__(
        self,
        target: Any,
        paths: Sequence[str],
        methods: Sequence[str] = (),
        hosts: Sequence[str] = (),
        headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
        priority: int = 0,
    ) -> None: ...

class RouteMatch:
    """What ``Router.match`` found.

    Attributes:
        target: The matched rule's target; ``None`` when the host, path and
            headers matched some rules but none allows the method (answer 405).
        params: The ``{param}`` captures by name, and the catch-all remainder
            under ``"*"`` (without its leading slash, ``""`` when nothing is
            left). A fresh dict on every call: the caller may keep or change it.
            Empty for a 405.
        allowed: For a 405, the union of the methods of every rule that matched
            all but the method, sorted (the ``Allow`` header); else ``()``.
        pattern: The matched pattern as written in the rule (for logs);
            ``None`` for a 405.
    """

    @property
    def target(self) -> Any: ...
    @property
    def params(self) -> dict[str, str]: ...
    @property
    def allowed(self) -> tuple[str, ...]: ...
    @property
    def pattern(self) -> str | None: ...
    def __init__(
        self, target: Any, params: dict[str, str], allowed: tuple[str, ...] = (), pattern: str | None = None
    ) -> None: ...
    def __eq__(self, other: object, /) -> bool: ...

class Router:
    """The rules compiled once into per-host tries.

    Order of preference, deterministic (docs/routing.md has examples):

    1. Host tier: rules naming the request host exactly; else wildcard rules,
       the longest matching suffix first; else rules without hosts. A tier is
       used only when it has a full match, so a host-less route still serves
       the hosts that other routes name.
    2. Within a tier, the pattern, segment by segment: literal before
       ``{param}`` before catch-all. ``/a`` beats ``/a/*`` for ``/a``; ``/a/*``
       also matches ``/a`` and ``/a/``. A ``{param}`` never matches an empty
       segment.
    3. Among rules with the same pattern shape (parameter names aside): more
       header conditions first, then higher priority, then the earlier rule.

    A rule matches when host, path, every header condition and the method hold.
    A lookup costs dict lookups per path segment and per host label, whatever
    the number of rules.

    Args:
        rules: The rules, in config order (the order breaks the last ties, and
            indexes in errors and in ``shadowed`` refer to it).

    Raises:
        fastgw._core.errors.RouteError: Some rule is malformed; ``problems``
            lists every one as ``(rule index, message)``. Refused: a pattern not
            starting with ``/``; an empty segment other than the last
            (``/a//b``); ``*`` not the last segment, or in part of one; ``{}``,
            ``{a``, ``{a}b`` and other partial-segment parameters; a parameter
            name that is not an identifier, or appears twice in one pattern; a
            literal segment that a normalised path can never hold (``.``,
            ``..``, ``%7e``, ``a;b``, non-ASCII); more than 64 segments
            (``MAX_SEGMENTS`` in router.pxd); no paths; a malformed wildcard host (``a.*.com``,
            ``*foo.com``), ``*`` alone or an empty host; a method that is not an
            upper-case token; one header required with two values; a priority
            that is not an int.
    """

    @property
    def header_names(self) -> frozenset[str]:
        """The lower-case header names that some rule conditions on. When empty,
        the caller can skip building a headers mapping for ``match``."""
    def __init__(self, rules: Iterable[Rule]) -> None: ...
    def match(
        self, method: str, host: str | None, path: str, headers: Mapping[str, str] | None = None
    ) -> RouteMatch | None:
        """Find the route for a request. The hot path: never raises for a request.

        Args:
            method: The request method, upper case.
            host: The request host, already lower case and without its port;
                ``""`` or ``None`` when the request had none (only host-less
                rules can match then).
            path: The path, already normalised (``normalize_path``), no query.
                A path not starting with ``/`` matches nothing.
            headers: Request headers by lower-case name, holding at least those
                in ``header_names``; ``None`` when there are none (rules with
                header conditions then never match).

        Returns:
            A ``RouteMatch`` (its ``target`` is ``None`` for a 405), or ``None``
            when no rule matches host, path and headers (a 404).
        """
    def explain(
        self, method: str, host: str | None, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[RouteMatch | None, list[str]]:
        """``match``, told step by step (cold path: ``fastgw explain``).

        Returns:
            The same result as ``match``, and one line per candidate tried, in
            order, e.g. ``route "users" pattern /users/{id} host * : path
            matches, method POST not in GET``; a line per host tier where no
            pattern matched; and a closing ``405: ...`` or ``404: ...`` line
            when no candidate was selected. The route is named by its target's
            ``name`` attribute when that is a str, else by ``repr(target)``.
        """
    def shadowed(self) -> list[tuple[int, int, str]]:
        """Rules that can never match through some pattern.

        A pattern of rule ``j`` is shadowed by rule ``i`` when ``i`` has a
        pattern of the same shape, is always tried first (docs/routing.md order)
        and always matches when ``j`` would: ``j``'s hosts are ``i``'s or a
        subset of them (both host-less counts too), ``i`` allows every method
        ``j`` does, and ``i``'s header conditions are a subset of ``j``'s. A
        rule listing two patterns of one shape with different parameter names
        (``/u/{a}``, ``/u/{b}``) shadows itself: the second never fills its
        parameter.

        Returns:
            ``(index of the shadowed rule, index of the rule that wins, reason)``
            sorted, one per shadowed (rule, pattern); the reason starts with
            ``pattern <the shadowed pattern>:``.
        """
