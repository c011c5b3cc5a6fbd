"""``TagCache.probe``, the health check's door, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.cache.figures import CacheProbe
from service.cache.redis_tier import RedisSettings
from service.cache.tagged import CacheSettings, TagCache
from tests.conftest import RedisProcess


@asynccontextmanager
async def _started(settings: CacheSettings) -> AsyncIterator[TagCache]:
    cache = TagCache(settings)
    await cache.start()
    try:
        yield cache
    finally:
        await cache.close()


def _with_redis(redis: RedisProcess) -> CacheSettings:
    return CacheSettings(redis=RedisSettings(url=redis.url), breaker_reset=0.1)


async def _probe(cache: TagCache) -> CacheProbe:
    probe = await cache.probe()
    assert probe is not None
    return probe


async def test_no_redis_tier_has_nothing_to_probe() -> None:
    async with _started(CacheSettings()) as cache:
        assert await cache.probe() is None


async def test_a_reachable_redis_answers_with_the_breaker_closed(
    redis_server: RedisProcess,
) -> None:
    async with _started(_with_redis(redis_server)) as cache:
        probe = await _probe(cache)
        assert (probe.reachable, probe.breaker, probe.in_use) == (True, "closed", True)
        assert probe.message == "PING answered; breaker closed"
        assert 0 < probe.duration_ms < 1000


async def test_an_unreachable_redis_is_said_so_and_the_probe_leaves_the_breaker_alone(
    redis_server: RedisProcess,
) -> None:
    async with _started(_with_redis(redis_server)) as cache:
        redis_server.kill()
        probe = await _probe(cache)
        assert (probe.reachable, probe.breaker, probe.duration_ms) == (False, "closed", 0.0)
        assert probe.message.startswith("unreachable, reads bypass the cache: ")
        assert cache.gate is not None and cache.gate.breaker.consecutive_failures == 0


async def test_a_redis_down_at_start_then_back_is_found_in_use_again(
    redis_server: RedisProcess,
) -> None:
    redis_server.kill()
    async with _started(_with_redis(redis_server)) as cache:
        probe = await _probe(cache)
        assert (probe.reachable, probe.breaker, probe.in_use) == (False, "open", False)
        redis_server.start()
        async with asyncio.timeout(10):
            while not cache.redis_usable:
                await asyncio.sleep(0.01)
        probe = await _probe(cache)
        assert (probe.reachable, probe.breaker, probe.in_use) == (True, "closed", True)
