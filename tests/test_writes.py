"""BatchInsert and BatchUpdate: atomic, checked against the schema, committed in groups."""

from __future__ import annotations

import asyncio

import grpc

from dataaccess_client.v1 import data_access_pb2 as pb
from tests.conftest import Running, failure_of, plain_rows, row


def _items(running: Running) -> list[tuple[object, ...]]:
    with running.sqlite("kitchen") as conn:
        return conn.execute("SELECT id, code, qty FROM items ORDER BY id").fetchall()


def _insert(running: Running, rows: list[pb.Row], **kwargs: object) -> object:
    return running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen", table="items", columns=["id", "code", "qty"], rows=rows, **kwargs
        )
    )


async def test_batch_insert_reports_rows_rowid_and_tags(running: Running) -> None:
    response = await _insert(running, [row(1, "a", 1), row(2, "b", 2)], invalidate_tags=["extra"])
    assert response.rows_affected == 2
    assert response.last_insert_rowid == 2
    assert list(response.invalidated_tags) == ["table:kitchen.items", "extra"]
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
