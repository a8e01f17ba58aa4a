"""Types and docs of fastgw._core.limiter for Python callers (the .pyx holds the code).

Times are CLOCK_MONOTONIC nanoseconds passed in (``now_ns``), the same clock in every
process. Every method is safe from any number of processes sharing one arena.
"""

ARENA_BYTES: int
DIRECTORY_ENTRIES: int
DEFAULT_MAX_KEYS: int
MAX_FILL_SECONDS: float

def set_worker_slot(slot: int) -> None: ...
def shared_arena() -> Arena: ...

class Arena:
    """Named regions of one shared mapping, made before the workers fork."""
    shared: bool
    used: int       # bytes handed out, the header included
    regions: int    # names in the directory
    def __init__(self, size: int = ...) -> None: ...

class Limiter:
    """Token buckets (GCRA): ``rate`` a second, at most ``burst``, about ``max_keys`` keys."""
    rate: float
    burst: int
    shared: bool      # False: private to this process (no arena, or it was full)
    max_keys: int     # rounded up to whole groups of 8, a power of two of them
    interval: float   # seconds per token
    evictions: int    # idle buckets given to new keys
    full: int         # new keys refused: every bucket of their group was busy
    def __init__(self, rate: float, burst: int, max_keys: int = ..., arena: Arena | None = None,
                 name: bytes = b"") -> None: ...
    def acquire(self, key: bytes, now_ns: int) -> int:
        """Tokens left (>= 0) when allowed; minus the nanoseconds until the next token."""
    def peek(self, key: bytes, now_ns: int) -> int: ...

class ConcurrencyGuard:
    """At most ``maximum`` in flight, machine-wide; one share per worker slot."""
    maximum: int
    in_flight: int
    def __init__(self, maximum: int, workers: int = 1, arena: Arena | None = None,
                 name: bytes = b"") -> None: ...
    def enter(self) -> bool: ...
    def leave(self) -> None: ...
    def reclaim(self) -> int: ...
