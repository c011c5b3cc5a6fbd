"""Cached-Query load, run in its own process: ``python -m bench.query_load COMMAND PORT ...``.

``capture PORT FILE``
    seed a few events rows, ask the Query until the cache answers it, and
    write the last answer's bytes, exactly as received, to FILE.
``measure PORT EXPECT SECONDS CONCURRENCY:COUNT ...``
    for each CONCURRENCY, on one channel: CONCURRENCY tasks issue the Query
    back to back until COUNT answers or SECONDS pass, after a short warm-up.
    Every answer's ``cache_status`` is counted; EXPECT (``HIT_LOCAL``,
    ``HIT_REDIS``, ... or ``ANY``) is the one each answer should carry.

``points PORT ROWS SECONDS CONCURRENCY:COUNT ...``
    uncached point reads (cache BYPASS) of random ids among ROWS.
``group PORT COUNT``
    median latency of a group Query over ``a`` and ``b`` (merged) against
    the same two Queries one after the other, alternating.
``invalidate PORT ENTRIES TAG``
    cache ENTRIES answers under TAG, then time Invalidate of TAG.

Each prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.load import event_row, insert_request
from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc

QUERY = pb.QueryRequest(
    database="events",
    sql="SELECT id, day, kind, value FROM events WHERE id <= ? ORDER BY id",
    params=[pb.Value(integer=10)],
)
SEED_ROWS = 10
POINT = "SELECT id, day, kind, value FROM events WHERE id = ?"
GROUPED = "SELECT kind, count(*) AS n, sum(value) AS total FROM events GROUP BY kind"
ANY = "ANY"


def status_name(status: int) -> str:
    """``CACHE_STATUS_HIT_LOCAL`` -> ``HIT_LOCAL``."""
    return pb.CacheStatus.Name(status).removeprefix("CACHE_STATUS_")  # type: ignore[arg-type]


@dataclass
class Sample:
    """The answers of one timed loop: how many, how long, their latencies and statuses."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self, expect: str) -> dict[str, Any]:
        """The JSON for this loop; ``unexpected`` counts answers without ``expect``."""
        answers = len(self.latencies)
        ms = sorted(1000 * s for s in self.latencies)
        unexpected = 0 if expect == ANY else answers - self.statuses[expect]
        return {
            "answers": answers,
            "seconds": self.seconds,
            "per_second": answers / self.seconds,
            "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "statuses": dict(self.statuses),
            "unexpected": unexpected,
        }


async def drive(
    stub: pb_grpc.DataAccessAsyncStub,
    concurrency: int,
    count: int,
    seconds: float,
    make: Callable[[], pb.QueryRequest] = lambda: QUERY,
) -> Sample:
    """``concurrency`` tasks asking ``make()`` until ``count`` answers or ``seconds`` pass."""
    sample = Sample()
    issued = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < deadline:
            issued += 1
            started = time.perf_counter()
            try:
                status = status_name((await stub.Query(make(), timeout=30)).cache_status)
            except grpc.aio.AioRpcError as exc:
                status = f"ERROR {exc.code().name}"
            sample.latencies.append(time.perf_counter() - started)
            sample.statuses[status] += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    sample.seconds = time.perf_counter() - started
    return sample


async def measure(port: int, expect: str, seconds: float, plan: list[str]) -> dict[str, Any]:
    """One warmed-up timed loop per ``CONCURRENCY:COUNT`` in ``plan``, keyed by concurrency."""
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        for step in plan:
            concurrency, count = (int(n) for n in step.split(":"))
            await drive(stub, concurrency, max(concurrency * 4, count // 10), 1.0)
            sample = await drive(stub, concurrency, count, seconds)
            out[str(concurrency)] = sample.summary(expect)
    return out


async def capture(port: int, path: Path) -> dict[str, Any]:
    """Seed rows, warm the cache, and keep the bytes of the cached answer."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        await stub.BatchInsert(insert_request([event_row(i) for i in range(SEED_ROWS)]), timeout=30)
        raw = channel.unary_unary(
            f"/{pb.DESCRIPTOR.services_by_name['DataAccess'].full_name}/Query",
            request_serializer=pb.QueryRequest.SerializeToString,
            response_deserializer=None,  # the bytes as they came
        )
        statuses = []
        for _ in range(5):
            answer: bytes = await raw(QUERY, timeout=30)
            statuses.append(status_name(pb.QueryResponse.FromString(answer).cache_status))
    path.write_bytes(answer)
    return {"bytes": len(answer), "statuses": statuses}


async def points(port: int, rows: int, seconds: float, plan: list[str]) -> dict[str, Any]:
    """Uncached point reads of random ids among ``rows``, per ``CONCURRENCY:COUNT``."""
    pick = random.Random(11)
    bypass = pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)

    def point() -> pb.QueryRequest:
        key = pb.Value(integer=pick.randint(1, rows))
        return pb.QueryRequest(database="events", sql=POINT, params=[key], cache=bypass)

    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        for step in plan:
            concurrency, count = (int(n) for n in step.split(":"))
            await drive(stub, concurrency, max(concurrency * 4, count // 10), 1.0, point)
            out[str(concurrency)] = (await drive(stub, concurrency, count, seconds, point)).summary(
                "BYPASS"
            )
    return out


async def group(port: int, count: int) -> dict[str, Any]:
    """One group Query (a + b, merged) against the same two Queries one after the other."""
    bypass = pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)
    merge = pb.Merge(
        group_by=["kind"],
        aggregates=[
            pb.Aggregate(column="n", function=pb.AGGREGATE_FUNCTION_COUNT),
            pb.Aggregate(column="total", function=pb.AGGREGATE_FUNCTION_SUM),
        ],
    )
    grouped = pb.QueryRequest(database="ab", sql=GROUPED, cache=bypass, merge=merge)
    alone = [pb.QueryRequest(database=name, sql=GROUPED, cache=bypass) for name in ("a", "b")]
    group_s: list[float] = []
    serial_s: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        for i in range(count + 3):
            started = time.perf_counter()
            await stub.Query(grouped, timeout=60)
            middle = time.perf_counter()
            for request in alone:
                await stub.Query(request, timeout=60)
            if i >= 3:  # warmed up
                group_s.append(middle - started)
                serial_s.append(time.perf_counter() - middle)
    return {
        "group_ms": 1000 * statistics.median(group_s),
        "serial_ms": 1000 * statistics.median(serial_s),
    }


async def invalidate(port: int, entries: int, tag: str) -> dict[str, Any]:
    """Cache ``entries`` answers under ``tag``, then time Invalidate of that tag."""
    tagged = pb.CacheOptions(tags=[tag])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        numbers = iter(range(entries))

        async def fill() -> None:
            for n in numbers:
                request = pb.QueryRequest(
                    database="events", sql="SELECT ?", params=[pb.Value(integer=n)], cache=tagged
                )
                await stub.Query(request, timeout=60)

        await asyncio.gather(*(fill() for _ in range(min(32, entries))))
        times = []
        for _ in range(5):
            started = time.perf_counter()
            await stub.Invalidate(pb.InvalidateRequest(tags=[tag]), timeout=60)
            times.append(time.perf_counter() - started)
            await stub.Query(
                pb.QueryRequest(
                    database="events", sql="SELECT ?", params=[pb.Value(integer=0)], cache=tagged
                )
            )
    return {"first_ms": 1000 * times[0], "median_ms": 1000 * statistics.median(times)}


def main(argv: list[str]) -> None:
    """Run the command in ``argv`` and print its JSON."""
    command, port, *rest = argv
    if command == "capture":
        result = asyncio.run(capture(int(port), Path(rest[0])))
    elif command == "measure":
        expect, seconds, *plan = rest
        result = asyncio.run(measure(int(port), expect, float(seconds), plan))
    elif command == "points":
        rows, seconds, *plan = rest
        result = asyncio.run(points(int(port), int(rows), float(seconds), plan))
    elif command == "group":
        result = asyncio.run(group(int(port), int(rest[0])))
    elif command == "invalidate":
        result = asyncio.run(invalidate(int(port), int(rest[0]), rest[1]))
    else:
        raise SystemExit(f"usage: python -m bench.query_load capture|measure PORT ... ({command}?)")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
