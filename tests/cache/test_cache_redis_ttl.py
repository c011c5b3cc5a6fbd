"""Entry lifetimes against a real Redis: ttls, empty results and stale-while-revalidate."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from google.protobuf.duration_pb2 import Duration

from dataaccess.v1 import data_access_pb2 as pb
from tests.cache.test_cache_redis import COUNT_ITEMS, _insert, _read, _until, with_redis
from tests.conftest import RedisProcess, Running, started


async def test_empty_results_and_short_and_long_ttls_under_one_tag_are_invalidated(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    document = with_redis({**document, "l1_max_entries": 0}, redis_server)
    async with started(tmp_path, document) as running:
        empty = "SELECT id FROM items WHERE qty > 100"
        assert await _read(running, empty) == ([], "miss")
        assert await _read(running, empty) == ([], "hit_redis")
        hour = pb.CacheOptions(ttl=Duration(seconds=3600))
        second = pb.CacheOptions(ttl=Duration(seconds=1))
        assert (await _read(running, COUNT_ITEMS, cache=hour))[1] == "miss"
        assert (await _read(running, "SELECT max(qty) FROM items", cache=second))[1] == "miss"
        assert (await _read(running, COUNT_ITEMS, cache=hour))[1] == "hit_redis"
        await asyncio.sleep(1.2)  # the short one expires
        assert (await _read(running, "SELECT max(qty) FROM items", cache=second))[1] == "miss"
        await _insert(running, qty=500)
        assert await _read(running, COUNT_ITEMS, cache=hour) == ([(1,)], "miss")
        assert await _read(running, "SELECT max(qty) FROM items", cache=second) == (
            [(500,)],
            "miss",
        )
        assert (await _read(running, empty))[0] == [(1,)]


async def test_stale_while_revalidate_serves_once_then_refreshes_but_never_past_a_write(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        options = pb.CacheOptions(
            ttl=Duration(seconds=1), stale_while_revalidate=Duration(seconds=30)
        )
        await _read(running, cache=options)
        await asyncio.sleep(1.2)
        assert await _read(running, cache=options) == ([(0,)], "stale")
        await _until(lambda: _fresh_hit(running, options))
        await asyncio.sleep(1.2)
        await _insert(running)
        assert await _read(running, cache=options) == ([(1,)], "miss")


async def _fresh_hit(running: Running, options: pb.CacheOptions) -> bool:
    return (await _read(running, cache=options))[1] in ("hit_local", "hit_redis")
