"""The in-process cache tier: tag tokens from the authorizer, bumps on commit, single flight."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, base_document, failure_of, plain_rows, row, started

COUNT_ITEMS = "SELECT count(*) FROM items"
STATUS = {
    pb.CACHE_STATUS_MISS: "miss",
    pb.CACHE_STATUS_HIT_LOCAL: "hit_local",
    pb.CACHE_STATUS_BYPASS: "bypass",
}


@pytest.fixture
def document(tmp_path: Path) -> dict[str, Any]:
    """The default config with the check for other processes' commits off.

    Rows written here behind the service's back stand for an entry gone
    stale; that check (tested on its own) would drop them within its period.
    """
    return {**base_document(tmp_path / "data"), "sqlite": {"outside_writes_check_seconds": 0}}


async def _read(running: Running, sql: str = COUNT_ITEMS, **kwargs: Any) -> tuple[Any, str]:
    response = await running.stub.Query(pb.QueryRequest(database="kitchen", sql=sql, **kwargs))
    return plain_rows(response), STATUS[response.cache_status]


async def _insert(running: Running, table: str, columns: list[str], *values: Any) -> None:
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(database="kitchen", table=table, columns=columns, rows=[row(*values)])
    )


async def test_miss_hit_then_a_write_to_the_table_makes_a_fresh_miss(running: Running) -> None:
    assert await _read(running) == ([(0,)], "miss")
    assert await _read(running) == ([(0,)], "hit_local")
    # parents is left out: items cascades from it, so a parents write bumps items too
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="live",
            table="products",
            columns=["sku", "name", "unit_cost"],
            rows=[row("Z", "z", 1.0)],
        )
    )  # another database
    assert await _read(running) == ([(0,)], "hit_local")
    await _insert(running, "items", ["qty"], 1)
    assert await _read(running) == ([(1,)], "miss")


async def test_tags_come_from_the_authorizer(running: Running) -> None:
    response = await running.stub.Query(
        pb.QueryRequest(
            database="kitchen",
            sql="SELECT p.name FROM parents p WHERE p.id IN (SELECT parent_id FROM items)",
            cache=pb.CacheOptions(tags=["mine"]),
        )
    )
    assert {"table:kitchen.parents", "table:kitchen.items", "mine"} <= set(response.tags)


async def test_a_change_behind_the_service_stays_cached_until_invalidated(running: Running) -> None:
    await _read(running)
    with sqlite3.connect(running.data_dir / "kitchen.db") as conn:
        conn.execute("INSERT INTO items (qty) VALUES (5)")
    assert await _read(running) == ([(0,)], "hit_local")
    answer = await running.stub.Invalidate(pb.InvalidateRequest(tags=["table:kitchen.items"]))
    # the table's keyed reads go with it
    assert list(answer.invalidated_tags) == ["table:kitchen.items", "keys:kitchen.items"]
    assert await _read(running) == ([(1,)], "miss")
    with sqlite3.connect(running.data_dir / "kitchen.db") as conn:
        conn.execute("INSERT INTO items (qty) VALUES (5)")
    await running.stub.Invalidate(pb.InvalidateRequest(databases=["kitchen"]))
    assert await _read(running) == ([(2,)], "miss")
    with sqlite3.connect(running.data_dir / "kitchen.db") as conn:
        conn.execute("INSERT INTO items (qty) VALUES (5)")
    await running.stub.Invalidate(pb.InvalidateRequest(all=True))
    assert await _read(running) == ([(3,)], "miss")


async def test_foreign_key_cascades_invalidate_the_child_table(running: Running) -> None:
    await _insert(running, "items", ["parent_id", "qty"], 1, 1)
    assert (await _read(running))[0] == [(1,)]
    await running.stub.BatchUpdate(
        pb.BatchUpdateRequest(
            database="kitchen", statements=[pb.Statement(sql="DELETE FROM parents WHERE id = 1")]
        )
    )
    assert await _read(running) == ([(0,)], "miss")


async def test_empty_results_are_cached_and_invalidated(running: Running) -> None:
    sql = "SELECT id FROM items WHERE qty > 100"
    assert await _read(running, sql) == ([], "miss")
    assert await _read(running, sql) == ([], "hit_local")
    await _insert(running, "items", ["qty"], 500)
    assert (await _read(running, sql))[1] == "miss"


async def test_bypass_and_refresh(running: Running) -> None:
    await _read(running)
    bypass = pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)
    assert (await _read(running, cache=bypass))[1] == "bypass"
    with sqlite3.connect(running.data_dir / "kitchen.db") as conn:
        conn.execute("INSERT INTO items (qty) VALUES (5)")
    refresh = pb.CacheOptions(mode=pb.CACHE_MODE_REFRESH)
    assert await _read(running, cache=refresh) == ([(1,)], "miss")
    assert await _read(running) == ([(1,)], "hit_local")


async def test_reads_after_an_acknowledged_write_are_never_stale(running: Running) -> None:
    acknowledged = 0
    stale: list[tuple[int, int]] = []
    done = False

    async def reader() -> None:
        while not done:
            floor = acknowledged
            rows, _ = await _read(running)
            if rows[0][0] < floor:
                stale.append((rows[0][0], floor))

    readers = [asyncio.ensure_future(reader()) for _ in range(8)]
    for i in range(150):
        await _insert(running, "items", ["qty"], i)
        acknowledged = i + 1
    done = True
    await asyncio.gather(*readers)
    assert stale == []


async def test_concurrent_identical_misses_load_once(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    async with started(tmp_path, document) as running:
        sql = "SELECT count(*) FROM items, items AS b"
        await _read(running, "SELECT 1")
        loads_before = running.server.cache.loads
        results = await asyncio.gather(*(_read(running, sql) for _ in range(50)))
    assert {r[0][0] for r in results} == {(0,)}
    assert running.server.cache.loads - loads_before == 1


async def test_a_cancelled_first_caller_does_not_fail_the_others(running: Running) -> None:
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
        "SELECT count(*) FROM c"
    )
    first = running.stub.Query(pb.QueryRequest(database="kitchen", sql=slow))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(_read(running, slow))
    await asyncio.sleep(0.05)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await second)[0] == [(2_000_000,)]


async def test_l1_off_still_answers(tmp_path: Path, document: dict[str, Any]) -> None:
    document["l1_max_entries"] = 0
    async with started(tmp_path, document) as running:
        assert (await _read(running))[0] == [(0,)]
        assert (await _read(running))[0] == [(0,)]


async def test_stats_report_the_l1_tier(running: Running) -> None:
    await _read(running)
    await _read(running)
    stats = await running.stub.Stats(pb.StatsRequest())
    [l1] = [t for t in stats.cache if t.tier == "l1"]
    assert l1.hits == 1 and l1.misses == 1 and l1.entries == 1 and l1.hit_rate == 0.5
    assert isinstance(grpc.StatusCode.OK, grpc.StatusCode)


async def test_statements_differing_inside_literals_or_comments_do_not_share_entries(
    running: Running,
) -> None:
    assert (await _read(running, "SELECT 'a b'"))[0] == [("a b",)]
    assert (await _read(running, "SELECT 'a  b'"))[0] == [("a  b",)]
    one = "SELECT id FROM parents -- x\n WHERE id = 1"
    assert (await _read(running, "SELECT id FROM parents -- x WHERE id = 1"))[0] == [(1,), (2,)]
    assert (await _read(running, one))[0] == [(1,)]


async def test_extra_cache_tags_are_part_of_the_entry(running: Running) -> None:
    sql = "SELECT name FROM parents WHERE id = 1"
    await _read(running, sql)
    tagged = pb.CacheOptions(tags=["user:1"])
    await _read(running, sql, cache=tagged)
    with sqlite3.connect(running.data_dir / "kitchen.db") as conn:
        conn.execute("UPDATE parents SET name = 'uno' WHERE id = 1")
    await running.stub.Invalidate(pb.InvalidateRequest(tags=["user:1"]))
    assert await _read(running, sql, cache=tagged) == ([("uno",)], "miss")


async def test_a_negative_ttl_is_refused_naming_the_field(running: Running) -> None:
    failure = await failure_of(
        running.stub.Query(
            pb.QueryRequest(
                database="kitchen", sql=COUNT_ITEMS, cache=pb.CacheOptions(ttl=Duration(seconds=-1))
            )
        )
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["cache.ttl"]


async def test_a_caller_joining_a_load_with_a_shorter_deadline_still_gets_its_answer(
    running: Running,
) -> None:
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
        "SELECT count(*) FROM c"
    )
    request = pb.QueryRequest(database="kitchen", sql=slow)
    hurried = asyncio.ensure_future(running.stub.Query(request, timeout=0.15))
    await asyncio.sleep(0.05)
    patient = asyncio.ensure_future(running.stub.Query(request, timeout=20))
    failure = await failure_of(hurried)
    assert failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert plain_rows(await patient) == [(3_000_000,)]


async def test_an_absurd_ttl_is_refused_not_an_internal_error(running: Running) -> None:
    for seconds in (2**62, 10**11):
        failure = await failure_of(
            running.stub.Query(
                pb.QueryRequest(
                    database="kitchen",
                    sql=COUNT_ITEMS,
                    cache=pb.CacheOptions(ttl=Duration(seconds=seconds)),
                )
            )
        )
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and failure.fields == ["cache.ttl"]
