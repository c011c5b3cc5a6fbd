"""Groups: fan-out, concatenation, ordered merge, re-aggregation and route_key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from service.domain import MergeSpec
from service.routing.merge import merge_rows
from service.values import SqlRow
from tests.conftest import failure_of, plain_rows, row, started, value


def _with_history(document: dict[str, Any]) -> dict[str, Any]:
    document["groups"] = [
        {
            "name": "history",
            "members": ["archive", "live"],
            "route": {
                "kind": "range",
                "column": "day",
                "bounds": [{"member": "archive", "below": "2026-01-01"}, {"member": "live"}],
            },
        },
        {
            "name": "spread",
            "members": ["archive", "live"],
            "route": {"kind": "hash"},
        },
        {"name": "with_kitchen", "members": ["live", "kitchen"]},
    ]
    return document


@pytest.fixture
async def grouped(tmp_path: Path, document: dict[str, Any]) -> Any:
    async with started(tmp_path, _with_history(document)) as running:
        yield running


async def test_group_query_concatenates_members(grouped: Any) -> None:
    response = await grouped.stub.Query(
        pb.QueryRequest(database="history", sql="SELECT count(*) FROM production_runs")
    )
    assert plain_rows(response) == [(90 * 12,), (60 * 12,)]
    assert list(response.databases) == ["archive", "live"]
    assert {"table:archive.production_runs", "table:live.production_runs"} <= set(response.tags)


async def test_group_query_merges_by_order_and_cuts_at_limit(grouped: Any) -> None:
    sql = (
        "SELECT day, line, shift FROM production_runs "
        "WHERE line = 'L1' AND shift = 1 ORDER BY day DESC"
    )
    response = await grouped.stub.Query(
        pb.QueryRequest(database="history", sql=sql, merge=pb.Merge(order_by="day DESC", limit=70))
    )
    days = [r[0] for r in plain_rows(response)]
    assert len(days) == 70
    assert days == sorted(days, reverse=True)
    assert days[0] == "2026-03-01" and days[59] == "2026-01-01" and days[60] == "2025-12-31"


async def test_group_query_reaggregates_partial_aggregates(grouped: Any) -> None:
    sql = (
        "SELECT line, sum(units_produced) AS units, count(*) AS runs, min(day) AS first, "
        "max(day) AS last FROM production_runs GROUP BY line"
    )
    merge = pb.Merge(
        group_by=["line"],
        order_by="line",
        aggregates=[
            pb.Aggregate(column="units", function=pb.AGGREGATE_FUNCTION_SUM),
            pb.Aggregate(column="runs", function=pb.AGGREGATE_FUNCTION_COUNT),
            pb.Aggregate(column="first", function=pb.AGGREGATE_FUNCTION_MIN),
            pb.Aggregate(column="last", function=pb.AGGREGATE_FUNCTION_MAX),
        ],
    )
    response = await grouped.stub.Query(pb.QueryRequest(database="history", sql=sql, merge=merge))
    expected = []
    for line in ("L1", "L2", "L3", "L4"):
        units = 0
        for database in ("archive", "live"):
            with grouped.sqlite(database) as conn:
                units += conn.execute(
                    "SELECT sum(units_produced) FROM production_runs WHERE line = ?", (line,)
                ).fetchone()[0]
        expected.append((line, units, 150 * 3, "2025-10-03", "2026-03-01"))
    assert plain_rows(response) == expected


async def test_route_key_picks_each_member(grouped: Any) -> None:
    sql = "SELECT min(day) FROM production_runs"
    for key, member in (("2025-11-11", "archive"), ("2026-02-02", "live")):
        response = await grouped.stub.Query(
            pb.QueryRequest(database="history", sql=sql, route_key=value(key))
        )
        assert list(response.databases) == [member]
    hashed = set()
    for number in range(40):
        response = await grouped.stub.Query(
            pb.QueryRequest(database="spread", sql="SELECT 1", route_key=value(number))
        )
        hashed.add(response.databases[0])
    assert hashed == {"archive", "live"}


async def test_insert_into_a_group_routes_each_row(grouped: Any) -> None:
    response = await grouped.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="history",
            table="production_runs",
            columns=["day", "line", "shift", "sku"],
            rows=[row("2025-01-01", "L9", 1, "BRK-100"), row("2026-06-01", "L9", 1, "BRK-100")],
        )
    )
    assert response.rows_affected == 2
    for database in ("archive", "live"):
        with grouped.sqlite(database) as conn:
            assert conn.execute(
                "SELECT count(*) FROM production_runs WHERE line = 'L9'"
            ).fetchone() == (1,)


async def test_an_empty_insert_into_a_group_writes_nothing_and_says_so(grouped: Any) -> None:
    response = await grouped.stub.BatchInsert(  # was INTERNAL: no member had rows to answer
        pb.BatchInsertRequest(
            database="history", table="production_runs", columns=["day", "line"], rows=[]
        )
    )
    assert (response.rows_affected, list(response.invalidated_tags)) == (0, [])


async def test_member_missing_the_table_fails_not_found_naming_it(grouped: Any) -> None:
    failure = await failure_of(
        grouped.stub.Query(pb.QueryRequest(database="with_kitchen", sql="SELECT * FROM products"))
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert "kitchen" in failure.details


def test_merge_orders_across_storage_classes_and_directions() -> None:
    parts: list[list[SqlRow]] = [[(None, 2), (1, 1), ("a", 3)], [(0.5, 9), (2, 0), (b"z", 1)]]
    merged = merge_rows(["k", "v"], parts, MergeSpec(order_by="k"))
    assert [r[0] for r in merged] == [None, 0.5, 1, 2, "a", b"z"]
    mixed = merge_rows(
        ["k", "v"], [[(1, 1), (1, 2)], [(0, 5), (1, 0)]], MergeSpec(order_by="k DESC, v")
    )
    assert mixed == [(1, 0), (1, 1), (1, 2), (0, 5)]
