"""Datasette load, run by the bench venv: ``python -m bench.http_load PORT DB ROWS SECONDS C:N``.

CONCURRENCY tasks on one keep-alive HTTP client ask Datasette's JSON API for
the same point query the service answers (random ids among ROWS) until N
answers or SECONDS pass, after a warm-up. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

import httpx

SQL = "select id, day, kind, value from events where id = :id"


async def drive(
    client: httpx.AsyncClient, path: str, rows: int, concurrency: int, count: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` callers asking point queries until ``count`` answers or ``seconds``."""
    pick = random.Random(11)
    answers = errors = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal answers, errors
        while answers + errors < count and time.perf_counter() < deadline:
            params = {"sql": SQL, "id": str(pick.randint(1, rows)), "_shape": "array"}
            reply = await client.get(path, params=params)
            if reply.status_code == 200 and len(reply.json()) == 1:
                answers += 1
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "answers": answers,
        "errors": errors,
        "seconds": elapsed,
        "per_second": answers / elapsed,
    }


async def main(port: int, database: str, rows: int, seconds: float, step: str) -> dict[str, Any]:
    """A warm-up, then one timed loop; keyed by concurrency."""
    concurrency, count = (int(n) for n in step.split(":"))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
    ) as client:
        path = f"/{database}.json"  # Datasette names a database after its file
        await drive(client, path, rows, concurrency, max(concurrency * 4, count // 10), 1.0)
        return {str(concurrency): await drive(client, path, rows, concurrency, count, seconds)}


if __name__ == "__main__":
    port, database, rows, seconds, step = sys.argv[1:]
    print(json.dumps(asyncio.run(main(int(port), database, int(rows), float(seconds), step))))
