"""The per-sandbox certificate authority that intercepted TLS is terminated with.

Each proxy makes its own CA (an EC P-256 key that never leaves the host process; only the
certificate goes to the guest) and issues a leaf certificate per host on first use, with
that host as its only subject alternative name. Leaf TLS contexts are cached, bounded.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
# A guest clock a little behind the host's must not see certificates from the future.
BACKDATE = datetime.timedelta(hours=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shuru"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class CertAuthority:
    """A CA that issues server certificates. `cert_pem` is all that may leave the host."""

    def __init__(self, common_name: str = "shuru sandbox CA", *, max_leaves: int = 256):
        now = datetime.datetime.now(datetime.timezone.utc)
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = self._key.public_key()
        self._not_before, self._not_after = now - BACKDATE, now + VALIDITY
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before).not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256()))
        self.cert_pem = _pem(self.cert)
        self._max_leaves = max_leaves
        self._contexts: OrderedDict[tuple, ssl.SSLContext] = OrderedDict()

    def __repr__(self) -> str:
        return f"<CertAuthority {self.cert.subject.rfc4514_string()}>"

    def issue(self, host: str) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) for a server named `host` (a name or an IP)."""
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host[:64])).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before).not_valid_after(self._not_after)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return _pem(cert), key_pem

    def server_context(self, host: str, *, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """A server-side TLS context presenting a leaf for `host`, cached per host."""
        key = (host, alpn)
        context = self._contexts.get(key)
        if context is not None:
            self._contexts.move_to_end(key)
            return context
        cert_pem, key_pem = self.issue(host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # A TLS 1.2 renegotiation would make a write wait for a read; nothing needs it.
        context.options |= ssl.OP_NO_RENEGOTIATION
        if alpn:
            context.set_alpn_protocols(list(alpn))
        # The ssl module loads a certificate chain only from a file; the file lives for
        # the one call, in a directory only this user can read.
        with tempfile.TemporaryDirectory(prefix="shuru-leaf-") as tmp:
            path = Path(tmp) / "leaf.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(cert_pem + self.cert_pem + key_pem)
            context.load_cert_chain(path)
        self._contexts[key] = context
        if len(self._contexts) > self._max_leaves:
            self._contexts.popitem(last=False)
        return context


def host_trust_store() -> bytes:
    """The host's trusted CA certificates as PEM, from wherever this Python finds them."""
    paths = ssl.get_default_verify_paths()
    for cafile in (paths.cafile, paths.openssl_cafile):
        if cafile and os.path.isfile(cafile):
            return Path(cafile).read_bytes()
    chunks = []
    for capath in (paths.capath, paths.openssl_capath):
        if capath and os.path.isdir(capath):
            for entry in sorted(Path(capath).iterdir()):
                if entry.suffix in (".pem", ".crt") and entry.is_file():
                    chunks.append(entry.read_bytes().strip() + b"\n")
            if chunks:
                return b"".join(chunks)
    context = ssl.create_default_context()
    return "".join(ssl.DER_cert_to_PEM_cert(der)
                   for der in context.get_ca_certs(binary_form=True)).encode()
