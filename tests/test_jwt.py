"""JWT authentication end to end: tokens signed by the test with PyJWT (RS256, ES256 from
a JWKS by ``kid``, EdDSA, HS256), against a real gateway; the refusals the security of a
JWT gateway rests on (expired, not yet valid, wrong issuer or audience, a bad signature,
``alg: none``, the RS/HS algorithm confusion, an unknown ``kid``, an unknown subject,
no ``exp``); and the config errors of ``[auth.jwt]``.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.conftest import config_for
from tests.test_server import fresh_get, run_fastgw

SECRET = "a-secret-of-at-least-32-bytes-for-hs256!"


def pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys():
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1()),
            "ed": ed25519.Ed25519PrivateKey.generate(),
            "other_rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


def jwks(keys) -> dict:
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys["ec"].public_key()))
    ed_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(keys["ed"].public_key()))
    return {"keys": [dict(ec_jwk, kid="ec-1", alg="ES256"), dict(ed_jwk, kid="ed-1")]}


@pytest.fixture
def jwt_gateway(backend, gateway, tmp_path, keys, monkeypatch):
    monkeypatch.setenv("JWT_SECRET", SECRET)
    (tmp_path / "rsa.pub").write_bytes(pem(keys["rsa"].public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(keys)))
    toml, port = config_for(backend, routes="""
        [auth.jwt]
        algorithms = ["RS256", "ES256", "EdDSA", "HS256"]
        public_keys = ["rsa.pub"]
        jwks_file = "jwks.json"
        secret = "env:JWT_SECRET"
        issuer = "https://issuer.test"
        audience = "api"
        leeway = "1s"
        [consumers.alice]
        groups = ["admin"]
        jwt_subject = "alice-sub"
        [[routes]]
        name = "api"
        paths = ["/api/*"]
        upstream = "app"
        strip_prefix = "/api"
        auth = { methods = ["jwt"] }
        """)
    return gateway(toml, port)


def claims(**extra) -> dict:
    now = int(time.time())
    return {"sub": "alice-sub", "iss": "https://issuer.test", "aud": "api", "iat": now, "exp": now + 300, **extra}


def call(gw, token: str):
    return fresh_get(gw.url + "/api/echo", headers={"authorization": f"Bearer {token}"})


def test_valid_tokens_of_every_kind_name_the_consumer(jwt_gateway, keys):
    tokens = [jwt.encode(claims(), keys["rsa"], algorithm="RS256"),
              jwt.encode(claims(), keys["ec"], algorithm="ES256", headers={"kid": "ec-1"}),
              jwt.encode(claims(), keys["ed"], algorithm="EdDSA", headers={"kid": "ed-1"}),
              jwt.encode(claims(), SECRET, algorithm="HS256")]
    for token in tokens + tokens:  # the second time from the cache
        r = call(jwt_gateway, token)
        assert r.status_code == 200, (r.text, jwt.get_unverified_header(token))
        sent = dict(r.json()["headers"])
        assert sent["x-consumer-id"] == "alice" and "authorization" not in sent


def test_the_refusals(jwt_gateway, keys, backend):
    rsa_public_pem = pem(keys["rsa"].public_key())
    now = int(time.time())
    bad = {
        "expired": jwt.encode(claims(exp=now - 60), keys["rsa"], algorithm="RS256"),
        "not yet valid": jwt.encode(claims(nbf=now + 600), keys["rsa"], algorithm="RS256"),
        "wrong issuer": jwt.encode(claims(iss="https://evil.test"), keys["rsa"], algorithm="RS256"),
        "wrong audience": jwt.encode(claims(aud="other"), keys["rsa"], algorithm="RS256"),
        "no exp": jwt.encode({k: v for k, v in claims().items() if k != "exp"}, keys["rsa"], algorithm="RS256"),
        "another key": jwt.encode(claims(), keys["other_rsa"], algorithm="RS256"),
        "unknown subject": jwt.encode(claims(sub="mallory"), keys["rsa"], algorithm="RS256"),
        "unknown kid": jwt.encode(claims(), keys["ec"], algorithm="ES256", headers={"kid": "ec-9"}),
        "an algorithm not pinned": jwt.encode(claims(), keys["rsa"], algorithm="RS512"),
        "not a token": "not.a.token",
    }
    # alg none: an unsigned token
    bad["alg none"] = jwt.encode(claims(), None, algorithm="none")
    # algorithm confusion: HS256 "signed" with the RSA public key (what a verifier that
    # used the public key as an HMAC secret would accept)
    header = {"alg": "HS256", "typ": "JWT"}
    import base64
    import hashlib
    import hmac as hmac_module

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims()).encode())
    forged = signing_input + b"." + b64(hmac_module.new(rsa_public_pem, signing_input, hashlib.sha256).digest())
    bad["RS/HS confusion"] = forged.decode()
    # a bad signature: the last characters changed
    good = jwt.encode(claims(), keys["rsa"], algorithm="RS256")
    bad["bad signature"] = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for why, token in bad.items():
        r = call(jwt_gateway, token)
        assert (r.status_code, r.json()["error"]) == (401, "invalid credentials"), why
        assert r.headers["www-authenticate"] == 'Bearer realm="fastgw"'
    r = fresh_get(jwt_gateway.url + "/api/echo")
    assert (r.status_code, r.json()["error"]) == (401, "missing credentials")
    assert backend.count("/echo") == 0


def test_jwt_config_errors(backend, tmp_path, keys):
    (tmp_path / "ec.pub").write_bytes(pem(keys["ec"].public_key()))
    (tmp_path / "garbage.pub").write_text("not a key")
    base, _ = config_for(backend, routes="""
        [consumers.a]
        jwt_subject = "a"
        [[routes]]
        name = "api"
        paths = ["/api/*"]
        upstream = "app"
        auth = { methods = ["jwt"] }
        """)
    cases = {
        'algorithms = ["none"]': 'auth.jwt.algorithms: expected one of "HS256", "HS384", "HS512", "RS256", '
                                 '"RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", got string '
                                 '"none"',
        'algorithms = ["HS256"]': 'auth.jwt.secret: HS256 needs a secret ("env:NAME")',
        'algorithms = ["RS256"]': "auth.jwt.public_keys: RS256 needs public_keys or a jwks_file",
        'algorithms = ["RS256"]\npublic_keys = ["ec.pub"]': "auth.jwt.public_keys: an EC key (secp256r1) fits "
                                                            "none of RS256",
        'algorithms = ["RS256"]\npublic_keys = ["missing.pub"]':
            f"auth.jwt.public_keys: cannot read {tmp_path}/missing.pub: No such file or directory",
        'algorithms = ["RS256"]\nsecret = "env:NOT_SET_ANYWHERE"\npublic_keys = ["ec.pub"]':
            "auth.jwt.secret: environment variable NOT_SET_ANYWHERE is not set",
    }
    for table, error in cases.items():
        (tmp_path / "fastgw.toml").write_text(base + f"\n[auth.jwt]\n{table}\n")
        result = run_fastgw(["check"], cwd=tmp_path)
        assert result.returncode == 1, table
        assert result.stderr.splitlines() == [f"fastgw.toml: {error}"], table
    (tmp_path / "fastgw.toml").write_text(base + '\n[auth.jwt]\nalgorithms = ["ES256"]\npublic_keys = ["garbage.pub"]\n')
    result = run_fastgw(["check"], cwd=tmp_path)
    assert result.stderr.startswith(f"fastgw.toml: auth.jwt.public_keys: {tmp_path}/garbage.pub is not a PEM public key")
    (tmp_path / "fastgw.toml").write_text(base)
    result = run_fastgw(["check"], cwd=tmp_path)
    assert result.stderr.splitlines() == [
        'fastgw.toml: routes[0] "api".auth.methods: "jwt" needs [auth.jwt] (how tokens are verified)']
