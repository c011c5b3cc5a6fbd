"""Tag tokens that leave Redis (DEL, eviction): L1 fills again and nothing stale is served."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.cache.tokens import TagTokens
from tests.cache.test_cache_redis import (
    _insert,
    _insert_behind_the_service,
    _read,
    _stats_tier,
    _subscribed,
    _until,
    with_redis,
)
from tests.conftest import RedisProcess, Running, started

ITEMS_TAG = "table:kitchen.items"
PAST_THE_WINDOW = 0.15  # an L1 hit older than the validation window (0.1 s) asks Redis


def test_a_token_redis_replaced_replaces_the_one_held_here() -> None:
    tokens = TagTokens()
    tokens.learn({"a": "old"}, tokens.changes)
    tokens.learn({"a": "new"}, tokens.changes)  # the key was evicted and minted again
    assert tokens.is_current({"a": "new"}) and not tokens.is_current({"a": "old"})


def test_a_read_issued_before_a_token_moved_cannot_bring_the_old_one_back() -> None:
    tokens = TagTokens()
    tokens.learn({"a": "old"}, tokens.changes)
    issued = tokens.changes  # two reads go out; the later one sees the new token first
    tokens.learn({"a": "new"}, issued)
    tokens.learn({"a": "old"}, issued)
    assert tokens.is_current({"a": "new"})


def test_a_local_invalidation_redis_has_not_confirmed_keeps_its_token() -> None:
    tokens = TagTokens()
    tokens.learn({"a": "before"}, tokens.changes)
    tokens.bump(["a"])
    tokens.learn({"a": "before"}, tokens.changes)  # Redis still holds the older token
    assert not tokens.is_current({"a": "before"})
    tokens.replace({"a": "bumped"})  # Redis's own token for the invalidation
    tokens.learn({"a": "minted"}, tokens.changes)
    assert tokens.is_current({"a": "minted"})


def test_tokens_held_are_bounded_by_bytes() -> None:
    tokens = TagTokens(max_bytes=100_000)
    for i in range(1000):
        tokens.snapshot([f"{i}:" + "x" * 10_000])
    assert len(tokens) <= 9 and tokens.bytes <= 100_000


async def _l1_hits(running: Running) -> int:
    return (await _stats_tier(running, "l1")).hits


async def _token_key(running: Running) -> str:
    tier = running.server.cache.redis
    assert tier is not None
    return f"{tier.prefix}t:{ITEMS_TAG}"


async def _warm(running: Running) -> None:
    await _until(lambda: _subscribed(running))
    assert await _read(running) == ([(0,)], "miss")
    assert await _read(running) == ([(0,)], "hit_local")


async def _l1_serves_again_and_never_stale(running: Running) -> None:
    """The token went away: a fresh load, then L1 hits again; a write is seen at once."""
    _insert_behind_the_service(running)  # only a fresh load sees it
    await asyncio.sleep(PAST_THE_WINDOW)
    assert await _read(running) == ([(1,)], "miss")  # the entry under the old token is not served
    hits = await _l1_hits(running)
    for _ in range(5):
        assert await _read(running) == ([(1,)], "hit_local")
        await asyncio.sleep(PAST_THE_WINDOW)  # each one confirmed with Redis
    assert await _l1_hits(running) - hits == 5
    await _insert(running)
    assert await _read(running) == ([(2,)], "miss")
    assert await _read(running) == ([(2,)], "hit_local")


async def test_l1_comes_back_after_a_tag_token_key_is_deleted_in_redis(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        await _warm(running)
        assert redis_server.cli("DEL", await _token_key(running)) == "1"
        await _l1_serves_again_and_never_stale(running)


def _used_memory(redis: RedisProcess) -> int:
    info = redis.cli("INFO", "memory")
    [line] = [line for line in info.splitlines() if line.startswith("used_memory:")]
    return int(line.split(":")[1])


async def _evict_until_gone(redis: RedisProcess, key: str) -> None:
    """Fill a Redis capped just above its use until allkeys-lru has evicted ``key``."""
    assert redis.cli("CONFIG", "SET", "maxmemory", str(_used_memory(redis) + 1_000_000)) == "OK"
    filler = aioredis.Redis.from_url(redis.url, socket_timeout=10)
    try:
        for batch in range(200):
            pipe = filler.pipeline(transaction=False)
            for i in range(100):
                pipe.set(f"filler:{batch}:{i}", b"x" * 10_000)
            await pipe.execute()
            if not await filler.exists(key):
                return
        raise AssertionError("the token key was never evicted")
    finally:
        await filler.aclose()
        assert redis.cli("CONFIG", "SET", "maxmemory", "256mb") == "OK"


async def test_l1_comes_back_after_redis_evicts_a_tag_token_under_maxmemory(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    assert redis_server.cli("CONFIG", "GET", "maxmemory-policy").endswith("allkeys-lru\r\n")
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        await _warm(running)
        await _evict_until_gone(redis_server, await _token_key(running))
        evicted = redis_server.cli("INFO", "stats")
        assert "evicted_keys:0\r\n" not in evicted
        await _l1_serves_again_and_never_stale(running)


@pytest.mark.parametrize("way", ["deleted", "bumped"])
async def test_a_token_replaced_in_redis_is_never_served_from_l1_under_the_old_one(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess, way: str
) -> None:
    """Another writer replaced the token in Redis, with no message on the channel."""
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        await _warm(running)
        key = await _token_key(running)
        if way == "deleted":
            redis_server.cli("DEL", key)
        else:
            redis_server.cli("SET", key, "replaced-elsewhere")
        _insert_behind_the_service(running)
        for _ in range(3):
            await asyncio.sleep(PAST_THE_WINDOW)
            assert (await _read(running))[0] == [(1,)]
