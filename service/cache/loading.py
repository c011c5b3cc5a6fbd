"""Loading a missing answer once, and storing it under the tokens read before the query ran.

Concurrent misses with the same key and the same tokens share one load
(single flight); across replicas a short Redis lease makes the others wait
for the entry, and every caller in this process takes it under one owner,
so a load never waits for a lease its own process holds. The load runs in
its own task, so a caller that goes away does not fail the others, and a
caller whose tokens differ (an invalidation came in between) starts its own
load instead of joining.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence

from service.cache.local import Entry
from service.cache.lookup import Answer
from service.cache.redis_tier import LEASE_OTHER, LEASE_TAKEN, RedisTier, RedisUnavailable
from service.cache.settings import EntryPolicy
from service.cache.tiers import CacheTiers
from service.cache.tokens import Snapshot
from service.domain import CacheStatus

Loader = Callable[[], Awaitable[bytes]]
FlightKey = tuple[str, tuple[tuple[str, str], ...]]
_POLL_SECONDS = 0.01


class Flight:
    """One load shared by every caller that asked for the same key and tokens."""

    def __init__(self, task: asyncio.Task[Answer]) -> None:
        self.task = task
        self.waiters = 0

    async def join(self) -> Answer:
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


class SingleFlightLoader:
    """Runs each missing answer's query once per key and tokens, and stores what it returns."""

    def __init__(self, tiers: CacheTiers) -> None:
        self.loads = 0  # queries run
        self._tiers = tiers
        # One lease owner for the whole process: concurrent misses here share
        # one load, so a lease any of them took is this process's to load under.
        self._owner = secrets.token_hex(8)
        self._flights: dict[FlightKey, Flight] = {}

    async def load_local(
        self, key: str, tags: Sequence[str], loader: Loader, policy: EntryPolicy
    ) -> Answer:
        """Load under the tokens held here (no Redis)."""
        snapshot = self._tiers.tokens.snapshot(tags)
        return await self._single_flight(
            key,
            snapshot,
            lambda: self._load(key, snapshot, loader, policy, None),
            policy.refresh,
        )

    async def load_through_redis(
        self,
        redis: RedisTier,
        key: str,
        tags: Sequence[str],
        loader: Loader,
        policy: EntryPolicy,
        changes: int,
    ) -> Answer:
        """Read (or mint) the tags' tokens in Redis with the load lease, and load under them."""
        keep = policy.ttl + policy.stale_while_revalidate
        snapshot, lease = await redis.snapshot(key, tags, self._owner, keep)
        self._tiers.tokens.learn(snapshot, changes)
        return await self._single_flight(
            key,
            snapshot,
            lambda: self._load(key, snapshot, loader, policy, redis, lease),
            policy.refresh,
        )

    async def close(self) -> None:
        """Cancel the loads under way."""
        loads = [flight.task for flight in self._flights.values()]
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)

    async def _load(
        self,
        key: str,
        snapshot: Snapshot,
        loader: Loader,
        policy: EntryPolicy,
        redis: RedisTier | None,
        lease: int = LEASE_TAKEN,
    ) -> Answer:
        """Run the query once and store the answer under the tokens read before it."""
        if redis is not None and lease != LEASE_TAKEN and not policy.refresh:
            found = await self._wait_for_entry(redis, key, snapshot, lease)
            if found is not None:
                return found
        self.loads += 1
        try:
            value = await loader()
        except BaseException:
            if redis is not None and lease != LEASE_OTHER:
                with contextlib.suppress(RedisUnavailable):
                    await redis.release_lease(key, snapshot)
            raise
        stored = True
        if redis is not None:
            stored = await self._store_in_redis(redis, key, snapshot, value, policy)
        if stored and self._tiers.tokens.is_current(snapshot) and self._tiers.l1_usable():
            now = time.monotonic()
            fresh_until = now + policy.ttl
            expires = fresh_until + policy.stale_while_revalidate
            self._tiers.local.put(key, Entry(value, snapshot, fresh_until, expires, now))
        return value, CacheStatus.MISS

    async def _store_in_redis(
        self, redis: RedisTier, key: str, snapshot: Snapshot, value: bytes, policy: EntryPolicy
    ) -> bool:
        """Whether Redis kept the entry (its tokens were still those read before the query)."""
        try:
            keep = policy.ttl + policy.stale_while_revalidate
            return await redis.store(key, snapshot, value, policy.ttl, keep)
        except RedisUnavailable as exc:
            assert self._tiers.gate is not None
            self._tiers.gate.failed(exc)
            return False

    async def _wait_for_entry(
        self, redis: RedisTier, key: str, snapshot: Snapshot, lease: int
    ) -> Answer | None:
        """The entry a load under the lease stored, if it comes.

        Another replica's load is waited for, within the lease. A lease this
        process already held belongs to a load here that has just finished
        (a running one would have been joined): its entry is looked up once.
        """
        until = time.monotonic() + (redis.settings.lease_ttl if lease == LEASE_OTHER else 0.0)
        while True:
            found = await redis.lookup(key, list(snapshot))
            if found.tokens != snapshot:
                return None  # invalidated meanwhile: its entry would not be current
            if found.current() and found.entry is not None and found.entry.fresh:
                self._tiers.l2_counters.hits += 1
                return found.entry.value, CacheStatus.HIT_REDIS
            if time.monotonic() >= until:
                return None
            await asyncio.sleep(_POLL_SECONDS)

    async def _single_flight(
        self, key: str, snapshot: Snapshot, load: Callable[[], Awaitable[Answer]], refresh: bool
    ) -> Answer:
        flight_key = (key, tuple(sorted(snapshot.items())))
        for _ in range(2):
            flight = self._flights.get(flight_key)
            if flight is None and not refresh:
                # A load on these very tokens may have just finished and stored its answer.
                entry = self._tiers.local.get(key)
                fresh = entry is not None and time.monotonic() < entry.fresh_until
                if entry is not None and fresh and entry.snapshot == snapshot:
                    return entry.value, CacheStatus.HIT_LOCAL
            if flight is None or refresh or flight.task.cancelled():
                flight = self._start(flight_key, load)
            try:
                return await flight.join()
            except asyncio.CancelledError:
                # The load was cancelled by the callers who left, not this one: load again.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        raise asyncio.CancelledError

    def _start(self, flight_key: FlightKey, load: Callable[[], Awaitable[Answer]]) -> Flight:
        flight = Flight(asyncio.ensure_future(load()))
        self._flights[flight_key] = flight

        def forget(task: asyncio.Task[Answer]) -> None:
            if self._flights.get(flight_key) is flight:
                del self._flights[flight_key]
            # Its waiters hear of its error through the shield; when the last one left as
            # it failed (a deadline interrupting the query), nobody is left to read it.
            if not task.cancelled():
                task.exception()

        flight.task.add_done_callback(forget)
        return flight
