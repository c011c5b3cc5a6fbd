"""The Redis tier against a real redis-server: hits, misses and invalidation across servers.

The helpers here serve the other Redis tests too.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from tests.conftest import RedisProcess, Running, plain_rows, row, started

COUNT_ITEMS = "SELECT count(*) FROM items"
STATUS = {
    pb.CACHE_STATUS_MISS: "miss",
    pb.CACHE_STATUS_HIT_LOCAL: "hit_local",
    pb.CACHE_STATUS_HIT_REDIS: "hit_redis",
    pb.CACHE_STATUS_STALE: "stale",
    pb.CACHE_STATUS_BYPASS: "bypass",
}


def with_redis(document: dict[str, Any], redis: RedisProcess, **cache: Any) -> dict[str, Any]:
    """``document`` pointed at ``redis``, with quick breaker probes for tests.

    Rows written behind the service's back stand for an entry gone stale: the
    check for other processes' commits (tested on its own) is off, so only
    what a test does invalidates them.
    """
    return {
        **document,
        "redis_url": redis.url,
        "cache": {"breaker_reset_seconds": 0.2, **cache},
        "sqlite": {"outside_writes_check_seconds": 0, **document.get("sqlite", {})},
    }


async def _read(running: Running, sql: str = COUNT_ITEMS, **kwargs: Any) -> tuple[Any, str]:
    response = await running.stub.Query(pb.QueryRequest(database="kitchen", sql=sql, **kwargs))
    return plain_rows(response), STATUS[response.cache_status]


async def _insert(running: Running, table: str = "items", qty: int = 1) -> None:
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(database="kitchen", table=table, columns=["qty"], rows=[row(qty)])
    )


def _insert_behind_the_service(running: Running, qty: int = 5) -> None:
    with sqlite3.connect(running.data_dir / "kitchen.db") as conn:
        conn.execute("INSERT INTO items (qty) VALUES (?)", (qty,))


async def _stats_tier(running: Running, tier: str) -> pb.CacheTierStats:
    stats = await running.stub.Stats(pb.StatsRequest())
    [found] = [t for t in stats.cache if t.tier == tier]
    return found


async def _until(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_redis_hit_then_a_write_makes_a_fresh_miss(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    document = with_redis({**document, "l1_max_entries": 0}, redis_server)
    async with started(tmp_path, document) as running:
        assert await _read(running) == ([(0,)], "miss")
        assert await _read(running) == ([(0,)], "hit_redis")
        await running.stub.BatchInsert(
            pb.BatchInsertRequest(
                database="live",
                table="products",
                columns=["sku", "name", "unit_cost"],
                rows=[row("Z", "z", 1.0)],
            )
        )
        assert await _read(running) == ([(0,)], "hit_redis")  # another database: kept
        await _insert(running)
        assert await _read(running) == ([(1,)], "miss")
        assert await _read(running) == ([(1,)], "hit_redis")
        l2 = await _stats_tier(running, "l2")
        assert (l2.hits, l2.misses, l2.state) == (3, 2, "closed")


async def test_l1_in_front_of_redis_answers_hit_local(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        await _until(lambda: _subscribed(running))
        assert await _read(running) == ([(0,)], "miss")
        assert await _read(running) == ([(0,)], "hit_local")
        await _insert(running)
        assert await _read(running) == ([(1,)], "miss")


async def _subscribed(running: Running) -> bool:
    return (await _stats_tier(running, "l1")).state == "on"


async def test_a_change_behind_the_service_stays_cached_until_invalidated(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        await _read(running)
        _insert_behind_the_service(running)
        assert (await _read(running))[0] == [(0,)]
        await running.stub.Invalidate(pb.InvalidateRequest(tags=["table:kitchen.items"]))
        assert await _read(running) == ([(1,)], "miss")


async def test_a_write_through_one_server_is_seen_through_another_within_a_second(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    doc = with_redis(document, redis_server)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    async with started(tmp_path / "a", doc) as one, started(tmp_path / "b", doc) as other:
        await _until(lambda: _subscribed(other))
        for _ in range(3):  # warm the other's L1
            await _read(other)
        assert (await _read(other))[1] == "hit_local"
        await _insert(one)
        written = time.monotonic()
        while (await _read(other))[0] != [(1,)]:
            assert time.monotonic() - written < 1.0, "the other server served stale past 1 s"
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("l1_max_entries", [10_000, 0], ids=["l1-and-redis", "redis-only"])
async def test_reads_in_threads_never_see_fewer_rows_than_acknowledged(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess, l1_max_entries: int
) -> None:
    doc = with_redis({**document, "l1_max_entries": l1_max_entries}, redis_server)
    async with started(tmp_path, doc) as running:
        await asyncio.to_thread(_race, running.port)


def _race(port: int) -> None:
    """8 threads read one cached query while 150 inserts are acknowledged one by one."""
    acknowledged = 0
    stale: list[tuple[int, int]] = []
    done = threading.Event()

    def reader() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DataAccessStub(channel)
            while not done.is_set():
                floor = acknowledged
                answer = stub.Query(pb.QueryRequest(database="kitchen", sql=COUNT_ITEMS))
                seen = answer.rows[0].values[0].integer
                if seen < floor:
                    stale.append((seen, floor))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DataAccessStub(channel)
            for i in range(150):
                stub.BatchInsert(
                    pb.BatchInsertRequest(
                        database="kitchen", table="items", columns=["qty"], rows=[row(i)]
                    )
                )
                acknowledged = i + 1
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
    assert stale == []


async def _l2_state(running: Running) -> str:
    return (await _stats_tier(running, "l2")).state


async def _state_is(running: Running, state: str) -> bool:
    """Whether the breaker is in ``state`` ("closed" also means nothing is held)."""
    found = await _l2_state(running)
    return found == state if state == "closed" else found.startswith(state)


async def test_invalidating_a_tag_costs_the_same_commands_for_one_entry_or_100k(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    async with started(tmp_path, with_redis(document, redis_server)) as running:
        await _read(running, "SELECT 1", cache=pb.CacheOptions(tags=["one"]))
        await _read(running, "SELECT 2", cache=pb.CacheOptions(tags=["many"]))
        tier = running.server.cache.redis
        assert tier is not None
        # 100,000 more entries that carry "many", written as the service writes them
        filler = aioredis.Redis.from_url(redis_server.url, socket_timeout=30)
        try:
            [entry_key] = (await filler.keys(f"{tier.prefix}e:*"))[-1:]
            raw = await filler.get(entry_key)
            assert raw is not None
            for start in range(0, 100_000, 10_000):
                pipe = filler.pipeline(transaction=False)
                for i in range(start, start + 10_000):
                    pipe.set(f"{tier.prefix}e:copy{i}", raw, ex=600)
                await pipe.execute()
        finally:
            await filler.aclose()
        costs = []
        for tag in ("one", "many"):
            redis_server.cli("CONFIG", "RESETSTAT")
            await running.stub.Invalidate(pb.InvalidateRequest(tags=[tag]))
            costs.append(_commands(redis_server))
        assert costs[0] == costs[1]
        assert not {"scan", "keys", "del", "unlink"} & set(costs[1])


def _commands(redis: RedisProcess) -> dict[str, str]:
    payload = "*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n"
    with socket.create_connection(("127.0.0.1", redis.port), timeout=2) as sock:
        sock.sendall(payload.encode())
        text = sock.recv(1 << 16).decode()
    calls = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            calls[name] = rest.split(",")[0]
    for housekeeping in ("info", "config", "hello", "ping", "client|setinfo", "subscribe"):
        calls.pop(housekeeping, None)  # connections and the channel's pings, not Invalidate
    return calls
