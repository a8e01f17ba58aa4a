"""Types and docs of fastgw._core.balancer for Python callers (the .pyx holds the code).

Every pick returns a target's index, or -1 when no target is up. ``up`` is one byte per
target, non-zero when it may take traffic; None means all are up.
"""

POINTS_PER_WEIGHT: int

def key_hash(key: bytes) -> int:
    """The ring's 64-bit hash of a key (FNV-1a, SplitMix64 finaliser)."""

class HashRing:
    """Weighted consistent hashing over (name, weight) targets, ketama-style."""
    targets: int
    def __init__(self, targets: list[tuple[bytes, int]]) -> None: ...
    def pick(self, key: bytes, up: bytes | None = None) -> int: ...

class SmoothWeighted:
    """nginx's smooth weighted round robin."""
    targets: int
    def __init__(self, weights: list[int]) -> None: ...
    def pick(self, up: bytes | None = None) -> int: ...

class LeastConnections:
    """Fewest in flight per unit of weight; equals take turns."""
    targets: int
    def __init__(self, weights: list[int]) -> None: ...
    def pick(self, in_flight: list[int], up: bytes | None = None) -> int: ...

class TwoChoices:
    """Two random up targets; the less loaded per unit of weight."""
    targets: int
    def __init__(self, weights: list[int], seed: bytes) -> None: ...
    def pick(self, in_flight: list[int], up: bytes | None = None) -> int: ...
