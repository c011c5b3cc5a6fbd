"""PostgreSQL benchmark load, run in its own process: ``python -m bench.postgres_load COMMAND ...``.

``points PG_PORT SQLITE_PORT URL POOL ROWS CONCURRENCY SECONDS``
    uncached point reads (cache BYPASS) of random ids among ROWS at
    CONCURRENCY: through the service on PostgreSQL (``$1``), with asyncpg in
    this process on a pool of POOL connections to URL, and through the
    service on SQLite (``?``), in turns (see ``sliced``) for SECONDS in all each.
``hits PG_PORT SQLITE_PORT CONCURRENCY SECONDS``
    one Query asked over and over of each server (cached by the warm-up, so
    L1 hits), in turns the same way.
``service-copy PORT BATCHES``
    BATCHES serial BatchInserts of 1,000 events rows through the service.
``asyncpg-copy URL BATCHES``
    the same rows with ``copy_records_to_table``, one call per batch.

Each prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc

from bench.load import batch_insert, event_values
from bench.query_load import Sample, drive
from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc

POINT = "SELECT id, day, kind, value FROM events WHERE id = {p}"
CACHED = "SELECT id, day, kind, value FROM events WHERE id <= {p} ORDER BY id"
BATCH_ROWS = 1000
SLICES = 6  # turns each load gets in one timed loop
EXPECT = {
    "pg": "BYPASS",
    "lite": "BYPASS",
    "asyncpg": "OK",
    "pg_hit": "HIT_LOCAL",
    "lite_hit": "HIT_LOCAL",
}
Make = Callable[[], pb.QueryRequest]
COLUMNS = ["day", "kind", "value", "payload"]


Run = Callable[[int, float], Awaitable[Sample]]  # (count, seconds) -> the answers


async def sliced(runs: dict[str, Run], concurrency: int, seconds: float) -> dict[str, Any]:
    """Each run warmed up, then all of them in turn, ``SLICES`` times ``seconds / SLICES``
    each (the order rotating), so a load elsewhere on the machine falls on all alike."""
    for run in runs.values():
        await run(concurrency * 50, 1.0)
    totals = {name: Sample() for name in runs}
    names = list(runs)
    for n in range(SLICES):
        for name in names[n % len(names) :] + names[: n % len(names)]:
            sample = await runs[name](1 << 30, seconds / SLICES)
            totals[name].latencies += sample.latencies
            totals[name].statuses.update(sample.statuses)
            totals[name].seconds += sample.seconds
    return {name: totals[name].summary(EXPECT[name]) for name in names}


def service_run(stub: pb_grpc.DataAccessAsyncStub, concurrency: int, make: Make) -> Run:
    """``concurrency`` callers asking the service ``make()``."""
    return lambda count, seconds: drive(stub, concurrency, count, seconds, make)


def asyncpg_run(pool: asyncpg.Pool, concurrency: int, sql: str, key: Callable[[], int]) -> Run:
    """``concurrency`` callers running ``sql`` on ``pool`` directly."""

    async def run(count: int, seconds: float) -> Sample:
        sample = Sample()
        issued = 0
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal issued
            while issued < count and time.perf_counter() < deadline:
                issued += 1
                started = time.perf_counter()
                await pool.fetch(sql, key())
                sample.latencies.append(time.perf_counter() - started)
                sample.statuses["OK"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        sample.seconds = time.perf_counter() - started
        return sample

    return run


async def points(
    pg: int, lite: int, url: str, pool_size: int, rows: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """Uncached point reads of random ids: the service on PostgreSQL, asyncpg, the service on
    SQLite; each one's summary."""
    pick = random.Random(11)
    bypass = pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)

    def point(placeholder: str) -> Make:
        sql = POINT.format(p=placeholder)
        return lambda: pb.QueryRequest(
            database="events",
            sql=sql,
            params=[pb.Value(integer=pick.randint(1, rows))],
            cache=bypass,
        )

    pool = await asyncpg.create_pool(url, min_size=pool_size, max_size=pool_size)
    assert pool is not None
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{pg}") as pg_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{lite}") as lite_channel,
        ):
            pg_stub = pb_grpc.DataAccessStub(pg_channel)
            lite_stub = pb_grpc.DataAccessStub(lite_channel)
            direct = POINT.format(p="$1")
            runs = {
                "pg": service_run(pg_stub, concurrency, point("$1")),
                "asyncpg": asyncpg_run(pool, concurrency, direct, lambda: pick.randint(1, rows)),
                "lite": service_run(lite_stub, concurrency, point("?")),
            }
            return await sliced(runs, concurrency, seconds)
    finally:
        await pool.close()


async def hits(pg: int, lite: int, concurrency: int, seconds: float) -> dict[str, Any]:
    """One Query asked over and over (cached by the warm-up) of each server; their summaries."""

    def cached(placeholder: str) -> Make:
        request = pb.QueryRequest(
            database="events", sql=CACHED.format(p=placeholder), params=[pb.Value(integer=10)]
        )
        return lambda: request

    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{pg}") as pg_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{lite}") as lite_channel,
    ):
        runs = {
            "pg_hit": service_run(pb_grpc.DataAccessStub(pg_channel), concurrency, cached("$1")),
            "lite_hit": service_run(pb_grpc.DataAccessStub(lite_channel), concurrency, cached("?")),
        }
        return await sliced(runs, concurrency, seconds)


def _records(batch: int) -> list[tuple[Any, ...]]:
    """Batch ``batch``'s rows, the values ``bench.load.batch_insert`` sends the service."""
    return [event_values(i) for i in range(batch * BATCH_ROWS, (batch + 1) * BATCH_ROWS)]


async def asyncpg_copy(url: str, batches: int) -> dict[str, float]:
    """``batches`` serial ``copy_records_to_table`` calls of 1,000 rows on one connection."""
    records = [_records(b) for b in range(batches)]
    connection = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        for batch in records:
            await connection.copy_records_to_table("events", records=batch, columns=COLUMNS)
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    return {"rows": batches * BATCH_ROWS, "seconds": elapsed}


def main(argv: list[str]) -> None:
    """Run the command in ``argv`` and print its JSON."""
    command, *rest = argv
    result: dict[str, Any]
    if command == "points":
        pg, lite, url, pool, rows, concurrency, seconds = rest
        result = asyncio.run(
            points(int(pg), int(lite), url, int(pool), int(rows), int(concurrency), float(seconds))
        )
    elif command == "hits":
        pg, lite, concurrency, seconds = rest
        result = asyncio.run(hits(int(pg), int(lite), int(concurrency), float(seconds)))
    elif command == "service-copy":
        result = asyncio.run(batch_insert(int(rest[0]), int(rest[1]), BATCH_ROWS))
    elif command == "asyncpg-copy":
        result = asyncio.run(asyncpg_copy(rest[0], int(rest[1])))
    else:
        raise SystemExit(f"usage: python -m bench.postgres_load COMMAND ... ({command}?)")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
