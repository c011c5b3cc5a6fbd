"""Other processes on the same files: an outside reader, `migrate`, a second service.

SQLite coordinates processes with POSIX locks, and closing any descriptor on a
file drops every lock the process holds on it. If the service ever opened a
database file outside SQLite (Health once read its header with open()/close()),
an outside reader that then opens and closes the file sees no other connection,
checkpoints and deletes the WAL the service is still writing into: after a crash
the writes it acknowledged are gone. These tests run real separate processes and
SIGKILL the service, then count every acknowledged row.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from tests.conftest import RedisProcess, row

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROWS = "SELECT qty FROM items WHERE qty >= 1000"
_OUTSIDE_READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
print(conn.execute("SELECT count(*) FROM items").fetchone()[0])
conn.close()
"""


class Service:
    """A stub on one service process's port."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.DataAccessStub(self.channel)

    async def insert(self, quantities: Iterable[int]) -> set[int]:
        """Insert one row per quantity, one call each; the quantities acknowledged."""
        acknowledged = set()
        for qty in quantities:
            request = pb.BatchInsertRequest(
                database="kitchen", table="items", columns=["qty"], rows=[row(qty)]
            )
            await self.stub.BatchInsert(request, timeout=5)
            acknowledged.add(qty)
        return acknowledged

    async def stored(self) -> set[int]:
        """Every quantity the service reads now, past its cache."""
        answer = await self.stub.Query(
            pb.QueryRequest(
                database="kitchen",
                sql=ROWS,
                max_rows=100_000,
                cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS),
            ),
            timeout=5,
        )
        return {r.values[0].integer for r in answer.rows}


def _kitchen_only(document: dict[str, Any]) -> dict[str, Any]:
    databases = [d for d in document["databases"] if d["name"] == "kitchen"]
    return {**document, "databases": databases, "health_interval_seconds": 0.05}


def read_from_outside(path: Path) -> int:
    """Open, read and close the file from another process, as a shell or backup job would."""
    done = subprocess.run(
        [sys.executable, "-c", _OUTSIDE_READER, str(path)],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return int(done.stdout)


def _migrate_from_outside(tmp_path: Path) -> None:
    env = {**os.environ, "DATAACCESS_CONFIG": str(tmp_path / "config.yaml")}
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=True,
        timeout=30,
    )


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))


async def test_outside_readers_and_a_second_service_lose_no_acknowledged_write(
    tmp_path: Path, document: dict[str, Any], service_process: Any
) -> None:
    document = _kitchen_only(document)
    path = Path(document["data_dir"]) / "kitchen.db"
    first = await asyncio.to_thread(service_process, document)
    one = Service(first.port)
    acknowledged = await one.insert(range(1000, 1040))
    await one.stub.Health(pb.HealthRequest(deep=True), timeout=5)
    await asyncio.sleep(0.3)  # the health watcher has run its file checks several times

    assert await asyncio.to_thread(read_from_outside, path) >= len(acknowledged)
    await asyncio.to_thread(_migrate_from_outside, tmp_path)
    acknowledged |= await one.insert(range(1040, 1080))

    second = await asyncio.to_thread(service_process, document)
    two = Service(second.port)
    acknowledged |= await two.insert(range(2000, 2040))
    acknowledged |= await one.insert(range(1080, 1120))
    assert await one.stored() == acknowledged, "the first service misses the second's writes"
    assert await two.stored() == acknowledged, "the second service misses the first's writes"
    await two.channel.close(None)
    second.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.process.wait, 20) == 0

    assert await asyncio.to_thread(read_from_outside, path) >= len(acknowledged)
    acknowledged |= await one.insert(range(1120, 1160))
    assert await one.stored() == acknowledged
    await one.channel.close(None)
    first.process.kill()
    await asyncio.to_thread(first.process.wait, 10)

    restarted = await asyncio.to_thread(service_process, document)
    three = Service(restarted.port)
    try:
        lost = acknowledged - await three.stored()
    finally:
        await three.channel.close(None)
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes lost"
    restarted.process.kill()
    await asyncio.to_thread(restarted.process.wait, 10)
    assert _integrity(path) == "ok"


@pytest.mark.parametrize("l1_entries", ["0", "10000"])
async def test_a_write_through_one_process_is_never_served_stale_by_the_other(
    tmp_path: Path,
    document: dict[str, Any],
    service_process: Any,
    redis_server: RedisProcess,
    l1_entries: str,
) -> None:
    document = {**_kitchen_only(document), "redis_url": redis_server.url}
    env = {"DATAACCESS_L1_MAX_ENTRIES": l1_entries}
    first = await asyncio.to_thread(service_process, document, env)
    second = await asyncio.to_thread(service_process, document, env)
    reader, writer = Service(first.port), Service(second.port)
    count = pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items WHERE qty >= 1000")
    try:
        for seq in range(1000, 1020):
            # Cached before the write (the reader's check for other processes' commits may
            # drop its entries between two reads: it is read again until it is a hit).
            for _ in range(50):
                before = await reader.stub.Query(count, timeout=5)
                again = await reader.stub.Query(count, timeout=5)
                if again.cache_status in (pb.CACHE_STATUS_HIT_LOCAL, pb.CACHE_STATUS_HIT_REDIS):
                    break
                await asyncio.sleep(0.05)
            assert again.cache_status in (pb.CACHE_STATUS_HIT_LOCAL, pb.CACHE_STATUS_HIT_REDIS)
            assert again.rows == before.rows
            await writer.insert([seq])
            # Across processes L1 may serve within its validation window; past it, never.
            await asyncio.sleep(0.15 if l1_entries != "0" else 0.0)
            after = await reader.stub.Query(count, timeout=5)
            assert after.rows[0].values[0].integer == before.rows[0].values[0].integer + 1
    finally:
        await reader.channel.close(None)
        await writer.channel.close(None)
