"""Load for the durability bench, run in its own process: ``python -m bench.durability_load``.

``inserts PORT CONCURRENCY ROWS COUNT SECONDS``
    CONCURRENCY tasks each issuing BatchInserts of ROWS events rows back to
    back, after a second unmeasured, until COUNT calls or SECONDS pass.
``stream PORT WRITERS SECONDS``
    WRITERS tasks each issuing one-row BatchInserts (``value`` numbers the
    rows, 1, 2, ...) with a 5 ms pause, noting when each was acknowledged
    (``time.monotonic()``: Linux's clock is the same in every process, so
    the bench compares it with when it killed the server). It prints
    ``ready`` once a write came back, and stops when the server is gone
    or SECONDS pass.

Each prints one JSON object (``stream`` on the line after ``ready``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from typing import Any

import grpc

from bench.load import event_row, insert_request
from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc

PAUSE = 0.005


async def inserts(
    port: int, concurrency: int, rows: int, count: int, seconds: float
) -> dict[str, Any]:
    """Rows/s of ``concurrency`` tasks of back-to-back BatchInserts of ``rows`` rows."""
    requests = [
        insert_request([event_row(c * rows + i) for i in range(rows)]) for c in range(concurrency)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)

        async def loop(calls: int, seconds: float) -> int:
            issued = 0
            deadline = time.perf_counter() + seconds

            async def caller(request: pb.BatchInsertRequest) -> None:
                nonlocal issued
                while issued < calls and time.perf_counter() < deadline:
                    issued += 1
                    await stub.BatchInsert(request, timeout=60)

            await asyncio.gather(*(caller(r) for r in requests))
            return issued

        await loop(count, 1.0)
        started = time.perf_counter()
        done = await loop(count, seconds)
        elapsed = time.perf_counter() - started
    return {"rows": done * rows, "seconds": elapsed}


async def stream(port: int, writers: int, seconds: float) -> dict[str, Any]:
    """One-row writes until the server is gone: when each numbered row was acknowledged."""
    numbers = itertools.count(1)
    acks: dict[int, float] = {}
    errors: dict[str, int] = {}
    ready = asyncio.Event()
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)

        async def writer() -> None:
            while time.monotonic() < deadline:
                number = next(numbers)
                try:
                    await stub.BatchInsert(insert_request([event_row(number)]), timeout=5)
                except grpc.aio.AioRpcError as exc:  # the server is gone: nothing more comes back
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    return
                acks[number] = time.monotonic()
                if not ready.is_set():
                    ready.set()
                    print("ready", flush=True)
                await asyncio.sleep(PAUSE)

        await asyncio.gather(*(writer() for _ in range(writers)))
    return {"acks": sorted(acks.items()), "errors": errors}


def main(argv: list[str]) -> None:
    """Run the command in ``argv`` and print its JSON."""
    command, port, *rest = argv
    if command == "inserts":
        concurrency, rows, count, seconds = rest
        result = asyncio.run(
            inserts(int(port), int(concurrency), int(rows), int(count), float(seconds))
        )
    elif command == "stream":
        writers, seconds = rest
        result = asyncio.run(stream(int(port), int(writers), float(seconds)))
    else:
        raise SystemExit(
            f"usage: python -m bench.durability_load inserts|stream PORT ... ({command}?)"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
