"""TLS and mutual TLS, with throwaway certificates made by the ``cryptography`` package."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dataaccess_client import AsyncClient, TlsFiles, Unavailable
from service.server import DataAccessServer, StartError
from tests.conftest import build_config, started


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


def _make_pki(folder: Path, ca_name: str = "dataaccess test CA") -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(ca_name, ca_key, (_name(ca_name), ca_key), ca=True)
    issuer = (ca_cert.subject, ca_key)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    folder.mkdir()
    ca = _write(folder / "ca.pem", ca_cert, ca_key)
    server = _write(folder / "server.pem", _issue("127.0.0.1", server_key, issuer), server_key)
    client = _write(folder / "client.pem", _issue("orders", client_key, issuer), client_key)
    return Pki(ca, server, server.with_suffix(".key"), client, client.with_suffix(".key"))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return _make_pki(tmp_path / "pki")


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


def _replace(path: Path, content: bytes) -> None:
    """Swap in new file content at once, as kubelet does for a Secret (a new inode)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(content)
    os.replace(fresh, path)


async def _answers(target: str, tls: TlsFiles) -> bool:
    """Whether a new connection that trusts ``tls`` gets an answer."""
    async with AsyncClient(target, tls=tls, timeout=2, retries=0) as client:
        try:
            return (await client.query("kitchen", "SELECT 1")).rows == [(1,)]
        except Unavailable:
            return False


async def test_a_rotated_server_certificate_is_served_to_new_connections_without_restart(
    tmp_path: Path, document: dict[str, Any], pki: Pki
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    cert, key = served / "tls.crt", served / "tls.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    document["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    rotated = _make_pki(tmp_path / "rotated", "rotated CA")
    old_ca, new_ca = TlsFiles(ca_file=str(pki.ca)), TlsFiles(ca_file=str(rotated.ca))
    async with started(tmp_path, document) as running:
        target = f"127.0.0.1:{running.port}"
        assert await _answers(target, old_ca)
        assert not await _answers(target, new_ca)
        # Half written (the certificate cut short): the last good pair is still served.
        new_cert = rotated.server_cert.read_bytes()
        _replace(cert, new_cert[: len(new_cert) // 2])
        assert await _answers(target, old_ca)
        _replace(key, rotated.server_key.read_bytes())
        _replace(cert, new_cert)
        assert await _answers(target, new_ca)
        assert not await _answers(target, old_ca)
        # Rewritten in place (same inode) works as well.
        cert.write_bytes(pki.server_cert.read_bytes())
        key.write_bytes(pki.server_key.read_bytes())
        assert await _answers(target, old_ca)


async def test_a_rotated_client_ca_is_used_for_new_connections_without_restart(
    tmp_path: Path, document: dict[str, Any], pki: Pki
) -> None:
    client_ca = tmp_path / "client-ca.pem"
    client_ca.write_bytes(pki.ca.read_bytes())
    document["tls"] = {
        "cert_file": str(pki.server_cert),
        "key_file": str(pki.server_key),
        "client_ca_file": str(client_ca),
    }
    rotated = _make_pki(tmp_path / "rotated", "rotated CA")
    old_client = TlsFiles(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    new_client = TlsFiles(str(pki.ca), str(rotated.client_cert), str(rotated.client_key))
    async with started(tmp_path, document) as running:
        target = f"127.0.0.1:{running.port}"
        assert await _answers(target, old_client)
        assert not await _answers(target, new_client)
        _replace(client_ca, rotated.ca.read_bytes())
        assert await _answers(target, new_client)
        assert not await _answers(target, old_client)


async def test_certificate_files_that_do_not_load_stop_the_start_with_one_line(
    tmp_path: Path, document: dict[str, Any], pki: Pki
) -> None:
    pki.server_cert.write_bytes(pki.server_cert.read_bytes()[:100])
    document["tls"] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    Path(document["data_dir"]).mkdir(parents=True)
    server = DataAccessServer(build_config(tmp_path, document))
    with pytest.raises(StartError, match="^tls: the certificate files do not load: "):
        await server.start()
