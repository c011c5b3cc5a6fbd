"""Idempotency keys: expired by an index in bounded slices, live ones still replayed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from dataaccess.v1 import data_access_pb2 as pb
from service.db.sqlite import idempotency
from tests.conftest import Running, row, started

OLD_TABLE = (  # the table as files made before the expiry index hold it
    "CREATE TABLE _dataaccess_idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,"
    " outcome TEXT NOT NULL, created_at REAL NOT NULL)"
)


def _insert(running: Running, rows: list[pb.Row], key: str) -> Any:
    return running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen",
            table="items",
            columns=["id", "code", "qty"],
            rows=rows,
            idempotency_key=key,
        )
    )


def _expired_keys(running: Running) -> list[str]:
    with running.sqlite("kitchen") as conn:
        rows = conn.execute(
            "SELECT key FROM _dataaccess_idempotency WHERE created_at < 1e6 ORDER BY created_at"
        ).fetchall()
    return [key for (key,) in rows]


async def test_a_file_from_before_gets_the_index_and_expiry_searches_it(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    data_dir = Path(document["data_dir"])
    data_dir.mkdir(parents=True)
    with sqlite3.connect(data_dir / "kitchen.db") as conn:
        conn.execute(OLD_TABLE)
    async with started(tmp_path, document) as running:
        with running.sqlite("kitchen") as conn:
            plan = conn.execute(f"EXPLAIN QUERY PLAN {idempotency.EXPIRE}", (1.0, 8)).fetchall()
    details = [detail for *_, detail in plan]
    assert not [d for d in details if d.startswith("SCAN")], details
    index = "USING COVERING INDEX _dataaccess_idempotency_created_at (created_at<?)"
    assert any(d.startswith("SEARCH _dataaccess_idempotency") and index in d for d in details)


async def test_expired_keys_go_in_bounded_slices_and_a_live_key_still_replays(
    running: Running,
) -> None:
    first = await _insert(running, [row(1, "a", 1)], "live")
    with running.sqlite("kitchen") as conn:  # created_at in 1970: long expired
        conn.executemany(
            "INSERT INTO _dataaccess_idempotency VALUES (?, 'f', '{}', ?)",
            [(f"old-{n}", float(n)) for n in range(1, 31)] + [("reused", 1000.0)],
        )
    await _insert(running, [row(2, "b", 1)], "k2")
    assert len(_expired_keys(running)) == 31 - idempotency.EXPIRE_SLICE
    await _insert(running, [row(3, "c", 1)], "k3")
    assert _expired_keys(running)[-1] == "reused"  # the oldest went first
    assert len(_expired_keys(running)) == 31 - 2 * idempotency.EXPIRE_SLICE
    # An expired key that is still stored is not replayed: the write is new.
    reused = await _insert(running, [row(4, "d", 1)], "reused")
    assert reused.rows_affected == 1
    assert len(_expired_keys(running)) == 31 - 3 * idempotency.EXPIRE_SLICE - 1
    replayed = await _insert(running, [row(1, "a", 1)], "live")  # id 1 again would conflict
    assert (replayed.rows_affected, replayed.last_insert_rowid) == (
        first.rows_affected,
        first.last_insert_rowid,
    )
    # A replay writes nothing now: it names the tables, not the keys the first call bumped.
    assert list(replayed.invalidated_tags) == ["table:kitchen.items"]
    assert set(replayed.invalidated_tags) < set(first.invalidated_tags)
    with running.sqlite("kitchen") as conn:
        ids = conn.execute("SELECT id FROM items ORDER BY id").fetchall()
    assert ids == [(1,), (2,), (3,), (4,)]
