"""``[auth.jwt]``: how the ``jwt`` method of a route's ``auth`` verifies a bearer token
(PyJWT with cryptography), and the cache that makes a reused token cost a lookup.

- ``algorithms`` is required and pinned: a token whose header names another algorithm is
  refused before any key is tried, and ``none`` is never accepted (at load nor at verify).
- No algorithm confusion: an HMAC algorithm (HS256/384/512) is verified with ``secret``
  only, never with a public key; an asymmetric one (RS*, PS*, ES*, EdDSA) with the public
  keys only, and only with a key of its own type (RSA for RS/PS, EC of the right curve
  for ES, Ed25519/Ed448 for EdDSA), never with the secret.
- Keys: ``secret`` (``env:`` allowed), ``public_keys`` (PEM files), ``jwks_file`` (a JWKS,
  keys chosen by the token's ``kid``; a token without ``kid`` is tried against every key
  of its algorithm's type). Files are read when the config is loaded: at start and at
  every reload.
- Claims: ``exp`` is required unless ``require_exp = false``; ``nbf``, ``iss``
  (``issuer``), ``aud`` (``audience``) are checked when present or configured, with
  ``leeway``. The consumer is the one whose ``jwt_subject`` is the token's ``sub``.
- A verified token is cached until its ``exp`` (at most ``CACHE_SECONDS`` when it has
  none), at most ``CACHE_SIZE`` tokens, keyed by an HMAC of the token under a key each
  process makes at random.

May import: the standard library, jwt (PyJWT), cryptography, fastgw.policy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fastgw.policy import REQUIRED, PolicySpec

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
ALGORITHMS = HMAC_ALGORITHMS + ASYMMETRIC_ALGORITHMS
CACHE_SIZE = 10_000
CACHE_SECONDS = 300.0
EXPIRY_WARNING_DAYS = 14

_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}


def _fits(algorithm: str, key: Any) -> bool:
    """Whether ``key`` (a public key object) is of ``algorithm``'s type."""
    if algorithm[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES[algorithm])
    if algorithm == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


def _kind_of(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA key ({key.key_size} bits)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC key ({key.curve.name})"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "an Ed25519 key"
    if isinstance(key, ed448.Ed448PublicKey):
        return "an Ed448 key"
    return f"a {type(key).__name__} key"


def load_keys(settings: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The public keys of ``public_keys`` and the keys of ``jwks_file`` by ``kid``.
    Raises ValueError naming the file and what is wrong with it."""
    public = []
    for path in settings["public_keys"]:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ValueError(f"public_keys: cannot read {path}: {exc.strerror or exc}") from None
        try:
            public.append(load_pem_public_key(data))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"public_keys: {path} is not a PEM public key ({exc})") from None
    by_kid: dict[str, Any] = {}
    path = settings["jwks_file"]
    if path:
        try:
            with open(path, "rb") as f:
                jwks = json.loads(f.read())
            keys = jwt.PyJWKSet.from_dict(jwks).keys
        except OSError as exc:
            raise ValueError(f"jwks_file: cannot read {path}: {exc.strerror or exc}") from None
        except (ValueError, jwt.PyJWTError, KeyError, TypeError) as exc:
            raise ValueError(f"jwks_file: {path} is not a JWKS ({exc})") from None
        for number, key in enumerate(keys):
            if key.key_type == "oct":
                raise ValueError(f"jwks_file: {path} holds a symmetric key (kty \"oct\"): put HMAC "
                                 "secrets in secret")
            by_kid[key.key_id or f"#{number}"] = key.key
    return public, by_kid


class JwtVerifier:
    """``[auth.jwt]`` compiled: ``verify(token)`` gives the token's claims, or None."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.algorithms = tuple(settings["algorithms"])
        self.secret = settings["secret"].encode() if settings["secret"] else None
        self.public, self.by_kid = load_keys(settings)
        self.issuer = settings["issuer"]
        self.audience = settings["audience"]
        self.leeway = settings["leeway"] or 0.0
        self.require = ["exp"] if settings["require_exp"] else []
        self.cache: dict[bytes, tuple[Any, float]] = {}
        self.cache_key = os.urandom(32)

    def cached(self, token: bytes) -> tuple[bytes, Any]:
        """(the token's cache key, the cached claims or None)."""
        key = hmac.new(self.cache_key, token, hashlib.sha256).digest()
        hit = self.cache.get(key)
        if hit is not None and hit[1] > time.time():
            return key, hit[0]
        return key, None

    def remember(self, key: bytes, value: Any, claims: dict[str, Any]) -> None:
        until = claims.get("exp")
        until = float(until) + self.leeway if isinstance(until, (int, float)) else time.time() + CACHE_SECONDS
        if len(self.cache) >= CACHE_SIZE:
            self.cache.clear()
        self.cache[key] = (value, min(until, time.time() + 24 * 3600.0))

    def verify(self, token: bytes) -> dict[str, Any] | None:
        """The claims of a valid token, or None (the reason is not told: never which part)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:  # "none" included: it never is
            return None
        if algorithm in HMAC_ALGORITHMS:
            candidates = [self.secret] if self.secret is not None else []
        else:
            kid = header.get("kid")
            if kid is not None and self.by_kid:
                candidates = [self.by_kid[kid]] if kid in self.by_kid else []
            else:
                candidates = self.public + list(self.by_kid.values())
            candidates = [key for key in candidates if _fits(algorithm, key)]
        options = {"require": self.require, "verify_aud": self.audience is not None}
        for key in candidates:
            try:
                return jwt.decode(token, key, algorithms=[algorithm], audience=self.audience, issuer=self.issuer,
                                  leeway=self.leeway, options=options)
            except jwt.InvalidSignatureError:
                continue  # another key of the same type may be the one
            except jwt.PyJWTError:
                return None
        return None


def _check(settings: dict[str, Any]) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    algorithms = settings["algorithms"]
    if not algorithms:
        return [("algorithms", "needs at least one algorithm")]
    hmac_ones = [a for a in algorithms if a in HMAC_ALGORITHMS]
    asymmetric = [a for a in algorithms if a in ASYMMETRIC_ALGORITHMS]
    if hmac_ones and not settings["secret"]:
        problems.append(("secret", f"{', '.join(hmac_ones)} needs a secret (\"env:NAME\")"))
    if settings["secret"] and not hmac_ones:
        problems.append(("secret", "is for HS256/384/512, which algorithms does not name"))
    if asymmetric and not (settings["public_keys"] or settings["jwks_file"]):
        problems.append(("public_keys", f"{', '.join(asymmetric)} needs public_keys or a jwks_file"))
    if not problems:
        try:
            public, by_kid = load_keys(settings)
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            return [(key, message)]
        for key in public + list(by_kid.values()):
            if not any(_fits(algorithm, key) for algorithm in asymmetric):
                problems.append(("public_keys" if key in public else "jwks_file",
                                 f"{_kind_of(key)} fits none of {', '.join(asymmetric)}"))
                break
    return problems


JWT_SPEC = PolicySpec("jwt", 0, {
    "algorithms": (("choices", *ALGORITHMS), REQUIRED),
    "secret": ("secret", None),
    "public_keys": ("files", ()),
    "jwks_file": ("file", None),
    "issuer": ("string", None),
    "audience": ("string", None),
    "leeway": ("duration", None),
    "require_exp": ("bool", True),
}, lambda owner, settings, context: JwtVerifier(settings), check=_check)
