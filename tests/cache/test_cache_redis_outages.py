"""Redis down, paused, restarted or replaced: reads go on, and nothing stale is served after."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.cache.test_cache_redis import (
    _insert,
    _l2_state,
    _read,
    _state_is,
    _subscribed,
    _until,
    with_redis,
)
from tests.conftest import RedisProcess, Running, started


async def test_redis_down_at_start_reads_bypass_and_invalidate_fails_closed(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    redis_server.kill()
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        assert await _read(running) == ([(0,)], "bypass")
        await _insert(running)
        assert await _read(running) == ([(1,)], "bypass")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await running.stub.Invalidate(pb.InvalidateRequest(tags=["t"]))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await _l2_state(running)).startswith("open")
        redis_server.start()
        await _until(lambda: _state_is(running, "closed"))
        assert await _read(running) == ([(1,)], "miss")


@pytest.mark.slow
async def test_redis_paused_reads_stay_bounded_and_nothing_is_stale_after(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        await _until(lambda: _subscribed(running))
        await _read(running)
        await _read(running)
        redis_server.signal(signal.SIGSTOP)
        acknowledged = 0
        for i in range(30):
            started_at = time.monotonic()
            rows, _ = await _read(running)
            # the cache timeout (a socket timeout, bounded twice over) plus database time
            assert time.monotonic() - started_at < 1.0
            assert rows[0][0] >= acknowledged
            if i % 10 == 5:
                await _insert(running)
                acknowledged += 1
        await _until(lambda: _state_is(running, "open"))
        for _ in range(20):  # an open breaker does not pay the timeout
            started_at = time.monotonic()
            assert (await _read(running))[0] == [(acknowledged,)]
            assert time.monotonic() - started_at < 0.2
        redis_server.signal(signal.SIGCONT)
        await _until(lambda: _state_is(running, "closed"))
        for _ in range(5):
            assert (await _read(running))[0] == [(acknowledged,)]


@pytest.mark.slow
async def test_redis_killed_and_restarted_empty_or_from_its_snapshot_never_serves_stale(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    document = with_redis({**document, "l1_max_entries": 0}, redis_server)
    async with started(tmp_path, document) as running:
        await _read(running)
        assert (await _read(running))[1] == "hit_redis"
        redis_server.save()  # the snapshot holds the entry and its tokens
        await _insert(running)  # replaces the tokens: the entry is stale from here on
        redis_server.kill()
        for _ in range(10):  # no error reaches the caller
            assert (await _read(running))[0] == [(1,)]
        await _insert(running)  # a write during the outage is seen at once
        assert await _read(running) == ([(2,)], "bypass")

        redis_server.start()  # from the snapshot: old entry, old tokens
        await _until(lambda: _state_is(running, "closed"))
        for _ in range(3):
            assert (await _read(running))[0] == [(2,)]
        assert (await _read(running))[1] == "hit_redis"

        redis_server.kill()
        (redis_server.workdir / "dump.rdb").unlink()
        await _read(running)
        redis_server.start()  # empty
        await _until(lambda: _state_is(running, "closed"))
        await _insert(running)
        assert (await _read(running))[0] == [(3,)]


@pytest.mark.slow
async def test_an_invalidation_held_through_an_outage_survives_a_restart_of_the_service(
    tmp_path: Path,
    document: dict[str, Any],
    redis_server: RedisProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    document = with_redis({**document, "l1_max_entries": 0}, redis_server)
    async with started(tmp_path, document) as running:
        await _read(running)
        assert (await _read(running))[1] == "hit_redis"
        redis_server.signal(signal.SIGSTOP)
        await _insert(running)  # committed; its invalidation cannot reach Redis
    caplog.clear()
    caplog.set_level(logging.INFO, logger="service")
    async with started(tmp_path, document) as restarted:
        redis_server.signal(signal.SIGCONT)  # Redis comes back WITH the stale entry
        await _until(lambda: _state_is(restarted, "closed"))
        said = [record.getMessage() for record in caplog.records]
        assert "holding undelivered invalidations" in said
        assert any(line.startswith("held invalidations delivered to Redis") for line in said)
        assert (await _read(restarted))[0] == [(1,)]
        with sqlite3.connect(restarted.data_dir / "kitchen.db") as conn:
            await _insert(restarted)  # a later transaction deletes delivered outbox rows
            (left,) = conn.execute("SELECT count(*) FROM _dataaccess_outbox").fetchone()
        assert left <= 1


async def test_after_redis_restarts_the_cache_is_back_within_one_breaker_reset(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    reset = 1.0
    doc = with_redis({**document, "l1_max_entries": 0}, redis_server, breaker_reset_seconds=reset)
    async with started(tmp_path, doc) as running:
        # Concurrent misses each run a script on a pooled connection of their own.
        await _burst(running, 32)
        redis_server.kill()  # every pooled connection is dead from here on
        while not await _state_is(running, "open"):
            assert (await _read(running))[1] == "bypass"
        redis_server.start()  # on the same port
        restarted = time.monotonic()
        while "bypass" in await _burst(running, 16):
            await asyncio.sleep(0.02)
        back_after = time.monotonic() - restarted
        assert back_after < reset + 0.8, f"the cache came back after {back_after:.2f} s"
        for _ in range(5):  # and stays back: no read meets a connection from before
            assert "bypass" not in await _burst(running, 32)
        assert await _l2_state(running) == "closed"


async def _burst(running: Running, reads: int) -> set[str]:
    """The cache statuses of ``reads`` concurrent distinct reads."""
    answers = [_read(running, f"SELECT count(*) + {i} FROM items") for i in range(reads)]
    return {status for _, status in await asyncio.gather(*answers)}
