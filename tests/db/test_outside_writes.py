"""Writes made outside the service (the sqlite3 shell, a job, a second service) reach the cache.

The service's own commits bump exactly the tags they change; a commit by another
process is known only to SQLite (PRAGMA data_version), checked every
``sqlite.outside_writes_check_seconds``, and drops everything cached from that database.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, row, started

COUNT = pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items")
PARENTS = pb.QueryRequest(database="kitchen", sql="SELECT name FROM parents ORDER BY id")
_OUTSIDE_WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO items (qty) VALUES (7)")
conn.close()
"""


def _write_from_outside(path: Path) -> None:
    subprocess.run([sys.executable, "-c", _OUTSIDE_WRITER, str(path)], check=True, timeout=30)


async def _count(running: Running) -> tuple[int, int]:
    answer = await running.stub.Query(COUNT)
    return answer.rows[0].values[0].integer, answer.cache_status


@pytest.mark.parametrize("with_redis", [False, True])
async def test_a_row_written_by_another_process_is_seen_within_the_check_interval(
    tmp_path: Path, document: dict[str, Any], request: pytest.FixtureRequest, with_redis: bool
) -> None:
    if with_redis:
        document["redis_url"] = request.getfixturevalue("redis_server").url
    document["sqlite"] = {"outside_writes_check_seconds": 0.1}
    async with started(tmp_path, document) as running:
        before, _ = await _count(running)
        again, status = await _count(running)
        assert (again, status) == (before, pb.CACHE_STATUS_HIT_LOCAL)
        await asyncio.to_thread(_write_from_outside, running.data_dir / "kitchen.db")
        deadline = time.monotonic() + 5
        while (await _count(running))[0] == before:
            assert time.monotonic() < deadline, "the outside write is still not seen"
            await asyncio.sleep(0.05)


async def test_the_services_own_writes_do_not_drop_the_whole_database(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["sqlite"] = {"outside_writes_check_seconds": 0.05}
    async with started(tmp_path, document) as running:
        await running.stub.Query(PARENTS)
        for qty in range(5):
            await running.stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen", table="items", columns=["qty"], rows=[row(qty)]
                )
            )
            await asyncio.sleep(0.1)  # two checks of data_version
        answer = await running.stub.Query(PARENTS)
        assert answer.cache_status == pb.CACHE_STATUS_HIT_LOCAL


async def test_the_check_can_be_turned_off(tmp_path: Path, document: dict[str, Any]) -> None:
    document["sqlite"] = {"outside_writes_check_seconds": 0}
    async with started(tmp_path, document) as running:
        before, _ = await _count(running)
        await asyncio.to_thread(_write_from_outside, running.data_dir / "kitchen.db")
        await asyncio.sleep(0.3)
        assert await _count(running) == (before, pb.CACHE_STATUS_HIT_LOCAL)
