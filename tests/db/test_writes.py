"""BatchInsert and BatchUpdate: atomic, checked against the schema, committed in groups."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import KITCHEN_MIGRATIONS, Running, failure_of, plain_rows, row, started


def _items(running: Running) -> list[tuple[object, ...]]:
    with running.sqlite("kitchen") as conn:
        return conn.execute("SELECT id, code, qty FROM items ORDER BY id").fetchall()


def _insert(
    running: Running, rows: list[pb.Row], **kwargs: Any
) -> grpc.aio.UnaryUnaryCall[pb.BatchInsertRequest, pb.BatchInsertResponse]:
    return running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen", table="items", columns=["id", "code", "qty"], rows=rows, **kwargs
        )
    )


async def test_batch_insert_reports_rows_rowid_and_tags(running: Running) -> None:
    response = await _insert(running, [row(1, "a", 1), row(2, "b", 2)], invalidate_tags=["extra"])
    assert response.rows_affected == 2
    assert response.last_insert_rowid == 2
    tags = list(response.invalidated_tags)
    assert (tags[0], tags[-1]) == ("table:kitchen.items", "extra")
    # the old and new keys of the rows written: their rowids, and codes (a UNIQUE index)
    assert {t.split("=")[0] for t in tags[1:-1]} == {
        "key:kitchen.items.id",
        "key:kitchen.items.code",
    }
    assert len(tags[1:-1]) == 4
    assert _items(running) == [(1, "a", 1), (2, "b", 2)]


async def test_a_failed_batch_leaves_no_row_behind(running: Running) -> None:
    failure = await failure_of(_insert(running, [row(1, "a", 1), row(2, "b", 2), row(3, "c", -5)]))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert _items(running) == []


async def test_on_conflict_modes(running: Running) -> None:
    await _insert(running, [row(1, "a", 1)])
    ignored = await _insert(
        running, [row(1, "a", 9), row(2, "b", 2)], on_conflict=pb.ON_CONFLICT_IGNORE
    )
    assert ignored.rows_affected == 1
    assert _items(running) == [(1, "a", 1), (2, "b", 2)]
    await _insert(running, [row(1, "z", 5)], on_conflict=pb.ON_CONFLICT_REPLACE)
    assert _items(running)[0] == (1, "z", 5)
    upserted = await _insert(
        running,
        [row(3, "z", 7)],
        on_conflict=pb.ON_CONFLICT_UPSERT,
        conflict_columns=["code"],
        update_columns=["qty"],
    )
    assert upserted.rows_affected == 1
    assert _items(running) == [(1, "z", 7), (2, "b", 2)]
    failure = await failure_of(
        _insert(running, [row(4, "q", 1)], on_conflict=pb.ON_CONFLICT_UPSERT)
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["conflict_columns"]


async def test_identifiers_come_from_the_schema_never_from_the_request(running: Running) -> None:
    evil = "qty) VALUES (1); DROP TABLE items; --"
    failure = await failure_of(
        running.stub.BatchInsert(
            pb.BatchInsertRequest(database="kitchen", table="items", columns=[evil], rows=[row(1)])
        )
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND
    mixed_case = await running.stub.BatchInsert(
        pb.BatchInsertRequest(database="kitchen", table="ITEMS", columns=["QTY"], rows=[row(4)])
    )
    assert mixed_case.rows_affected == 1


async def test_batch_update_is_one_transaction(running: Running) -> None:
    await _insert(running, [row(1, "a", 1), row(2, "b", 2)])
    response = await running.stub.BatchUpdate(
        pb.BatchUpdateRequest(
            database="kitchen",
            statements=[
                pb.Statement(
                    sql="UPDATE items SET qty = qty + ? WHERE id = ?",
                    param_sets=[row(10, 1), row(20, 2), row(30, 99)],
                ),
                pb.Statement(sql="DELETE FROM items WHERE id = 2"),
                pb.Statement(
                    sql="INSERT INTO items (id, code, qty) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET qty = excluded.qty",
                    param_sets=[row(1, "a", 100), row(5, "e", 5)],
                ),
            ],
        )
    )
    assert list(response.rows_affected) == [2, 1, 2]
    assert _items(running) == [(1, "a", 100), (5, "e", 5)]

    failure = await failure_of(
        running.stub.BatchUpdate(
            pb.BatchUpdateRequest(
                database="kitchen",
                statements=[
                    pb.Statement(sql="DELETE FROM items WHERE id = 1"),
                    pb.Statement(sql="UPDATE items SET qty = -1 WHERE id = 5"),
                ],
            )
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert _items(running) == [(1, "a", 100), (5, "e", 5)]


async def test_batch_update_takes_dml_only(running: Running) -> None:
    invalid, denied = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
    for sql, codes in [
        ("SELECT * FROM items", {invalid}),
        ("CREATE TABLE evil (x)", {invalid, denied}),
        ("PRAGMA foreign_keys=OFF", {invalid, denied}),
        ("COMMIT", {invalid, denied}),
        ("DELETE FROM secrets", {denied}),
        ("DELETE FROM items; DELETE FROM parents", {invalid}),
    ]:
        failure = await failure_of(
            running.stub.BatchUpdate(
                pb.BatchUpdateRequest(database="kitchen", statements=[pb.Statement(sql=sql)])
            )
        )
        assert failure.code in codes, sql
    with running.sqlite("kitchen") as conn:
        assert conn.execute("SELECT count(*) FROM parents").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM secrets").fetchone() == (1,)


async def test_concurrent_writes_share_commits_and_fail_alone(running: Running) -> None:
    good = [_insert(running, [row(i, f"c{i}", i)]) for i in range(1, 41)]
    bad = [_insert(running, [row(100 + i, "dup", 1), row(200 + i, "dup", 1)]) for i in range(5)]
    results = await asyncio.gather(*good, *bad, return_exceptions=True)
    assert all(isinstance(r, pb.BatchInsertResponse) for r in results[:40])
    failed = [r for r in results[40:] if isinstance(r, grpc.aio.AioRpcError)]
    assert len(failed) == 5
    assert {r.code() for r in failed} == {grpc.StatusCode.ALREADY_EXISTS}
    assert len(_items(running)) == 40
    stats = await running.stub.Stats(pb.StatsRequest())
    writes = {w.database: w for w in stats.writes}["kitchen"]
    assert writes.batches == 40
    assert writes.rows == 40
    assert writes.transactions < writes.batches  # group commit shared transactions


async def test_read_after_acknowledged_write_sees_it(running: Running) -> None:
    for i in range(20):
        await _insert(running, [row(i + 1, f"k{i}", i)])
        response = await running.stub.Query(
            pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items")
        )
        assert plain_rows(response) == [(i + 1,)]


def _with_extra_tables(document: dict[str, Any], tmp_path: Path) -> None:
    """The kitchen schema plus a WITHOUT ROWID table and an audit trigger on items."""
    migrations = tmp_path / "kitchen-extra"
    shutil.copytree(KITCHEN_MIGRATIONS, migrations)
    (migrations / "0003_extra.sql").write_text(
        "CREATE TABLE labels (name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID;\n"
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, item_id INTEGER);\n"
        "CREATE TRIGGER items_audit AFTER UPDATE ON items BEGIN\n"
        "  INSERT INTO audit (item_id) VALUES (new.id);\n"
        "END;\n"
    )
    kitchen = document["databases"][2]
    kitchen["migrations"] = str(migrations)
    kitchen["allowed_tables"] = [*kitchen["allowed_tables"], "labels", "audit"]


def _statements(*pairs: tuple[str, list[pb.Row]], key: str = "") -> pb.BatchUpdateRequest:
    return pb.BatchUpdateRequest(
        database="kitchen",
        statements=[pb.Statement(sql=sql, param_sets=sets) for sql, sets in pairs],
        idempotency_key=key,
    )


async def test_returning_statements_count_the_rows_they_wrote(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    """RETURNING rows are read to the statement's end, so its count is the rows written."""
    _with_extra_tables(document, tmp_path)
    async with started(tmp_path, document) as running:
        await _insert(running, [row(i, f"c{i}", i) for i in range(1, 6)])
        request = _statements(
            ("UPDATE items SET qty = qty + ? WHERE id <= ? RETURNING id", [row(10, 3), row(1, 1)]),
            ("DELETE FROM items WHERE id = ? RETURNING *", [row(5), row(99)]),
            (
                "INSERT INTO items (id, code) VALUES (?, ?), (?, ?) RETURNING id",
                [row(7, "x", 8, "y")],
            ),
            ("INSERT INTO labels (name, n) VALUES ('a', 1) RETURNING name", []),
            key="returning-1",
        )
        first = await running.stub.BatchUpdate(request)
        # changes() semantics: the 4 audit rows the UPDATE's trigger wrote are not counted.
        assert list(first.rows_affected) == [4, 1, 2, 1]
        stats = await running.stub.Stats(pb.StatsRequest())
        assert {w.database: w for w in stats.writes}["kitchen"].rows == 5 + 8
        replayed = await running.stub.BatchUpdate(request)
        assert list(replayed.rows_affected) == [4, 1, 2, 1]
        stats = await running.stub.Stats(pb.StatsRequest())
        assert {w.database: w for w in stats.writes}["kitchen"].rows == 5 + 8  # none replayed
        with running.sqlite("kitchen") as conn:
            assert conn.execute("SELECT count(*) FROM audit").fetchone() == (4,)
            assert conn.execute("SELECT sum(qty) FROM items").fetchone() == (1 + 2 + 3 + 4 + 31,)


async def test_a_returning_statement_is_refused_when_it_writes_nothing_allowed(
    running: Running,
) -> None:
    failure = await failure_of(
        running.stub.BatchUpdate(_statements(("SELECT id FROM items", [row()] * 0)))
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["statements[0].sql"]


async def test_last_insert_rowid_is_only_a_rowid_this_insert_made(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    _with_extra_tables(document, tmp_path)
    async with started(tmp_path, document) as running:
        assert (await _insert(running, [row(40, "z", 1), row(41, "a", 1)])).last_insert_rowid == 41
        labels = await running.stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="labels", columns=["name", "n"], rows=[row("x", 1)]
            )
        )
        assert (labels.rows_affected, labels.last_insert_rowid) == (1, 0)
        ignored = await _insert(running, [row(41, "a", 1)], on_conflict=pb.ON_CONFLICT_IGNORE)
        assert (ignored.rows_affected, ignored.last_insert_rowid) == (0, 0)
        upserted = await _insert(
            running,
            [row(42, "a", 9)],
            on_conflict=pb.ON_CONFLICT_UPSERT,
            conflict_columns=["code"],
            update_columns=["qty"],
        )
        assert (upserted.rows_affected, upserted.last_insert_rowid) == (1, 0)
        await running.stub.BatchUpdate(_statements(("DELETE FROM items WHERE id = 41", [])))
        again = await _insert(running, [row(None, "b", 1)])  # the highest rowid is given again
        assert (again.rows_affected, again.last_insert_rowid) == (1, 41)


def _cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "dataaccess"), "--target", f"127.0.0.1:{port}"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_insert_reports_what_was_committed_and_only_real_rowids(
    tmp_path: Path, document: dict[str, Any], service_process: Any
) -> None:
    _with_extra_tables(document, tmp_path)
    port = service_process(document).port
    failing = tmp_path / "failing.csv"
    failing.write_text("id,code,qty\n1,a,1\n2,b,-1\n")
    failed = _cli(port, "insert", "kitchen", "items", str(failing))
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.startswith("error: FAILED_PRECONDITION"), failed.stderr
    assert "inserted" not in failed.stderr  # nothing was committed: no summary
    later = _cli(port, "insert", "kitchen", "items", str(failing), "--batch-size", "1")
    assert later.returncode == 1
    assert "note: committed before the failure: inserted 1 of 1 rows in 1 batch" in later.stderr
    labels = tmp_path / "labels.csv"
    labels.write_text("name,n\nx,1\ny,2\n")
    without_rowid = _cli(port, "--json", "insert", "kitchen", "labels", str(labels))
    assert without_rowid.returncode == 0, without_rowid.stderr
    answer = json.loads(without_rowid.stdout)
    assert answer["rows_affected"] == 2 and "last_insert_rowid" not in answer
    items = tmp_path / "items.csv"
    items.write_text("id,code,qty\n7,g,1\n")
    with_rowid = _cli(port, "--json", "insert", "kitchen", "items", str(items))
    assert json.loads(with_rowid.stdout)["last_insert_rowid"] == 7
