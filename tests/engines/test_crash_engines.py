"""Crash atomicity on both engines: a server killed (SIGKILL) while writes are in flight
leaves every write RPC all there or not there at all, and every acknowledged one there."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from tests.conftest import row
from tests.engines.conftest import Engine

BATCH = 500
WRITERS = 6


@pytest.mark.slow
async def test_a_sigkill_mid_write_leaves_each_write_whole_or_absent(
    tmp_path: Path, engine: Engine, service_process: Any
) -> None:
    document = engine.document()
    server = service_process(document)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.DataAccessStub(channel)
    acknowledged: list[int] = []

    async def writer(first: int) -> None:
        batch = first
        while True:
            rows = [row(batch * BATCH + n, f"batch {batch}") for n in range(BATCH)]
            request = pb.BatchInsertRequest(
                database="kitchen", table="items", columns=["id", "t"], rows=rows
            )
            try:
                await stub.BatchInsert(request, timeout=10)
            except grpc.aio.AioRpcError:
                return  # the server is gone
            acknowledged.append(batch)
            batch += WRITERS

    writers = [asyncio.ensure_future(writer(n)) for n in range(WRITERS)]
    for _ in range(200):  # until a few batches are in: bounded
        if len(acknowledged) >= 8:
            break
        await asyncio.sleep(0.02)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    await asyncio.wait_for(asyncio.gather(*writers), 20)
    await channel.close(None)
    assert len(acknowledged) >= 8

    counts = await engine.direct("SELECT t, count(*) FROM items GROUP BY t")
    per_batch = {str(t): int(n) for t, n in counts}
    assert all(n == BATCH for n in per_batch.values()), per_batch  # no torn write
    for batch in acknowledged:  # no acknowledged write lost
        assert per_batch.get(f"batch {batch}") == BATCH

    # Started again on the same data, it serves, and writes go on.
    again = service_process(document)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{again.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        answer = await stub.Query(
            pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items"), timeout=10
        )
        assert answer.rows[0].values[0].integer == sum(per_batch.values())
