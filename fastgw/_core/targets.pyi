"""Types and docs of fastgw._core.targets for Python callers (the .pyx holds the code).

Times are CLOCK_MONOTONIC milliseconds passed in (``now_ms``), the same clock in every
process. Every method is safe from any number of processes sharing one table.
"""

DEFAULT_CAPACITY: int
HEALTH_NAMES: tuple[str, str, str]    # "unchecked", "healthy", "unhealthy"
CIRCUIT_NAMES: tuple[str, str, str]   # "closed", "open", "trial"

# What a call changed (the ints the methods return).
NO_CHANGE: int          # 0
BECAME_HEALTHY: int     # 1
BECAME_UNHEALTHY: int   # 2
CIRCUIT_OPENED: int     # 3
CIRCUIT_CLOSED: int     # 4
CIRCUIT_REOPENED: int   # 5: its trial failed
TRIAL_BEGAN: int        # 6
REFUSED: int            # 0
ADMITTED: int           # 1

class TargetState:
    """One target's shared slot."""
    shared: bool                 # False: the table was full; this state is the process's own
    health: str
    circuit: str
    consecutive_failures: int
    until_ms: int                # open: may try again at; trial: lapses at
    in_flight: int
    def healthy(self) -> bool: ...
    def claim_probe(self, now_ms: int, interval_ms: int) -> bool: ...
    def probe_result(self, status: int, healthy_threshold: int, unhealthy_threshold: int,
                     now_ms: int) -> int: ...
    def may_admit(self, now_ms: int) -> bool: ...
    def admit(self, now_ms: int, trial_ms: int) -> int: ...
    def record(self, ok: bool, threshold: int, cooldown_ms: int, now_ms: int,
               trial: bool = False) -> int: ...
    def undecided(self, now_ms: int) -> int: ...
    def add_in_flight(self, delta: int) -> None: ...
    def view(self, now_ms: int) -> dict[str, object]: ...

class TargetTable:
    """Slots in one anonymous shared mapping (64 bytes each)."""
    capacity: int
    used: int
    def __init__(self, capacity: int = ...) -> None: ...
    def state(self, name: bytes) -> TargetState: ...

def shared_table() -> TargetTable: ...
