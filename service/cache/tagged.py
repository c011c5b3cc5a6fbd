"""``TagCache.get_or_load``: serve a current entry, or load once per key and snapshot.

It knows nothing of SQLite: it takes a key, the entry's tags and a loader.
Concurrent misses with the same key and the same tag snapshot share one
load (single flight); the load runs in its own task, so a caller that goes
away does not fail the others, and a caller whose snapshot differs (an
invalidation came in between) starts its own load instead of joining.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.cache.local import Entry, LocalCache, TierCounters
from service.cache.tokens import LocalTagTokens

HIT_LOCAL, MISS = "hit_local", "miss"
FlightKey = tuple[str, tuple[tuple[str, str], ...]]
Loader = Callable[[], Awaitable[tuple[Any, int]]]  # -> (value, size in bytes)


@dataclass(frozen=True)
class TierSnapshot:
    """One tier's counters and contents, for Stats."""

    tier: str
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int


class _Flight:
    """One load shared by every caller that asked for the same key and snapshot."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.waiters = 0

    async def join(self) -> Any:
        """Wait for the load; the last waiter to leave cancels it, so no one pays for it."""
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if self.waiters == 1 and not self.task.done():
                self.task.cancel()
            raise
        finally:
            self.waiters -= 1


class TagCache:
    """Tag-invalidated entries with single flight, in this process."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.tokens = LocalTagTokens()
        self.local = LocalCache(max_entries, max_bytes)
        self.loads = 0
        self._flights: dict[FlightKey, _Flight] = {}

    async def get_or_load(
        self, key: str, tags: Sequence[str], loader: Loader, ttl: float, refresh: bool = False
    ) -> tuple[Any, str]:
        """The value for ``key`` and where it came from."""
        counters = self.local.counters
        if not refresh:
            entry = self.local.get(key)
            if entry is not None and self.tokens.is_current(entry.snapshot):
                counters.hits += 1
                return entry.value, HIT_LOCAL
        counters.misses += 1
        snapshot = self.tokens.snapshot(tags)
        flight_key = (key, tuple(sorted(snapshot.items())))
        for _ in range(2):
            flight = self._flights.get(flight_key)
            if flight is None or refresh or flight.task.cancelled():
                flight = self._start(flight_key, snapshot, loader, ttl)
            try:
                return await flight.join(), MISS
            except asyncio.CancelledError:
                # The load was cancelled by the callers who left, not this one: load again.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        raise asyncio.CancelledError

    def _start(
        self, flight_key: FlightKey, snapshot: dict[str, str], loader: Loader, ttl: float
    ) -> _Flight:
        flight = _Flight(asyncio.ensure_future(self._load(flight_key[0], snapshot, loader, ttl)))
        self._flights[flight_key] = flight

        def forget(_task: asyncio.Task[Any]) -> None:
            if self._flights.get(flight_key) is flight:
                del self._flights[flight_key]

        flight.task.add_done_callback(forget)
        return flight

    async def _load(self, key: str, snapshot: dict[str, str], loader: Loader, ttl: float) -> Any:
        self.loads += 1
        value, size = await loader()
        # Stored under the tokens read before the query: if a tag was bumped
        # meanwhile, the entry is already stale and is never served.
        self.local.put(key, Entry(value, snapshot, time.monotonic() + ttl, size))
        return value

    def invalidate(self, tags: Sequence[str]) -> None:
        """Bump ``tags``: every entry carrying one of them is stale from now on."""
        self.tokens.bump(tags)

    def tiers(self) -> list[TierSnapshot]:
        """Counters per tier."""
        c: TierCounters = self.local.counters
        return [
            TierSnapshot("l1", c.hits, c.misses, c.evictions, len(self.local), self.local.bytes)
        ]

    def reset_counters(self) -> None:
        """Start counting from zero."""
        self.local.counters = TierCounters()
        self.loads = 0
