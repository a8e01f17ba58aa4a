# fastgw._core.wire: C-level declarations, for ``cimport`` by the request path.
#
# What lives here: the names of the HTTP header fields a proxy must recognise, as small
# integers (``header_id``), a byte-string builder for message heads (``HeadWriter``), and
# W3C trace ids from a per-process xorshift generator. Python callers read wire.pyi.
# May cimport: Cython's own ``libc``/``cpython`` declarations only (_core is a leaf).

cdef enum:
    # Header fields by id; 0 (H_OTHER) is every field the proxy passes on untouched.
    H_OTHER = 0
    H_HOST = 1
    H_CONTENT_LENGTH = 2
    H_TRANSFER_ENCODING = 3
    H_CONNECTION = 4
    H_KEEP_ALIVE = 5
    H_TE = 6
    H_TRAILER = 7
    H_UPGRADE = 8
    H_PROXY_CONNECTION = 9
    H_PROXY_AUTHORIZATION = 10
    H_PROXY_AUTHENTICATE = 11
    H_EXPECT = 12
    H_X_REQUEST_ID = 13
    H_TRACEPARENT = 14
    H_X_FORWARDED_FOR = 15
    H_X_FORWARDED_PROTO = 16
    H_X_FORWARDED_HOST = 17
    H_FORWARDED = 18
    H_X_REAL_IP = 19
    H_X_CONSUMER_ID = 20        # set by fastgw's auth; a client's own is never forwarded
    H_X_CONSUMER_GROUPS = 21
    H_COUNT = 22


cpdef int header_id(bytes name) noexcept
cdef int header_id_chars(const char* name, Py_ssize_t n) noexcept
cdef bint named_in(const unsigned char* name, Py_ssize_t n, tuple names) noexcept


cdef class HeadWriter:
    cdef char* data
    cdef Py_ssize_t length, capacity

    cdef int _grow(self, Py_ssize_t more) except -1
    cdef int add(self, bytes part) except -1
    cdef int add_chars(self, const char* chars, Py_ssize_t n) except -1
    cdef int add_text(self, str text) except -1
    cdef int add_field(self, bytes name, bytes value) except -1
    cdef int add_field_chars(self, const char* name, Py_ssize_t name_length, const char* value,
                             Py_ssize_t value_length) except -1
    cdef int add_decimal(self, Py_ssize_t number) except -1
    cdef int add_hex(self, Py_ssize_t number) except -1
    cdef void reset(self) noexcept
    cpdef bytes finish(self)


ctypedef struct ResponseHead:
    int status
    Py_ssize_t content_length
    Py_ssize_t head_end         # bytes of the head, its blank line included
    bint keep_alive             # the upstream keeps the connection open after it
    bint close                  # Connection: close
    bint keep_alive_asked       # Connection: keep-alive


cdef int scan_response_head(bytes data, unsigned int drop_mask, tuple drop_names, HeadWriter fields,
                            ResponseHead* out) except -1


cpdef bytes new_traceparent()
