"""Stats after a scripted workload: statement figures, slow queries and advisories."""

from __future__ import annotations

from dataaccess_client.v1 import data_access_pb2 as pb
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
            rows=[row(i, f"t{i}") for i in range(50)],
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
    assert scan.count == 2 and scan.rows == 46 + 42
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
