"""The contract on both engines: reads, the three write RPCs' semantics and atomicity,
and every row of the status table a caller can reach with bad input."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc

from dataaccess.v1 import data_access_pb2 as pb
from service.consistency import positions
from tests.conftest import KITCHEN_MIGRATIONS, Running, failure_of, plain_rows, row, started, value
from tests.engines.conftest import Engine


async def test_a_read_answers_rows_columns_and_its_tags(served: Running, engine: Engine) -> None:
    answer = await served.stub.Query(
        pb.QueryRequest(
            database="kitchen",
            sql=f"SELECT id, name FROM parents WHERE id >= {engine.p(1)} ORDER BY id",
            params=[value(1)],
        )
    )
    assert plain_rows(answer) == [(1, "one"), (2, "two")]
    assert [c.name for c in answer.columns] == ["id", "name"]
    assert "table:kitchen.parents" in answer.tags
    assert answer.cache_status == pb.CACHE_STATUS_MISS
    again = await served.stub.Query(
        pb.QueryRequest(
            database="kitchen",
            sql=f"SELECT id, name FROM parents WHERE id >= {engine.p(1)} ORDER BY id",
            params=[value(1)],
        )
    )
    assert again.cache_status == pb.CACHE_STATUS_HIT_LOCAL


async def test_values_of_every_storage_class_round_trip(served: Running, engine: Engine) -> None:
    stub = served.stub
    await stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen",
            table="items",
            columns=["id", "parent_id", "i", "r", "t", "b"],
            rows=[
                row(1, 1, 2**62, 1.5, "tab\tand\nnewline \\ é", b"\x00\xff"),
                row(2, None, None, None, None, None),
            ],
        )
    )
    answer = await stub.Query(
        pb.QueryRequest(database="kitchen", sql="SELECT id, i, r, t, b FROM items ORDER BY id")
    )
    assert plain_rows(answer) == [
        (1, 2**62, 1.5, "tab\tand\nnewline \\ é", b"\x00\xff"),
        (2, None, None, None, None),
    ]


async def test_batch_insert_conflict_modes(served: Running, engine: Engine) -> None:
    stub = served.stub

    def insert(rows: list[pb.Row], **options: Any) -> Any:
        return stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="items", columns=["id", "t"], rows=rows, **options
            )
        )

    await insert([row(1, "a"), row(2, "b")])
    duplicate = await failure_of(insert([row(3, "c"), row(1, "again")]))
    assert duplicate.code == grpc.StatusCode.ALREADY_EXISTS
    ignored = await insert([row(1, "x"), row(3, "c")], on_conflict=pb.ON_CONFLICT_IGNORE)
    assert ignored.rows_affected == 1
    await insert(
        [row(1, "first"), row(4, "d"), row(1, "last")],
        on_conflict=pb.ON_CONFLICT_UPSERT,
        conflict_columns=["id"],
    )
    answer = await stub.Query(
        pb.QueryRequest(database="kitchen", sql="SELECT id, t FROM items ORDER BY id")
    )
    assert plain_rows(answer) == [(1, "last"), (2, "b"), (3, "c"), (4, "d")]


async def test_replace_is_answered_on_postgresql_and_runs_on_sqlite(
    served: Running, engine: Engine
) -> None:
    request = pb.BatchInsertRequest(
        database="kitchen",
        table="items",
        columns=["id", "t"],
        rows=[row(1, "a")],
        on_conflict=pb.ON_CONFLICT_REPLACE,
    )
    if not engine.postgres:
        assert (await served.stub.BatchInsert(request)).rows_affected == 1
        return
    refused = await failure_of(served.stub.BatchInsert(request))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "UPSERT" in refused.details and refused.fields == ["on_conflict"]
    assert await engine.direct("SELECT count(*) FROM items") == [(0,)]


async def test_a_write_rpc_is_all_or_nothing(served: Running, engine: Engine) -> None:
    stub = served.stub
    p = engine.p
    failed = await failure_of(
        stub.BatchUpdate(
            pb.BatchUpdateRequest(
                database="kitchen",
                statements=[
                    pb.Statement(
                        sql=f"INSERT INTO items (id, t) VALUES ({p(1)}, {p(2)})",
                        param_sets=[row(1, "a"), row(2, "b")],
                    ),
                    pb.Statement(
                        sql=f"INSERT INTO items (id, qty) VALUES ({p(1)}, {p(2)})",
                        param_sets=[row(3, -1)],  # CHECK (qty >= 0)
                    ),
                ],
            )
        )
    )
    assert failed.code == grpc.StatusCode.FAILED_PRECONDITION
    bad_row = await failure_of(
        stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen",
                table="items",
                columns=["id", "parent_id"],
                rows=[row(5, 1), row(6, 999)],  # no parent 999
            )
        )
    )
    assert bad_row.code == grpc.StatusCode.FAILED_PRECONDITION
    assert await engine.direct("SELECT count(*) FROM items") == [(0,)]
    done = await stub.BatchUpdate(
        pb.BatchUpdateRequest(
            database="kitchen",
            statements=[
                pb.Statement(
                    sql=f"INSERT INTO items (id, t) VALUES ({p(1)}, {p(2)})",
                    param_sets=[row(1, "a"), row(2, "b")],
                ),
                pb.Statement(sql=f"UPDATE items SET qty = {p(1)}", param_sets=[row(7)]),
            ],
        )
    )
    assert list(done.rows_affected) == [2, 2]
    assert "table:kitchen.items" in done.invalidated_tags


async def test_bad_input_gets_its_status_and_harms_nothing(served: Running, engine: Engine) -> None:
    stub = served.stub
    p = engine.p

    async def query(sql: str, *params: object) -> grpc.StatusCode:
        request = pb.QueryRequest(database="kitchen", sql=sql, params=[value(v) for v in params])
        return (await failure_of(stub.Query(request))).code

    assert await query("SELECT * FROM nope") == grpc.StatusCode.NOT_FOUND
    assert await query("SELECT nope FROM parents") == grpc.StatusCode.NOT_FOUND
    assert await query("SELEC 1") == grpc.StatusCode.INVALID_ARGUMENT
    assert await query(f"SELECT {p(1)} + 1") == grpc.StatusCode.INVALID_ARGUMENT  # no value
    assert await query("SELECT * FROM secrets") == grpc.StatusCode.PERMISSION_DENIED
    assert await query("DELETE FROM parents") in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await query("DROP TABLE parents") in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    bad_update = await failure_of(
        stub.BatchUpdate(
            pb.BatchUpdateRequest(
                database="kitchen", statements=[pb.Statement(sql="DROP TABLE parents")]
            )
        )
    )
    assert bad_update.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    secret_write = await failure_of(
        stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="secrets", columns=["id", "value"], rows=[row(2, "x")]
            )
        )
    )
    assert secret_write.code == grpc.StatusCode.PERMISSION_DENIED
    assert await engine.direct("SELECT count(*) FROM parents") == [(2,)]
    assert await engine.direct("SELECT count(*) FROM secrets") == [(1,)]


async def test_postgresql_takes_positional_parameters_only(served: Running, engine: Engine) -> None:
    request = pb.QueryRequest(
        database="kitchen",
        sql="SELECT name FROM parents WHERE id = :id",
        named_params={"id": value(1)},
    )
    if not engine.postgres:
        assert plain_rows(await served.stub.Query(request)) == [("one",)]
        return
    refused = await failure_of(served.stub.Query(request))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_deadline_interrupts_a_long_query(served: Running, engine: Engine) -> None:
    slow = (
        "SELECT count(*) FROM generate_series(1, 1000000000)"
        if engine.postgres
        else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
        " WHERE x < 1000000000) SELECT count(*) FROM c"
    )
    started = time.monotonic()
    failed = await failure_of(
        served.stub.Query(
            pb.QueryRequest(
                database="kitchen", sql=slow, cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)
            ),
            timeout=0.3,
        )
    )
    assert failed.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5
    await asyncio.sleep(0.2)
    # The database is free again: the next read answers at once.
    answer = await served.stub.Query(
        pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM parents"), timeout=5
    )
    assert plain_rows(answer) == [(2,)]
    if engine.postgres:  # the backend's query was cancelled, not left running
        running = await engine.direct(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%generate_series%'"
            " AND state = 'active' AND pid <> pg_backend_pid()"
        )
        assert running == [(0,)]


async def test_an_idempotent_retry_writes_once(served: Running, engine: Engine) -> None:
    request = pb.BatchInsertRequest(
        database="kitchen",
        table="items",
        columns=["id", "t"],
        rows=[row(1, "a"), row(2, "b")],
        idempotency_key="retry-1",
    )
    first, second = await asyncio.gather(
        served.stub.BatchInsert(request), served.stub.BatchInsert(request)
    )
    assert first.rows_affected == second.rows_affected == 2
    assert await engine.direct("SELECT count(*) FROM items") == [(2,)]
    # The replayed answer's token is at or past the write's own commit, so a read carrying
    # it is never answered by a replica that lacks the write.
    replay = await served.stub.BatchInsert(request)
    newest = max(
        positions(first.consistency_token)["kitchen"],
        positions(second.consistency_token)["kitchen"],
    )
    assert positions(replay.consistency_token)["kitchen"] >= newest > 0
    other = pb.BatchInsertRequest(
        database="kitchen", table="items", columns=["id"], rows=[row(9)], idempotency_key="retry-1"
    )
    reused = await failure_of(served.stub.BatchInsert(other))
    assert reused.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stream_sends_every_row_in_bounded_chunks(served: Running, engine: Engine) -> None:
    rows = [row(n, f"t{n}") for n in range(1, 3001)]
    await served.stub.BatchInsert(
        pb.BatchInsertRequest(database="kitchen", table="items", columns=["id", "t"], rows=rows)
    )
    seen = []
    chunks = 0
    async for chunk in served.stub.QueryStream(
        pb.QueryRequest(database="kitchen", sql="SELECT id FROM items ORDER BY id")
    ):
        chunks += 1
        seen += [r[0] for r in plain_rows(chunk)]
    assert seen == list(range(1, 3001))
    assert chunks >= 3


async def test_a_group_mixing_engines_answers_one_merged_query(
    tmp_path: object, engine: Engine
) -> None:
    from pathlib import Path

    from tests.conftest import started

    document = engine.document()
    document["databases"].append(
        {
            "name": "kitchen_file",
            "path": "kitchen_file.db",
            "migrations": str(Path(__file__).resolve().parents[1] / "fixtures/migrations/kitchen"),
        }
    )
    document["groups"] = [{"name": "both", "members": ["kitchen", "kitchen_file"]}]
    assert isinstance(tmp_path, Path)
    async with started(tmp_path, document) as server:
        for database, ids in (("kitchen", [1, 3]), ("kitchen_file", [2, 4])):
            await server.stub.BatchInsert(
                pb.BatchInsertRequest(
                    database=database,
                    table="items",
                    columns=["id", "i"],
                    rows=[row(i, i * 10) for i in ids],
                )
            )
        answer = await server.stub.Query(
            pb.QueryRequest(
                database="both",
                sql="SELECT id, i FROM items",
                merge=pb.Merge(order_by="id DESC", limit=3),
            )
        )
        assert plain_rows(answer) == [(4, 40), (3, 30), (2, 20)]
        assert sorted(answer.databases) == ["kitchen", "kitchen_file"]


async def test_a_routed_group_spans_both_engines(tmp_path: Path, engine: Engine) -> None:
    document = engine.document()
    document["databases"].append(
        {"name": "kitchen_file", "path": "kitchen_file.db", "migrations": str(KITCHEN_MIGRATIONS)}
    )
    document["groups"] = [
        {
            "name": "split",
            "members": ["kitchen", "kitchen_file"],
            "route": {
                "kind": "range",
                "column": "id",
                "bounds": [{"member": "kitchen", "below": 100}, {"member": "kitchen_file"}],
            },
        }
    ]
    async with started(tmp_path, document) as server:
        inserted = await server.stub.BatchInsert(
            pb.BatchInsertRequest(
                database="split",
                table="items",
                columns=["id", "t"],
                rows=[row(5, "low"), row(500, "high")],
            )
        )
        assert inserted.rows_affected == 2
        assert await engine.direct("SELECT id FROM items") == [(5,)]
        for key, member in ((5, "kitchen"), (500, "kitchen_file")):
            answer = await server.stub.Query(
                pb.QueryRequest(database="split", sql="SELECT t FROM items", route_key=value(key))
            )
            assert list(answer.databases) == [member]


async def test_a_cancelled_call_stops_its_query_and_frees_its_reader(
    served: Running, engine: Engine
) -> None:
    slow = (
        "SELECT count(*) FROM generate_series(1, 2000000000)"
        if engine.postgres
        else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
        " WHERE x < 2000000000) SELECT count(*) FROM c"
    )
    call = served.stub.Query(
        pb.QueryRequest(
            database="kitchen", sql=slow, cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)
        ),
        timeout=30,
    )
    waiting = asyncio.ensure_future(call)

    async def readers_in_use() -> int:
        stats = await served.stub.Stats(pb.StatsRequest())
        return next(p.in_use for p in stats.pools if p.database == "kitchen")

    async def running_on_postgresql() -> int:
        rows = await engine.direct(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%2000000000%'"
            " AND state = 'active' AND pid <> pg_backend_pid()"
        )
        return int(rows[0][0])

    for _ in range(100):  # until the query runs: bounded, 2 s
        if await readers_in_use() >= 1 and (not engine.postgres or await running_on_postgresql()):
            break
        await asyncio.sleep(0.02)
    assert await readers_in_use() >= 1  # (a health probe may hold another for a moment)
    if engine.postgres:
        assert await running_on_postgresql() == 1
    call.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    for _ in range(100):  # bounded: 2 s
        if await readers_in_use() == 0 and (
            not engine.postgres or not await running_on_postgresql()
        ):
            break
        await asyncio.sleep(0.02)
    assert await readers_in_use() == 0
    if engine.postgres:  # the backend's query was cancelled, not left running
        assert await running_on_postgresql() == 0


async def test_invalidate_drops_what_it_names_on_either_engine(
    served: Running, engine: Engine
) -> None:
    stub = served.stub
    await stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen", table="items", columns=["id", "t"], rows=[row(1, "a"), row(2, "b")]
        )
    )
    keyed = pb.QueryRequest(
        database="kitchen", sql=f"SELECT t FROM items WHERE id = {engine.p(1)}", params=[value(1)]
    )
    mine = pb.QueryRequest(
        database="kitchen", sql="SELECT count(*) FROM parents", cache=pb.CacheOptions(tags=["mine"])
    )
    for request in (keyed, mine):
        await stub.Query(request)
        assert (await stub.Query(request)).cache_status == pb.CACHE_STATUS_HIT_LOCAL
    # A table's tag takes its keyed entries with it.
    await stub.Invalidate(pb.InvalidateRequest(tags=["table:kitchen.items"]))
    assert (await stub.Query(keyed)).cache_status == pb.CACHE_STATUS_MISS
    assert (await stub.Query(mine)).cache_status == pb.CACHE_STATUS_HIT_LOCAL
    await stub.Invalidate(pb.InvalidateRequest(tags=["mine"]))
    assert (await stub.Query(mine)).cache_status == pb.CACHE_STATUS_MISS
    await stub.Invalidate(pb.InvalidateRequest(databases=["kitchen"]))
    assert (await stub.Query(keyed)).cache_status == pb.CACHE_STATUS_MISS


async def test_results_over_the_limits_are_cut_or_refused(tmp_path: Path, engine: Engine) -> None:
    document = engine.document()
    document["limits"] |= {"max_rows": 50, "max_result_bytes": 20_000}
    async with started(tmp_path, document) as server:
        stub = server.stub
        await stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen",
                table="items",
                columns=["id", "t"],
                rows=[row(n, "x" * 100) for n in range(1, 201)],
            )
        )
        cut = await stub.Query(
            pb.QueryRequest(database="kitchen", sql="SELECT id FROM items ORDER BY id", max_rows=10)
        )
        assert [r[0] for r in plain_rows(cut)] == list(range(1, 11)) and cut.truncated
        too_many = await failure_of(
            stub.Query(pb.QueryRequest(database="kitchen", sql="SELECT id FROM items"))
        )
        assert too_many.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        too_big = await failure_of(
            stub.Query(
                pb.QueryRequest(
                    database="kitchen",
                    sql="SELECT t, t AS u, t AS v, t AS w FROM items",
                    max_rows=50,
                )
            )
        )
        assert too_big.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        streamed = 0
        async for chunk in stub.QueryStream(
            pb.QueryRequest(database="kitchen", sql="SELECT id FROM items", max_rows=120)
        ):
            streamed += len(chunk.rows)
        assert streamed == 120


async def test_a_bad_value_names_the_parameter_field(served: Running, engine: Engine) -> None:
    wrong_type = await failure_of(
        served.stub.Query(
            pb.QueryRequest(
                database="kitchen",
                sql=f"SELECT name FROM parents WHERE id = {engine.p(1)}",
                params=[pb.Value()],  # no kind set
            )
        )
    )
    assert wrong_type.code == grpc.StatusCode.INVALID_ARGUMENT
    assert wrong_type.fields and wrong_type.fields[0].startswith("params")
