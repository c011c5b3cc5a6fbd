"""The in-process tier: a bounded LRU of entries, each with its tag snapshot and expiry."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from service.cache.tokens import Snapshot


@dataclass
class Entry:
    """A cached answer, the tag tokens read before its query ran, and its lifetimes.

    ``fresh_until`` ends its ttl; past it, up to ``expires_at``, it may only
    be served as STALE while a refresh runs. ``checked_at`` is when its
    tokens were last confirmed against Redis; ``mark``, the sibling workers'
    marks of its tags read before that (``siblings``; None: not read yet).
    """

    value: bytes
    snapshot: Snapshot
    fresh_until: float
    expires_at: float
    checked_at: float
    mark: int | None = None

    @property
    def size(self) -> int:
        """Bytes it holds, roughly: the payload and its tags."""
        return len(self.value) + sum(len(t) + 16 for t in self.snapshot) + 64


@dataclass
class TierCounters:
    """Counters of one cache tier."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bypasses: int = 0


class LocalCache:
    """Entries by key, bounded by count and bytes, least recently used out first."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.counters = TierCounters()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        """Whether this tier holds anything at all."""
        return self.max_entries > 0

    def get(self, key: str) -> Entry | None:
        """The entry for ``key`` if it has not expired; an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= time.monotonic():
            self.drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        """Store ``entry``, evicting the least recently used past the bounds."""
        if not self.enabled or entry.size > self.max_bytes:
            return
        self.drop(key)
        self._entries[key] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size
            self.counters.evictions += 1

    def drop(self, key: str) -> None:
        """Forget ``key``."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
