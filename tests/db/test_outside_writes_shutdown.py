"""Stopping the data_version watcher never interrupts the writer's work on the same connection."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import grpc

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service.server import DataAccessServer
from tests.conftest import build_config, row, sqlite_database


async def test_a_write_queued_at_shutdown_commits_while_the_watcher_stops(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["sqlite"] = {"busy_timeout_ms": 60_000, "outside_writes_check_seconds": 0.01}
    Path(document["data_dir"]).mkdir(parents=True)
    server = DataAccessServer(build_config(tmp_path, document))
    port = await server.start()
    path = Path(document["data_dir"]) / "kitchen.db"
    writer = sqlite_database(server, "kitchen").writer
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    insert = asyncio.ensure_future(
        pb_grpc.DataAccessStub(channel).BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="items", columns=["qty"], rows=[row(4242)]
            ),
            timeout=30,
        )
    )
    try:
        async with asyncio.timeout(10):
            while writer.in_transaction == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the watcher's next hop queues behind the blocked writer
        stopping = asyncio.ensure_future(server.stop(grace=5.0))
        await asyncio.sleep(0.3)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    answer = await insert
    await stopping
    await channel.close(None)
    assert answer.rows_affected == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE qty = 4242").fetchone() == (1,)
