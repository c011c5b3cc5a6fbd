"""Tag tokens: every tag has a random version, replaced when the tag is invalidated.

An entry remembers the tokens of its tags as they were BEFORE its query ran
and is served only while all of them are still current, so a read that
started before an invalidation can never be served after it. Tokens are
random (64 bits), never counters: a counter that is lost restarts and would
revive old entries.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

Snapshot = Mapping[str, str]


def new_token() -> str:
    """A fresh random token."""
    return secrets.token_hex(8)


class LocalTagTokens:
    """Tag tokens held in this process: the whole truth when there is no Redis."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def snapshot(self, tags: Iterable[str]) -> dict[str, str]:
        """The current token of every tag, minting one for a tag never seen."""
        return {tag: self._tokens.setdefault(tag, new_token()) for tag in tags}

    def is_current(self, snapshot: Snapshot) -> bool:
        """Whether no tag of ``snapshot`` was invalidated since it was taken."""
        tokens = self._tokens
        return all(tokens.get(tag) == token for tag, token in snapshot.items())

    def bump(self, tags: Iterable[str]) -> None:
        """Invalidate ``tags``: O(1) each, whatever number of entries carry them."""
        for tag in tags:
            self._tokens[tag] = new_token()
