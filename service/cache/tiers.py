"""The tiers one process holds, and what keeps them coherent with every replica.

Tag tokens and L1 always; when Redis is configured, the Redis tier, the
invalidation channel that applies every replica's new tokens here (L1 is
served only while it is subscribed), and the gate that says when Redis may
be used. Whatever can no longer be trusted (the channel dropped, Redis
replaced, or back from an outage) empties L1 and the tokens here.

An invalidation replaces the tags' tokens here at once, whatever Redis
does, and is then delivered to Redis, or held (with its receipt, which lets
a database's outbox forget it) until it can be; while anything is held
nothing is served from the cache at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from service.cache.breaker import CircuitBreaker
from service.cache.gate import Receipt, RedisGate
from service.cache.local import LocalCache, TierCounters
from service.cache.redis_tier import RedisTier, RedisUnavailable
from service.cache.settings import CacheSettings
from service.cache.siblings import WorkerMarks
from service.cache.subscription import InvalidationListener
from service.cache.tokens import TagTokens
from service.tasks import stop_task

log = logging.getLogger(__name__)
_SETTLE_SECONDS = 1.0


class CacheTiers:
    """Tag tokens, L1 and (configured) Redis with its channel and gate, wired together."""

    def __init__(self, settings: CacheSettings, siblings: WorkerMarks | None = None) -> None:
        self.tokens = TagTokens(settings.max_tags, settings.max_tag_bytes)
        self.siblings = siblings  # set in a worker of several: their shared write marks
        self.local = LocalCache(settings.l1_max_entries, settings.l1_max_bytes)
        self.l2_counters = TierCounters()
        self.redis: RedisTier | None = None
        self.listener: InvalidationListener | None = None
        self.gate: RedisGate | None = None
        if settings.redis is not None:
            self.redis = RedisTier(settings.redis, self.forget_local)
            self.listener = InvalidationListener(self.redis, self.tokens.replace, self.forget_local)
            breaker = CircuitBreaker(settings.breaker_failures)
            self.gate = RedisGate(
                self.redis,
                breaker,
                settings.breaker_reset,
                self._delivered,
                self.forget_local,
                siblings.hold if siblings is not None else None,
            )
        self._listening: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start listening for invalidations; a Redis that is down now is not fatal."""
        if self.redis is None or self.listener is None or self.gate is None:
            return
        self._listening = asyncio.ensure_future(self.listener.run())
        try:
            await self.redis.ping()
        except RedisUnavailable as exc:
            log.warning("Redis unavailable at start, reads bypass the cache: %s", exc)
            self.gate.trip()
            return
        # Invalidations held from an earlier run (the outbox) go out before serving
        # when Redis takes them at once, so a healthy start does not bypass the cache.
        await self.gate.settled(_SETTLE_SECONDS)

    async def close(self) -> None:
        """Stop listening and probing, and close Redis."""
        if self._listening is not None:
            await stop_task(self._listening)
        if self.gate is not None:
            await self.gate.close()
        if self.redis is not None:
            await self.redis.close()

    def l1_usable(self) -> bool:
        """Whether L1 may be used now: it holds anything, and no invalidation can be missed."""
        if not self.local.enabled:
            return False
        return self.listener is None or self.listener.subscribed

    @property
    def redis_usable(self) -> bool:
        """Whether Redis may be used now (and no sibling worker holds invalidations)."""
        if self.gate is None or not self.gate.usable:
            return False
        return self.siblings is None or not self.siblings.siblings_holding()

    async def deliver(self, tags: Sequence[str], receipt: Receipt | None) -> bool:
        """Invalidate ``tags`` here and in Redis, or hold them; whether Redis was told."""
        unique = list(dict.fromkeys(tags))
        self.tokens.bump(unique)  # this process stops serving them at once, whatever Redis does
        if self.gate is None:
            if receipt is not None:
                receipt()
            return True
        return await self.gate.deliver(unique, receipt)

    def hold(self, tags: Iterable[str], receipt: Receipt | None) -> None:
        """Keep tags whose invalidation is not delivered yet: the cache is bypassed until it is."""
        if self.gate is not None:
            self.gate.hold(tags, receipt)

    def _delivered(self, tokens: dict[str, str]) -> None:
        """New tokens of this process's invalidation are in Redis: take them, tell siblings."""
        self.tokens.replace(tokens)
        if self.siblings is not None:
            self.siblings.touch(tokens)

    def forget_local(self) -> None:
        """L1 and the tokens here can no longer be trusted: start empty."""
        self.local.clear()
        self.tokens.clear()

    def reset_counters(self) -> None:
        """Count hits, misses, evictions and bypasses from zero."""
        self.local.counters = TierCounters()
        self.l2_counters = TierCounters()
