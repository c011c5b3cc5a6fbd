"""The server's TLS files as last read whole, reread when they change on disk.

cert-manager rotates a certificate by rewriting the mounted Secret (kubelet
swaps a symlink, so the files get new inodes); a server that read them once
would serve the old certificate until it restarts. ``CertificateFiles.changed``
is asked on every TLS handshake, on gRPC's own threads: it stats the files
(cheap), rereads them only when one changed, and keeps the last pair that
loaded when a half-written file does not, so it is thread-safe and never
touches the event loop. (A Secret mounted with ``subPath`` never updates.)
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from service.config import TlsConfig

log = logging.getLogger(__name__)
Stamp = tuple[tuple[int, int, int] | None, ...]


class CertificateError(Exception):
    """The TLS files do not load; the message is one line."""


@dataclass(frozen=True)
class Certificates:
    """A private key, its certificate chain and the CA that signs client certificates."""

    key: bytes
    chain: bytes
    client_ca: bytes | None


class CertificateFiles:
    """The certificates in ``tls``'s files, following the files as they change."""

    def __init__(self, tls: TlsConfig) -> None:
        self._tls = tls
        self._paths = [p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p]
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self.current = self._load()

    def changed(self) -> Certificates | None:
        """The certificates if the files changed since last asked and load whole, else None."""
        stamp = self._stamp()
        if stamp == self._seen:
            return None
        with self._lock:  # one handshake rereads; the others keep the pair they have
            if stamp == self._seen:
                return None
            self._seen = stamp
            try:
                certificates = self._load()
            except CertificateError as exc:
                log.warning("tls files changed but do not load, serving the previous ones: %s", exc)
                return None
            if self._stamp() != stamp:  # rewritten while read: read again next handshake
                self._seen = ()
                return None
            self.current = certificates
        log.info("tls certificates reloaded", extra={"cert_file": str(self._tls.cert_file)})
        return certificates

    def _stamp(self) -> Stamp:
        return tuple(_stamp(path) for path in self._paths)

    def _load(self) -> Certificates:
        """Read the files and check that they load as a server would use them."""
        tls = self._tls
        try:
            chain, key = tls.cert_file.read_bytes(), tls.key_file.read_bytes()
            client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            # The password only keeps OpenSSL from prompting for an encrypted key.
            context.load_cert_chain(tls.cert_file, tls.key_file, password=b"")
            if client_ca is not None:
                context.load_verify_locations(cadata=client_ca.decode("ascii"))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise CertificateError(f"tls: the certificate files do not load: {exc}") from exc
        return Certificates(key, chain, client_ca)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_mtime_ns, status.st_size)
