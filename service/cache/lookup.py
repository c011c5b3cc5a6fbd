"""Finding an answer already stored, in L1 or Redis, that may be served now; it never loads.

An entry is served only while every token it was stored under is still the
tag's token. An L1 entry whose tokens were replaced here is dropped; one
older than the validation window, or whose tags a sibling worker changed
since (``siblings``), is confirmed with Redis (one MGET) first.
A Redis entry is copied into L1 only when this process's tokens agree.
Past its ttl an answer is STALE within stale_while_revalidate, and gone after.
Each lookup counts its hits and is one span (``cache.l1``, ``cache.l2``), except an L1
hit served from memory alone (the call's ``dataaccess.cache.status`` says it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry import trace

from service.cache.local import Entry
from service.cache.redis_tier import Lookup, RedisTier, StoredEntry
from service.cache.settings import EntryPolicy
from service.cache.tiers import CacheTiers
from service.domain import CacheResult, CacheStatus

Answer = tuple[bytes, CacheStatus]


class TierLookup:
    """Looks a key up in L1 and Redis and says whether, and how, it may be served."""

    def __init__(self, tiers: CacheTiers, tracer: trace.Tracer, validation_window: float) -> None:
        self._tiers = tiers
        self._tracer = tracer
        # Even a no-op span attaches and detaches a context: skip it on the hit path.
        self._tracing = not isinstance(tracer, trace.NoOpTracer)
        self._window = validation_window

    async def find_through_redis(
        self, redis: RedisTier, key: str, tags: Sequence[str], policy: EntryPolicy
    ) -> Answer | None:
        """A current, fresh answer from L1 or Redis, or None (the caller counts the misses)."""
        l1 = self._tiers.l1_usable()
        if l1:
            served = await self.l1(key, policy, redis)
            if served is not None:
                return served
        changes = self._tiers.tokens.changes
        found = await self.l2(redis, key, tags)
        if found.current() and found.entry is not None and found.entry.fresh:
            if l1:
                self._tiers.local.counters.misses += 1
            return self.from_redis(key, found.entry, policy, changes, l1)
        return None

    async def l1(self, key: str, policy: EntryPolicy, redis: RedisTier | None) -> Answer | None:
        """L1's answer (confirmed with Redis past the validation window), in a span unless it
        was served from memory alone: that hit shows as the server span's cache status, and a
        span of its own cost more than the hit (its export most of all)."""
        if not self._tracing:
            return await self._l1_answer(key, policy, redis)
        served = self._from_local(key, policy, redis)
        if served is not None:
            return served
        with self._tracer.start_as_current_span("cache.l1") as span:
            served = await self._l1_answer(key, policy, redis)
            span.set_attribute("cache.result", _result(served).value)
            return served

    async def l2(self, redis: RedisTier, key: str, tags: Sequence[str]) -> Lookup:
        """Redis's entry and the tags' tokens, in a span."""
        with self._tracer.start_as_current_span("cache.l2") as span:
            found = await redis.lookup(key, tags)
            fresh = found.entry is not None and found.entry.fresh
            span.set_attribute("cache.result", _l2_result(found.current(), fresh).value)
            return found

    def from_redis(
        self, key: str, stored: StoredEntry, policy: EntryPolicy, changes: int, l1: bool
    ) -> Answer | None:
        """Redis's answer, copied into L1 when this process's tokens agree."""
        tokens = self._tiers.tokens
        tokens.learn(stored.snapshot, changes)
        now = time.monotonic()
        fresh_until = now + (stored.fresh_until - time.time())
        if l1 and fresh_until > now and tokens.is_current(stored.snapshot):
            expires = fresh_until + policy.stale_while_revalidate
            entry = Entry(stored.value, stored.snapshot, fresh_until, expires, now)
            self._tiers.local.put(key, entry)
        return self._serve(stored.value, fresh_until, policy, CacheStatus.HIT_REDIS)

    async def _l1_answer(
        self, key: str, policy: EntryPolicy, redis: RedisTier | None
    ) -> Answer | None:
        served = self._from_local(key, policy, redis)
        if served is None and redis is not None and (entry := self._tiers.local.get(key)):
            served = await self._revalidate(redis, entry, policy)
        return served

    def _from_local(self, key: str, policy: EntryPolicy, redis: RedisTier | None) -> Answer | None:
        """L1's answer if its tokens are current here (and recently confirmed in Redis).

        An entry whose tokens were replaced is dropped: it can never be served again.
        """
        local = self._tiers.local
        entry = local.get(key)
        if entry is None:
            return None
        if not self._tiers.tokens.is_current(entry.snapshot):
            local.drop(key)
            return None
        if redis is not None and time.monotonic() - entry.checked_at >= self._window:
            return None
        siblings = self._tiers.siblings
        if siblings is not None and siblings.read(entry.snapshot) != entry.mark:
            return None  # a sibling worker changed one of its tags since: confirm first
        return self._serve(entry.value, entry.fresh_until, policy, CacheStatus.HIT_LOCAL)

    async def _revalidate(
        self, redis: RedisTier, entry: Entry, policy: EntryPolicy
    ) -> Answer | None:
        """Confirm an L1 entry's tokens with one MGET; the answer if they still hold."""
        if not self._tiers.tokens.is_current(entry.snapshot):
            return None
        siblings = self._tiers.siblings
        # Read before Redis: a sibling's write counted after this read moves the sum later.
        mark = siblings.read(entry.snapshot) if siblings is not None else None
        if await redis.tokens(list(entry.snapshot)) != entry.snapshot:
            return None
        entry.checked_at = time.monotonic()
        entry.mark = mark
        return self._serve(entry.value, entry.fresh_until, policy, CacheStatus.HIT_LOCAL)

    def _serve(
        self, value: bytes, fresh_until: float, policy: EntryPolicy, status: CacheStatus
    ) -> Answer | None:
        """A hit while fresh; past its ttl, STALE within stale_while_revalidate, else nothing."""
        tiers = self._tiers
        counters = tiers.local.counters if status is CacheStatus.HIT_LOCAL else tiers.l2_counters
        now = time.monotonic()
        if now >= fresh_until and now >= fresh_until + policy.stale_while_revalidate:
            return None
        counters.hits += 1
        return value, status if now < fresh_until else CacheStatus.STALE


def _result(served: Answer | None) -> CacheResult:
    if served is None:
        return CacheResult.MISS
    return CacheResult.STALE if served[1] is CacheStatus.STALE else CacheResult.HIT


def _l2_result(current: bool, fresh: bool) -> CacheResult:
    if not current:
        return CacheResult.MISS
    return CacheResult.HIT if fresh else CacheResult.STALE
