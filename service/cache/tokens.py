"""Tag tokens: every tag has a random version, replaced when the tag is invalidated.

An entry remembers the tokens of its tags as they were BEFORE its query ran
and is served only while all of them are still current, so a read that
started before an invalidation can never be served after it. Tokens are
random (64 bits), never counters: a counter that is lost restarts and would
revive old entries.

``TagTokens`` is this process's view of the tokens. Without Redis it is the
whole truth. With Redis it mirrors what Redis holds: local invalidations and
the pub/sub channel replace tokens in it at once, and tokens read from Redis
fill in tags it does not know. A tag it does not know is never current, so
forgetting tags (it is bounded) only costs a check against Redis.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping

Snapshot = Mapping[str, str]


def new_token() -> str:
    """A fresh random token."""
    return secrets.token_hex(8)


class TagTokens:
    """Tag tokens held in this process, bounded, least recently used out first."""

    def __init__(self, max_tags: int = 1_000_000) -> None:
        self.max_tags = max_tags
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
                token = tokens[tag] = new_token()
                self._bound()
            taken[tag] = token
        return taken

    def is_current(self, snapshot: Snapshot) -> bool:
        """Whether every tag of ``snapshot`` is known and still has the token it had."""
        tokens = self._tokens
        return all(tokens.get(tag) == token for tag, token in snapshot.items())

    def bump(self, tags: Iterable[str]) -> dict[str, str]:
        """Give ``tags`` new tokens: O(1) each, whatever number of entries carry them."""
        return self.replace({tag: new_token() for tag in tags})

    def replace(self, tokens: Mapping[str, str]) -> dict[str, str]:
        """Take ``tokens`` as the current ones (an invalidation seen elsewhere)."""
        self._tokens.update(tokens)
        self.changes += 1
        self._bound()
        return dict(tokens)

    def learn(self, tokens: Mapping[str, str], changes_before: int) -> None:
        """Fill in tags not held, from tokens read when ``changes`` was ``changes_before``.

        Nothing is learnt if a token was replaced since: the tokens read may
        be older than the replacement.
        """
        if changes_before != self.changes:
            return
        for tag, token in tokens.items():
            self._tokens.setdefault(tag, token)
        self._bound()

    def clear(self) -> None:
        """Forget every token (the Redis tier was lost or replaced)."""
        self._tokens.clear()
        self.changes += 1

    def _bound(self) -> None:
        while len(self._tokens) > self.max_tags:
            self._tokens.popitem(last=False)
