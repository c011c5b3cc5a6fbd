"""Single flight against a real Redis: a process never waits for its own load lease, replicas do."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.conftest import RedisProcess, started
from tests.test_cache_redis import SLOW_COUNT, _read, _stats_tier, with_redis

LEASE_SECONDS = 2.0
ROUNDS = 150


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
