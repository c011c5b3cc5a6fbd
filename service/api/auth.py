"""Bearer tokens: who is calling, from a call's ``authorization`` metadata.

Tokens are configured as SHA-256 hashes, never in plain text, each with
scopes (see ``service.scopes``). A presented token is hashed and compared
with every configured hash in constant time; the token itself is never
logged, traced or kept. With no tokens configured, auth is off and every
caller may do everything.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from service import errors
from service.config import TokenConfig
from service.scopes import ANYONE, Principal


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
