"""``TagCache``, the cache's one door: get_or_load, find, invalidate, and what observers read.

It knows nothing of SQLite: it takes a key, the entry's tags and a loader
that returns the answer's bytes. The tags' tokens are read BEFORE the loader
runs and the entry is kept under them, so it is served only while none of
its tags was invalidated since.

A read is served from L1 or Redis when it may be (``lookup``), else loaded
once and stored (``loading``); the tiers and what keeps them coherent live
in ``tiers``, the figures and the Redis probe in ``figures``.

Redis faults never fail a read: it runs against SQLite and reports BYPASS,
and after a few failures the breaker stops trying until a probe succeeds.
Invalidations that could not reach Redis are held (and, for writes, kept in
each database's outbox); until they are delivered nothing is served from
the cache at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from opentelemetry import trace

from service.cache.figures import CacheProbe, TierSnapshot, probe_redis, tier_snapshots
from service.cache.gate import Receipt
from service.cache.loading import Loader, SingleFlightLoader
from service.cache.lookup import Answer, TierLookup
from service.cache.redis_tier import RedisTier, RedisUnavailable
from service.cache.settings import CacheSettings, EntryPolicy
from service.cache.siblings import WorkerMarks
from service.cache.tiers import CacheTiers
from service.domain import CacheResult, CacheStatus
from service.tasks import stop_task

# What the other layers import from here.
__all__ = [
    "Answer",
    "CacheProbe",
    "CacheSettings",
    "CacheUnavailable",
    "EntryPolicy",
    "Loader",
    "TagCache",
    "TierSnapshot",
]

log = logging.getLogger(__name__)


class CacheUnavailable(Exception):
    """An invalidation could not be delivered to Redis (safe to retry)."""


class TagCache:
    """Tag-invalidated answers in L1 and, when configured, Redis."""

    def __init__(
        self,
        settings: CacheSettings,
        tracer: trace.Tracer | None = None,
        siblings: WorkerMarks | None = None,
    ) -> None:
        self.settings = settings
        self._tracer = tracer or trace.NoOpTracerProvider().get_tracer(__name__)
        self._tiers = CacheTiers(settings, siblings)
        # The parts, fixed for the cache's life, for those who look at them.
        self.tokens, self.local = self._tiers.tokens, self._tiers.local
        self.redis, self.gate = self._tiers.redis, self._tiers.gate
        self.listener = self._tiers.listener
        self._lookup = TierLookup(self._tiers, self._tracer, settings.l1_validation_window)
        self._loading = SingleFlightLoader(self._tiers)
        self._refreshing: dict[str, asyncio.Task[Answer]] = {}

    async def start(self) -> None:
        """Start listening for invalidations; a Redis that is down now is not fatal."""
        await self._tiers.start()

    async def close(self) -> None:
        """Stop the loads, refreshes and background tasks, and close Redis."""
        refreshes = list(self._refreshing.values())
        await asyncio.gather(*map(stop_task, refreshes))
        await self._loading.close()
        await self._tiers.close()

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
            return await self._lookup.l1(key, policy, None) if self.local.enabled else None
        if not self.redis_usable:
            return None
        assert self.gate is not None
        try:
            answer = await self._lookup.find_through_redis(self.redis, key, tags, policy)
        except RedisUnavailable as exc:
            self.gate.failed(exc)
            return None
        self.gate.succeeded()
        return answer

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
        served = None if policy.refresh else await self._lookup.l1(key, policy, None)
        if served is not None:
            return served
        self.local.counters.misses += 1
        return await self._loading.load_local(key, tags, loader, policy)

    async def _through_redis(
        self, redis: RedisTier, key: str, tags: Sequence[str], loader: Loader, policy: EntryPolicy
    ) -> Answer:
        l1 = self._tiers.l1_usable()
        if l1 and not policy.refresh:
            served = await self._lookup.l1(key, policy, redis)
            if served is not None:
                return served
            self.local.counters.misses += 1
        changes = self.tokens.changes
        found = await self._lookup.l2(redis, key, tags)
        if not policy.refresh and found.current() and found.entry is not None:
            served = self._lookup.from_redis(key, found.entry, policy, changes, l1)
            if served is not None:
                return served
        self._tiers.l2_counters.misses += 1
        return await self._loading.load_through_redis(redis, key, tags, loader, policy, changes)

    async def _bypass(self, loader: Loader) -> Answer:
        """Redis may not be used now: run the query without the cache."""
        self._tiers.l2_counters.bypasses += 1
        with self._tracer.start_as_current_span("cache.l2") as span:
            span.set_attribute("cache.result", CacheResult.BYPASS.value)
        return await loader(), CacheStatus.BYPASS

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
        if not await self._tiers.deliver(tags, None):
            raise CacheUnavailable("Redis is unavailable: the invalidation is held; retry")

    async def invalidate_committed(self, tags: Sequence[str], receipt: Receipt | None) -> None:
        """After a commit: deliver, or hold until Redis is back, bypassing the cache meanwhile.

        ``receipt`` is called once the tags reached Redis.
        """
        await self._tiers.deliver(tags, receipt)

    def hold(self, tags: Iterable[str], receipt: Receipt | None) -> None:
        """Keep tags whose invalidation is not delivered yet: the cache is bypassed until it is."""
        self._tiers.hold(tags, receipt)

    @property
    def redis_usable(self) -> bool:
        """Whether Redis may be used now."""
        return self._tiers.redis_usable

    # For observers

    async def probe(self) -> CacheProbe | None:
        """PING Redis and say what was found; None when there is no Redis tier."""
        return await probe_redis(self._tiers)

    def tiers(self) -> list[TierSnapshot]:
        """Counters per tier."""
        return tier_snapshots(self._tiers)

    @property
    def loads(self) -> int:
        """Queries run to fill the cache since the counters were last reset."""
        return self._loading.loads

    def reset_counters(self) -> None:
        """Start counting from zero."""
        self._tiers.reset_counters()
        self._loading.loads = 0
