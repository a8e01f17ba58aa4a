# cython: boundscheck=False, wraparound=False
"""Wire helpers for the request path: which header field a name is, message heads
built into one C buffer, and trace ids. Plain values in, bytes out.

``header_id(name)`` tells the fields a proxy acts on (hop-by-hop, framing, forwarding,
request ids) from the rest, case-insensitively and without allocating; the protocols
and the proxy keep their policies as bit masks over these ids. ``HeadWriter`` appends
the parts of a request or status line and its fields with ``memcpy`` and returns one
``bytes`` (PERF: a list of parts, a tuple per field and a join cost more than the
rest of building a head). ``new_traceparent()`` makes a W3C ``traceparent`` value from
xorshift128+, seeded by the caller (``seed_trace_ids``) in every process: trace ids need
to be unique, not secret.

May import: nothing of fastgw (``_core`` is a leaf); no I/O: the seed comes in.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

# -- header names ------------------------------------------------------------------------

# (lower-case name, id); the table header_id searches, by length then bytes.
_NAMES = (
    (b"host", H_HOST), (b"content-length", H_CONTENT_LENGTH),
    (b"transfer-encoding", H_TRANSFER_ENCODING), (b"connection", H_CONNECTION),
    (b"keep-alive", H_KEEP_ALIVE), (b"te", H_TE), (b"trailer", H_TRAILER),
    (b"upgrade", H_UPGRADE), (b"proxy-connection", H_PROXY_CONNECTION),
    (b"proxy-authorization", H_PROXY_AUTHORIZATION),
    (b"proxy-authenticate", H_PROXY_AUTHENTICATE), (b"expect", H_EXPECT),
    (b"x-request-id", H_X_REQUEST_ID), (b"traceparent", H_TRACEPARENT),
    (b"x-forwarded-for", H_X_FORWARDED_FOR), (b"x-forwarded-proto", H_X_FORWARDED_PROTO),
    (b"x-forwarded-host", H_X_FORWARDED_HOST), (b"forwarded", H_FORWARDED),
    (b"x-real-ip", H_X_REAL_IP),
)
#: name -> id, for Python callers and the tests' reference
NAMES = {name: ident for name, ident in _NAMES}

cdef enum:
    _LONGEST = 19  # len(b"proxy-authorization")
    _COUNT = 19

# The same table as C arrays, for header_id.
cdef const char* _NAME_CHARS[_COUNT]
cdef Py_ssize_t _NAME_LENGTHS[_COUNT]
cdef int _NAME_IDS[_COUNT]
cdef list _keep_alive = []  # the bytes objects _NAME_CHARS points into
if len(_NAMES) != _COUNT or max(len(n) for n, _ in _NAMES) != _LONGEST:
    raise ImportError("wire: _COUNT and _LONGEST must match the _NAMES table")
for _i, (_name, _ident) in enumerate(_NAMES):
    _keep_alive.append(_name)
    _NAME_CHARS[_i] = PyBytes_AS_STRING(_name)
    _NAME_LENGTHS[_i] = len(_name)
    _NAME_IDS[_i] = _ident


cpdef int header_id(bytes name) noexcept:
    """The id of a header field name (H_* in wire.pxd), any case; 0 for any other name."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    if n == 0 or n > _LONGEST:
        return H_OTHER
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef unsigned char lowered[_LONGEST]
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if 65 <= c <= 90:  # A-Z
            c += 32
        lowered[i] = c
    for i in range(_COUNT):
        if _NAME_LENGTHS[i] == n and memcmp(lowered, _NAME_CHARS[i], n) == 0:
            return _NAME_IDS[i]
    return H_OTHER


# -- heads --------------------------------------------------------------------------------

cdef const char* _HEX = b"0123456789abcdef"


cdef class HeadWriter:
    """Appends bytes into one growing C buffer; ``finish()`` returns them and starts over.
    One writer per module serves every head, since a head is built without yielding."""

    def __cinit__(self, Py_ssize_t capacity=4096):
        self.data = <char*>malloc(capacity)
        if self.data == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.length = 0

    def __dealloc__(self):
        free(self.data)

    cdef int _grow(self, Py_ssize_t more) except -1:
        cdef Py_ssize_t capacity = self.capacity
        while capacity < self.length + more:
            capacity *= 2
        cdef char* data = <char*>realloc(self.data, capacity)
        if data == NULL:
            raise MemoryError()
        self.data = data
        self.capacity = capacity
        return 0

    cdef inline int add_chars(self, const char* chars, Py_ssize_t n) except -1:
        if self.length + n > self.capacity:
            self._grow(n)
        memcpy(self.data + self.length, chars, n)
        self.length += n
        return 0

    cdef inline int add(self, bytes part) except -1:
        return self.add_chars(PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))

    cdef int add_field(self, bytes name, bytes value) except -1:
        """``name: value`` and CRLF."""
        self.add(name)
        self.add_chars(b": ", 2)
        self.add(value)
        return self.add_chars(b"\r\n", 2)

    cdef int add_decimal(self, Py_ssize_t number) except -1:
        cdef char digits[24]
        cdef Py_ssize_t i = 24
        if number < 0:
            self.add_chars(b"-", 1)
            number = -number
        while True:
            i -= 1
            digits[i] = <char>(48 + number % 10)
            number //= 10
            if number == 0:
                break
        return self.add_chars(digits + i, 24 - i)

    cdef int add_hex(self, Py_ssize_t number) except -1:
        cdef char digits[24]
        cdef Py_ssize_t i = 24
        while True:
            i -= 1
            digits[i] = _HEX[number & 15]
            number >>= 4
            if number == 0:
                break
        return self.add_chars(digits + i, 24 - i)

    cpdef bytes finish(self):
        """The bytes written since the last finish."""
        cdef bytes out = PyBytes_FromStringAndSize(self.data, self.length)
        self.length = 0
        return out

    # For Python callers (the tests): the same operations, checked.
    def write(self, bytes part):
        self.add(part)

    def write_field(self, bytes name, bytes value):
        self.add_field(name, value)

    def write_decimal(self, Py_ssize_t number):
        self.add_decimal(number)

    def write_hex(self, Py_ssize_t number):
        if number < 0:
            raise ValueError("negative number")
        self.add_hex(number)


# -- trace ids ----------------------------------------------------------------------------

cdef uint64_t _state0 = 0x9E3779B97F4A7C15
cdef uint64_t _state1 = 0xD1B54A32D192ED03


def seed_trace_ids(bytes seed):
    """Seed the trace id generator with 16 random bytes (each process its own)."""
    global _state0, _state1
    if len(seed) != 16:
        raise ValueError("the seed is 16 bytes")
    memcpy(&_state0, PyBytes_AS_STRING(seed), 8)
    memcpy(&_state1, PyBytes_AS_STRING(seed) + 8, 8)
    if _state0 == 0 and _state1 == 0:
        _state1 = 1  # the one state xorshift never leaves


cdef inline uint64_t _next_random() noexcept:
    # xorshift128+ (Vigna): fast, 2^128 - 1 period, fine for ids that need only be unique
    global _state0, _state1
    cdef uint64_t s1 = _state0
    cdef uint64_t s0 = _state1
    _state0 = s0
    s1 ^= s1 << 23
    _state1 = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)
    return _state1 + s0


cdef inline void _hex64(char* out, uint64_t value) noexcept:
    cdef int i
    for i in range(15, -1, -1):
        out[i] = _HEX[value & 15]
        value >>= 4


cpdef bytes new_traceparent():
    """``00-<32 hex trace id>-<16 hex parent id>-01``, neither id all zeros."""
    cdef char out[55]
    cdef uint64_t high = _next_random(), low = _next_random(), parent = _next_random()
    if high == 0 and low == 0:
        low = 1
    if parent == 0:
        parent = 1
    memcpy(out, b"00-", 3)
    _hex64(out + 3, high)
    _hex64(out + 19, low)
    out[35] = 45  # "-"
    _hex64(out + 36, parent)
    memcpy(out + 52, b"-01", 3)
    return PyBytes_FromStringAndSize(out, 55)
