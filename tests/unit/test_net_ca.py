"""The sandbox CA: what it issues, and that only its certificate can leave."""

import ssl

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from shuru.net.ca import CertAuthority, host_trust_store


def test_the_ca_is_a_ca_and_its_leaves_name_one_host():
    ca = CertAuthority("test CA")
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert_pem, key_pem = ca.issue("api.example.com")
    leaf = x509.load_pem_x509_certificate(cert_pem)
    assert leaf.issuer == ca.cert.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.example.com"]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    leaf.verify_directly_issued_by(ca.cert)
    assert b"PRIVATE KEY" in key_pem and b"PRIVATE KEY" not in ca.cert_pem


def test_an_ip_host_gets_an_ip_san():
    leaf = x509.load_pem_x509_certificate(CertAuthority().issue("127.0.0.1")[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_server_contexts_are_cached_per_host_and_bounded():
    ca = CertAuthority(max_leaves=2)
    first = ca.server_context("a.io")
    assert ca.server_context("a.io") is first
    assert isinstance(first, ssl.SSLContext)
    ca.server_context("b.io")
    ca.server_context("c.io")
    assert ca.server_context("a.io") is not first  # forgotten, issued afresh


def test_two_sandboxes_have_different_cas():
    assert CertAuthority().cert_pem != CertAuthority().cert_pem
    assert "CertAuthority" in repr(CertAuthority()) and "KEY" not in repr(CertAuthority())


def test_the_host_trust_store_is_pem():
    store = host_trust_store()
    assert store.count(b"-----BEGIN CERTIFICATE-----") >= 1
