"""The Redis tier against a real redis-server: tokens, coherence across servers, and faults."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from dataaccess_client.v1 import data_access_pb2 as pb
from dataaccess_client.v1 import data_access_pb2_grpc as pb_grpc
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


async def _state_is(running: Running, state: str) -> bool:
    """Whether the breaker is in ``state`` ("closed" also means nothing is held)."""
    found = await _l2_state(running)
    return found == state if state == "closed" else found.startswith(state)


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


SLOW_COUNT = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) "
    "SELECT (SELECT count(*) FROM items) + 0 * count(*) FROM c"
)


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


async def test_empty_results_and_short_and_long_ttls_under_one_tag_are_invalidated(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    document = with_redis({**document, "l1_max_entries": 0}, redis_server)
    async with started(tmp_path, document) as running:
        empty = "SELECT id FROM items WHERE qty > 100"
        assert await _read(running, empty) == ([], "miss")
        assert await _read(running, empty) == ([], "hit_redis")
        hour = pb.CacheOptions(ttl={"seconds": 3600})
        second = pb.CacheOptions(ttl={"seconds": 1})
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
        options = pb.CacheOptions(ttl={"seconds": 1}, stale_while_revalidate={"seconds": 30})
        await _read(running, cache=options)
        await asyncio.sleep(1.2)
        assert await _read(running, cache=options) == ([(0,)], "stale")
        await _until(lambda: _fresh_hit(running, options))
        await asyncio.sleep(1.2)
        await _insert(running)
        assert await _read(running, cache=options) == ([(1,)], "miss")


async def _fresh_hit(running: Running, options: pb.CacheOptions) -> bool:
    return (await _read(running, cache=options))[1] in ("hit_local", "hit_redis")


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
