"""Uncached-read load, run in its own process: ``python -m bench.miss_load COMMAND PORT ...``.

``capture PORT ROWS SHAPE FILE``
    ask one read of SHAPE and write its answer's bytes, as received, to FILE.
``measure PORT ROWS SHAPE EXPECT SECONDS CONCURRENCY:COUNT ...``
    uncached reads (cache BYPASS) of SHAPE with random parameters among ROWS,
    per CONCURRENCY:COUNT, after a warm-up; EXPECT is ``BYPASS`` or ``ANY``.

The shapes: ``point``, one row by primary key; ``rows20``, 20 rows through
the (day, kind) index. Each prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench.query_load import drive
from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc

BYPASS = pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)
SQL = {
    "point": "SELECT id, day, kind, value, payload FROM events WHERE id = ?",
    "rows20": "SELECT id, day, kind, value, payload FROM events"
    " WHERE day = ? AND kind = ? ORDER BY id LIMIT 20",
}
KINDS = ("click", "view", "buy")


def reads(rows: int, shape: str) -> Callable[[], pb.QueryRequest]:
    """A maker of uncached ``shape`` reads with random parameters (seeded)."""
    pick = random.Random(7)
    sql = SQL[shape]

    def point() -> pb.QueryRequest:
        key = pb.Value(integer=pick.randint(1, rows))
        return pb.QueryRequest(database="events", sql=sql, params=[key], cache=BYPASS)

    def rows20() -> pb.QueryRequest:
        day = pb.Value(text=f"2026-01-{pick.randint(1, 28):02d}")
        kind = pb.Value(text=pick.choice(KINDS))
        return pb.QueryRequest(database="events", sql=sql, params=[day, kind], cache=BYPASS)

    return point if shape == "point" else rows20


async def capture(port: int, rows: int, shape: str, path: Path) -> dict[str, Any]:
    """One answer's bytes, as they came."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = channel.unary_unary(
            f"/{pb.DESCRIPTOR.services_by_name['DataAccess'].full_name}/Query",
            request_serializer=pb.QueryRequest.SerializeToString,
            response_deserializer=None,
        )
        answer: bytes = await raw(reads(rows, shape)(), timeout=30)
    path.write_bytes(answer)
    return {"bytes": len(answer), "rows": len(pb.QueryResponse.FromString(answer).rows)}


async def measure(
    port: int, rows: int, shape: str, expect: str, seconds: float, plan: list[str]
) -> dict[str, Any]:
    """One warmed-up timed loop per ``CONCURRENCY:COUNT``, keyed by concurrency."""
    make = reads(rows, shape)
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        for step in plan:
            concurrency, count = (int(n) for n in step.split(":"))
            await drive(stub, concurrency, max(concurrency * 4, count // 10), 1.0, make)
            sample = await drive(stub, concurrency, count, seconds, make)
            out[str(concurrency)] = sample.summary(expect)
    return out


def main(argv: list[str]) -> None:
    """Run the command in ``argv`` and print its JSON."""
    command, port, rows, shape, *rest = argv
    if command == "capture":
        result = asyncio.run(capture(int(port), int(rows), shape, Path(rest[0])))
    elif command == "measure":
        expect, seconds, *plan = rest
        result = asyncio.run(measure(int(port), int(rows), shape, expect, float(seconds), plan))
    else:
        raise SystemExit(f"usage: python -m bench.miss_load capture|measure PORT ... ({command}?)")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
