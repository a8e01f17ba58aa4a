"""Types and docs of fastgw._core.wire for Python callers (the .pyx holds the code)."""

NAMES: dict[bytes, int]
"""Lower-case header field name -> its id (the H_* values of wire.pxd)."""

def header_id(name: bytes) -> int:
    """The id of a header field name in NAMES, compared without case; 0 for any other."""

class HeadWriter:
    """Builds a message head in one C buffer."""

    def __init__(self, capacity: int = 4096) -> None: ...
    def write(self, part: bytes) -> None: ...
    def write_field(self, name: bytes, value: bytes) -> None:
        """``name: value`` and CRLF."""
    def write_text(self, text: str) -> None:
        """``text`` as latin-1 bytes; UnicodeEncodeError (nothing written) beyond latin-1."""
    def write_decimal(self, number: int) -> None: ...
    def write_hex(self, number: int) -> None: ...
    def finish(self) -> bytes:
        """The bytes written since the last finish; the writer starts over."""

def seed_trace_ids(seed: bytes) -> None:
    """Seed the trace id generator with 16 random bytes; each process seeds its own."""

def new_traceparent() -> bytes:
    """A W3C traceparent value, ``00-<trace id>-<parent id>-01``, ids never all zeros."""
