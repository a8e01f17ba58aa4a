# fastgw.socket_writes: C-level declarations, for ``cimport`` by the HTTP/1.1 front end and
# the upstream side.
#
# What lives here: writing to a plain TCP socket at once, on a descriptor of the
# connection's own, below the event loop's transport, in order with what the transport
# holds (the rules are in socket_writes.pyx). Python callers (the tests) use the cpdef ones.
# May cimport: Cython's own ``libc``/``posix``/``cpython`` declarations only.

cpdef int dup_socket(object transport) except -2
cpdef int release_socket(int fd) noexcept
cdef bint send_now(int fd, object transport, bint buffered, object data, const char* chars,
                   Py_ssize_t n) except -1
cpdef bint send_bytes(int fd, object transport, bint buffered, bytes data) except -1
