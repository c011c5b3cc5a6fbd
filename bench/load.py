"""Load generators, each run in its own process: ``python -m bench.load SCENARIO PORT ...``.

Each prints one JSON object: what it did and how long it took.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from dataaccess_client._columns import set_rows
from dataaccess_client._convert import to_row

COLUMNS = ["day", "kind", "value", "payload"]


def event_values(i: int) -> tuple[str, str, int, str]:
    """One events row as Python values."""
    return (f"2026-01-{i % 28 + 1:02d}", ("click", "view", "buy")[i % 3], i, f"payload {i:08d}")


def event_row(i: int) -> pb.Row:
    """One events row as a proto Row."""
    return to_row(event_values(i))


def insert_request(rows: list[pb.Row]) -> pb.BatchInsertRequest:
    """A BatchInsert of ``rows`` into events."""
    return pb.BatchInsertRequest(database="events", table="events", columns=COLUMNS, rows=rows)


def batch_request(first: int, count: int, columnar: bool) -> pb.BatchInsertRequest:
    """A BatchInsert of ``count`` events as the client package sends it (columnar, since
    every column holds one kind), or in the row form."""
    values = [event_values(first + i) for i in range(count)]
    if not columnar:
        return insert_request([to_row(v) for v in values])
    request = pb.BatchInsertRequest(database="events", table="events", columns=COLUMNS)
    set_rows(request, values)
    assert request.column_data, "the client sends these rows as columns"
    return request


async def batch_insert(
    port: int, batches: int, batch_rows: int, columnar: bool = True
) -> dict[str, float]:
    """Serial BatchInserts of ``batch_rows`` rows (requests built before the clock starts,
    as stdlib's rows are)."""
    requests = [batch_request(b * batch_rows, batch_rows, columnar) for b in range(batches)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        started = time.perf_counter()
        for request in requests:
            await stub.BatchInsert(request, timeout=60)
        elapsed = time.perf_counter() - started
    return {"rows": batches * batch_rows, "seconds": elapsed}


async def batch_insert_rows(port: int, batches: int, batch_rows: int) -> dict[str, float]:
    """The same, the rows sent in the row form."""
    return await batch_insert(port, batches, batch_rows, columnar=False)


async def concurrent_inserts(port: int, writers: int, each: int) -> dict[str, float]:
    """``writers`` tasks, each doing ``each`` single-row BatchInserts one after the other."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)

        async def writer(w: int) -> None:
            for i in range(each):
                await stub.BatchInsert(insert_request([event_row(w * each + i)]), timeout=60)

        before = await stub.Stats(pb.StatsRequest())
        started = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        elapsed = time.perf_counter() - started
        after = await stub.Stats(pb.StatsRequest())
    tx = _transactions(after) - _transactions(before)
    return {"rows": writers * each, "seconds": elapsed, "transactions": tx}


async def single_inserts(port: int, calls: int, idempotent: int) -> dict[str, object]:
    """``calls`` one-row BatchInserts one after the other, each with a new key if ``idempotent``."""
    latencies = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        await stub.Stats(pb.StatsRequest())  # connected before the clock starts
        for i in range(calls):
            request = insert_request([event_row(i)])
            if idempotent:
                request.idempotency_key = uuid.uuid4().hex
            started = time.perf_counter()
            await stub.BatchInsert(request, timeout=60)
            latencies.append((time.perf_counter() - started) * 1000)
    return {"calls": calls, "latencies_ms": latencies}


def _transactions(stats: pb.StatsResponse) -> int:
    return sum(w.transactions for w in stats.writes if w.database == "events")


def main(argv: list[str]) -> None:
    """Run the scenario named in ``argv`` and print its JSON."""
    scenario, port, *numbers = argv
    args = [int(n) for n in numbers]
    runners: dict[str, Callable[..., Coroutine[Any, Any, dict[str, Any]]]] = {
        "batch_insert": batch_insert,
        "batch_insert_rows": batch_insert_rows,
        "concurrent_inserts": concurrent_inserts,
        "single_inserts": single_inserts,
    }
    runner = runners[scenario]
    print(json.dumps(asyncio.run(runner(int(port), *args))))


if __name__ == "__main__":
    main(sys.argv[1:])
