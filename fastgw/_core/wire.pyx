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
from cpython.unicode cimport PyUnicode_1BYTE_KIND, PyUnicode_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND
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
    (b"x-real-ip", H_X_REAL_IP), (b"x-consumer-id", H_X_CONSUMER_ID),
    (b"x-consumer-groups", H_X_CONSUMER_GROUPS),
)
#: name -> id, for Python callers and the tests' reference
NAMES = {name: ident for name, ident in _NAMES}

cdef enum:
    _LONGEST = 19  # len(b"proxy-authorization")
    _COUNT = 21
    _PER_LENGTH = 3  # the most names of one length (17: transfer-encoding and two more)

# The same table as C arrays, for header_id, with the names of each length listed
# (at most _PER_LENGTH share one; -1 ends a list): a field name is compared with at most
# three names, most with none.
cdef const char* _NAME_CHARS[_COUNT]
cdef int _NAME_IDS[_COUNT]
cdef signed char _BY_LENGTH[_LONGEST + 1][_PER_LENGTH + 1]
cdef list _keep_alive = []  # the bytes objects _NAME_CHARS points into
if len(_NAMES) != _COUNT or max(len(n) for n, _ in _NAMES) != _LONGEST:
    raise ImportError("wire: _COUNT and _LONGEST must match the _NAMES table")
for _i in range(_LONGEST + 1):
    for _k in range(_PER_LENGTH + 1):
        _BY_LENGTH[_i][_k] = -1
for _i, (_name, _ident) in enumerate(_NAMES):
    _keep_alive.append(_name)
    _NAME_CHARS[_i] = PyBytes_AS_STRING(_name)
    _NAME_IDS[_i] = _ident
    _k = 0
    while _BY_LENGTH[len(_name)][_k] >= 0:
        _k += 1
    if _k == _PER_LENGTH:
        raise ImportError("wire: more than _PER_LENGTH names of one length")
    _BY_LENGTH[len(_name)][_k] = _i


cpdef int header_id(bytes name) noexcept:
    """The id of a header field name (H_* in wire.pxd), any case; 0 for any other name."""
    return header_id_chars(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))


cdef int header_id_chars(const char* name, Py_ssize_t n) noexcept:
    if n == 0 or n > _LONGEST:
        return H_OTHER
    cdef const unsigned char* p = <const unsigned char*>name
    cdef const unsigned char* known
    cdef const signed char* candidates = _BY_LENGTH[n]
    cdef Py_ssize_t i
    cdef int k = 0
    cdef unsigned char c
    while candidates[k] >= 0:
        known = <const unsigned char*>_NAME_CHARS[candidates[k]]
        for i in range(n):
            c = p[i]
            if 65 <= c <= 90:  # A-Z
                c += 32
            if c != known[i]:
                break
        else:
            return _NAME_IDS[candidates[k]]
        k += 1
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

    cdef int add_text(self, str text) except -1:
        """``text`` as latin-1 bytes (UnicodeEncodeError beyond it), with no bytes object
        made (PERF): a str of latin-1 characters keeps them one byte each already."""
        if PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND:
            return self.add_chars(<const char*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text))
        return self.add(text.encode("latin-1"))

    cdef int add_field(self, bytes name, bytes value) except -1:
        """``name: value`` and CRLF."""
        return self.add_field_chars(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), PyBytes_AS_STRING(value),
                                    PyBytes_GET_SIZE(value))

    cdef int add_field_chars(self, const char* name, Py_ssize_t name_length, const char* value,
                             Py_ssize_t value_length) except -1:
        """``add_field`` of a name and a value held elsewhere (an exchange's field block)."""
        if self.length + name_length + value_length + 4 > self.capacity:
            self._grow(name_length + value_length + 4)
        cdef char* end = self.data + self.length
        memcpy(end, name, name_length)
        end += name_length
        end[0] = 58  # ":"
        end[1] = 32  # " "
        memcpy(end + 2, value, value_length)
        end += 2 + value_length
        end[0] = 13  # CR
        end[1] = 10  # LF
        self.length += name_length + value_length + 4
        return 0

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

    cdef inline void reset(self) noexcept:
        self.length = 0

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

    def write_text(self, str text):
        self.add_text(text)

    def write_decimal(self, Py_ssize_t number):
        self.add_decimal(number)

    def write_hex(self, Py_ssize_t number):
        if number < 0:
            raise ValueError("negative number")
        self.add_hex(number)


# -- response heads -----------------------------------------------------------------------

# RFC 9110 tchar: the bytes of a field name.
cdef bint _TCHAR[256]
for _c in range(256):
    _TCHAR[_c] = chr(_c).isascii() and (chr(_c).isalnum() or chr(_c) in "!#$%&'*+-.^_`|~")


# field-value and reason-phrase bytes: HTAB, SP, VCHAR, obs-text (a table: PERF, the scan
# reads every byte of a response head)
cdef bint _VALUE[256]
for _c in range(256):
    _VALUE[_c] = _c == 9 or 32 <= _c <= 126 or _c >= 128


cdef bint _lower_equals(const char* p, Py_ssize_t n, const char* lower) noexcept:
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>p[i]
        if 65 <= c <= 90:
            c += 32
        if c != <unsigned char>lower[i] or lower[i] == 0:
            return False
    return lower[n] == 0


cdef int _connection_tokens(const char* p, Py_ssize_t n, ResponseHead* out) noexcept:
    """Note "close" and "keep-alive" in a Connection value; 0 when it names anything else."""
    cdef Py_ssize_t i = 0, start, end
    while i <= n:
        start = i
        while i < n and p[i] != 44:  # ","
            i += 1
        end = i
        while start < end and (p[start] == 32 or p[start] == 9):
            start += 1
        while end > start and (p[end - 1] == 32 or p[end - 1] == 9):
            end -= 1
        if end > start:
            if _lower_equals(p + start, end - start, b"close"):
                out.close = True
            elif _lower_equals(p + start, end - start, b"keep-alive"):
                out.keep_alive_asked = True
            else:
                return 0
        i += 1
    return 1


cdef int scan_response_head(bytes data, unsigned int drop_mask, tuple drop_names, HeadWriter fields,
                            ResponseHead* out) except -1:
    """Read a whole response head at the start of ``data`` when it is of the plainest kind:
    HTTP/1.x, a final status other than 204 and 304, one Content-Length and no
    Transfer-Encoding, a Connection header naming at most close and keep-alive, every
    line well formed by RFC 9112 with CRLF endings. Its fields, less those whose id is in
    ``drop_mask`` and those named in ``drop_names`` (lower-case bytes, or None), go into
    ``fields`` as ``name: value`` lines. Returns 1 and fills
    ``out``; returns 0 for anything else, ``fields`` untouched, and the caller's general
    parser (llhttp) reads the response instead. This shortcut accepts only heads that
    llhttp reads the same way (tests/core/test_wire.py checks it against httptools)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i, name_start, name_end, value_start, value_end
    cdef Py_ssize_t length = -1, count = 0
    cdef int status, ident
    if n < 17 or memcmp(p, b"HTTP/1.", 7) != 0 or (p[7] != 48 and p[7] != 49) or p[8] != 32:
        return 0
    if not (48 <= p[9] <= 57 and 48 <= p[10] <= 57 and 48 <= p[11] <= 57) or p[12] != 32:
        return 0
    status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
    if status < 200 or status > 599 or status == 204 or status == 304:
        return 0
    out.close = False
    out.keep_alive_asked = False
    i = 13
    while i < n and _VALUE[p[i]]:
        i += 1
    if i + 1 >= n or p[i] != 13 or p[i + 1] != 10:  # (a byte that is not a value's, or no CRLF)
        return 0
    i += 2
    fields.reset()
    while True:
        if i + 1 >= n:
            fields.reset()
            return 0  # the head is not all here
        if p[i] == 13:
            if p[i + 1] != 10:
                fields.reset()
                return 0
            i += 2
            break
        count += 1
        if count > 100:
            fields.reset()
            return 0
        name_start = i
        while i < n and _TCHAR[p[i]]:
            i += 1
        name_end = i
        if name_end == name_start or i >= n or p[i] != 58:  # ":"
            fields.reset()
            return 0
        i += 1
        while i < n and (p[i] == 32 or p[i] == 9):
            i += 1
        value_start = i
        while i < n and _VALUE[p[i]]:
            i += 1
        if i + 1 >= n or p[i] != 13 or p[i + 1] != 10:
            fields.reset()
            return 0
        value_end = i  # trailing whitespace kept, as llhttp keeps it
        i += 2
        ident = header_id_chars(<const char*>p + name_start, name_end - name_start)
        if ident == H_CONTENT_LENGTH:
            if length >= 0 or value_end == value_start or value_end - value_start > 18:
                fields.reset()
                return 0
            length = 0
            for j in range(value_start, value_end):
                if not 48 <= p[j] <= 57:
                    fields.reset()
                    return 0
                length = length * 10 + (p[j] - 48)
        elif ident == H_TRANSFER_ENCODING:
            fields.reset()
            return 0
        elif ident == H_CONNECTION:
            if not _connection_tokens(<const char*>p + value_start, value_end - value_start, out):
                fields.reset()
                return 0
        if drop_names is not None and ident == H_OTHER and named_in(p + name_start, name_end - name_start,
                                                                      drop_names):
            continue
        if not drop_mask & (1u << ident):
            fields.add_field_chars(<const char*>p + name_start, name_end - name_start,
                                   <const char*>p + value_start, value_end - value_start)
    if length < 0:
        fields.reset()
        return 0
    out.status = status
    out.content_length = length
    out.head_end = i
    out.keep_alive = not out.close and (p[7] == 49 or out.keep_alive_asked)
    return 1


cdef bint named_in(const unsigned char* name, Py_ssize_t n, tuple names) noexcept:
    """Whether ``name`` (any case) is one of ``names`` (lower-case bytes)."""
    cdef bytes candidate
    cdef const unsigned char* c
    cdef Py_ssize_t i
    for candidate in names:
        if PyBytes_GET_SIZE(candidate) != n:
            continue
        c = <const unsigned char*>PyBytes_AS_STRING(candidate)
        for i in range(n):
            if (name[i] + 32 if 65 <= name[i] <= 90 else name[i]) != c[i]:
                break
        else:
            return True
    return False


def scan_response(bytes data, unsigned int drop_mask=0, tuple drop_names=None):
    """``scan_response_head`` for Python callers (the tests): None when it declines, else
    (status, field lines, content length, head length, keep-alive)."""
    cdef ResponseHead head
    cdef HeadWriter fields = HeadWriter()
    if not scan_response_head(data, drop_mask, drop_names, fields, &head):
        return None
    return head.status, fields.finish(), head.content_length, head.head_end, head.keep_alive


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
