"""Whether the cache may use Redis now: the circuit breaker, held invalidations, recovery.

Reads use Redis only while the breaker is closed AND no invalidation is
held. An invalidation that could not reach Redis is held (with its receipt)
and a background task probes Redis, delivers what is held and closes the
breaker; until then every read bypasses the cache, since Redis may still
hold entries those invalidations would have made stale. A tag held again
while its delivery is under way stays held: that later commit needs a
bump of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from service.cache.breaker import CircuitBreaker
from service.cache.redis_tier import RedisTier, RedisUnavailable, stop_if_cancelled
from service.tasks import stop_task

log = logging.getLogger(__name__)
Receipt = Callable[[], None]  # told when an invalidation reached Redis
_POLL_SECONDS = 0.01


class RedisGate:
    """Decides when Redis is used, and delivers invalidations held back."""

    def __init__(
        self,
        redis: RedisTier,
        breaker: CircuitBreaker,
        reset_seconds: float,
        on_tokens: Callable[[dict[str, str]], object],
        on_distrust: Callable[[], None],
        on_holding: Callable[[bool], None] | None = None,
    ) -> None:
        self.breaker = breaker
        self._redis = redis
        self._reset_seconds = reset_seconds
        self._on_tokens = on_tokens  # new tokens that reached Redis
        self._on_distrust = on_distrust  # what this process holds can no longer be trusted
        self._on_holding = on_holding  # told when it starts and stops holding invalidations
        self._held_tags: dict[str, int] = {}  # tag -> the hold it was last held by
        self._held_receipts: list[Receipt] = []
        self._holds = 0
        self._recovery: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        """Whether Redis may be used: the breaker is closed and nothing is held."""
        return self.breaker.closed and not self._held_tags

    @property
    def state(self) -> str:
        """The breaker's state, noting held invalidations."""
        return self.breaker.state + (" (holding invalidations)" if self._held_tags else "")

    def succeeded(self) -> None:
        """A call to Redis succeeded: the run of failures ends."""
        self.breaker.record_success()

    async def deliver(self, tags: Sequence[str], receipt: Receipt | None) -> bool:
        """Replace the tags' tokens in Redis, or hold them; whether they were delivered."""
        if self.usable:
            try:
                self._on_tokens(await self._redis.bump(tags))
                self.breaker.record_success()
                if receipt is not None:
                    receipt()
                return True
            except RedisUnavailable as exc:
                self.failed(exc)
        self.hold(tags, receipt)
        return False

    def hold(self, tags: Iterable[str], receipt: Receipt | None) -> None:
        """Keep tags whose invalidation is not delivered, and the receipt to call once it is."""
        self._holds += 1
        self._held_tags.update(dict.fromkeys(tags, self._holds))
        if self._on_holding is not None and self._held_tags:
            self._on_holding(True)
        if receipt is not None:
            self._held_receipts.append(receipt)
        self._ensure_recovery()

    async def settled(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for held invalidations to be delivered."""
        recovery = self._recovery
        if recovery is None or recovery.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(recovery), timeout)
        except TimeoutError:
            log.warning("held invalidations not delivered yet: reads bypass the cache")

    def failed(self, exc: Exception) -> None:
        """A call to Redis failed; enough in a row open the breaker."""
        if self.breaker.record_failure():
            log.warning(
                "Redis failed %d times in a row, bypassing it: %s",
                self.breaker.failure_threshold,
                exc,
            )
            self.trip()

    def trip(self) -> None:
        """Stop using Redis now and probe it until it answers."""
        self.breaker.trip()
        self._on_distrust()
        self._ensure_recovery()

    async def close(self) -> None:
        """Stop probing."""
        if self._recovery is not None:
            await stop_task(self._recovery)

    def _ensure_recovery(self) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        """Probe Redis and deliver what is held, until the cache may be used again."""
        while not self.usable:
            stop_if_cancelled()
            closed = self.breaker.closed
            await asyncio.sleep(_POLL_SECONDS if closed else self._reset_seconds)
            if not closed:  # probe, and then serve, on fresh connections only
                await self._redis.drop_idle_connections()
            try:
                await self._redis.ping()
                await self._deliver_held()
            except RedisUnavailable as exc:
                if self.breaker.closed:
                    self.failed(exc)
                else:
                    self.breaker.trip()
                continue
            if not self.breaker.closed and not self._held_tags:
                self._on_distrust()
                self.breaker.close()
                log.info("Redis is back: the cache uses it again")

    async def _deliver_held(self) -> None:
        held, receipts = dict(self._held_tags), list(self._held_receipts)
        tokens = await self._redis.bump(list(held)) if held else {}
        # Only what was not held again meanwhile is delivered: a tag held by a
        # later commit keeps waiting for a bump made after that commit.
        delivered = [tag for tag, hold in held.items() if self._held_tags.get(tag) == hold]
        for tag in delivered:
            del self._held_tags[tag]
        self._on_tokens({tag: tokens[tag] for tag in delivered})
        if self._on_holding is not None and not self._held_tags:
            self._on_holding(False)
        del self._held_receipts[: len(receipts)]
        for receipt in receipts:
            receipt()
        if delivered:
            log.info("held invalidations delivered to Redis: %d tags", len(delivered))
