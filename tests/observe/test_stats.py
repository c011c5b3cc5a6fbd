"""Stats after a scripted workload: statement figures, slow queries and advisories."""

from __future__ import annotations

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, row, value

BYPASS = pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)


async def _stats(running: Running, reset: bool = False) -> pb.StatsResponse:
    return await running.stub.Stats(pb.StatsRequest(reset=reset))


async def test_a_workload_is_counted_by_fingerprint_with_advisories(running: Running) -> None:
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen",
            table="items",
            columns=["qty", "t"],
            rows=[row(i, f"t{i}") for i in range(1100)],  # not a tiny table
        )
    )
    for i in range(1, 31):  # a loop of point reads: N+1
        await running.stub.Query(
            pb.QueryRequest(
                database="kitchen", sql="SELECT t FROM items WHERE id = ?", params=[value(i)]
            )
        )
    for threshold in (3, 7, 7):  # a scan: qty has no index; the repeat is a cache hit
        await running.stub.Query(
            pb.QueryRequest(
                database="kitchen",
                sql=f"SELECT id FROM items WHERE qty > {threshold} AND t LIKE 't%'",
            )
        )
    stats = await _stats(running)
    by_shape = {s.fingerprint: s for s in stats.statements if s.database == "kitchen"}
    point = by_shape["SELECT t FROM items WHERE id = ?"]
    assert (point.count, point.rows) == (30, 30)
    assert 0 < point.p50_ms <= point.p95_ms <= point.p99_ms
    scan = by_shape["SELECT id FROM items WHERE qty > ? AND t LIKE ?"]
    assert scan.count == 2 and scan.rows == 1096 + 1092
    assert (
        stats.slow_queries
        and stats.slow_queries[0].duration_ms >= stats.slow_queries[-1].duration_ms
    )

    kinds = {(a.kind, a.fingerprint): a for a in stats.advisories}
    n_plus_one = kinds[(pb.ADVISORY_KIND_N_PLUS_ONE, "SELECT t FROM items WHERE id = ?")]
    assert "IN (...)" in n_plus_one.message
    full_scan = kinds[(pb.ADVISORY_KIND_FULL_SCAN, scan.fingerprint)]
    assert full_scan.suggested_index == "CREATE INDEX idx_items_qty_t ON items (qty, t)"
    assert (pb.ADVISORY_KIND_FULL_SCAN, point.fingerprint) not in kinds  # it seeks by rowid

    await _stats(running, reset=True)
    after = await _stats(running)
    assert not after.statements and not after.advisories and not after.slow_queries


async def _scan_advisories(running: Running, statements: list[str]) -> set[str]:
    await _stats(running, reset=True)
    for sql in statements:
        await running.stub.Query(pb.QueryRequest(database="kitchen", sql=sql, cache=BYPASS))
    stats = await _stats(running)
    return {a.fingerprint for a in stats.advisories if a.kind == pb.ADVISORY_KIND_FULL_SCAN}


async def test_no_full_scan_advisory_for_a_tiny_table(running: Running) -> None:
    """parents holds two rows: a scan of it costs less than an index would save."""
    scans = await _scan_advisories(running, ["SELECT id FROM parents WHERE name LIKE 'o%'"])
    assert scans == set()


async def test_no_full_scan_advisory_for_a_scan_that_limit_stops_in_rowid_order(
    running: Running,
) -> None:
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen",
            table="items",
            columns=["qty", "t"],
            rows=[row(i % 50, f"t{i}") for i in range(1500)],
        )
    )
    stopped = [
        "SELECT id, t FROM items ORDER BY id LIMIT 20",
        "SELECT id, t FROM items ORDER BY id DESC LIMIT 20",
        "SELECT t FROM items LIMIT 5",
    ]
    whole = [
        "SELECT id FROM items ORDER BY qty LIMIT 20",  # sorts every row first
        "SELECT id FROM items WHERE qty = 7 ORDER BY id LIMIT 20",  # may read them all
        "SELECT sum(qty) FROM items LIMIT 1",  # the aggregate reads every row
        "SELECT t FROM items LIMIT 5 OFFSET 1400",
        "SELECT count(*) FROM items WHERE t > 't'",
    ]
    scans = await _scan_advisories(running, stopped + whole)
    assert scans == {
        "SELECT id FROM items ORDER BY qty LIMIT ?",
        "SELECT id FROM items WHERE qty = ? ORDER BY id LIMIT ?",
        "SELECT sum(qty) FROM items LIMIT ?",
        "SELECT t FROM items LIMIT ? OFFSET ?",
        "SELECT count(*) FROM items WHERE t > ?",
    }


async def test_a_full_scan_through_an_alias_is_still_advised(running: Running) -> None:
    """The plan names the alias (SCAN it), whose size is unknown: advised, as a scan is."""
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen",
            table="items",
            columns=["qty", "t"],
            rows=[row(i, f"t{i}") for i in range(1100)],
        )
    )
    scans = await _scan_advisories(running, ["SELECT it.id FROM items it WHERE it.qty > 3"])
    assert scans == {"SELECT it.id FROM items it WHERE it.qty > ?"}
