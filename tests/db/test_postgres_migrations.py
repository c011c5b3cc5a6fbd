"""The repository's PostgreSQL-dialect migrations (migrations/live_pg, archive_pg, which
the scale overlay applies) make the same tables and rows as SQLite's, so callers' reads
answer the same on either engine."""

from __future__ import annotations

from pathlib import Path

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import MIGRATIONS, PostgresProcess, plain_rows, started

READS = [
    "SELECT count(*), sum(units_produced), sum(units_scrapped), min(day), max(day)"
    " FROM production_runs",
    "SELECT line, shift, status, units_produced FROM production_runs"
    " WHERE day = '2025-12-31' OR day = '2026-03-01' ORDER BY day, line, shift",
]


async def test_the_postgresql_migrations_hold_what_sqlites_hold(
    tmp_path: Path, postgres_cluster: PostgresProcess
) -> None:
    databases = []
    for name in ("live", "archive"):
        postgres_cluster.psql(f"CREATE DATABASE {name}_{tmp_path.name[-8:].lower()}")
        url = postgres_cluster.database_url(f"{name}_{tmp_path.name[-8:].lower()}")
        databases += [
            {"name": name, "path": f"{name}.db", "migrations": str(MIGRATIONS / name)},
            {"name": f"{name}_pg", "url": url, "migrations": str(MIGRATIONS / f"{name}_pg")},
        ]
    document = {
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "databases": databases,
        "shutdown_grace_seconds": 2,
    }
    async with started(tmp_path, document) as server:
        for name in ("live", "archive"):
            for sql in READS:
                answers = [
                    plain_rows(await server.stub.Query(pb.QueryRequest(database=db, sql=sql)))
                    for db in (name, f"{name}_pg")
                ]
                assert answers[0] == answers[1], (name, sql)
                assert answers[0]  # the seeds are there
        products = "SELECT sku, name, unit_cost FROM products ORDER BY sku"
        sqlite, postgres = [
            plain_rows(await server.stub.Query(pb.QueryRequest(database=db, sql=products)))
            for db in ("live", "live_pg")
        ]
        assert sqlite == postgres and len(sqlite) == 4
