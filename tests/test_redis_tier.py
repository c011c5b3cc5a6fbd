"""The Redis tier against a real redis-server: batched MGETs, epochs, conditional stores."""

from __future__ import annotations

import asyncio

import pytest

from service.cache.redis_tier import RedisSettings, RedisTier, RedisUnavailable
from tests.conftest import RedisProcess


def _tier(redis: RedisProcess, changed: list[int]) -> RedisTier:
    """A tier over ``redis`` that records its epoch changes in ``changed``."""
    return RedisTier(RedisSettings(url=redis.url), lambda: changed.append(1))


async def test_concurrent_lookups_share_a_round_trip_and_each_gets_its_own_answer(
    redis_server: RedisProcess,
) -> None:
    tier = _tier(redis_server, [])
    try:
        await tier.ping()
        for i in range(40):
            await tier.client.set(f"{tier.prefix}t:tag{i}", f"token{i}")
        found = await asyncio.gather(*(tier.tokens([f"tag{i}", "none"]) for i in range(40)))
        assert found == [{f"tag{i}": f"token{i}", "none": None} for i in range(40)]
    finally:
        await tier.close()


async def test_every_caller_of_a_failed_batch_hears_the_failure(
    redis_server: RedisProcess,
) -> None:
    tier = _tier(redis_server, [])
    try:
        await tier.ping()
        redis_server.kill()
        outcomes = await asyncio.gather(
            *(tier.tokens([f"tag{i}"]) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(o, RedisUnavailable) for o in outcomes)
    finally:
        await tier.close()


async def test_a_store_lands_only_while_the_tokens_read_before_are_current(
    redis_server: RedisProcess,
) -> None:
    tier = _tier(redis_server, [])
    try:
        await tier.ping()
        snapshot, leased = await tier.snapshot("k", ["a", "b"], "me")
        assert leased and set(snapshot) == {"a", "b"}
        assert (await tier.snapshot("k", ["a", "b"], "other"))[1] is False  # lease held
        await tier.bump(["b"])
        assert not await tier.store("k", snapshot, b"old", 60, 60)
        fresh, _ = await tier.snapshot("k", ["a", "b"], "me")
        assert await tier.store("k", fresh, b"new", 60, 60)
        found = await tier.lookup("k", ["a", "b"])
        assert found.current() and found.entry is not None and found.entry.value == b"new"
    finally:
        await tier.close()


async def test_a_restarted_redis_moves_to_a_fresh_prefix(redis_server: RedisProcess) -> None:
    changed: list[int] = []
    tier = _tier(redis_server, changed)
    try:
        await tier.ping()
        before = tier.prefix
        redis_server.kill()
        redis_server.start()
        with pytest.raises(RedisUnavailable):
            await tier.tokens(["a"])  # the pooled connection is dead
        with pytest.raises(RedisUnavailable):
            await tier.tokens(["a"])  # the new one finds a new epoch: the old keys are not read
        assert tier.prefix != before and changed == [1]
        assert await tier.tokens(["a"]) == {"a": None}
    finally:
        await tier.close()
