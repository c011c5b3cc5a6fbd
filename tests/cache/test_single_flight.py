"""Single flight against a real Redis: one load per key and tokens, here and across replicas.

A process never waits for its own load lease, replicas do; a caller that goes
away does not fail the others, and one that comes after an invalidation loads anew.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.cache.test_cache_redis import _insert_behind_the_service, _read, _stats_tier, with_redis
from tests.conftest import RedisProcess, started

LEASE_SECONDS = 2.0
ROUNDS = 150
SLOW_COUNT = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) "
    "SELECT (SELECT count(*) FROM items) + 0 * count(*) FROM c"
)


async def test_identical_concurrent_misses_in_one_process_never_wait_for_its_own_lease(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    doc = with_redis(document, redis_server, lease_seconds=LEASE_SECONDS)
    async with started(tmp_path, doc) as running:
        await _read(running, "SELECT 1")  # connections and scripts are ready
        loads_before = (await _stats_tier(running, "l2")).loads
        slowest = 0.0
        for i in range(ROUNDS):
            sql = f"SELECT count(*) + {i} FROM items"
            began = time.monotonic()
            answers = await asyncio.gather(*(_read(running, sql) for _ in range(8)))
            slowest = max(slowest, time.monotonic() - began)
            assert {rows[0][0] for rows, _ in answers} == {i}
        assert slowest < LEASE_SECONDS / 2, f"a round took {slowest:.2f} s"
        assert (await _stats_tier(running, "l2")).loads - loads_before == ROUNDS


async def test_two_servers_still_share_one_load_through_the_lease(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    doc = with_redis(document, redis_server, lease_seconds=LEASE_SECONDS)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    async with started(tmp_path / "a", doc) as one, started(tmp_path / "b", doc) as other:
        first = asyncio.ensure_future(_read(one, SLOW_COUNT))
        await asyncio.sleep(0.1)  # its load holds the lease
        assert await _read(other, SLOW_COUNT) == ([(0,)], "hit_redis")
        assert await first == ([(0,)], "miss")
        loads = [(await _stats_tier(server, "l2")).loads for server in (one, other)]
        assert loads[0] >= 1 and loads[1] == 0


async def test_concurrent_identical_misses_load_once(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        sql = "SELECT count(*) FROM items, items AS b"
        await _read(running, "SELECT 1")
        loads_before = (await _stats_tier(running, "l2")).loads
        results = await asyncio.gather(*(_read(running, sql) for _ in range(50)))
        assert {r[0][0] for r in results} == {(0,)}
        assert (await _stats_tier(running, "l2")).loads - loads_before == 1


async def test_a_caller_after_an_invalidation_does_not_join_the_older_load(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        first = asyncio.ensure_future(_read(running, SLOW_COUNT))
        await asyncio.sleep(0.1)  # its load is running, on the old tokens
        _insert_behind_the_service(running)
        await running.stub.Invalidate(pb.InvalidateRequest(tags=["table:kitchen.items"]))
        assert (await _read(running, SLOW_COUNT))[0] == [(1,)]
        await first
        assert (await _read(running, SLOW_COUNT))[0] == [(1,)]


async def test_a_cancelled_first_caller_does_not_fail_the_others(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        first = running.stub.Query(pb.QueryRequest(database="kitchen", sql=SLOW_COUNT))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(_read(running, SLOW_COUNT))
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (await second)[0] == [(0,)]
