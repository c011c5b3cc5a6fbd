"""Reader pools: renewal by age and idleness, validation, replacement, and their counters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, sqlite_database, started


async def _select(running: Running, n: int) -> int:
    response = await running.stub.Query(pb.QueryRequest(database="live", sql=f"SELECT {n}"))
    return int(response.rows[0].values[0].integer)


async def _pool(running: Running) -> pb.PoolStats:
    stats = await running.stub.Stats(pb.StatsRequest())
    return {p.database: p for p in stats.pools}["live"]


async def test_readers_past_their_lifetime_are_renewed(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["limits"] = {"readers_per_database": 2, "reader_max_lifetime_seconds": 0.05}
    async with started(tmp_path, document) as running:
        await asyncio.sleep(0.1)
        assert [await _select(running, i) for i in range(4)] == [0, 1, 2, 3]
        pool = await _pool(running)
    assert pool.recycled >= 2
    assert pool.size == 2 and pool.in_use == 0 and pool.waiters == 0


async def test_a_reader_that_fails_validation_is_replaced(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["limits"] = {"readers_per_database": 1, "reader_validate_after_idle_seconds": 0.01}
    async with started(tmp_path, document) as running:
        pool = sqlite_database(running.server, "live").pool
        async with pool.reader() as conn:
            await conn.run(lambda raw: raw.close())  # the connection dies under the pool
        await asyncio.sleep(0.05)
        assert await _select(running, 5) == 5
        assert (await _pool(running)).recycled == 1


async def test_pool_counters_report_waits_and_reset(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    async with started(tmp_path, document) as running:
        await asyncio.gather(*(_select(running, i) for i in range(20)))
        pool = await _pool(running)
        assert pool.acquire_p99_ms >= pool.acquire_p50_ms >= 0
        await running.stub.Stats(pb.StatsRequest(reset=True))
        writes = (await running.stub.Stats(pb.StatsRequest())).writes
        assert all(w.transactions == 0 for w in writes)
