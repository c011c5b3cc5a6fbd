"""The address every worker serves on, held by the supervisor before any worker is forked.

Workers share it with SO_REUSEPORT: the kernel spreads new connections (not
calls) over them. The supervisor first makes sure nothing listens there yet
(a stale server sharing the port would silently take some of the calls), then
binds a socket of its own with SO_REUSEPORT and keeps it, unlistening, for as
long as the workers run: with ``listen: host:0`` that is what picks the port
every worker then binds.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from service.server import StartError, bind_failure


@dataclass(frozen=True)
class SharedAddress:
    """``listen`` with its real port, and the supervisor's socket that holds the port."""

    listen: str
    holder: socket.socket


@contextmanager
def shared_address(listen: str) -> Iterator[SharedAddress]:
    """Hold ``listen``'s port (a free one for port 0) for the block; StartError if busy."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise StartError(f"listen: workers share a host:port address, not {listen!r}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError) as exc:
        raise StartError(bind_failure(listen)) from exc
    holder = socket.socket(family, kind, proto)
    try:
        if int(port) != 0:
            _check_free(family, kind, proto, address, listen)
        try:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            holder.bind(address)
        except OSError as exc:
            raise StartError(bind_failure(listen)) from exc
        yield SharedAddress(f"{host}:{holder.getsockname()[1]}", holder)
    finally:
        holder.close()


def _check_free(
    family: socket.AddressFamily,
    kind: socket.SocketKind,
    proto: int,
    address: tuple[Any, ...],
    listen: str,
) -> None:
    """Bind without SO_REUSEPORT: refused while anything (a stale server) listens there."""
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise StartError(bind_failure(listen)) from exc
