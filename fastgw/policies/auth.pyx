# cython: boundscheck=True, wraparound=True
"""``auth`` and ``acl``: who is calling (a consumer of ``[consumers.NAME]``, proven by an
API key or a Basic password), and whether the route lets that consumer's groups in.

``auth`` (priority 2500) tries the route's ``methods`` in their order; the first that
verifies names the consumer:

- ``key``: the ``key_header`` field (``apikey`` by default), or the ``apikey`` query
  parameter when ``key_query``. Keys are looked up by their SHA-256 (no key is ever in a
  dict as itself) and then compared in constant time.
- ``jwt``: ``Authorization: Bearer`` with a token ``[auth.jwt]`` verifies
  (fastgw.policies.jwt), whose ``sub`` is a consumer's ``jwt_subject``; a verified token
  is cached until it expires.
- ``basic``: ``Authorization: Basic`` with the consumer's name and password, checked
  against its scrypt hash (``fastgw hash-password``). A check costs ~0.1 s of CPU, so it
  runs in a thread, never on the event loop, and a success is cached (at most
  ``BASIC_CACHE_SIZE`` entries, for ``BASIC_CACHE_SECONDS``), keyed by an HMAC of the
  credential under a key this process made at random: the cache never holds a password.
  An unknown name costs the same check, against a dummy hash, so that timing tells
  nothing of who exists.

Nothing presented is 401 "missing credentials"; something presented that does not verify
is 401 "invalid credentials" (never which part was wrong). Both carry
``WWW-Authenticate``, one challenge per accepted method. A verified request goes on with
``Exchange.consumer`` set; the proxy forwards it as ``X-Consumer-Id`` and
``X-Consumer-Groups`` (a client's own copies of those fields are never forwarded) and,
unless ``hide_credentials = false``, without the credential.

``acl`` (priority 2400): ``allow_groups`` (the consumer must be in one) or ``deny_groups``
(it must be in none): 403 otherwise. A route with ``acl`` and no ``auth`` is a config
error.

May import: the standard library, fastgw.policy, fastgw.exchange.
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
from urllib.parse import unquote_to_bytes

from fastgw.exchange cimport Exchange
from fastgw.policy cimport CONTINUE, WAIT, Policy, answer
from fastgw.policy import REQUIRED, PolicySpec

AUTH_PRIORITY = 2500
ACL_PRIORITY = 2400
BASIC_CACHE_SIZE = 10_000
BASIC_CACHE_SECONDS = 300.0
PROVEN_KEYS_MAX = 10_000

# scrypt: N = 2**15, r = 8, p = 1 (32 MiB, ~0.1 s here), a 16-byte salt, a 32-byte hash
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1


def hash_password(str password):
    """``scrypt$15$8$1$<salt>$<hash>`` (base64): what ``basic_password`` holds."""
    salt = os.urandom(16)
    digest = _scrypt(password.encode(), salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    return "$".join(("scrypt", str(SCRYPT_LOG2_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def parse_password_hash(str text):
    """(log2 N, r, p, salt, hash) of a ``hash_password`` string; ValueError when it is not
    one (the message never quotes it: it is a secret)."""
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("is not a password hash (make one with `fastgw hash-password`)")
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("is not a password hash (make one with `fastgw hash-password`)") from None
    if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and len(salt) >= 8 and len(digest) >= 16):
        raise ValueError("has scrypt parameters out of range (make one with `fastgw hash-password`)")
    return log2_n, r, p, salt, digest


def _scrypt(bytes password, bytes salt, int log2_n, int r, int p, int length=32):
    return hashlib.scrypt(password, salt=salt, n=1 << log2_n, r=r, p=p, maxmem=256 * r * (1 << log2_n),
                          dklen=length)


def verify_password(bytes password, tuple hashed):
    log2_n, r, p, salt, digest = hashed
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p, len(digest)), digest)


# An unknown consumer's password is checked against this, so that it costs the same.
_DUMMY = parse_password_hash(hash_password("fastgw: no such consumer"))


class Consumer:
    """A consumer as the request path sees it."""

    __slots__ = ("name", "groups", "id_field", "groups_field", "password")

    def __init__(self, name, groups, password=None):
        self.name = name
        self.groups = frozenset(groups)
        self.id_field = (b"x-consumer-id", name.encode("latin-1"))
        self.groups_field = (b"x-consumer-groups", ",".join(groups).encode("latin-1")) if groups else None
        self.password = password

    def __repr__(self):
        return f"Consumer({self.name!r})"


class Consumers:
    """Every consumer of the config, found by key digest, by name and by JWT subject
    (built once per config; the keys themselves are kept only to compare in constant
    time); and the ``[auth.jwt]`` verifier, or None."""

    def __init__(self, configs, jwt=None):
        self.by_name = {}
        self.by_key = {}
        self.by_subject = {}
        self.jwt = jwt
        for c in configs:
            consumer = Consumer(c.name, c.groups,
                                parse_password_hash(c.basic_password) if c.basic_password else None)
            self.by_name[c.name] = consumer
            if c.jwt_subject is not None:
                self.by_subject[c.jwt_subject] = consumer
            for key in c.api_keys:
                raw = key.encode("utf-8")
                self.by_key[hashlib.sha256(raw).digest()] = (raw, consumer)

    def with_token(self, bytes token):
        """The consumer of a bearer token that verifies (``[auth.jwt]``), or None; a
        verified token is remembered until it expires."""
        verifier = self.jwt
        if verifier is None:
            return None
        cache_key, consumer = verifier.cached(token)
        if consumer is not None:
            return consumer
        claims = verifier.verify(token)
        if claims is None:
            return None
        consumer = self.by_subject.get(claims.get("sub"))
        if consumer is not None:
            verifier.remember(cache_key, consumer, claims)
        return consumer

    def with_key(self, bytes key):
        found = self.by_key.get(hashlib.sha256(key).digest())
        if found is not None and hmac.compare_digest(found[0], key):
            return found[1]
        return None


cdef bytes _query_key(bytes query):
    """The first ``apikey`` parameter of ``query``, or None."""
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_to_bytes(name) == b"apikey":
            return unquote_to_bytes(value.replace(b"+", b" "))
    return None


cdef bytes _without_query_key(bytes query):
    return b"&".join(part for part in query.split(b"&")
                     if unquote_to_bytes(part.partition(b"=")[0]) != b"apikey")


cdef class Auth(Policy):
    cdef readonly tuple methods
    cdef bint by_key, by_basic, key_query, hide
    cdef bytes key_header
    cdef object consumers, cache, cache_key
    cdef list challenges
    cdef tuple hidden_fields            # the credential fields hide_credentials removes
    # API keys already proven (found by their SHA-256, compared in constant time), for
    # this config's life, by ``hash(key)`` (SipHash under a key drawn at start): a
    # cheap lookup instead of a digest per request (PERF), the key a value compared in
    # constant time, never a dict key. Only a valid key gets in; bounded.
    cdef dict proven_keys

    def __init__(self, str owner, settings, consumers):
        Policy.__init__(self, "auth", owner, AUTH_PRIORITY, request=True)
        self.methods = tuple(settings["methods"])
        self.by_key = "key" in self.methods
        self.by_basic = "basic" in self.methods
        self.key_header = settings["key_header"].lower().encode("latin-1")
        self.key_query = settings["key_query"]
        self.hide = settings["hide_credentials"]
        self.consumers = consumers
        self.cache = {}
        self.cache_key = os.urandom(32)
        schemes = {"key": b'Key realm="fastgw"', "basic": b'Basic realm="fastgw"', "jwt": b'Bearer realm="fastgw"'}
        self.challenges = [(b"www-authenticate", schemes[m]) for m in self.methods]
        hidden = [self.key_header] if self.by_key else []
        if self.by_basic or "jwt" in self.methods:
            hidden.append(b"authorization")
        self.hidden_fields = tuple(hidden)
        self.proven_keys = {}

    cpdef int request(self, Exchange ex) except -1:
        cdef bint presented = False
        for method in self.methods:
            if method == "key":
                key = ex.header(self.key_header)
                if key is None and self.key_query and ex.query:
                    key = _query_key(ex.query)
                if key is not None:
                    presented = True
                    consumer = self._with_key(key.strip())
                    if consumer is not None:
                        return self._accept(ex, consumer)
            elif method == "jwt":
                value = ex.header(b"authorization")
                if value is not None and value[:7].lower() == b"bearer ":
                    presented = True
                    consumer = self.consumers.with_token(value[7:].strip())
                    if consumer is not None:
                        return self._accept(ex, consumer)
            elif method == "basic":
                credential = self._basic(ex)
                if credential is not None:
                    presented = True
                    name, password = credential
                    cached = self.cache.get(self._cache_key(name, password))
                    if cached is not None and cached[1] > time.monotonic():
                        return self._accept(ex, cached[0])
                    if ex.state is None:
                        ex.state = {}
                    ex.state["auth"] = (name, password)
                    return WAIT  # scrypt, in a thread
        return self._refuse(ex, presented)

    async def wait(self, Exchange ex):
        name, password = ex.state.pop("auth")
        consumer = self.consumers.by_name.get(name.decode("utf-8", "replace"))
        hashed = consumer.password if consumer is not None and consumer.password is not None else _DUMMY
        ok = await asyncio.get_running_loop().run_in_executor(None, verify_password, password, hashed)
        if not ok or hashed is _DUMMY:
            return self._refuse(ex, True)
        if len(self.cache) >= BASIC_CACHE_SIZE:
            self.cache.clear()
        self.cache[self._cache_key(name, password)] = (consumer, time.monotonic() + BASIC_CACHE_SECONDS)
        return self._accept(ex, consumer)

    cdef bytes _cache_key(self, bytes name, bytes password):
        return hmac.new(self.cache_key, name + b"\0" + password, hashlib.sha256).digest()

    cdef tuple _basic(self, Exchange ex):
        """(name, password) of an ``Authorization: Basic`` field, or None."""
        value = ex.header(b"authorization")
        if value is None or value[:6].lower() != b"basic ":
            return None
        try:
            decoded = base64.b64decode(value[6:].strip(), validate=True)
        except (ValueError, binascii.Error):
            return (b"", b"")  # presented, and invalid
        name, sep, password = decoded.partition(b":")
        return (name, password) if sep else (b"", b"")

    cdef object _with_key(self, bytes key):
        """The consumer of an API key, or None."""
        cdef Py_hash_t slot = hash(key)
        proven = self.proven_keys.get(slot)
        if proven is not None and hmac.compare_digest((<tuple>proven)[0], key):
            return (<tuple>proven)[1]
        consumer = self.consumers.with_key(key)
        if consumer is not None:
            if len(self.proven_keys) >= PROVEN_KEYS_MAX:
                self.proven_keys.clear()
            self.proven_keys[slot] = (key, consumer)
        return consumer

    cdef int _accept(self, Exchange ex, consumer) except -1:
        ex.consumer = consumer
        if self.hide:
            if self.by_key and self.key_query and ex.query:
                ex.query = _without_query_key(ex.query)
            ex.drop_fields(self.hidden_fields)  # (in the exchange's field block: PERF)
        return CONTINUE

    cdef int _refuse(self, Exchange ex, bint presented) except -1:
        return answer(ex, 401, "invalid credentials" if presented else "missing credentials", list(self.challenges))

    def describe(self):
        return f"auth {', '.join(self.methods)}"


cdef class Acl(Policy):
    cdef readonly frozenset allow, deny

    def __init__(self, str owner, settings):
        Policy.__init__(self, "acl", owner, ACL_PRIORITY, request=True)
        self.allow = frozenset(settings["allow_groups"])
        self.deny = frozenset(settings["deny_groups"])

    cpdef int request(self, Exchange ex) except -1:
        consumer = ex.consumer
        if consumer is not None:
            groups = consumer.groups
            if not (groups & self.deny) and (not self.allow or groups & self.allow):
                return CONTINUE
        return answer(ex, 403, "consumer not allowed")

    def describe(self):
        parts = ["acl"]
        if self.allow:
            parts.append("allow " + " ".join(sorted(self.allow)))
        if self.deny:
            parts.append("deny " + " ".join(sorted(self.deny)))
        return " ".join(parts)


def _check_acl(settings):
    if bool(settings["allow_groups"]) == bool(settings["deny_groups"]):
        return [(None, 'needs "allow_groups" or "deny_groups" (one of them)')]
    return []


def _check_auth(settings):
    if not settings["methods"]:
        return [("methods", 'needs at least one of "key", "jwt", "basic"')]
    return []


SPECS = (
    PolicySpec("auth", AUTH_PRIORITY, {
        "methods": (("choices", "key", "jwt", "basic"), REQUIRED),
        "key_header": ("header_name", "apikey"),
        "key_query": ("bool", False),
        "hide_credentials": ("bool", True),
    }, lambda owner, settings, context: Auth(owner, settings, context.consumers), check=_check_auth),
    PolicySpec("acl", ACL_PRIORITY, {
        "allow_groups": ("strings", ()),
        "deny_groups": ("strings", ()),
    }, lambda owner, settings, context: Acl(owner, settings), check=_check_acl),
)
