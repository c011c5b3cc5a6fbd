"""Every row of the contract's status table, produced by a real request."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import grpc

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, failure_of, row, sqlite_database, started, value

SLOW_SQL = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
    "SELECT count(*) FROM c"
)


async def test_unknown_database_table_and_column_are_not_found(running: Running) -> None:
    stub = running.stub
    cases = [
        stub.Query(pb.QueryRequest(database="nope", sql="SELECT 1")),
        stub.Query(pb.QueryRequest(database="live", sql="SELECT * FROM nope")),
        stub.Query(pb.QueryRequest(database="live", sql="SELECT nope FROM products")),
        stub.BatchInsert(pb.BatchInsertRequest(database="nope", table="t", columns=["a"])),
        stub.BatchInsert(
            pb.BatchInsertRequest(database="kitchen", table="nope", columns=["a"], rows=[row(1)])
        ),
        stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="items", columns=["nope"], rows=[row(1)]
            )
        ),
        stub.BatchUpdate(
            pb.BatchUpdateRequest(
                database="kitchen", statements=[pb.Statement(sql="UPDATE nope SET a = 1")]
            )
        ),
    ]
    for call in cases:
        assert (await failure_of(call)).code == grpc.StatusCode.NOT_FOUND


async def test_bad_sql_parameters_and_values_are_invalid_with_the_field_named(
    running: Running,
) -> None:
    stub = running.stub
    syntax = await failure_of(stub.Query(pb.QueryRequest(database="live", sql="SELEC 1")))
    assert syntax.code == grpc.StatusCode.INVALID_ARGUMENT
    assert syntax.fields == ["sql"] or syntax.fields == [""]

    count = await failure_of(
        stub.Query(pb.QueryRequest(database="live", sql="SELECT ?, ?", params=[value(1)]))
    )
    assert count.code == grpc.StatusCode.INVALID_ARGUMENT

    empty_value = await failure_of(
        stub.Query(pb.QueryRequest(database="live", sql="SELECT ?", params=[pb.Value()]))
    )
    assert empty_value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert empty_value.fields == ["params[0]"]

    nan = await failure_of(
        stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="items", columns=["r"], rows=[row(1.0), row(float("nan"))]
            )
        )
    )
    assert nan.code == grpc.StatusCode.INVALID_ARGUMENT
    assert nan.fields == ["rows[1].values[0]"]

    width = await failure_of(
        stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="items", columns=["i", "t"], rows=[row(1)]
            )
        )
    )
    assert width.fields == ["rows[0]"]


async def test_refusals_are_permission_denied(running: Running) -> None:
    stub = running.stub
    for sql in ("DELETE FROM items", "SELECT * FROM secrets", "ATTACH 'x.db' AS x"):
        failure = await failure_of(stub.Query(pb.QueryRequest(database="kitchen", sql=sql)))
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED, sql
    ddl = await failure_of(
        stub.BatchUpdate(
            pb.BatchUpdateRequest(
                database="kitchen", statements=[pb.Statement(sql="DROP TABLE items")]
            )
        )
    )
    assert ddl.code == grpc.StatusCode.PERMISSION_DENIED
    outside = await failure_of(
        stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="secrets", columns=["value"], rows=[row("x")]
            )
        )
    )
    assert outside.code == grpc.StatusCode.PERMISSION_DENIED


async def test_unique_violation_is_already_exists_and_other_constraints_failed_precondition(
    running: Running,
) -> None:
    stub = running.stub

    def insert(
        columns: list[str], *values: object
    ) -> grpc.aio.UnaryUnaryCall[pb.BatchInsertRequest, pb.BatchInsertResponse]:
        return stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="items", columns=columns, rows=[row(*values)]
            )
        )

    await insert(["code", "qty"], "A", 1)
    assert (
        await failure_of(insert(["code", "qty"], "A", 2))
    ).code == grpc.StatusCode.ALREADY_EXISTS
    assert (await failure_of(insert(["id", "qty"], 1, 2))).code == grpc.StatusCode.ALREADY_EXISTS
    for failing in (insert(["parent_id"], 99), insert(["qty"], None), insert(["qty"], -1)):
        assert (await failure_of(failing)).code == grpc.StatusCode.FAILED_PRECONDITION


async def test_deadline_interrupts_the_query_and_the_reader_stays_usable(
    tmp_path, document
) -> None:
    document["limits"] = {"readers_per_database": 1}
    async with started(tmp_path, document) as running:
        started_at = time.monotonic()
        failure = await failure_of(
            running.stub.Query(pb.QueryRequest(database="live", sql=SLOW_SQL), timeout=0.3)
        )
        assert failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started_at < 1.0
        # The one reader was interrupted, not left running: the next query gets it at once.
        response = await running.stub.Query(
            pb.QueryRequest(database="live", sql="SELECT 7"), timeout=2
        )
        assert response.rows[0].values[0].integer == 7


async def test_server_side_deadline_past_the_limit_is_deadline_exceeded(tmp_path, document) -> None:
    document["limits"] = {"default_deadline_seconds": 0.3}
    async with started(tmp_path, document) as running:
        failure = await failure_of(
            running.stub.Query(pb.QueryRequest(database="live", sql=SLOW_SQL))
        )
    assert failure.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_results_over_the_limits_are_resource_exhausted(tmp_path, document) -> None:
    document["limits"] = {"max_rows": 50, "max_result_bytes": 100_000, "max_message_bytes": 200_000}
    async with started(tmp_path, document) as running:
        stub = running.stub
        rows = await failure_of(
            stub.Query(pb.QueryRequest(database="live", sql="SELECT * FROM production_runs"))
        )
        assert rows.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "QueryStream" in rows.details
        size = await failure_of(
            stub.Query(pb.QueryRequest(database="live", sql="SELECT zeroblob(150000)"))
        )
        assert size.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        message = await failure_of(
            stub.Query(
                pb.QueryRequest(database="live", sql="SELECT ?", params=[value("x" * 300_000)])
            )
        )
        assert message.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_pool_exhausted_past_its_timeout_is_resource_exhausted(tmp_path, document) -> None:
    document["limits"] = {"readers_per_database": 1, "acquire_timeout_seconds": 0.2}
    async with started(tmp_path, document) as running:
        slow = asyncio.ensure_future(
            running.stub.Query(pb.QueryRequest(database="live", sql=SLOW_SQL), timeout=2)
        )
        await asyncio.sleep(0.2)
        waiting = await failure_of(
            running.stub.Query(pb.QueryRequest(database="live", sql="SELECT 1"))
        )
        assert waiting.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await failure_of(slow)).code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_locked_database_past_busy_timeout_is_unavailable(tmp_path, document) -> None:
    document["sqlite"] = {"busy_timeout_ms": 100}
    async with started(tmp_path, document) as running:
        blocker = sqlite3.connect(running.data_dir / "kitchen.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            failure = await failure_of(
                running.stub.BatchInsert(
                    pb.BatchInsertRequest(
                        database="kitchen", table="items", columns=["qty"], rows=[row(1)]
                    )
                )
            )
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert failure.code == grpc.StatusCode.UNAVAILABLE
        # Once the lock is gone the same write goes through.
        await running.stub.BatchInsert(
            pb.BatchInsertRequest(database="kitchen", table="items", columns=["qty"], rows=[row(1)])
        )


async def test_disk_full_is_resource_exhausted_with_nothing_half_written(
    tmp_path, document
) -> None:
    # Every database opens within 60 pages (archive takes about 40); the rows need ~75 more.
    document["sqlite"] = {"max_page_count": 60}
    async with started(tmp_path, document) as running:
        rows = [row(i, b"\x01" * 3000) for i in range(100)]
        failure = await failure_of(
            running.stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen", table="items", columns=["qty", "b"], rows=rows
                )
            )
        )
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with running.sqlite("kitchen") as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)


async def test_corrupt_database_is_data_loss_and_the_others_keep_serving(
    tmp_path, document
) -> None:
    data_dir = Path(document["data_dir"])
    data_dir.mkdir(parents=True)
    (data_dir / "archive.db").write_bytes(b"this is not a database" * 500)
    async with started(tmp_path, document) as running:
        failure = await failure_of(
            running.stub.Query(pb.QueryRequest(database="archive", sql="SELECT 1"))
        )
        assert failure.code == grpc.StatusCode.DATA_LOSS
        response = await running.stub.Query(pb.QueryRequest(database="live", sql="SELECT 1"))
        assert response.rows[0].values[0].integer == 1
        health = await running.stub.Health(pb.HealthRequest())
        assert health.status == pb.HEALTH_STATUS_DEGRADED
        statuses = {c.name: c.status for c in health.checks}
        assert statuses["database:archive"] == pb.HEALTH_STATUS_CRITICAL
        assert statuses["database:live"] == pb.HEALTH_STATUS_HEALTHY


async def test_shutting_down_is_unavailable(running: Running) -> None:
    database = sqlite_database(running.server, "kitchen")
    await database.writer.close()
    failure = await failure_of(
        running.stub.BatchInsert(
            pb.BatchInsertRequest(database="kitchen", table="items", columns=["qty"], rows=[row(1)])
        )
    )
    assert failure.code == grpc.StatusCode.UNAVAILABLE
