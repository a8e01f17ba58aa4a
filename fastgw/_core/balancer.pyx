# cython: boundscheck=False, wraparound=False
"""The pick step of an upstream: which of its targets takes a request. Plain values in,
an index out; the request path keeps health, circuits and in-flight counts and passes
them in (``up``: one byte per target, non-zero when it may take traffic).

- ``HashRing``: weighted consistent hashing, ketama-style: each target owns
  ``POINTS_PER_WEIGHT`` × its weight points on a 64-bit ring, placed by hashing its name,
  so a target's points never depend on the others: removing one moves only the keys it
  held, adding one takes about 1/(N+1) of the keys. A key goes to the owner of the first
  point at or after its hash; when that owner is down the walk goes on clockwise, so the
  keys of the targets that are up never move (the reason for a ring rather than Maglev,
  whose table would have to be rebuilt, moving some of their keys, whenever a target goes
  down). 1,000 points per unit of weight keep each target within a few percent of its
  share (12 bytes a point: 12 KiB per unit of weight); the lookup is a binary search.
  Keys hash with FNV-1a and the SplitMix64 finaliser: fast, and every input bit moves
  every output bit.
- ``SmoothWeighted``: nginx's smooth weighted round robin over the targets that are up.
- ``LeastConnections``: the fewest requests in flight per unit of weight; ties in turn.
- ``TwoChoices``: two distinct targets that are up, drawn at random; the one with fewer
  requests in flight per unit of weight.

May import: nothing of fastgw (``_core`` is a leaf); no I/O.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc

#: ring points per unit of weight
POINTS_PER_WEIGHT = 1000


cdef uint64_t hash_key(const unsigned char* data, Py_ssize_t n) noexcept:
    cdef uint64_t h = 0xcbf29ce484222325ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= data[i]
        h *= 0x100000001b3ULL
    h ^= h >> 30
    h *= 0xbf58476d1ce4e5b9ULL
    h ^= h >> 27
    h *= 0x94d049bb133111ebULL
    h ^= h >> 31
    return h


def key_hash(bytes key):
    """The 64-bit hash of a key (for the tests' reference)."""
    return hash_key(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


cdef inline bint _is_up(bytes up, Py_ssize_t i) noexcept:
    return up is None or (<const unsigned char*>PyBytes_AS_STRING(up))[i] != 0


cdef list _weights(weights, str what):
    checked = []
    for w in weights:
        if not isinstance(w, int) or w < 1:
            raise ValueError(f"{what}: weights are integers >= 1, got {w!r}")
        checked.append(w)
    if not checked:
        raise ValueError(f"{what}: at least one target")
    return checked


cdef _check_up(bytes up, Py_ssize_t targets):
    if up is not None and PyBytes_GET_SIZE(up) != targets:
        raise ValueError(f"up has {len(up)} bytes for {targets} targets")


cdef class HashRing:
    """A ring over ``targets``, a list of (name, weight): the names place the points."""

    def __init__(self, list targets):
        names = [name for name, _ in targets]
        weights = _weights([w for _, w in targets], "HashRing")
        if len(set(names)) != len(names) or not all(isinstance(n, bytes) for n in names):
            raise ValueError("HashRing: target names are distinct bytes")
        points = []
        cdef bytes label
        for index, (name, weight) in enumerate(targets):
            for v in range(POINTS_PER_WEIGHT * weight):
                label = name + b"#%d" % v
                points.append((hash_key(<const unsigned char*>PyBytes_AS_STRING(label),
                                        PyBytes_GET_SIZE(label)), name, index))
        points.sort()  # by hash; an equal hash (never seen) by name: independent of order
        self.count = len(points)
        self.targets = len(targets)
        self.points = <uint64_t*>malloc(self.count * sizeof(uint64_t))
        self.owners = <int*>malloc(self.count * sizeof(int))
        if self.points == NULL or self.owners == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self.count):
            self.points[i] = points[i][0]
            self.owners[i] = points[i][2]

    def __dealloc__(self):
        free(self.points)
        free(self.owners)

    cpdef Py_ssize_t pick(self, bytes key, bytes up=None) except -2:
        """The target of ``key``: the first up owner at or after its hash; -1 if none is up."""
        _check_up(up, self.targets)
        cdef uint64_t h = hash_key(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        cdef Py_ssize_t low = 0, high = self.count, middle, step, at
        while low < high:  # the first point >= h
            middle = (low + high) >> 1
            if self.points[middle] < h:
                low = middle + 1
            else:
                high = middle
        for step in range(self.count):
            at = (low + step) % self.count
            if _is_up(up, self.owners[at]):
                return self.owners[at]
        return -1


cdef class SmoothWeighted:
    """nginx's smooth weighted round robin: each pick adds every up target's weight to its
    score and takes the highest, which then gives back the total: a 1:3 pair goes
    B A B B rather than A B B B."""

    def __init__(self, list weights):
        self.weights = _weights(weights, "SmoothWeighted")
        self.scores = [0] * len(self.weights)
        self.targets = len(self.weights)

    cpdef Py_ssize_t pick(self, bytes up=None) except -2:
        _check_up(up, self.targets)
        cdef Py_ssize_t i, best = -1
        cdef long total = 0, w
        cdef list scores = self.scores
        for i in range(self.targets):
            if not _is_up(up, i):
                continue
            w = <long>self.weights[i]
            scores[i] = <long>scores[i] + w
            total += w
            if best < 0 or <long>scores[i] > <long>scores[best]:
                best = i
        if best >= 0:
            scores[best] = <long>scores[best] - total
        return best


cdef inline bint _fewer(long a_count, long a_weight, long b_count, long b_weight) noexcept:
    # a_count / a_weight < b_count / b_weight, without division
    return a_count * b_weight < b_count * a_weight


cdef class LeastConnections:
    """The up target with the fewest requests in flight per unit of weight; among equals,
    the next one after the last pick (so equals take turns)."""

    def __init__(self, list weights):
        self.weights = _weights(weights, "LeastConnections")
        self.targets = len(self.weights)
        self.next_start = 0

    cpdef Py_ssize_t pick(self, list in_flight, bytes up=None) except -2:
        _check_up(up, self.targets)
        if len(in_flight) != self.targets:
            raise ValueError(f"in_flight has {len(in_flight)} counts for {self.targets} targets")
        cdef Py_ssize_t step, i, best = -1
        for step in range(self.targets):
            i = (self.next_start + step) % self.targets
            if not _is_up(up, i):
                continue
            if best < 0 or _fewer(in_flight[i], self.weights[i], in_flight[best], self.weights[best]):
                best = i
        if best >= 0:
            self.next_start = (best + 1) % self.targets
        return best


cdef class TwoChoices:
    """Two distinct up targets at random (xorshift128+, seeded by the caller); the one with
    fewer requests in flight per unit of weight, the first drawn on a tie."""

    def __init__(self, list weights, bytes seed):
        self.weights = _weights(weights, "TwoChoices")
        self.targets = len(self.weights)
        if len(seed) != 16:
            raise ValueError("TwoChoices: the seed is 16 bytes")
        self.state0 = int.from_bytes(seed[:8], "little")
        self.state1 = int.from_bytes(seed[8:], "little") or 1

    cdef uint64_t _next(self) noexcept:
        cdef uint64_t s1 = self.state0
        cdef uint64_t s0 = self.state1
        self.state0 = s0
        s1 ^= s1 << 23
        self.state1 = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)
        return self.state1 + s0

    cpdef Py_ssize_t pick(self, list in_flight, bytes up=None) except -2:
        _check_up(up, self.targets)
        if len(in_flight) != self.targets:
            raise ValueError(f"in_flight has {len(in_flight)} counts for {self.targets} targets")
        cdef Py_ssize_t i, n_up = 0, first = -1, second = -1, a, b, seen = 0
        for i in range(self.targets):
            if _is_up(up, i):
                n_up += 1
        if n_up == 0:
            return -1
        a = <Py_ssize_t>(self._next() % <uint64_t>n_up)
        if n_up == 1:
            b = a
        else:
            b = <Py_ssize_t>(self._next() % <uint64_t>(n_up - 1))
            if b >= a:
                b += 1
        for i in range(self.targets):  # the a-th and b-th targets that are up
            if _is_up(up, i):
                if seen == a:
                    first = i
                if seen == b:
                    second = i
                seen += 1
        if _fewer(in_flight[second], self.weights[second], in_flight[first], self.weights[first]):
            return second
        return first
