"""Writing to a plain TCP connection at once, below the event loop's transport.

What lives here: how the HTTP/1.1 front end (``protocols/http1``) and the upstream side
(``upstream``) put bytes on a plain (not TLS) socket. PERF: a write through uvloop's
transport is a Python method call, a list append, its own write attempt and a clear,
and a ``bytes`` object for a response head built in C: about 1 µs of the proxy's
user CPU per proxied request, two writes (a client's response, an upstream's
request), of some 6 µs in all. ``send_now`` calls send() itself, from the C buffer.

The rules that keep it the same stream as the transport's:
- The connection writes on a duplicate of the socket's descriptor (``dup_socket``),
  its own until it closes it (``release_socket``), never on the transport's: once the
  loop closes its descriptor, the number may be given to a new connection at once, and
  a write on it would go to someone else. A duplicate keeps the socket open, so it is
  released when the connection closes its transport or learns it closed
  (``connection_lost``, ``eof_received``).
- Bytes go straight to the socket only when the transport holds none: once a write
  went through the transport (the socket did not take it all, a write from elsewhere,
  a body streamed by ``writelines``), ``buffered`` is set, and the next writes go
  through the transport too until it reports its buffer empty. Order is kept.
- What the socket does not take now (its buffer full, or any error) goes to the
  transport, which buffers it, pauses the protocol (flow control) or reports the
  error and closes, as for any write: nothing of that is done twice here.
- TLS connections and descriptors past half the process's limit get none (-1): all
  their writes go through the transport, as before.

May import: nothing of fastgw; Cython's own ``libc``, ``posix`` and ``cpython`` declarations.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EINTR, errno
from posix.fcntl cimport F_DUPFD_CLOEXEC, fcntl
from posix.resource cimport RLIMIT_NOFILE, getrlimit, rlimit
from posix.unistd cimport close


cdef extern from "<sys/socket.h>" nogil:
    ssize_t _send "send"(int fd, const void* data, size_t n, int flags)
    int MSG_NOSIGNAL


cpdef int dup_socket(object transport) except -2:
    """A duplicate of the plain socket under ``transport`` (close-on-exec), for
    ``send_now``; -1 when there is none to write on (TLS, no socket) or to spare (the
    descriptor would pass half the process's limit: the other half is for connections,
    and their writes go through the transport)."""
    cdef rlimit limit
    cdef int fd, copy
    if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    fd = sock.fileno()
    if fd < 0:
        return -1
    copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
    if copy < 0:
        return -1
    if getrlimit(RLIMIT_NOFILE, &limit) == 0 and <unsigned long long>copy * 2 >= limit.rlim_cur:
        close(copy)
        return -1
    return copy


cpdef int release_socket(int fd) noexcept:
    """Close a descriptor from ``dup_socket`` (-1: nothing); returns -1, the new value."""
    if fd >= 0:
        close(fd)
    return -1


cdef bint send_now(int fd, object transport, bint buffered, object data, const char* chars,
                          Py_ssize_t n) except -1:
    """Write ``n`` bytes at ``chars`` (the contents of ``data``, a ``bytes``, or None when
    they are only in a C buffer): straight to the socket ``fd`` when the transport holds
    nothing (``buffered`` false, or its buffer found empty), the rest through
    ``transport.write``. Returns the new ``buffered``: whether the transport may hold
    bytes of this connection now."""
    cdef ssize_t sent = 0
    if n <= 0:
        return buffered
    if fd < 0:
        transport.write(data if data is not None else PyBytes_FromStringAndSize(chars, n))
        return False  # (no direct writes on this connection: nothing to keep in order)
    if buffered and transport.get_write_buffer_size() == 0:
        buffered = False
    if not buffered:
        sent = _send(fd, chars, n, MSG_NOSIGNAL)
        while sent < 0 and errno == EINTR:
            sent = _send(fd, chars, n, MSG_NOSIGNAL)
        if sent == n:
            return False
        if sent < 0:
            sent = 0  # the socket's buffer is full, or an error the transport will report
    if sent == 0 and data is not None:
        transport.write(data)
    else:
        transport.write(PyBytes_FromStringAndSize(chars + sent, n - sent))
    return True


cpdef bint send_bytes(int fd, object transport, bint buffered, bytes data) except -1:
    """``send_now`` for a ``bytes``."""
    return send_now(fd, transport, buffered, data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
