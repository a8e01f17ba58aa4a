"""Exceptions the native core raises, as plain Python classes.

They are raised only while something is being built (``Router(rules)``), never on
the per-request path, where outcomes are return values (``match`` returns
``None`` for "no route"). Keeping the classes in Python, not in the ``.pyx``,
lets the rest of fastgw import and catch them without loading the extension
(httptools' ``parser/errors.py`` does the same).

May import: the standard library only (``_core`` is a leaf of the package).
"""

from __future__ import annotations

from collections.abc import Iterable


class RouteError(ValueError):
    """A set of rules the router cannot build.

    Every problem found is reported at once, so that ``fastgw check`` can print
    them all: ``problems`` is a list of ``(rule_index, message)`` pairs, where
    ``rule_index`` is the position of the offending ``Rule`` in the sequence given
    to ``Router`` and ``message`` says what is wrong with which value, e.g.
    ``pattern "/a//b": empty segment in the middle``. The config layer prefixes
    the message with the route's own place in the file.
    """

    def __init__(self, problems: Iterable[tuple[int, str]]) -> None:
        self.problems: list[tuple[int, str]] = list(problems)
        super().__init__("\n".join(f"rule {index}: {message}" for index, message in self.problems))
