"""The Redis tier against a real redis-server: batched MGETs, epochs, conditional stores."""

from __future__ import annotations

import asyncio

import pytest

from service.cache.redis_tier import (
    LEASE_OTHER,
    LEASE_OURS,
    LEASE_TAKEN,
    RedisSettings,
    RedisTier,
    RedisUnavailable,
)
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
        snapshot, lease = await tier.snapshot("k", ["a", "b"], "me")
        assert lease == LEASE_TAKEN and set(snapshot) == {"a", "b"}
        assert (await tier.snapshot("k", ["a", "b"], "other"))[1] == LEASE_OTHER  # lease held
        assert (await tier.snapshot("k", ["a", "b"], "me"))[1] == LEASE_OURS  # one per owner
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
        await tier.tokens(["a"])  # lookups have connections of their own: one is pooled now
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


async def test_a_token_lives_at_least_as_long_as_the_entries_stored_under_it(
    redis_server: RedisProcess,
) -> None:
    tier = _tier(redis_server, [])
    day = 86_400.0
    try:
        await tier.ping()
        await tier.snapshot("short", ["a"], "me", keep_for=60)
        await tier.snapshot("long", ["b"], "me", keep_for=3 * day)
        ttl = {tag: await tier.client.pttl(f"{tier.prefix}t:{tag}") / 1000 for tag in "ab"}
        assert tier.settings.token_ttl - 5 < ttl["a"] <= tier.settings.token_ttl < day
        assert 3 * day - 5 < ttl["b"] <= 3 * day
        await tier.snapshot("longer", ["a"], "me", keep_for=2 * day)  # an existing token
        assert await tier.client.pttl(f"{tier.prefix}t:a") / 1000 > 2 * day - 5
    finally:
        await tier.close()
