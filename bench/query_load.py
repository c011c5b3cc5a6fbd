"""Cached-Query load, run in its own process: ``python -m bench.query_load COMMAND PORT ...``.

``capture PORT FILE``
    seed a few events rows, ask the Query until the cache answers it, and
    write the last answer's bytes, exactly as received, to FILE.
``measure PORT EXPECT SECONDS CONCURRENCY:COUNT ...``
    for each CONCURRENCY, on one channel: CONCURRENCY tasks issue the Query
    back to back until COUNT answers or SECONDS pass, after a short warm-up.
    Every answer's ``cache_status`` is counted; EXPECT (``HIT_LOCAL``,
    ``HIT_REDIS``, ... or ``ANY``) is the one each answer should carry.

Each prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.load import event_row, insert_request
from dataaccess_client.v1 import data_access_pb2 as pb
from dataaccess_client.v1 import data_access_pb2_grpc as pb_grpc

QUERY = pb.QueryRequest(
    database="events",
    sql="SELECT id, day, kind, value FROM events WHERE id <= ? ORDER BY id",
    params=[pb.Value(integer=10)],
)
SEED_ROWS = 10
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
    stub: pb_grpc.DataAccessStub, concurrency: int, count: int, seconds: float
) -> Sample:
    """``concurrency`` tasks asking QUERY until ``count`` answers are in or ``seconds`` pass."""
    sample = Sample()
    issued = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < deadline:
            issued += 1
            started = time.perf_counter()
            try:
                status = status_name((await stub.Query(QUERY, timeout=30)).cache_status)
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


def main(argv: list[str]) -> None:
    """Run the command in ``argv`` and print its JSON."""
    command, port, *rest = argv
    if command == "capture":
        result = asyncio.run(capture(int(port), Path(rest[0])))
    elif command == "measure":
        expect, seconds, *plan = rest
        result = asyncio.run(measure(int(port), expect, float(seconds), plan))
    else:
        raise SystemExit(f"usage: python -m bench.query_load capture|measure PORT ... ({command}?)")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
