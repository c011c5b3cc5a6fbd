"""Bearer tokens and scopes: who is calling, and whether they may.

Tokens are configured as SHA-256 hashes, never in plain text, each with
scopes: ``read:<database|group|*>``, ``write:<database|group|*>`` and
``admin`` (Invalidate, Stats, deep Health). A presented token is hashed and
compared with every configured hash in constant time; the token itself is
never logged, traced or kept. With no tokens configured, auth is off and
every caller may do everything. A group is allowed when its own name or
every one of its members is.

A caller is told a database or group exists only when it holds a scope on it
(read or write, on it, on one of a group's members or on a group it is in) or
is admin: any other
name answers NOT_FOUND exactly as an unknown one does, so names cannot be probed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from service import errors
from service.config import TokenConfig

ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and what it may do."""

    name: str
    scopes: frozenset[str]

    def may(self, action: str, target: str, members: Sequence[str] = ()) -> bool:
        """Whether ``action`` (read or write) on ``target`` (or on all its members) is allowed."""
        granted = self.scopes
        if f"{action}:*" in granted or f"{action}:{target}" in granted:
            return True
        return bool(members) and all(f"{action}:{m}" in granted for m in members)

    def require(self, action: str, target: str, members: Sequence[str] = ()) -> None:
        """Raise PermissionDenied unless ``may``."""
        if not self.may(action, target, members):
            raise errors.PermissionDenied(f"{self.name} may not {action} {target}")

    def sees(self, target: str, members: Sequence[str] = ()) -> bool:
        """Whether the caller may learn that ``target`` exists (any scope on it, or admin)."""
        if ADMIN in self.scopes:
            return True
        names = (target, *members)
        return any(self.may(action, name) for action in ("read", "write") for name in names)

    def require_admin(self, what: str) -> None:
        """Raise PermissionDenied unless the caller has the admin scope."""
        if ADMIN not in self.scopes:
            raise errors.PermissionDenied(f"{self.name} may not {what} (needs admin)")


def unknown_database(name: str) -> errors.NotFound:
    """The one answer for a name that is not there or not the caller's to know of."""
    return errors.NotFound(f"unknown database {name!r}", field="database")


def tag_database(tag: str, names: Sequence[str]) -> str | None:
    """The database a reserved tag names: ``database:NAME`` exactly, or ``table:NAME.TABLE``.

    ``names`` go longest first, so with databases ``a`` and ``a.b``, ``table:a.b.t`` is a.b's.
    """
    for name in names:
        if tag == f"database:{name}" or tag.startswith(f"table:{name}."):
            return name
    return None


def check_database(check: str, names: Sequence[str]) -> str | None:
    """The database a health check is about (``database:NAME`` or ``database:NAME:what``)."""
    for name in names:
        if check == f"database:{name}" or check.startswith(f"database:{name}:"):
            return name
    return None


ANYONE = Principal("anyone", frozenset({"read:*", "write:*", ADMIN}))


class Authenticator:
    """Turns the ``authorization`` metadata of a call into a Principal."""

    def __init__(self, tokens: Iterable[TokenConfig]) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), t) for t in tokens]

    @property
    def enabled(self) -> bool:
        """Whether callers must present a token."""
        return bool(self._tokens)

    def principal(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """The caller of a call with this metadata; Unauthenticated when none is proven."""
        if not self._tokens:
            return ANYONE
        presented = _bearer(metadata or ())
        if presented is None:
            raise errors.Unauthenticated("a bearer token is needed (authorization: Bearer ...)")
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for expected, token in self._tokens:  # every hash compared: no early exit
            if hmac.compare_digest(digest, expected):
                found = token
        if found is None:
            raise errors.Unauthenticated("the bearer token is not known")
        return Principal(found.name, found.scopes)


def _bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
