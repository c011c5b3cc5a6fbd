"""``TagCache.get_or_load``: serve a current entry from L1 or Redis, or load once and store.

It knows nothing of SQLite: it takes a key, the entry's tags and a loader
that returns the answer's bytes. The tags' tokens are read BEFORE the loader
runs and the entry is kept under them, so it is served only while none of
its tags was invalidated since.

Concurrent misses with the same key and the same tokens share one load
(single flight; across replicas a short Redis lease makes the others wait
for the entry, and every caller in this process takes it under one owner,
so a load never waits for a lease its own process holds); the load runs in
its own task, so a caller that goes away does not fail the others, and a
caller whose tokens differ (an invalidation came in between) starts its own
load instead of joining.

Redis faults never fail a read: it runs against SQLite and reports BYPASS,
and after a few failures the breaker stops trying until a probe succeeds.
Invalidations that could not reach Redis are held (and, for writes, kept in
each database's outbox); until they are delivered nothing is served from
the cache at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import trace

from service.cache.breaker import CircuitBreaker
from service.cache.gate import Receipt, RedisGate
from service.cache.local import Entry, LocalCache, TierCounters
from service.cache.redis_tier import (
    LEASE_OTHER,
    LEASE_TAKEN,
    Lookup,
    RedisSettings,
    RedisTier,
    RedisUnavailable,
    StoredEntry,
)
from service.cache.subscription import InvalidationListener
from service.cache.tokens import Snapshot, TagTokens
from service.domain import CacheResult, CacheStatus

log = logging.getLogger(__name__)
Loader = Callable[[], Awaitable[bytes]]
Answer = tuple[bytes, CacheStatus]
FlightKey = tuple[str, tuple[tuple[str, str], ...]]
_POLL_SECONDS = 0.01


class CacheUnavailable(Exception):
    """An invalidation could not be delivered to Redis (safe to retry)."""


@dataclass(frozen=True)
class CacheSettings:
    """The cache's bounds, lifetimes and Redis behaviour."""

    l1_max_entries: int = 10_000
    l1_max_bytes: int = 64 * 1024 * 1024
    l1_validation_window: float = 0.1
    redis: RedisSettings | None = None
    breaker_failures: int = 3
    breaker_reset: float = 1.0
    max_tags: int = 1_000_000
    max_tag_bytes: int = 64 * 1024 * 1024  # tags and tokens held in process, all together


@dataclass(frozen=True)
class EntryPolicy:
    """How long one answer lives."""

    ttl: float
    stale_while_revalidate: float = 0.0
    refresh: bool = False


@dataclass(frozen=True)
class TierSnapshot:
    """One tier's counters and contents, for Stats."""

    tier: str
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    bypasses: int = 0
    state: str = ""


class _Flight:
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


class TagCache:
    """Tag-invalidated answers in L1 and, when configured, Redis."""

    def __init__(self, settings: CacheSettings, tracer: trace.Tracer | None = None) -> None:
        self.settings = settings
        self._tracer = tracer or trace.NoOpTracerProvider().get_tracer(__name__)
        # Even a no-op span attaches and detaches a context: skip it on the hit path.
        self._tracing = not isinstance(self._tracer, trace.NoOpTracer)
        self.tokens = TagTokens(settings.max_tags, settings.max_tag_bytes)
        # One lease owner for the whole process: concurrent misses here share
        # one load, so a lease any of them took is this process's to load under.
        self._owner = secrets.token_hex(8)
        self.local = LocalCache(settings.l1_max_entries, settings.l1_max_bytes)
        self.l2_counters = TierCounters()
        self.loads = 0
        self.redis: RedisTier | None = None
        self.listener: InvalidationListener | None = None
        self.gate: RedisGate | None = None
        if settings.redis is not None:
            self.redis = RedisTier(settings.redis, self._forget_local)
            self.listener = InvalidationListener(
                self.redis, self.tokens.replace, self._forget_local
            )
            breaker = CircuitBreaker(settings.breaker_failures)
            self.gate = RedisGate(
                self.redis, breaker, settings.breaker_reset, self.tokens.replace, self._forget_local
            )
        self._flights: dict[FlightKey, _Flight] = {}
        self._refreshing: dict[str, asyncio.Task[Answer]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start listening for invalidations; a Redis that is down now is not fatal."""
        if self.redis is None or self.listener is None or self.gate is None:
            return
        self._tasks.append(asyncio.ensure_future(self.listener.run()))
        try:
            await self.redis.ping()
        except RedisUnavailable as exc:
            log.warning("Redis unavailable at start, reads bypass the cache: %s", exc)
            self.gate.trip()

    async def close(self) -> None:
        """Stop the background tasks and close Redis."""
        loads = [flight.task for flight in self._flights.values()]
        tasks = [*self._tasks, *self._refreshing.values(), *loads]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.gate is not None:
            await self.gate.close()
        if self.redis is not None:
            await self.redis.close()

    # Reads

    async def get_or_load(
        self, key: str, tags: Sequence[str], loader: Loader, policy: EntryPolicy
    ) -> Answer:
        """The answer for ``key`` and where it came from."""
        answer = await self._get_or_load(key, tags, loader, policy)
        if answer[1] is CacheStatus.STALE:
            self._refresh_later(key, tags, loader, policy)
        return answer

    async def find(self, key: str, tags: Sequence[str], policy: EntryPolicy) -> Answer | None:
        """A current, fresh answer from L1 or Redis, or None; never loads.

        For repeats of a read whose key and tags are known; anything else
        (a miss, stale-while-revalidate, Redis not usable) is left to
        ``get_or_load``.
        """
        if policy.refresh or policy.stale_while_revalidate:
            return None
        if self.redis is None:
            return await self._l1_lookup(key, policy, None) if self.local.enabled else None
        if not self.redis_usable:
            return None
        assert self.gate is not None
        try:
            answer = await self._find_through_redis(self.redis, key, tags, policy)
        except RedisUnavailable as exc:
            self.gate.failed(exc)
            return None
        self.gate.succeeded()
        return answer

    async def _find_through_redis(
        self, redis: RedisTier, key: str, tags: Sequence[str], policy: EntryPolicy
    ) -> Answer | None:
        l1 = self._l1_usable()
        if l1:
            served = await self._l1_lookup(key, policy, redis)
            if served is not None:
                return served
        changes = self.tokens.changes
        found = await self._l2_lookup(redis, key, tags)
        if found.current() and found.entry is not None and found.entry.fresh:
            if l1:
                self.local.counters.misses += 1
            return self._from_redis(key, found.entry, policy, changes, l1)
        return None  # get_or_load counts the misses

    async def _get_or_load(
        self, key: str, tags: Sequence[str], loader: Loader, policy: EntryPolicy
    ) -> Answer:
        if self.redis is None:
            if not self.local.enabled:
                return await loader(), CacheStatus.BYPASS
            return await self._local_only(key, tags, loader, policy)
        if not self.redis_usable:
            return await self._bypass(loader)
        assert self.gate is not None
        try:
            answer = await self._through_redis(self.redis, key, tags, loader, policy)
        except RedisUnavailable as exc:
            self.gate.failed(exc)
            return await self._bypass(loader)
        self.gate.succeeded()
        return answer

    async def _local_only(
        self, key: str, tags: Sequence[str], loader: Loader, policy: EntryPolicy
    ) -> Answer:
        served = None if policy.refresh else await self._l1_lookup(key, policy, None)
        if served is not None:
            return served
        self.local.counters.misses += 1
        snapshot = self.tokens.snapshot(tags)
        return await self._single_flight(
            key,
            snapshot,
            lambda: self._load(key, snapshot, loader, policy, None),
            policy.refresh,
        )

    async def _through_redis(
        self, redis: RedisTier, key: str, tags: Sequence[str], loader: Loader, policy: EntryPolicy
    ) -> Answer:
        l1 = self._l1_usable()
        if l1 and not policy.refresh:
            served = await self._l1_lookup(key, policy, redis)
            if served is not None:
                return served
            self.local.counters.misses += 1
        changes = self.tokens.changes
        found = await self._l2_lookup(redis, key, tags)
        if not policy.refresh and found.current() and found.entry is not None:
            served = self._from_redis(key, found.entry, policy, changes, l1)
            if served is not None:
                return served
        self.l2_counters.misses += 1
        keep = policy.ttl + policy.stale_while_revalidate
        snapshot, lease = await redis.snapshot(key, tags, self._owner, keep)
        self.tokens.learn(snapshot, changes)
        return await self._single_flight(
            key,
            snapshot,
            lambda: self._load(key, snapshot, loader, policy, redis, lease),
            policy.refresh,
        )

    async def _l1_lookup(
        self, key: str, policy: EntryPolicy, redis: RedisTier | None
    ) -> Answer | None:
        """L1's answer (confirmed with Redis past the validation window), in a span."""
        if not self._tracing:
            return await self._l1_answer(key, policy, redis)
        with self._tracer.start_as_current_span("cache.l1") as span:
            served = await self._l1_answer(key, policy, redis)
            span.set_attribute("cache.result", _result(served).value)
            return served

    async def _l1_answer(
        self, key: str, policy: EntryPolicy, redis: RedisTier | None
    ) -> Answer | None:
        served = self._from_local(key, policy, redis)
        if served is None and redis is not None and (entry := self.local.get(key)):
            served = await self._revalidate(redis, entry, policy)
        return served

    async def _l2_lookup(self, redis: RedisTier, key: str, tags: Sequence[str]) -> Lookup:
        """Redis's entry and the tags' tokens, in a span."""
        with self._tracer.start_as_current_span("cache.l2") as span:
            found = await redis.lookup(key, tags)
            fresh = found.entry is not None and found.entry.fresh
            span.set_attribute("cache.result", _l2_result(found.current(), fresh).value)
            return found

    async def _bypass(self, loader: Loader) -> Answer:
        """Redis may not be used now: run the query without the cache."""
        self.l2_counters.bypasses += 1
        with self._tracer.start_as_current_span("cache.l2") as span:
            span.set_attribute("cache.result", CacheResult.BYPASS.value)
        return await loader(), CacheStatus.BYPASS

    def _from_local(self, key: str, policy: EntryPolicy, redis: RedisTier | None) -> Answer | None:
        """L1's answer if its tokens are current here (and recently confirmed in Redis).

        An entry whose tokens were replaced is dropped: it can never be served again.
        """
        entry = self.local.get(key)
        if entry is None:
            return None
        if not self.tokens.is_current(entry.snapshot):
            self.local.drop(key)
            return None
        if redis is not None and time.monotonic() - entry.checked_at >= self._window:
            return None
        return self._serve(entry.value, entry.fresh_until, policy, CacheStatus.HIT_LOCAL)

    async def _revalidate(
        self, redis: RedisTier, entry: Entry, policy: EntryPolicy
    ) -> Answer | None:
        """Confirm an L1 entry's tokens with one MGET; the answer if they still hold."""
        if not self.tokens.is_current(entry.snapshot):
            return None
        if await redis.tokens(list(entry.snapshot)) != entry.snapshot:
            return None
        entry.checked_at = time.monotonic()
        return self._serve(entry.value, entry.fresh_until, policy, CacheStatus.HIT_LOCAL)

    def _from_redis(
        self, key: str, stored: StoredEntry, policy: EntryPolicy, changes: int, l1: bool
    ) -> Answer | None:
        """Redis's answer, copied into L1 when this process's tokens agree."""
        self.tokens.learn(stored.snapshot, changes)
        now = time.monotonic()
        fresh_until = now + (stored.fresh_until - time.time())
        if l1 and fresh_until > now and self.tokens.is_current(stored.snapshot):
            expires = fresh_until + policy.stale_while_revalidate
            self.local.put(key, Entry(stored.value, stored.snapshot, fresh_until, expires, now))
        return self._serve(stored.value, fresh_until, policy, CacheStatus.HIT_REDIS)

    def _serve(
        self, value: bytes, fresh_until: float, policy: EntryPolicy, status: CacheStatus
    ) -> Answer | None:
        """A hit while fresh; past its ttl, STALE within stale_while_revalidate, else nothing."""
        counters = self.local.counters if status is CacheStatus.HIT_LOCAL else self.l2_counters
        now = time.monotonic()
        if now >= fresh_until and now >= fresh_until + policy.stale_while_revalidate:
            return None
        counters.hits += 1
        return value, status if now < fresh_until else CacheStatus.STALE

    @property
    def _window(self) -> float:
        return self.settings.l1_validation_window

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
            try:
                keep = policy.ttl + policy.stale_while_revalidate
                stored = await redis.store(key, snapshot, value, policy.ttl, keep)
            except RedisUnavailable as exc:
                assert self.gate is not None
                self.gate.failed(exc)
                stored = False
        if stored and self.tokens.is_current(snapshot) and self._l1_usable():
            now = time.monotonic()
            fresh_until = now + policy.ttl
            expires = fresh_until + policy.stale_while_revalidate
            self.local.put(key, Entry(value, snapshot, fresh_until, expires, now))
        return value, CacheStatus.MISS

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
                self.l2_counters.hits += 1
                return found.entry.value, CacheStatus.HIT_REDIS
            if time.monotonic() >= until:
                return None
            await asyncio.sleep(_POLL_SECONDS)

    def _l1_usable(self) -> bool:
        if not self.local.enabled:
            return False
        return self.listener is None or self.listener.subscribed

    async def _single_flight(
        self, key: str, snapshot: Snapshot, load: Callable[[], Awaitable[Answer]], refresh: bool
    ) -> Answer:
        flight_key = (key, tuple(sorted(snapshot.items())))
        for _ in range(2):
            flight = self._flights.get(flight_key)
            if flight is None and not refresh:
                # A load on these very tokens may have just finished and stored its answer.
                entry = self.local.get(key)
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

    def _start(self, flight_key: FlightKey, load: Callable[[], Awaitable[Answer]]) -> _Flight:
        flight = _Flight(asyncio.ensure_future(load()))
        self._flights[flight_key] = flight

        def forget(_task: asyncio.Task[Answer]) -> None:
            if self._flights.get(flight_key) is flight:
                del self._flights[flight_key]

        flight.task.add_done_callback(forget)
        return flight

    def _refresh_later(
        self, key: str, tags: Sequence[str], loader: Loader, policy: EntryPolicy
    ) -> None:
        """Start one background refresh of a key just served STALE."""
        if key in self._refreshing:
            return
        refresh = EntryPolicy(policy.ttl, policy.stale_while_revalidate, refresh=True)
        task = asyncio.ensure_future(self.get_or_load(key, tags, loader, refresh))
        self._refreshing[key] = task

        def done(finished: asyncio.Task[Answer]) -> None:
            self._refreshing.pop(key, None)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("background refresh failed: %s", finished.exception())

        task.add_done_callback(done)

    # Invalidation

    async def invalidate(self, tags: Sequence[str]) -> None:
        """Invalidate ``tags`` now; CacheUnavailable if Redis could not be told (fail closed)."""
        if not await self._deliver(tags, None):
            raise CacheUnavailable("Redis is unavailable: the invalidation is held; retry")

    async def invalidate_committed(self, tags: Sequence[str], receipt: Receipt | None) -> None:
        """After a commit: deliver, or hold until Redis is back, bypassing the cache meanwhile.

        ``receipt`` is called once the tags reached Redis.
        """
        await self._deliver(tags, receipt)

    def hold(self, tags: Iterable[str], receipt: Receipt | None) -> None:
        """Keep tags whose invalidation is not delivered yet: the cache is bypassed until it is."""
        if self.gate is not None:
            self.gate.hold(tags, receipt)

    async def _deliver(self, tags: Sequence[str], receipt: Receipt | None) -> bool:
        unique = list(dict.fromkeys(tags))
        self.tokens.bump(unique)  # this process stops serving them at once, whatever Redis does
        if self.gate is None:
            if receipt is not None:
                receipt()
            return True
        return await self.gate.deliver(unique, receipt)

    @property
    def redis_usable(self) -> bool:
        """Whether Redis may be used now."""
        return self.gate is not None and self.gate.usable

    def _forget_local(self) -> None:
        """L1 and the tokens here can no longer be trusted: start empty."""
        self.local.clear()
        self.tokens.clear()

    # Stats

    def tiers(self) -> list[TierSnapshot]:
        """Counters per tier."""
        c = self.local.counters
        tiers = [
            TierSnapshot(
                "l1",
                c.hits,
                c.misses,
                c.evictions,
                len(self.local),
                self.local.bytes,
                c.bypasses,
                "on" if self._l1_usable() else "off",
            )
        ]
        if self.redis is not None:
            r = self.l2_counters
            state = self.gate.state if self.gate is not None else ""
            tiers.append(TierSnapshot("l2", r.hits, r.misses, r.evictions, 0, 0, r.bypasses, state))
        return tiers

    def reset_counters(self) -> None:
        """Start counting from zero."""
        self.local.counters = TierCounters()
        self.l2_counters = TierCounters()
        self.loads = 0


def _result(served: Answer | None) -> CacheResult:
    if served is None:
        return CacheResult.MISS
    return CacheResult.STALE if served[1] is CacheStatus.STALE else CacheResult.HIT


def _l2_result(current: bool, fresh: bool) -> CacheResult:
    if not current:
        return CacheResult.MISS
    return CacheResult.HIT if fresh else CacheResult.STALE
