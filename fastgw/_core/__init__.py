"""The native hot path: plain values in, decisions out.

Nothing here imports from the rest of fastgw, does I/O or knows asyncio; time is
passed in. Each module is a Cython triple (.pyx implementation, .pxd for cimport,
.pyi with types and docs for Python callers).
"""

from fastgw._core.router import Router, RouteMatch, Rule, normalize_path

__all__ = ["Router", "RouteMatch", "Rule", "normalize_path"]
