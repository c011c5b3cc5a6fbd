"""Scheduled maintenance on real files and a real server: optimize, incremental vacuum,
foreign_key_check in deep Health, and none of it losing a concurrent write."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dataaccess.v1 import data_access_pb2 as pb
from service import errors
from service.config import ConfigError, SqliteSettings
from service.db.door import WriteOutcome
from service.db.sqlite.guard import Guard, ShapeMemo
from service.db.sqlite.maintenance import IncrementalVacuumPlan
from tests.conftest import Running, free_port, row, sqlite_database, started

# Two indexes a WHERE clause could use: the writer's planner chooses between them, which
# is what PRAGMA optimize (SQLite 3.40) looks for before it analyzes a table.
SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT, day INTEGER, body TEXT);
CREATE INDEX events_kind ON events (kind);
CREATE INDEX events_day ON events (day);
"""


def _document(tmp_path: Path, sqlite: dict[str, Any], **databases: str) -> dict[str, Any]:
    migrations = tmp_path / "migrations"
    migrations.mkdir(exist_ok=True)
    (migrations / "0001_events.sql").write_text(SCHEMA, encoding="utf-8")
    entries = [
        {"name": name, "path": path, "migrations": str(migrations)}
        for name, path in (databases or {"events": "events.db"}).items()
    ]
    return {
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "databases": entries,
        "sqlite": sqlite,
        "metrics_listen": f"127.0.0.1:{free_port()}",
        "health_deep_interval_seconds": 0,
        "shutdown_grace_seconds": 2,
    }


def _scrape(running: Running) -> str:
    port = running.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def _runs(running: Running, database: str, task: str, result: str = "ok") -> float:
    sample = (
        f'dataaccess_maintenance_runs_total{{database="{database}",result="{result}",'
        f'task="{task}"}} '
    )
    for line in _scrape(running).splitlines():
        if line.startswith(sample):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _until(what: str, condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        await asyncio.sleep(0.05)


def _at(token: str) -> int:
    return int(token.rpartition("@")[2])


async def _checks(running: Running, deep: bool = False) -> dict[str, pb.HealthCheck]:
    report = await running.stub.Health(pb.HealthRequest(deep=deep))
    return {check.name: check for check in report.checks}


def _read(path: Path, sql: str) -> Any:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


async def _insert(running: Running, rows: list[pb.Row], database: str = "events") -> str:
    answer = await running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database=database, table="events", columns=["id", "kind", "day", "body"], rows=rows
        )
    )
    return answer.consistency_token


async def _update(running: Running, sql: str, *params: Any) -> None:
    statement = pb.Statement(sql=sql, param_sets=[row(*params)] if params else [])
    await running.stub.BatchUpdate(pb.BatchUpdateRequest(database="events", statements=[statement]))


async def test_optimize_runs_at_start_then_on_its_interval(tmp_path: Path) -> None:
    document = _document(tmp_path, {"optimize_interval_seconds": 0.2})
    async with started(tmp_path, document) as running:
        # The run at start: migrations were applied before the database opened.
        await _until("optimize at start", lambda: _runs(running, "events", "optimize") >= 1)
        rows = [row(i, f"k{i % 7}", i % 30, "x") for i in range(1, 501)]
        await _insert(running, rows)
        # The writer's planner chooses between the two indexes: optimize then analyzes.
        await _update(running, "UPDATE events SET body = 'y' WHERE kind = ? AND day = ?", "k1", 1)
        stat1 = "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_stat1'"
        path = running.data_dir / "events.db"
        await _until("sqlite_stat1", lambda: _read(path, stat1) == [(1,)])
        assert _read(path, "SELECT DISTINCT tbl FROM sqlite_stat1") == [("events",)]
        token = await _insert(running, [row(1000, "k", 0, "x")])
        await _until("optimize again", lambda: _runs(running, "events", "optimize") >= 3)
        # Its commits change nothing a caller reads: positions count callers' commits only.
        assert await _insert(running, [row(1001, "k", 0, "x")]) == f"events@{_at(token) + 1}"
        check = (await _checks(running))["database:events:optimize"]
        assert check.status == pb.HEALTH_STATUS_HEALTHY
        assert "last run 20" in check.message and ": ok: PRAGMA optimize done" in check.message
        assert "dataaccess_maintenance_last_run_timestamp_seconds" in _scrape(running)
        # Maintenance is the service's own: not counted as a caller's write.
        stats = await running.stub.Stats(pb.StatsRequest())
        assert [(w.database, w.batches) for w in stats.writes] == [("events", 4)]


async def test_optimize_at_start_is_in_health_and_metrics_before_the_first_interval(
    tmp_path: Path,
) -> None:
    async with started(tmp_path, _document(tmp_path, {})) as running:  # every 3600 s
        assert _runs(running, "events", "optimize") == 1
        check = (await _checks(running))["database:events:optimize"]
        assert check.status == pb.HEALTH_STATUS_HEALTHY and ": ok: " in check.message


async def test_incremental_vacuum_frees_pages_and_is_inactive_on_a_none_file(
    tmp_path: Path,
) -> None:
    sqlite = {
        "auto_vacuum": "INCREMENTAL",
        "incremental_vacuum_pages": 100,
        "incremental_vacuum_interval_seconds": 0.2,
        "optimize_interval_seconds": 0,
    }
    data = tmp_path / "data"
    data.mkdir()
    with contextlib.closing(sqlite3.connect(data / "old.db")) as old:  # auto_vacuum NONE
        old.execute("CREATE TABLE kept (id INTEGER PRIMARY KEY)")
    document = _document(tmp_path, sqlite, events="events.db", old="old.db")
    async with started(tmp_path, document) as running:
        path = running.data_dir / "events.db"
        assert _read(path, "PRAGMA auto_vacuum") == [(2,)]  # made INCREMENTAL at creation
        await _insert(running, [row(i, "k", i, "x" * 1000) for i in range(1, 2001)])
        await _update(running, "DELETE FROM events")
        free = "PRAGMA freelist_count"
        await _until("pages freed", lambda: _read(path, free) == [(0,)], 20)
        assert _runs(running, "events", "incremental_vacuum") >= 5  # 100 pages a run at most
        checks = await _checks(running)
        vacuum = checks["database:events:incremental_vacuum"]
        assert vacuum.status == pb.HEALTH_STATUS_HEALTHY and "freed" in vacuum.message

        inactive = checks["database:old:incremental_vacuum"]
        assert inactive.status == pb.HEALTH_STATUS_DEGRADED
        assert "auto_vacuum is NONE" in inactive.message and "VACUUM" in inactive.message
        assert _runs(running, "old", "incremental_vacuum", "inactive") == 1
        assert "database:events:optimize" not in checks  # 0 turns it off


async def test_deep_health_reports_orphans_written_with_foreign_keys_off(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["health_deep_interval_seconds"] = 0
    async with started(tmp_path, document) as running:
        checks = await _checks(running, deep=True)
        clean = checks["database:kitchen:foreign_key_check"]
        assert clean.status == pb.HEALTH_STATUS_HEALTHY and clean.message == "no orphaned rows"
        assert "database:kitchen:foreign_key_check" not in await _checks(running)  # deep only

        with contextlib.closing(running.sqlite("kitchen")) as outside:
            outside.execute("PRAGMA foreign_keys=OFF")
            outside.executemany(
                "INSERT INTO items (id, parent_id) VALUES (?, ?)", [(1, 1), (2, 99), (3, 98)]
            )
            outside.execute("INSERT INTO notes (id, parent_id) VALUES (1, 97)")
            outside.commit()
        report = await running.stub.Health(pb.HealthRequest(deep=True))
        checks = {check.name: check for check in report.checks}
        found = checks["database:kitchen:foreign_key_check"]
        assert found.status == pb.HEALTH_STATUS_DEGRADED
        assert found.message == (
            "orphaned rows: items: 2 rows without their parents row, "
            "notes: 1 rows without their parents row"
        )
        assert report.status == pb.HEALTH_STATUS_DEGRADED  # not critical: the data is served
        assert checks["database:live:foreign_key_check"].status == pb.HEALTH_STATUS_HEALTHY


async def test_maintenance_on_a_tiny_interval_loses_no_concurrent_write(tmp_path: Path) -> None:
    sqlite = {
        "auto_vacuum": "INCREMENTAL",
        "incremental_vacuum_pages": 20,
        "incremental_vacuum_interval_seconds": 0.005,
        "optimize_interval_seconds": 0.005,
    }
    async with started(tmp_path, _document(tmp_path, sqlite)) as running:
        acknowledged: list[int] = []

        async def writer(first: int) -> None:
            for batch in range(20):
                ids = range(first + batch * 10, first + batch * 10 + 10)
                await _insert(running, [row(i, f"k{i % 5}", i % 9, "x" * 800) for i in ids])
                acknowledged.extend(ids)

        async def churn() -> None:  # free pages for the vacuum to take back
            for round_ in range(20):
                scratch = range(10_000_000 + round_ * 50, 10_000_000 + round_ * 50 + 50)
                await _insert(running, [row(i, "s", 0, "z" * 2000) for i in scratch])
                await _update(running, "DELETE FROM events WHERE id >= ?", 10_000_000)

        before = _runs(running, "events", "optimize") + _runs(
            running, "events", "incremental_vacuum"
        )
        await asyncio.gather(*(writer(n * 1000) for n in range(1, 17)), churn())
        after = _runs(running, "events", "optimize") + _runs(
            running, "events", "incremental_vacuum"
        )
        assert after - before >= 10, "maintenance did not run while the writes were in flight"
        stored = _read(running.data_dir / "events.db", "SELECT id FROM events ORDER BY id")
        assert [i for (i,) in stored] == sorted(acknowledged)
        assert len(acknowledged) == 16 * 20 * 10
        assert _read(running.data_dir / "events.db", "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.unit
def test_maintenance_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="sqlite.auto_vacuum"):
        SqliteSettings(auto_vacuum="SOMETIMES")
    with pytest.raises(ConfigError, match="sqlite.incremental_vacuum_pages"):
        SqliteSettings(incremental_vacuum_pages=-1)
    with pytest.raises(ConfigError, match="sqlite.maintenance_deadline_seconds"):
        SqliteSettings(maintenance_deadline_seconds=0)


@pytest.mark.unit
def test_incremental_vacuum_ends_at_its_deadline_with_what_it_freed(tmp_path: Path) -> None:
    """Each one-page statement is too short for the progress handler: the plan stops itself."""
    with contextlib.closing(sqlite3.connect(tmp_path / "v.db", isolation_level=None)) as raw:
        raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
        raw.execute("CREATE TABLE t (b TEXT)")
        raw.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 400)
        raw.execute("DELETE FROM t")
        guard = Guard(frozenset(), ShapeMemo(), writer=True)
        late = IncrementalVacuumPlan(pages=1000, deadline=time.monotonic() - 1)
        late.run(raw, guard)
        assert late.message == "freed 0 of 100 free pages (100 left, stopped at its deadline)"
        assert not guard.trusted
        in_time = IncrementalVacuumPlan(pages=40, deadline=time.monotonic() + 60)
        in_time.run(raw, guard)
        assert in_time.message == "freed 40 of 100 free pages (60 left)"
        assert raw.execute("PRAGMA freelist_count").fetchone() == (60,)


class _Endless:
    """The service's own statement that would never end on its own."""

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        guard.trusted = True
        try:
            endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
            raw.execute(f"{endless} SELECT count(*) FROM c").fetchall()
        finally:
            guard.trusted = False
        return WriteOutcome((), 0, frozenset())


async def test_the_writers_own_job_is_stopped_at_its_deadline(running: Running) -> None:
    """Trusted past the guard, a maintenance job is still interrupted at its deadline, and
    the writer goes on with the callers' writes."""
    writer = sqlite_database(running.server, "kitchen").writer
    started_at = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded):
        await writer.submit(_Endless(), time.monotonic() + 0.2, own=True)
    assert time.monotonic() - started_at < 5
    answer = await running.stub.BatchInsert(
        pb.BatchInsertRequest(database="kitchen", table="items", columns=["id"], rows=[row(7)])
    )
    assert answer.rows_affected == 1
