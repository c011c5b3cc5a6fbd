"""Held invalidations against a real redis-server: a tag held again mid-delivery stays held."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.cache.redis_tier import RedisSettings
from service.cache.tagged import CacheSettings, EntryPolicy, TagCache
from tests.conftest import RedisProcess


async def test_a_commit_held_while_an_earlier_hold_is_delivered_is_not_lost(
    redis_server: RedisProcess,
) -> None:
    def cache() -> TagCache:
        return TagCache(CacheSettings(redis=RedisSettings(url=redis_server.url), breaker_reset=0.1))

    writer, reader = cache(), cache()
    await writer.start()
    await reader.start()
    database = {"rows": 1}
    policy = EntryPolicy(ttl=60)
    receipts: list[str] = []

    async def load() -> bytes:
        return str(database["rows"]).encode()

    assert writer.redis is not None
    deliver = writer.redis.bump
    first_delivery = True

    async def bump_then_commit_again(tags: Sequence[str]) -> dict[str, str]:
        # Redis applied the held bump; before its answer is handled, the other
        # cache loads and another commit on the same table is held.
        nonlocal first_delivery
        tokens = await deliver(tags)
        if first_delivery:
            first_delivery = False
            await reader.get_or_load("k", ["T"], load, policy)
            database["rows"] = 2
            await writer.invalidate_committed(["T"], lambda: receipts.append("second"))
        return tokens

    writer.redis.bump = bump_then_commit_again  # type: ignore[method-assign]
    try:
        writer.hold(["T"], lambda: receipts.append("first"))
        async with asyncio.timeout(10):
            while not writer.redis_usable:
                await asyncio.sleep(0.01)
        assert receipts == ["first", "second"]
        for cache_ in (writer, reader):
            assert (await cache_.get_or_load("k", ["T"], load, policy))[0] == b"2"
    finally:
        await writer.close()
        await reader.close()
