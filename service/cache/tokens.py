"""Tag tokens: every tag has a random version, replaced when the tag is invalidated.

An entry remembers the tokens of its tags as they were BEFORE its query ran
and is served only while all of them are still current, so a read that
started before an invalidation can never be served after it. Tokens are
random (64 bits), never counters: a counter that is lost restarts and would
revive old entries.

``TagTokens`` is this process's view of the tokens. Without Redis it is the
whole truth. With Redis it mirrors what Redis holds: local invalidations and
the pub/sub channel replace tokens in it at once, and tokens read from Redis
fill in tags it does not know and replace tokens Redis no longer holds (a
token key evicted or deleted there is minted again). A tag it does not know
is never current, so forgetting tags (it is bounded by count and bytes) only
costs a check against Redis.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping

Snapshot = Mapping[str, str]
# A token minted here for a local invalidation, not yet confirmed by Redis:
# Redis may still hold the token from before it, which must not come back.
_LOCAL = "~"
# Roughly what one held tag costs in memory besides its text (measured:
# about 240 bytes for a 42-character tag and its token).
_TAG_OVERHEAD = 200


def new_token() -> str:
    """A fresh random token."""
    return secrets.token_hex(8)


class TagTokens:
    """Tag tokens held in this process, bounded, least recently used out first."""

    def __init__(self, max_tags: int = 1_000_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_tags = max_tags
        self.max_bytes = max_bytes
        self.bytes = 0
        # ``changes`` counts every replacement, so a caller can tell whether
        # tokens it read elsewhere may be older than what is held here.
        self.changes = 0
        self._tokens: OrderedDict[str, str] = OrderedDict()

    def snapshot(self, tags: Iterable[str]) -> dict[str, str]:
        """The current token of every tag, minting one for a tag never seen."""
        tokens = self._tokens
        taken = {}
        for tag in tags:
            token = tokens.get(tag)
            if token is None:
                token = new_token()
                self._set(tag, token)
                self._bound()
            taken[tag] = token
        return taken

    def is_current(self, snapshot: Snapshot) -> bool:
        """Whether every tag of ``snapshot`` is known and still has the token it had."""
        tokens = self._tokens
        return all(tokens.get(tag) == token for tag, token in snapshot.items())

    def bump(self, tags: Iterable[str]) -> dict[str, str]:
        """Give ``tags`` new tokens: O(1) each, whatever number of entries carry them.

        They are local until Redis's own replace them (``replace``).
        """
        return self.replace({tag: _LOCAL + new_token() for tag in tags})

    def replace(self, tokens: Mapping[str, str]) -> dict[str, str]:
        """Take ``tokens`` as the current ones (an invalidation seen elsewhere)."""
        for tag, token in tokens.items():
            self._set(tag, token)
        self.changes += 1
        self._bound()
        return dict(tokens)

    def learn(self, tokens: Mapping[str, str], changes_before: int) -> None:
        """Take tokens read from Redis when ``changes`` was ``changes_before``.

        Nothing is learnt if a token was replaced since: the tokens read may
        be older than the replacement. Otherwise Redis is the truth: a token
        held here that Redis no longer has (its key was evicted or deleted and
        a new one minted, or a replica's invalidation is still on its way) is
        replaced, so entries under the old one are never current again and
        new ones can be kept. Only a local invalidation that Redis has not
        confirmed yet keeps its token. A replacement counts as a change, so a
        read issued before it cannot bring the old token back.
        """
        if changes_before != self.changes:
            return
        moved = False
        for tag, token in tokens.items():
            held = self._tokens.get(tag)
            if held is None:
                self._set(tag, token)
            elif held != token and not held.startswith(_LOCAL):
                self._set(tag, token)
                moved = True
        if moved:
            self.changes += 1
        self._bound()

    def clear(self) -> None:
        """Forget every token (the Redis tier was lost or replaced)."""
        self._tokens.clear()
        self.bytes = 0
        self.changes += 1

    def __len__(self) -> int:
        return len(self._tokens)

    def _set(self, tag: str, token: str) -> None:
        held = self._tokens.pop(tag, None)
        if held is not None:
            self.bytes -= len(tag) + len(held) + _TAG_OVERHEAD
        self._tokens[tag] = token
        self.bytes += len(tag) + len(token) + _TAG_OVERHEAD

    def _bound(self) -> None:
        tokens = self._tokens
        while tokens and (len(tokens) > self.max_tags or self.bytes > self.max_bytes):
            tag, token = tokens.popitem(last=False)
            self.bytes -= len(tag) + len(token) + _TAG_OVERHEAD
