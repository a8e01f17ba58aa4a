"""TLS listeners end to end, with certificates made per test (a CA of the test's own and
leaf certificates for chosen names): SNI picks the certificate (exact, wildcard, the
default), ALPN offers h2 and http/1.1, the protocol floor and the TLS 1.2 ciphers hold (checked
with ``openssl s_client``), requests through TLS reach the upstream with
``X-Forwarded-Proto: https``, a reload swaps the certificates while a connection stays
open, and bad certificates are config errors (expiring ones a warning).
"""

from __future__ import annotations

import datetime
import http.client
import shutil
import signal
import ssl
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import config_for, free_port
from tests.test_server import run_fastgw, wait_for

NOW = datetime.datetime.now(datetime.timezone.utc)


class CA:
    """A certificate authority of the test's own, and the leaf certificates it signs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastgw test CA")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - datetime.timedelta(days=1))
                     .not_valid_after(NOW + datetime.timedelta(days=365))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = folder / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, stem: str, names: list[str], days: float = 90, start_days: float = -1) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW + datetime.timedelta(days=start_days))
                .not_valid_after(NOW + datetime.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = self.folder / f"{stem}.pem", self.folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path


def tls_config(backend, tls_port: int, certificates: str, min_version: str = "1.2") -> tuple[str, int]:
    return config_for(backend, server=f"""
        [server.tls]
        listen = ["127.0.0.1:{tls_port}"]
        min_version = "{min_version}"
        {certificates}
        """)


CERTS = """
        [[server.tls.certificates]]
        cert = "default.pem"
        key = "default.key"
        [[server.tls.certificates]]
        cert = "api.pem"
        key = "api.key"
        hosts = ["api.example.com", "*.apps.example.com"]
"""


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


@pytest.fixture
def tls_gateway(backend, gateway, ca, tmp_path):
    ca.leaf("default", ["default.example.com"])
    ca.leaf("api", ["api.example.com", "*.apps.example.com"])
    tls_port = free_port()
    toml, port = tls_config(backend, tls_port, CERTS)
    gw = gateway(toml, port)
    wait_for(lambda: _connectable(tls_port), what="the TLS listener")
    gw.tls_port = tls_port
    return gw


def _connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def peer_names(port: int, server_name: str | None, ca_path: Path) -> tuple[list[str], str | None, str]:
    """The names of the certificate the server presents for ``server_name``, the ALPN
    protocol it chose, and the TLS version."""
    context = ssl.create_default_context(cafile=str(ca_path))
    context.check_hostname = False
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            cert = tls.getpeercert()
            names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
            return names, tls.selected_alpn_protocol(), tls.version()


def test_sni_chooses_the_certificate_and_alpn_offers_h2_and_http1(tls_gateway, ca):
    port = tls_gateway.tls_port
    assert peer_names(port, "api.example.com", ca.path)[0] == ["api.example.com", "*.apps.example.com"]
    assert peer_names(port, "x.apps.example.com", ca.path)[0][0] == "api.example.com"  # the wildcard
    assert peer_names(port, "a.b.apps.example.com", ca.path)[0] == ["default.example.com"]  # one label only
    assert peer_names(port, "unknown.example.com", ca.path)[0] == ["default.example.com"]
    assert peer_names(port, None, ca.path)[0] == ["default.example.com"]  # no SNI: the first
    assert peer_names(port, "api.example.com", ca.path)[1] == "h2"  # offered both: h2 first
    # The same with openssl's own client: the certificate for the name it sends.
    for name, subject in (("api.example.com", "api.example.com"), ("other.test", "default.example.com")):
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
                              "-alpn", "http/1.1"], input="", capture_output=True, text=True, timeout=10).stdout
        assert f"subject=CN = {subject}" in out and "ALPN protocol: http/1.1" in out, out[-600:]


def test_requests_over_tls_say_https_upstream(tls_gateway, ca):
    # curl, the name resolved to 127.0.0.1, the certificate checked against the test's CA
    result = subprocess.run(["curl", "-s", "--cacert", str(ca.path), "--resolve",
                             f"api.example.com:{tls_gateway.tls_port}:127.0.0.1",
                             f"https://api.example.com:{tls_gateway.tls_port}/echo"],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    sent = dict(httpx.Response(200, content=result.stdout).json()["headers"])
    assert sent["x-forwarded-proto"] == "https" and sent["host"] == f"api.example.com:{tls_gateway.tls_port}"
    # The plain listener still says http.
    r = httpx.get(tls_gateway.url + "/echo")
    assert dict(r.json()["headers"])["x-forwarded-proto"] == "http"


def test_protocol_floor_and_tls12_ciphers(backend, gateway, ca):
    assert shutil.which("openssl"), "openssl is not installed (apt-get install openssl)"
    ca.leaf("default", ["default.example.com"])
    tls_port = free_port()
    toml, port = tls_config(backend, tls_port, CERTS.split("[[server.tls.certificates]]\n        cert = \"api.pem\"")[0])
    gateway(toml, port)
    wait_for(lambda: _connectable(tls_port), what="the TLS listener")

    def s_client(*args: str) -> str:
        result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tls_port}", "-servername",
                                 "default.example.com", *args], input=b"", capture_output=True, timeout=10)
        # (bytes: over h2 the server speaks first, in binary frames)
        return (result.stdout + result.stderr).decode("latin-1")

    assert "New, TLSv1.2, Cipher is ECDHE-ECDSA-AES256-GCM-SHA384" in s_client("-tls1_2")
    assert "New, (NONE), Cipher is (NONE)" in s_client("-tls1_2", "-cipher", "AES128-SHA")  # no CBC, no RSA kx
    assert "New, (NONE), Cipher is (NONE)" in s_client("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")
    assert "New, (NONE), Cipher is (NONE)" in s_client("-tls1_1")
    assert "New, TLSv1.3" in s_client()
    assert "ALPN protocol: h2" in s_client("-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in s_client("-alpn", "http/1.1")


def test_min_version_1_3(backend, gateway, ca):
    ca.leaf("default", ["default.example.com"])
    tls_port = free_port()
    toml, port = tls_config(backend, tls_port, '[[server.tls.certificates]]\ncert = "default.pem"\nkey = "default.key"',
                            min_version="1.3")
    gateway(toml, port)
    wait_for(lambda: _connectable(tls_port), what="the TLS listener")
    assert peer_names(tls_port, "default.example.com", ca.path)[2] == "TLSv1.3"
    context = ssl.create_default_context(cafile=str(ca.path))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw:
            context.wrap_socket(raw, server_hostname="default.example.com")


def test_a_reload_swaps_certificates_and_keeps_open_connections(tls_gateway, ca, tmp_path):
    context = ssl.create_default_context(cafile=str(ca.path))
    context.check_hostname = False  # (SNI 127.0.0.1: the default certificate serves it)
    kept = http.client.HTTPSConnection("127.0.0.1", tls_gateway.tls_port, context=context, timeout=5)
    kept.request("GET", "/echo")
    assert kept.getresponse().read() and kept.sock is not None
    sock = kept.sock
    kept.auto_open = 0  # a second request must use this very connection
    ca.leaf("api", ["api.example.com", "renewed.example.com"])  # the same files, a new certificate
    tls_gateway.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in tls_gateway.stderr, what="the reload")
    wait_for(lambda: "renewed.example.com" in peer_names(tls_gateway.tls_port, "api.example.com", ca.path)[0],
             what="the new certificate")
    kept.request("GET", "/echo")  # the connection opened before the reload still serves
    response = kept.getresponse()
    assert (response.status, kept.sock) == (200, sock)
    response.read()
    kept.close()


def test_bad_certificates_are_config_errors_and_an_expiring_one_a_warning(backend, ca, tmp_path):
    ca.leaf("good", ["good.example.com"])
    ca.leaf("other", ["other.example.com"])
    ca.leaf("old", ["old.example.com"], days=-1, start_days=-30)
    ca.leaf("soon", ["soon.example.com"], days=5)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    entries = {"missing": ("missing.pem", "good.key"), "garbage": ("garbage.pem", "good.key"),
               "mismatch": ("good.pem", "other.key"), "expired": ("old.pem", "old.key")}
    for what, (cert, key) in entries.items():
        toml, _ = tls_config(backend, free_port(), f'[[server.tls.certificates]]\ncert = "{cert}"\nkey = "{key}"')
        (tmp_path / "fastgw.toml").write_text(toml)
        result = run_fastgw(["check"], cwd=tmp_path)
        assert result.returncode == 1, what
        expected = {
            "missing": f"cannot read {tmp_path}/missing.pem: No such file or directory",
            "garbage": f"{tmp_path}/garbage.pem is not a PEM certificate",
            "mismatch": f"{tmp_path}/other.key is not the key of {tmp_path}/good.pem",
            "expired": f"{tmp_path}/old.pem expired on ",
        }[what]
        assert result.stderr.startswith(f"fastgw.toml: server.tls.certificates[0]: {expected}"), result.stderr
    toml, _ = tls_config(backend, free_port(), '[[server.tls.certificates]]\ncert = "soon.pem"\nkey = "soon.key"')
    (tmp_path / "fastgw.toml").write_text(toml)
    result = run_fastgw(["check"], cwd=tmp_path)
    assert result.returncode == 0
    assert f"warning: fastgw.toml: server.tls.certificates[0]: {tmp_path}/soon.pem expires on " in result.stderr
