"""Warm reads (cache.warm): hits for the first caller, reloaded after writes, refreshed ahead."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from dataaccess.v1 import data_access_pb2 as pb
from service.config import ConfigError
from tests.conftest import RedisProcess, Running, build_config, row, started

COUNT = "SELECT count(*) AS n FROM items WHERE qty >= ?"


def _warm(document: dict[str, Any], **extra: Any) -> dict[str, Any]:
    entry = {"name": "stock", "database": "kitchen", "sql": COUNT, "params": [1], **extra}
    return {**document, "cache": {"warm": [entry]}, "cache_ttl_seconds": 60}


async def _count(server: Running) -> tuple[int, int]:
    answer = await server.stub.Query(
        pb.QueryRequest(database="kitchen", sql=COUNT, params=[pb.Value(integer=1)])
    )
    return answer.rows[0].values[0].integer, answer.cache_status


async def _warm_stats(server: Running) -> pb.WarmStats:
    [warm] = (await server.stub.Stats(pb.StatsRequest())).warm
    return warm


async def test_a_warm_read_is_a_hit_for_its_first_caller_and_shows_in_stats(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    async with started(tmp_path, _warm(document)) as server:
        assert await _count(server) == (0, pb.CACHE_STATUS_HIT_LOCAL)
        warm = await _warm_stats(server)
        assert (warm.name, warm.database, warm.last_error) == ("stock", "kitchen", "")
        assert warm.loads >= 1 and abs(warm.last_refresh_unix_seconds - time.time()) < 60


@pytest.mark.parametrize("with_redis", [False, True], ids=["l1", "l1+redis"])
async def test_after_a_write_it_is_reloaded_and_no_answer_is_ever_stale(
    tmp_path: Path, document: dict[str, Any], with_redis: bool, request: pytest.FixtureRequest
) -> None:
    if with_redis:
        redis: RedisProcess = request.getfixturevalue("redis_server")
        document = {**document, "redis_url": redis.url}
    async with started(tmp_path, _warm(document)) as server:
        for written in range(1, 6):
            await server.stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen", table="items", columns=["qty"], rows=[row(2)]
                )
            )
            # Acknowledged: from now on every answer counts it, hit or not.
            deadline = time.monotonic() + 5
            while True:
                count, status = await _count(server)
                assert count == written
                if status == pb.CACHE_STATUS_HIT_LOCAL:
                    break  # reloaded by the warmer (or by this caller's own miss)
                assert time.monotonic() < deadline, "never a hit again after the write"
                await asyncio.sleep(0.02)
        # The warmer reloads by itself: with no caller reading, its loads grow.
        loads = (await _warm_stats(server)).loads
        await server.stub.BatchInsert(
            pb.BatchInsertRequest(database="kitchen", table="items", columns=["qty"], rows=[row(3)])
        )
        deadline = time.monotonic() + 5
        while (await _warm_stats(server)).loads == loads:
            assert time.monotonic() < deadline, "the warmer did not reload after the write"
            await asyncio.sleep(0.05)
        assert await _count(server) == (6, pb.CACHE_STATUS_HIT_LOCAL)


async def test_it_is_refreshed_before_its_ttl_runs_out(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    async with started(tmp_path, _warm(document, ttl_seconds=1.0)) as server:
        first = (await _warm_stats(server)).loads
        statuses = []
        ends = time.monotonic() + 2.5  # past two ttls
        while time.monotonic() < ends:
            statuses.append((await _count(server))[1])
            await asyncio.sleep(0.05)
        assert set(statuses) == {pb.CACHE_STATUS_HIT_LOCAL}
        assert (await _warm_stats(server)).loads >= first + 2


async def test_a_failing_warm_read_is_reported_and_does_not_stop_the_start(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    broken = {
        **document,
        "cache": {"warm": [{"name": "bad", "database": "kitchen", "sql": "SELEC 1"}]},
    }
    async with started(tmp_path, broken) as server:
        warm = await _warm_stats(server)
        assert warm.loads == 0 and "syntax" in warm.last_error.lower()
        assert (await server.stub.Query(pb.QueryRequest(database="kitchen", sql="SELECT 1"))).rows


@pytest.mark.parametrize(
    ("warm", "message"),
    [
        ([{"name": "a", "database": "nowhere", "sql": "SELECT 1"}], "unknown database 'nowhere'"),
        (
            [{"name": "a", "database": "kitchen", "sql": "SELECT 1"}] * 2,
            "duplicate name 'a'",
        ),
        ([{"name": "a", "database": "kitchen", "sql": "SELECT ?", "params": [[1]]}], "params"),
        ([{"name": "a", "database": "kitchen", "sql": "SELECT 1", "ttl": 1}], "unknown key"),
        ([{"name": "a", "database": "kitchen", "sql": "SELECT 1", "ttl_seconds": 0}], "positive"),
    ],
)
def test_bad_warm_entries_stop_the_start_with_one_line(
    tmp_path: Path, document: dict[str, Any], warm: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(tmp_path, {**document, "cache": {"warm": warm}})


@pytest.mark.slow
@pytest.mark.parametrize("redis_rolls_back", [False, True], ids=["frozen", "from-snapshot"])
def test_a_write_acknowledged_before_a_sigkill_is_in_the_first_warm_answer_after_it(
    tmp_path: Path,
    document: dict[str, Any],
    redis_server: RedisProcess,
    service_process: Any,
    redis_rolls_back: bool,
) -> None:
    """The server is SIGKILLed right after acknowledging a write, while Redis still holds
    the warm answer from before it: Redis frozen through the write (what the server sent
    it may still land when it wakes), or restarted from a snapshot taken before the write
    (whatever was delivered is gone). The restarted server's answers, warm-loaded before
    it serves, count the write."""
    import signal

    import grpc

    from dataaccess.v1 import data_access_pb2_grpc as pb_grpc

    config = _warm({**document, "redis_url": redis_server.url})
    request = pb.QueryRequest(database="kitchen", sql=COUNT, params=[pb.Value(integer=1)])
    insert = pb.BatchInsertRequest(
        database="kitchen", table="items", columns=["qty"], rows=[row(2)]
    )
    first = service_process(config)
    with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        assert stub.Query(request, timeout=5).rows[0].values[0].integer == 0
        if redis_rolls_back:
            redis_server.save()
            stub.BatchInsert(insert, timeout=20)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(5)
            redis_server.kill()
            redis_server.start()  # from the snapshot: the answer and tags from before
        else:
            redis_server.signal(signal.SIGSTOP)
            try:
                stub.BatchInsert(insert, timeout=20)
                first.process.send_signal(signal.SIGKILL)
                first.process.wait(5)
            finally:
                redis_server.signal(signal.SIGCONT)
    again = service_process(config)
    with grpc.insecure_channel(f"127.0.0.1:{again.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        for _ in range(20):
            answer = stub.Query(request, timeout=5)
            assert answer.rows[0].values[0].integer == 1, answer.cache_status
        assert answer.cache_status in (pb.CACHE_STATUS_HIT_LOCAL, pb.CACHE_STATUS_HIT_REDIS)
