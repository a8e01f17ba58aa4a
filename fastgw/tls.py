"""TLS listeners (``[server.tls]``): certificates checked when the config is loaded, and the
``ssl`` contexts a worker serves them with, one per certificate, chosen by SNI.

- **Checked at load** (``check_certificate``): each certificate and key readable, PEM,
  matching each other, and not expired (a config error); expiring within
  ``EXPIRY_WARNING_DAYS`` days, a warning.
- **Chosen by SNI**: an exact host of a certificate's ``hosts`` first, then a one-label
  wildcard (``*.example.com`` covers ``api.example.com``, not ``a.b.example.com`` nor
  ``example.com``); otherwise, and when the client names no server, the first
  certificate.
- **Protocols**: TLS 1.2 or 1.3 from ``min_version`` up; TLS 1.2 only with ECDHE key
  exchange and AEAD ciphers (AES-GCM, ChaCha20-Poly1305); no compression, no
  renegotiation. ALPN offers ``http/1.1``.
- **Reload** swaps the certificates without touching a connection: the listener's
  context stays, and its SNI callback hands each new handshake the context of the
  current ``Certificates``.

May import: the standard library, cryptography.
"""

from __future__ import annotations

import datetime
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

EXPIRY_WARNING_DAYS = 14
ALPN = ["h2", "http/1.1"]
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def check_certificate(cert_path: str, key_path: str) -> tuple[list[str], list[str], list[str]]:
    """(errors, warnings, the names the certificate is for) of one certificate and key."""
    try:
        with open(cert_path, "rb") as f:
            cert_data = f.read()
    except OSError as exc:
        return [f"cannot read {cert_path}: {exc.strerror or exc}"], [], []
    try:
        with open(key_path, "rb") as f:
            key_data = f.read()
    except OSError as exc:
        return [f"cannot read {key_path}: {exc.strerror or exc}"], [], []
    try:
        cert = x509.load_pem_x509_certificates(cert_data)[0]
    except ValueError:
        return [f"{cert_path} is not a PEM certificate"], [], []
    try:
        key = load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError):
        # (never the key's content in a message)
        return [f"{key_path} is not an unencrypted PEM private key"], [], []
    errors, warnings = [], []
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        errors.append(f"{key_path} is not the key of {cert_path}")
    now = datetime.datetime.now(datetime.timezone.utc)
    expires = cert.not_valid_after_utc
    if expires <= now:
        errors.append(f"{cert_path} expired on {expires:%Y-%m-%d}")
    elif expires - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        warnings.append(f"{cert_path} expires on {expires:%Y-%m-%d}, in less than {EXPIRY_WARNING_DAYS} days")
    if cert.not_valid_before_utc > now:
        errors.append(f"{cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    return errors, warnings, _names(cert)


def _names(cert: Any) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [a.value.lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


def _context(min_version: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[min_version]
    context.set_ciphers(TLS12_CIPHERS)  # (TLS 1.3's suites are all AEAD, and not set here)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(ALPN)
    if cert:
        context.load_cert_chain(cert, key)
    return context


class Certificates:
    """The contexts of ``[server.tls]``'s certificates, and which one a server name gets."""

    def __init__(self, tls: Any) -> None:
        self.contexts = [_context(tls.min_version, c.cert, c.key) for c in tls.certificates]
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}
        for context, c in zip(self.contexts, tls.certificates):
            for host in c.hosts:
                if host.startswith("*."):
                    self.wildcard.setdefault(host[2:], context)
                else:
                    self.exact.setdefault(host, context)

    def for_name(self, server_name: str | None) -> ssl.SSLContext:
        if server_name:
            name = server_name.lower().rstrip(".")
            found = self.exact.get(name)
            if found is None and "." in name:
                found = self.wildcard.get(name.split(".", 1)[1])
            if found is not None:
                return found
        return self.contexts[0]


class Listener:
    """The context a TLS listening socket serves with: the first certificate's, whose SNI
    callback gives each handshake the current ``Certificates``' choice. ``update`` swaps
    them (a reload); connections already open keep theirs."""

    def __init__(self, tls: Any) -> None:
        self.certificates = Certificates(tls)
        self.context = _context(tls.min_version, tls.certificates[0].cert, tls.certificates[0].key)
        self.context.sni_callback = self._choose

    def update(self, tls: Any) -> None:
        self.certificates = Certificates(tls)

    def _choose(self, sock: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext) -> None:
        sock.context = self.certificates.for_name(server_name)
