"""Query and QueryStream through the generated stub: values, guards, limits."""

from __future__ import annotations

import sys
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, failure_of, plain_rows, row, started, value

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SAMPLES: list[Any] = [
    None,
    0,
    INT64_MIN,
    INT64_MAX,
    -1,
    0.0,
    -0.0,
    1.5,
    sys.float_info.max,
    sys.float_info.min,
    5e-324,
    float("inf"),
    float("-inf"),
    "",
    "plain",
    "ünïcødé ✓ 漢字 🚀",
    "nul\x00inside",
    b"",
    bytes(range(256)),
    b"\x00\xff" * 1000,
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and str(a) == str(b)  # tells -0.0 from 0.0
    return type(a) is type(b) and a == b


async def test_every_storage_class_round_trips_as_a_parameter(running: Running) -> None:
    for sample in SAMPLES:
        response = await running.stub.Query(
            pb.QueryRequest(database="kitchen", sql="SELECT ?", params=[value(sample)])
        )
        [(got,)] = plain_rows(response)
        assert _same(got, sample), (sample, got)


async def test_every_storage_class_round_trips_through_a_table(running: Running) -> None:
    rows = [row(index, sample) for index, sample in enumerate(SAMPLES, start=100)]
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(database="kitchen", table="items", columns=["id", "n"], rows=rows)
    )
    response = await running.stub.Query(
        pb.QueryRequest(database="kitchen", sql="SELECT n FROM items WHERE id >= 100 ORDER BY id")
    )
    got = [r[0] for r in plain_rows(response)]
    assert len(got) == len(SAMPLES)
    for sample, back in zip(SAMPLES, got, strict=True):
        assert _same(back, sample), (sample, back)


async def test_named_parameters_and_declared_types(running: Running) -> None:
    response = await running.stub.Query(
        pb.QueryRequest(
            database="live",
            sql="SELECT sku, unit_cost, 1 + 1 AS two FROM products WHERE sku = :sku",
            named_params={"sku": value("PMP-310")},
        )
    )
    assert plain_rows(response) == [("PMP-310", 58.0, 2)]
    assert [(c.name, c.decl_type) for c in response.columns] == [
        ("sku", "TEXT"),
        ("unit_cost", "REAL"),
        ("two", ""),
    ]
    assert response.databases == ["live"]
    # read by its sku key only: tagged by that key, not by the whole table
    assert "keys:live.products" in response.tags
    assert [t for t in response.tags if t.startswith("key:live.products.sku=")]
    assert "table:live.products" not in response.tags


async def test_max_rows_truncates(running: Running) -> None:
    response = await running.stub.Query(
        pb.QueryRequest(database="live", sql="SELECT id FROM production_runs", max_rows=5)
    )
    assert len(response.rows) == 5
    assert response.truncated


async def test_result_exactly_max_rows_is_not_truncated(running: Running) -> None:
    response = await running.stub.Query(
        pb.QueryRequest(database="live", sql="SELECT sku FROM products", max_rows=4)
    )
    assert len(response.rows) == 4
    assert not response.truncated


REFUSED = [
    "INSERT INTO items (qty) VALUES (1)",
    "UPDATE items SET qty = 5",
    "DELETE FROM parents",
    "REPLACE INTO parents (id, name) VALUES (1, 'x')",
    "CREATE TABLE evil (x)",
    "DROP TABLE items",
    "ALTER TABLE items ADD COLUMN evil",
    "CREATE INDEX evil ON items (qty)",
    "ATTACH DATABASE 'evil.db' AS evil",
    "DETACH DATABASE main",
    "PRAGMA journal_mode=DELETE",
    "PRAGMA user_version=7",
    "PRAGMA query_only=OFF",
    "SELECT * FROM pragma_table_info('items')",
    "SELECT load_extension('/tmp/evil')",
    "SELECT * FROM secrets",
    "SELECT name FROM sqlite_master",
    "SELECT name FROM sqlite_schema",
    "SELECT 1; DELETE FROM parents",
    "SELECT 1; SELECT 2",
    "BEGIN",
    "VACUUM",
    "WITH x AS (SELECT 1) DELETE FROM parents",
]


@pytest.mark.parametrize("sql", REFUSED)
async def test_query_refuses_writes_and_escapes_and_changes_nothing(
    running: Running, sql: str
) -> None:
    before = _fingerprint(running)
    failure = await failure_of(running.stub.Query(pb.QueryRequest(database="kitchen", sql=sql)))
    assert failure.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    assert _fingerprint(running) == before
    assert not (running.data_dir / "evil.db").exists()


def _fingerprint(running: Running) -> tuple[Any, ...]:
    with running.sqlite("kitchen") as conn:
        return (
            conn.execute("SELECT * FROM parents ORDER BY id").fetchall(),
            conn.execute("SELECT * FROM items ORDER BY id").fetchall(),
            conn.execute("SELECT sql FROM sqlite_schema ORDER BY name").fetchall(),
            conn.execute("PRAGMA user_version").fetchall(),
            conn.execute("PRAGMA journal_mode").fetchall(),
        )


async def test_recursive_cte_and_allowed_functions_work(running: Running) -> None:
    response = await running.stub.Query(
        pb.QueryRequest(
            database="kitchen",
            sql="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) "
            "SELECT sum(x), upper('a'), json_array(1, 2), date('2026-01-31', '+1 day') FROM c",
        )
    )
    assert plain_rows(response) == [(15, "A", "[1,2]", "2026-02-01")]


async def test_query_stream_sends_many_bounded_messages(tmp_path, document) -> None:
    document["limits"] = {"stream_chunk_rows": 1000}
    async with started(tmp_path, document) as running:
        sql = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) "
            "SELECT x, 'row ' || x FROM c"
        )
        messages = [
            m async for m in running.stub.QueryStream(pb.QueryRequest(database="live", sql=sql))
        ]
    assert len(messages) >= 100
    assert [c.name for c in messages[0].columns] == ["x", "'row ' || x"]
    assert all(not m.columns for m in messages[1:])
    assert all(len(m.rows) <= 1000 for m in messages)
    numbers = [r.values[0].integer for m in messages for r in m.rows]
    assert numbers == list(range(1, 100_001))


async def test_query_stream_honours_max_rows(running: Running) -> None:
    request = pb.QueryRequest(
        database="live", sql="SELECT id FROM production_runs ORDER BY id", max_rows=7
    )
    messages = [m async for m in running.stub.QueryStream(request)]
    assert sum(len(m.rows) for m in messages) == 7
    assert messages[-1].truncated


async def test_query_stream_marks_a_cut_at_a_chunk_boundary(tmp_path, document) -> None:
    document["limits"] = {"stream_chunk_rows": 10}
    async with started(tmp_path, document) as running:
        request = pb.QueryRequest(
            database="live", sql="SELECT id FROM production_runs ORDER BY id", max_rows=20
        )
        messages = [m async for m in running.stub.QueryStream(request)]
    assert sum(len(m.rows) for m in messages) == 20
    assert messages[-1].truncated


async def test_query_stream_errors_carry_the_contract_status(running: Running) -> None:
    call = running.stub.QueryStream(pb.QueryRequest(database="live", sql="DELETE FROM products"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [m async for m in call]
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_query_stream_chunks_cut_by_bytes_do_not_end_the_stream(running: Running) -> None:
    sql = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000) "
        "SELECT x, printf('%.2000d', x) FROM c"
    )
    messages = [
        m async for m in running.stub.QueryStream(pb.QueryRequest(database="live", sql=sql))
    ]
    assert sum(len(m.rows) for m in messages) == 3000
    assert not any(m.truncated for m in messages)


def _history(document: dict[str, Any]) -> dict[str, Any]:
    """A group over archive and live, routed by day, with a small chunk size."""
    route = {
        "kind": "range",
        "column": "day",
        "bounds": [{"member": "archive", "below": "2026-01-01"}, {"member": "live"}],
    }
    document["groups"] = [{"name": "history", "members": ["archive", "live"], "route": route}]
    document["limits"] = {"stream_chunk_rows": 100}
    return document


async def test_query_stream_of_a_group_concatenates_its_members(tmp_path, document) -> None:
    async with started(tmp_path, _history(document)) as running:
        sql = "SELECT id, day FROM production_runs ORDER BY id"
        counts = {}
        for name in ("archive", "live"):
            answer = await running.stub.Query(
                pb.QueryRequest(database=name, sql="SELECT count(*) FROM production_runs")
            )
            counts[name] = answer.rows[0].values[0].integer
        messages = [
            m async for m in running.stub.QueryStream(pb.QueryRequest(database="history", sql=sql))
        ]
        assert [c.name for c in messages[0].columns] == ["id", "day"]
        assert all(not m.columns for m in messages[1:])
        assert all(len(m.rows) <= 100 for m in messages)
        answered = [list(m.databases) for m in messages if m.rows]
        assert answered[0] == ["archive"] and answered[-1] == ["live"]
        assert sum(len(m.rows) for m in messages) == counts["archive"] + counts["live"]
        assert {t for m in messages for t in m.tags} >= {
            "table:archive.production_runs",
            "table:live.production_runs",
        }
        # max_rows cuts across the members, marked on the last message.
        cut = pb.QueryRequest(database="history", sql=sql, max_rows=counts["archive"] + 5)
        messages = [m async for m in running.stub.QueryStream(cut)]
        assert sum(len(m.rows) for m in messages) == counts["archive"] + 5
        assert messages[-1].truncated and list(messages[-1].databases) == ["live"]
        # route_key picks one member.
        routed = pb.QueryRequest(database="history", sql=sql, route_key=pb.Value(text="2020-01-01"))
        messages = [m async for m in running.stub.QueryStream(routed)]
        assert {d for m in messages for d in m.databases} == {"archive"}
        assert sum(len(m.rows) for m in messages) == counts["archive"]


async def test_query_stream_of_a_group_refuses_a_merge(tmp_path, document) -> None:
    async with started(tmp_path, _history(document)) as running:
        merged = pb.QueryRequest(
            database="history",
            sql="SELECT id FROM production_runs",
            merge=pb.Merge(order_by="id", limit=3),
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [m async for m in running.stub.QueryStream(merged)]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "merging them is Query's" in (caught.value.details() or "")
