"""Consistency tokens on SQLite: the commit counter lives in the file, so positions grow
across every server writing it and across restarts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from dataaccess.v1 import data_access_pb2 as pb
from service.consistency import positions
from tests.conftest import Running, row, started


async def _insert(server: Running, qty: int) -> int:
    answer = await server.stub.BatchInsert(
        pb.BatchInsertRequest(database="kitchen", table="items", columns=["qty"], rows=[row(qty)])
    )
    return positions(answer.consistency_token)["kitchen"]


async def test_positions_grow_across_two_servers_on_one_file(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    async with started(tmp_path, document) as one, started(tmp_path, document) as two:
        seen = [await _insert(one if i % 2 else two, i) for i in range(10)]
        assert seen == sorted(seen) and len(set(seen)) == 10
        together = await asyncio.gather(*(_insert(s, 99) for s in (one, two) * 4))
        assert min(together) > seen[-1]
    async with started(tmp_path, document) as again:
        assert await _insert(again, 100) > max(together)  # a restart goes on from the file
    with sqlite3.connect(Path(document["data_dir"]) / "kitchen.db") as conn:
        [(counted,)] = conn.execute("SELECT position FROM _dataaccess_commits").fetchall()
    assert counted == max(together) + 1


async def test_writes_in_one_transaction_share_its_position(running: Running) -> None:
    found = await asyncio.gather(*(_insert(running, qty) for qty in range(20)))
    assert 0 < len(set(found)) < 20  # group commit: several calls, one transaction each
