"""TLS and mutual TLS, with throwaway certificates made by the ``cryptography`` package."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dataaccess_client import AsyncClient, TlsFiles, Unavailable
from tests.conftest import started


@dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1, and a client certificate, as files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any], ca: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0])
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("dataaccess test CA", ca_key, (_name("dataaccess test CA"), ca_key), ca=True)
    issuer = (ca_cert.subject, ca_key)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = _write(folder / "ca.pem", ca_cert, ca_key)
    server = _write(folder / "server.pem", _issue("127.0.0.1", server_key, issuer), server_key)
    client = _write(folder / "client.pem", _issue("orders", client_key, issuer), client_key)
    return Pki(ca, server, server.with_suffix(".key"), client, client.with_suffix(".key"))


async def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(
    tmp_path: Path, document: dict[str, Any], pki: Pki
) -> None:
    document["tls"] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    async with started(tmp_path, document) as running:
        target = f"127.0.0.1:{running.port}"
        async with AsyncClient(target, tls=TlsFiles(ca_file=str(pki.ca)), retries=0) as client:
            assert (await client.query("kitchen", "SELECT 1")).rows == [(1,)]
        async with AsyncClient(target, timeout=2, retries=0) as plaintext:
            with pytest.raises(Unavailable):
                await plaintext.query("kitchen", "SELECT 1")


async def test_mutual_tls_needs_a_client_certificate_signed_by_the_ca(
    tmp_path: Path, document: dict[str, Any], pki: Pki
) -> None:
    document["tls"] = {
        "cert_file": str(pki.server_cert),
        "key_file": str(pki.server_key),
        "client_ca_file": str(pki.ca),
    }
    async with started(tmp_path, document) as running:
        target = f"127.0.0.1:{running.port}"
        mutual = TlsFiles(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        async with AsyncClient(target, tls=mutual, retries=0) as client:
            assert (await client.query("kitchen", "SELECT 2")).rows == [(2,)]
        anonymous = TlsFiles(ca_file=str(pki.ca))
        async with AsyncClient(target, tls=anonymous, timeout=2, retries=0) as client:
            with pytest.raises(Unavailable):
                await client.query("kitchen", "SELECT 3")
