"""Archival from live to archive: rows past their age move in slices, a group read never
counts one twice or misses one while they move, a row changed after its copy stays, the
stored route boundary moves with the data, and a SIGKILL at any step leaves every row in
exactly one member once the service started again."""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import itertools
import json
import os
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from dataaccess_client.cli import main
from service import errors
from service.config import ArchiveRule
from service.db.door import ArchiveMark, ArchiveSlice
from service.routing.archival import cutoff_of
from service.values import SqlValue
from tests.conftest import Running, free_port, plain_rows, started, value

OLD_DAYS = [f"2020-01-{day:02d}" for day in range(1, 29)]
SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    day TEXT NOT NULL,
    ref TEXT NOT NULL UNIQUE,
    n INTEGER NOT NULL,
    label TEXT COLLATE NOCASE NOT NULL DEFAULT 'x',
    extra
);
CREATE INDEX events_day ON events (day);
"""
TOTALS = "SELECT count(*), sum(n) FROM events"


def _today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


def _document(tmp_path: Path, **rule: Any) -> dict[str, Any]:
    for name in ("hot", "cold"):
        folder = tmp_path / "migrations" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "0001_events.sql").write_text(SCHEMA)
    return {
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "databases": [
            {"name": "hot", "path": "hot.db", "migrations": str(tmp_path / "migrations/hot")},
            {"name": "cold", "path": "cold.db", "migrations": str(tmp_path / "migrations/cold")},
        ],
        "groups": [
            {
                "name": "events_all",
                "members": ["cold", "hot"],
                "route": {
                    "kind": "range",
                    "column": "day",
                    "bounds": [{"member": "cold", "below": "2000-01-01"}, {"member": "hot"}],
                },
                "archive": [
                    {
                        "table": "events",
                        "source": "hot",
                        "target": "cold",
                        "date_column": "day",
                        "age_days": 30,
                        "slice_rows": 7,
                        "interval_seconds": 0.2,
                        **rule,
                    }
                ],
            }
        ],
        "limits": {"readers_per_database": 2},
        "shutdown_grace_seconds": 2,
    }


def _refs(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(ref for (ref,) in conn.execute("SELECT ref FROM events"))


async def _insert(running: Running, rows: list[tuple[str, str, int]]) -> None:
    """Insert ``rows`` into hot, once the pass the server made at start has ended (the
    tests then make each pass themselves: their rules' next one is an hour away)."""
    archiver = running.server.access.archiver
    deadline = time.monotonic() + 10
    while not archiver.figures()[0].passes:
        assert time.monotonic() < deadline, archiver.figures()
        await asyncio.sleep(0.01)
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="hot",
            table="events",
            columns=["day", "ref", "n"],
            rows=[pb.Row(values=[value(v) for v in r]) for r in rows],
        )
    )


async def _copy_one_slice(running: Running) -> tuple[Any, ArchiveSlice, SqlValue]:
    """Begin a pass by hand and copy its first slice, stopping before its delete: the
    rule, the slice and the cutoff."""
    archiver = running.server.access.archiver
    rule = archiver._rules[0]  # noqa: SLF001
    cutoff = cutoff_of(rule.rule, time.time())
    archiver._take(rule, await rule.mover.begin_pass(cutoff))  # noqa: SLF001
    picked = await rule.mover.pick(cutoff)
    assert picked is not None
    await rule.mover.copy(picked)
    return rule, picked, cutoff


async def _note_on(running: Running, ref: str) -> int:
    """A row of hot's ``notes`` whose foreign key points at the event ``ref``; its id."""
    with running.sqlite("hot") as conn:
        event = conn.execute("SELECT id FROM events WHERE ref = ?", (ref,)).fetchone()[0]
    await running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="hot", table="notes", columns=["event"], rows=[pb.Row(values=[value(event)])]
        )
    )
    return int(event)


def _old_and_new(old: int = 56, recent: int = 10) -> list[tuple[str, str, int]]:
    return [(OLD_DAYS[i % len(OLD_DAYS)], f"old-{i}", i) for i in range(old)] + [
        (_today(), f"new-{i}", 1000 + i) for i in range(recent)
    ]


async def _totals(
    running: Running, mode: pb.CacheMode.ValueType = pb.CACHE_MODE_BYPASS
) -> tuple[Any, ...]:
    answer = await running.stub.Query(
        pb.QueryRequest(database="events_all", sql=TOTALS, cache=pb.CacheOptions(mode=mode))
    )
    rows = plain_rows(answer)
    return (sum(r[0] for r in rows), sum(r[1] or 0 for r in rows))


async def _wait_archived(running: Running, timeout: float = 20) -> None:
    archiver = running.server.access.archiver
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        figures = archiver.figures()[0]
        if figures.boundary is not None and figures.boundary == figures.cutoff:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not archived: {archiver.figures()}")


@pytest.mark.unit
def test_the_cutoff_is_a_whole_utc_day_back() -> None:
    now = datetime.datetime(2026, 3, 10, 15, 30, tzinfo=datetime.UTC).timestamp()
    text = ArchiveRule("t", "a", "b", "day", age_days=30)
    seconds = ArchiveRule("t", "a", "b", "day", age_days=1, dates="unix_seconds")
    assert cutoff_of(text, now) == "2026-02-08"
    assert cutoff_of(seconds, now) == datetime.datetime(2026, 3, 9, tzinfo=datetime.UTC).timestamp()


async def test_old_rows_move_and_the_route_boundary_moves_with_them(tmp_path: Path) -> None:
    document = _document(tmp_path, interval_seconds=3600)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new())
        before = await _totals(running, pb.CACHE_MODE_USE)
        archiver = running.server.access.archiver
        rule = archiver._rules[0]  # noqa: SLF001 - one pass now, not at the next interval
        await archiver.run_pass(rule)
        figures = archiver.figures()[0]
        cutoff = cutoff_of(rule.rule, time.time())
        assert (figures.boundary, figures.moving_below, figures.rows_moved) == (cutoff, None, 56)
        assert figures.slices == 8  # 56 rows, 7 a slice
        data = running.data_dir
        assert _refs(data / "hot.db") == sorted(f"new-{i}" for i in range(10))
        assert _refs(data / "cold.db") == sorted(f"old-{i}" for i in range(56))
        # Cached before the move: the moves bumped both members' tags, so not served again.
        assert await _totals(running, pb.CACHE_MODE_USE) == before
        answer = await running.stub.Query(
            pb.QueryRequest(
                database="events_all",
                sql="SELECT count(*) FROM events WHERE day = ?",
                params=[value("2020-01-05")],
                route_key=value("2020-01-05"),
            )
        )
        # Below the boundary a late row may still be written to hot: both are read.
        assert sorted(answer.databases) == ["cold", "hot"]
        assert sum(r[0] for r in plain_rows(answer)) == 2
        answer = await running.stub.Query(
            pb.QueryRequest(database="events_all", sql=TOTALS, route_key=value(_today()))
        )
        assert list(answer.databases) == ["hot"] and plain_rows(answer)[0][0] == 10
        # A row routed below the stored boundary goes to the archive member.
        await running.stub.BatchInsert(
            pb.BatchInsertRequest(
                database="events_all",
                table="events",
                columns=["day", "ref", "n"],
                rows=[pb.Row(values=[value("2020-02-02"), value("late"), value(1)])],
            )
        )
        assert "late" in _refs(data / "cold.db")
        with sqlite3.connect(data / "hot.db") as conn:
            stored = conn.execute("SELECT boundary FROM _dataaccess_archive_marks").fetchall()
        assert stored == [(cutoff,)]


async def test_a_routed_read_of_a_moving_day_reads_both_members(tmp_path: Path) -> None:
    document = _document(tmp_path, interval_seconds=3600, slice_rows=3)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new())
        archiver = running.server.access.archiver
        rule = archiver._rules[0]  # noqa: SLF001
        cutoff = cutoff_of(rule.rule, time.time())
        mark = await rule.mover.begin_pass(cutoff)
        archiver._take(rule, mark)  # noqa: SLF001
        picked = await rule.mover.pick(cutoff)
        assert picked is not None
        await archiver._swap(rule, picked, cutoff)  # noqa: SLF001 - one slice of several
        # A pass with a longer age since (an earlier cutoff, nothing below it) ends, and
        # the days half moved are still read from both members.
        archiver._take(rule, await rule.mover.begin_pass("2000-01-01"))  # noqa: SLF001
        for day in ("2020-01-01", "2020-01-02"):
            answer = await running.stub.Query(
                pb.QueryRequest(
                    database="events_all",
                    sql="SELECT count(*) FROM events WHERE day = ?",
                    params=[value(day)],
                    route_key=value(day),
                )
            )
            assert sorted(answer.databases) == ["cold", "hot"]
            assert sum(r[0] for r in plain_rows(answer)) == 2


async def test_group_reads_never_double_count_or_miss_while_slices_move(tmp_path: Path) -> None:
    document = _document(tmp_path, slice_rows=2, interval_seconds=3600)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new(old=200))
        expected = await _totals(running)
        archiver = running.server.access.archiver
        moving = asyncio.ensure_future(archiver.run_pass(archiver._rules[0]))  # noqa: SLF001
        seen: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + 60
        while not moving.done() and time.monotonic() < deadline:
            reads = [_totals(running) for _ in range(4)]
            reads += [_totals(running, pb.CACHE_MODE_USE) for _ in range(2)]
            seen += await asyncio.gather(*reads)
        await moving
        assert archiver.figures()[0].rows_moved == 200
        assert len(seen) > 20
        assert set(seen) == {expected}
        assert running.server.router.barriers["events_all"].held_reads > 0


async def test_a_row_changed_after_its_copy_stays_in_the_source(tmp_path: Path) -> None:
    document = _document(tmp_path, interval_seconds=3600, slice_rows=100)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new(old=5, recent=0))
        rule, picked, cutoff = await _copy_one_slice(running)
        assert len(picked.rows) == 5
        statements = [
            pb.Statement(
                sql="UPDATE events SET n = 99 WHERE ref = ?",
                param_sets=[pb.Row(values=[value("old-1")])],
            ),
            pb.Statement(
                sql="DELETE FROM events WHERE ref = ?",
                param_sets=[pb.Row(values=[value("old-2")])],
            ),
            # Equal to what was copied only to a NOCASE column, or only as a number.
            pb.Statement(
                sql="UPDATE events SET label = 'X' WHERE ref = ?",
                param_sets=[pb.Row(values=[value("old-3")])],
            ),
            pb.Statement(
                sql="UPDATE events SET extra = 1.0 WHERE ref = ?",
                param_sets=[pb.Row(values=[value("old-4")])],
            ),
        ]
        await running.stub.BatchUpdate(pb.BatchUpdateRequest(database="hot", statements=statements))
        await rule.mover.delete(picked, cutoff)
        ends = await rule.mover.finish()
        assert [(e.moved, e.kept) for e in ends] == [(1, 4)]
        data = running.data_dir
        assert _refs(data / "hot.db") == ["old-1", "old-3", "old-4"]
        assert _refs(data / "cold.db") == ["old-0"]
        with sqlite3.connect(data / "hot.db") as conn:
            kept = conn.execute("SELECT n, label, typeof(extra) FROM events ORDER BY ref")
            assert kept.fetchall() == [(99, "x", "null"), (3, "X", "null"), (4, "x", "real")]
        mark = await rule.mover.mark()
        assert mark.moving_below == cutoff  # old-1 is still below it: the pass goes on


@pytest.mark.parametrize(
    ("declared", "stored", "kept"),
    [
        ("INTEGER", "007", "'007' (text) as 7 (integer)"),
        ("NUMERIC", 2.0, "2.0 (real) as 2 (integer)"),
    ],
)
async def test_a_value_the_archive_would_change_is_not_moved(
    tmp_path: Path, declared: str, stored: SqlValue, kept: str
) -> None:
    """The archive's column converts the value (its type's affinity): the copy rolls back,
    the pass stops and says which column, and every row is still in live as it was."""
    document = _document(tmp_path, interval_seconds=3600)
    target = SCHEMA.replace("    extra\n", f"    extra {declared}\n")
    (tmp_path / "migrations/cold/0001_events.sql").write_text(target)
    async with started(tmp_path, document) as running:
        rows = _old_and_new(old=10, recent=2)
        await _insert(running, rows)
        update = pb.Statement(
            sql="UPDATE events SET extra = ? WHERE ref = ?",
            param_sets=[pb.Row(values=[value(stored), value("old-3")])],
        )
        await running.stub.BatchUpdate(pb.BatchUpdateRequest(database="hot", statements=[update]))
        archiver = running.server.access.archiver
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        report = await running.stub.Health(pb.HealthRequest())
        (check,) = [c for c in report.checks if c.name == "archive:events_all.events"]
        assert check.status == pb.HEALTH_STATUS_DEGRADED
        assert f"cold.events.extra would keep {kept}" in check.message
        data = running.data_dir
        assert "old-3" in _refs(data / "hot.db")
        assert len(_refs(data / "hot.db") + _refs(data / "cold.db")) == len(rows)
        with sqlite3.connect(data / "hot.db") as conn:
            (again,) = conn.execute("SELECT extra FROM events WHERE ref = 'old-3'").fetchone()
            assert type(again) is type(stored) and again == stored
        with sqlite3.connect(data / "cold.db") as conn:
            assert not conn.execute("SELECT count(*) FROM events").fetchone()[0]
            assert not conn.execute(
                "SELECT count(*) FROM _dataaccess_archive_slices WHERE state = 'copied'"
            ).fetchone()[0]
        assert await _totals(running) == (len(rows), sum(n for _, _, n in rows))


AUDIT = "CREATE TABLE audit (ref TEXT);\n"
TRIGGERS = {
    "source audits deletes": (
        "hot",
        AUDIT + "CREATE TRIGGER a AFTER DELETE ON events BEGIN"
        " INSERT INTO audit VALUES (old.ref); END;",
    ),
    "source deletes children": (
        "hot",
        "CREATE TABLE notes (ref TEXT);\n"
        "INSERT INTO notes VALUES ('old-0'), ('old-1');\n"
        "CREATE TRIGGER c AFTER DELETE ON events BEGIN"
        " DELETE FROM notes WHERE ref = old.ref; END;",
    ),
    "target audits inserts": (
        "cold",
        AUDIT + "CREATE TRIGGER a AFTER INSERT ON events BEGIN"
        " INSERT INTO audit VALUES (new.ref); END;",
    ),
    "target ignores inserts": (
        "cold",
        "CREATE TRIGGER i BEFORE INSERT ON events BEGIN SELECT RAISE(IGNORE); END;",
    ),
    "target refuses inserts": (
        "cold",
        "CREATE TRIGGER r BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'read only'); END;",
    ),
    "target audits deletes": (
        "cold",
        AUDIT + "CREATE TRIGGER a AFTER DELETE ON events BEGIN"
        " INSERT INTO audit VALUES (old.ref); END;",
    ),
    "target rolls back deletes": (
        "cold",
        "CREATE TRIGGER r BEFORE DELETE ON events BEGIN SELECT RAISE(ROLLBACK, 'kept'); END;",
    ),
    "source ignores deletes": (
        "hot",
        "CREATE TRIGGER i BEFORE DELETE ON events BEGIN SELECT RAISE(IGNORE); END;",
    ),
    "source refuses deletes": (
        "hot",
        "CREATE TRIGGER r BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'kept'); END;",
    ),
}


@pytest.mark.parametrize("case", sorted(TRIGGERS))
async def test_a_trigger_that_writes_stops_the_move_and_harms_nothing(
    tmp_path: Path, case: str
) -> None:
    """Archival's insert or delete firing a trigger that writes elsewhere (or skips or
    refuses the row) would be more than a move, e.g. deleting child rows that stay: the
    step rolls back, the pass stops and says why, and every row and side table is as it
    was."""
    side, ddl = TRIGGERS[case]
    document = _document(tmp_path, interval_seconds=3600)
    (tmp_path / f"migrations/{side}/0002_trigger.sql").write_text(ddl)
    async with started(tmp_path, document) as running:
        rows = _old_and_new(old=10, recent=2)
        await _insert(running, rows)
        with running.sqlite(side) as conn:
            tables = sorted(n for (n,) in conn.execute("SELECT name FROM sqlite_schema"))
            before = {
                t: conn.execute(f"SELECT * FROM {t}").fetchall()
                for t in tables
                if t in ("audit", "notes")
            }
        archiver = running.server.access.archiver
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        report = await running.stub.Health(pb.HealthRequest())
        (check,) = [c for c in report.checks if c.name == "archive:events_all.events"]
        assert check.status == pb.HEALTH_STATUS_DEGRADED, check.message
        assert "archive:" in check.message and "events" in check.message
        data = running.data_dir
        assert _refs(data / "hot.db") == sorted(ref for _, ref, _ in rows)
        assert _refs(data / "cold.db") == []
        with running.sqlite(side) as conn:
            after = {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in before}
        assert after == before
        assert await _totals(running) == (len(rows), sum(n for _, _, n in rows))


async def test_an_archive_that_replaces_on_conflict_keeps_every_row(tmp_path: Path) -> None:
    """The archive's ON CONFLICT REPLACE would drop an archived row to make room for a
    copy (SQLite counts no change for it): the copy aborts instead, and both rows stay."""
    document = _document(tmp_path, interval_seconds=3600, slice_rows=100, keep_ids=False)
    schema = SCHEMA.replace(
        "ref TEXT NOT NULL UNIQUE", "ref TEXT NOT NULL UNIQUE ON CONFLICT REPLACE"
    )
    (tmp_path / "migrations/cold/0001_events.sql").write_text(schema)
    async with started(tmp_path, document) as running:
        await _insert(running, [("2020-01-01", "dup", 1)])
        archiver = running.server.access.archiver
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        assert _refs(running.data_dir / "cold.db") == ["dup"]
        await _insert(running, [("2020-01-02", "dup", 2)])  # a late row with the same ref
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        assert "UNIQUE constraint failed: events.ref" in archiver.figures()[0].last_error
        assert _refs(running.data_dir / "hot.db") == ["dup"]
        assert _refs(running.data_dir / "cold.db") == ["dup"]
        assert await _totals(running) == (2, 3)


async def test_a_conditional_trigger_at_the_finish_keeps_the_group_whole(tmp_path: Path) -> None:
    """A row changed after its copy stays in live, so the finish drops its copy; an
    archive trigger that skips that one delete (its WHEN passed the copy's probe) would
    leave the row in both: the finish fails (the archiver then refuses the group's
    reads), and no copy is dropped half-way."""
    document = _document(tmp_path, interval_seconds=3600, slice_rows=100)
    skip = (
        "CREATE TRIGGER s BEFORE DELETE ON events WHEN old.ref = 'old-1'"
        " BEGIN SELECT RAISE(IGNORE); END;"
    )
    (tmp_path / "migrations/cold/0002_trigger.sql").write_text(skip)
    async with started(tmp_path, document) as running:
        rows = _old_and_new(old=3, recent=0)
        await _insert(running, rows)
        rule, picked, cutoff = await _copy_one_slice(running)  # its probe deleted a copy: allowed
        change = pb.Statement(
            sql="UPDATE events SET n = 99 WHERE ref = 'old-1'", param_sets=[pb.Row()]
        )
        await running.stub.BatchUpdate(pb.BatchUpdateRequest(database="hot", statements=[change]))
        await rule.mover.delete(picked, cutoff)
        with pytest.raises(Exception, match="skipped"):
            await rule.mover.finish()
        assert sorted(_refs(running.data_dir / "cold.db")) == ["old-0", "old-1", "old-2"]
        assert _refs(running.data_dir / "hot.db") == ["old-1"]


@pytest.mark.parametrize(
    ("declared", "stored"),
    [
        ("REAL", 2.0),
        ("REAL", -0.5),
        ("INTEGER", 2**62),
        ("INTEGER", -(2**63)),
        ("BLOB", b"\x00\xff"),
        ("BLOB", b""),
        ("TEXT", ""),
        ("TEXT", "\u00e9\U0001f600"),
        ("", None),
        ("", 1.5),
        ("", "007"),
    ],
)
async def test_values_move_exactly_when_the_types_match(
    tmp_path: Path, declared: str, stored: SqlValue
) -> None:
    document = _document(tmp_path, interval_seconds=3600)
    for side in ("hot", "cold"):
        schema = SCHEMA.replace("    extra\n", f"    extra {declared}\n")
        (tmp_path / f"migrations/{side}/0001_events.sql").write_text(schema)
    async with started(tmp_path, document) as running:
        await _insert(running, [("2020-01-01", "one", 1)])
        update = pb.Statement(
            sql="UPDATE events SET extra = ? WHERE ref = 'one'",
            param_sets=[pb.Row(values=[value(stored)])],
        )
        await running.stub.BatchUpdate(pb.BatchUpdateRequest(database="hot", statements=[update]))
        archiver = running.server.access.archiver
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        assert archiver.figures()[0].last_error == ""
        with sqlite3.connect(running.data_dir / "cold.db") as conn:
            (moved,) = conn.execute("SELECT extra FROM events WHERE ref = 'one'").fetchone()
        assert type(moved) is type(stored) and moved == stored


async def test_a_trigger_archival_does_not_fire_lets_rows_move(tmp_path: Path) -> None:
    """An UPDATE trigger (an ``updated`` stamp, say) never fires on a move: rows move."""
    document = _document(tmp_path, interval_seconds=3600)
    stamp = (
        AUDIT + "CREATE TRIGGER u AFTER UPDATE ON events BEGIN"
        " INSERT INTO audit VALUES (new.ref); END;"
    )
    for side in ("hot", "cold"):
        (tmp_path / f"migrations/{side}/0002_trigger.sql").write_text(stamp)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new(old=10, recent=2))
        archiver = running.server.access.archiver
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        assert archiver.figures()[0].last_error == ""
        assert len(_refs(running.data_dir / "cold.db")) == 10


async def test_updates_racing_the_slices_are_never_lost(tmp_path: Path) -> None:
    """Every acknowledged update is where its row ended up; a run where no update landed
    between a copy and its delete (so no row was kept) did not race: it runs again."""
    for attempt in range(3):
        kept = await _race_updates(tmp_path / f"run-{attempt}")
        if kept:
            return
    raise AssertionError("no update landed between a copy and its delete in 3 runs")


async def _race_updates(tmp_path: Path) -> int:
    """The rows kept in live because an update landed after their copy."""
    document = _document(tmp_path, interval_seconds=3600, slice_rows=3)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new(old=120, recent=0))
        archiver = running.server.access.archiver
        rule = archiver._rules[0]  # noqa: SLF001
        acknowledged: dict[str, int] = {}

        async def update(writer: int, passing: asyncio.Future[None]) -> None:
            refs = [f"old-{i}" for i in range(writer, 120, 4)]  # each writer its own rows
            for step in itertools.count():
                if passing.done():
                    return
                ref = refs[step % len(refs)]
                answer = await running.stub.BatchUpdate(
                    pb.BatchUpdateRequest(
                        database="hot",
                        statements=[
                            pb.Statement(
                                sql="UPDATE events SET n = ? WHERE ref = ?",
                                param_sets=[pb.Row(values=[value(10_000 + step), value(ref)])],
                            )
                        ],
                    )
                )
                if answer.rows_affected[0] == 1:  # acknowledged as written in hot
                    acknowledged[ref] = 10_000 + step

        for _ in range(5):
            passing = asyncio.ensure_future(archiver.run_pass(rule))
            await asyncio.gather(passing, *(update(w, passing) for w in range(4)))
            if archiver.figures()[0].rows_moved == 120:
                break
        figures = archiver.figures()[0]
        assert figures.rows_moved == 120
        assert acknowledged
        with sqlite3.connect(running.data_dir / "cold.db") as conn:
            cold = dict(conn.execute("SELECT ref, n FROM events").fetchall())
        assert _refs(running.data_dir / "hot.db") == [] and len(cold) == 120
        assert {ref: cold[ref] for ref in acknowledged} == acknowledged
        return figures.rows_kept


async def test_a_row_another_table_points_at_stays(tmp_path: Path) -> None:
    document = _document(tmp_path, interval_seconds=3600)
    extra = "CREATE TABLE notes (id INTEGER PRIMARY KEY, event INTEGER REFERENCES events (id));\n"
    (tmp_path / "migrations/hot/0002_notes.sql").write_text(extra)
    (tmp_path / "migrations/cold/0002_notes.sql").write_text(extra)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new(old=4, recent=0))
        await _note_on(running, "old-0")
        archiver = running.server.access.archiver
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        assert _refs(running.data_dir / "hot.db") == ["old-0"]
        figures = archiver.figures()[0]
        assert figures.moving_below == figures.cutoff  # the boundary waits for that row


async def test_the_archive_command_shows_each_rule_and_what_would_move(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document(tmp_path, interval_seconds=3600)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new())
        target = ["--target", f"127.0.0.1:{running.port}"]
        capsys.readouterr()
        assert await asyncio.to_thread(main, [*target, "archive", "--dry-run"]) == 0
        printed = capsys.readouterr().out
        assert "events_all: events rows 30 days old by day move hot -> cold" in printed
        cutoff = cutoff_of(running.server.access.archiver._rules[0].rule, time.time())  # noqa: SLF001
        assert isinstance(cutoff, str)
        assert f"dry run: 56 rows dated below {cutoff} (2020-01-01 .. 2020-01-28)" in printed
        assert len(_refs(running.data_dir / "hot.db")) == 66  # a dry run moves nothing
        archiver = running.server.access.archiver
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        assert await asyncio.to_thread(main, [*target, "archive", "--json"]) == 0
        (rule,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["archive"]
        assert (rule["rows_moved"], rule["slices"], rule["boundary"]) == (56, 8, cutoff)
        assert rule["moving_below"] is None and rule["last_error"] == ""


async def test_health_and_metrics_show_each_rule(tmp_path: Path) -> None:
    document = _document(tmp_path, interval_seconds=3600)
    document["metrics_listen"] = f"127.0.0.1:{free_port()}"
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new())
        archiver = running.server.access.archiver
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        report = await running.stub.Health(pb.HealthRequest())
        (check,) = [c for c in report.checks if c.name == "archive:events_all.events"]
        cutoff = archiver.figures()[0].cutoff
        assert isinstance(cutoff, str)
        assert check.status == pb.HEALTH_STATUS_HEALTHY
        assert (
            check.message == f"every row dated below {cutoff} is in cold; 56 rows moved since start"
        )
        url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        labels = '{group="events_all",table="events"}'
        assert f"dataaccess_archive_rows_moved_total{labels} 56.0" in text
        assert f"dataaccess_archive_pass_failing{labels} 0.0" in text
        assert f"dataaccess_archive_last_pass_timestamp_seconds{labels}" in text
        # A pass that stops on an error says so in both.
        with running.sqlite("cold") as conn:
            conn.execute("DROP TABLE events")
        await _insert(running, [("2020-03-01", "late", 1)])
        await archiver.run_pass(archiver._rules[0])  # noqa: SLF001
        report = await running.stub.Health(pb.HealthRequest())
        (check,) = [c for c in report.checks if c.name == "archive:events_all.events"]
        assert check.status == pb.HEALTH_STATUS_DEGRADED
        assert check.message.startswith("last pass stopped:") and "events" in check.message
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        assert f"dataaccess_archive_pass_failing{labels} 1.0" in text
        assert "late" in _refs(running.data_dir / "hot.db")  # nothing moved, nothing lost


async def test_a_reference_added_after_the_pick_keeps_its_row(tmp_path: Path) -> None:
    document = _document(tmp_path, interval_seconds=3600)
    extra = (
        "CREATE TABLE notes (id INTEGER PRIMARY KEY,"
        " event INTEGER REFERENCES events (id) ON DELETE CASCADE);\n"
    )
    (tmp_path / "migrations/hot/0002_notes.sql").write_text(extra)
    (tmp_path / "migrations/cold/0002_notes.sql").write_text(extra)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new(old=3, recent=0))
        rule, picked, cutoff = await _copy_one_slice(running)
        assert len(picked.rows) == 3
        first = await _note_on(running, "old-0")
        await rule.mover.delete(picked, cutoff)
        await rule.mover.finish()
        assert _refs(running.data_dir / "hot.db") == ["old-0"]
        assert _refs(running.data_dir / "cold.db") == ["old-1", "old-2"]
        with running.sqlite("hot") as conn:
            assert conn.execute("SELECT event FROM notes").fetchall() == [(first,)]


async def test_a_stop_while_a_slice_moves_leaves_it_to_the_next_start(tmp_path: Path) -> None:
    document = _document(tmp_path, interval_seconds=3600, slice_rows=5)
    async with started(tmp_path, document) as running:
        await _insert(running, _old_and_new(old=12, recent=2))
        archiver = running.server.access.archiver
        archiver._pause_after = "copy"  # noqa: SLF001 - parked between copy and delete
        passing = asyncio.ensure_future(archiver.run_pass(archiver._rules[0]))  # noqa: SLF001
        deadline = time.monotonic() + 10
        while len(_refs(running.data_dir / "cold.db")) < 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        passing.cancel()
        await asyncio.gather(passing, return_exceptions=True)
        # Not finished here (a cancelled step could still commit): the group is refused.
        assert len(_refs(running.data_dir / "hot.db")) == 14
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _totals(running)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        report = await running.stub.Health(pb.HealthRequest())
        (check,) = [c for c in report.checks if c.name == "archive:events_all.events"]
        assert check.status == pb.HEALTH_STATUS_DEGRADED
    async with started(tmp_path, document) as running:
        hot, cold = _refs(running.data_dir / "hot.db"), _refs(running.data_dir / "cold.db")
        assert len(hot) + len(cold) == 14 and not set(hot) & set(cold)
        assert await _totals(running) == (14, sum(range(12)) + 1000 + 1001)


@pytest.mark.unit
def test_a_routed_key_older_than_the_targets_range_reads_its_own_member(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from service.db.door import ArchiveMark
    from service.routing.router import Router
    from tests.conftest import build_config

    document = _document(tmp_path)
    document["databases"].append({"name": "oldest", "path": "oldest.db"})
    group = document["groups"][0]
    group["members"] = ["oldest", "cold", "hot"]
    group["route"]["bounds"] = [
        {"member": "oldest", "below": "1990-01-01"},
        {"member": "cold", "below": "2000-01-01"},
        {"member": "hot"},
    ]
    (tmp_path / "data").mkdir(exist_ok=True)
    config = build_config(tmp_path, document)
    databases = {
        name: SimpleNamespace(name=name, failure=None) for name in ("oldest", "cold", "hot")
    }
    router = Router(config, databases)
    router.set_mark("events_all", ArchiveMark(boundary="2026-01-01"))

    def names(key: str) -> list[str]:
        return [db.name for db in router.members("events_all", key, routed=True)]

    assert names("1985-06-01") == ["oldest"]
    assert names("1995-06-01") == ["cold", "hot"]  # below the stored boundary: both
    assert names("2026-06-01") == ["hot"]
    assert router.pick("events_all", "1995-06-01") == "cold"
    assert router.pick("events_all", "2020-06-01") == "cold"  # the boundary moved past it


async def test_archival_config_errors_are_one_line(tmp_path: Path) -> None:
    from service.config import ConfigError
    from tests.conftest import build_config

    document = _document(tmp_path)
    document["groups"][0]["route"]["kind"] = "hash"
    with pytest.raises(ConfigError, match="needs a range route"):
        build_config(tmp_path, document)
    document = _document(tmp_path, target="nowhere")
    with pytest.raises(ConfigError, match="not a member"):
        build_config(tmp_path, document)
    document = _document(tmp_path)
    document["workers"] = 2
    document["redis_url"] = "redis://127.0.0.1:1"
    with pytest.raises(ConfigError, match="workers: 1"):
        build_config(tmp_path, document)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["begin", "copy", "delete", "finish"])
def test_sigkill_at_each_step_leaves_every_row_in_exactly_one_member(
    tmp_path: Path, service_process: Any, step: str
) -> None:
    rows = _old_and_new(old=23, recent=4)
    everyone = sorted(ref for _, ref, _ in rows)
    _load(service_process, tmp_path, rows)
    document = _document(tmp_path, slice_rows=5)
    data = Path(document["data_dir"])
    paused = service_process(document, {"DATAACCESS_ARCHIVE_PAUSE_AFTER": step})
    deadline = time.monotonic() + 20
    while "paused for good" not in paused.log.read_text():
        assert time.monotonic() < deadline, paused.log.read_text()
        time.sleep(0.05)
    paused.process.send_signal(signal.SIGKILL)
    paused.process.wait(5)
    if step == "copy":  # killed with a slice in both files
        assert len(_refs(data / "hot.db") + _refs(data / "cold.db")) == len(rows) + 5
    # Started again with nothing old enough to move: what is in the files is what the
    # start left there, before the first caller.
    again = service_process(_document(tmp_path, age_days=100_000))
    hot, cold = _refs(data / "hot.db"), _refs(data / "cold.db")
    assert sorted(hot + cold) == everyone, (step, hot, cold)
    with grpc.insecure_channel(f"127.0.0.1:{again.port}") as channel:
        answer = pb_grpc_stub(channel).Query(pb.QueryRequest(database="events_all", sql=TOTALS))
        assert sum(r[0] for r in plain_rows(answer)) == len(rows)
    again.process.send_signal(signal.SIGTERM)
    assert again.process.wait(10) == 0
    service_process(document)  # and the rule as it was: the rest moves
    old = sorted(r for r in everyone if r.startswith("old"))
    deadline = time.monotonic() + 20
    while _refs(data / "cold.db") != old:
        assert time.monotonic() < deadline, _refs(data / "cold.db")
        time.sleep(0.1)
    assert _refs(data / "hot.db") == sorted(r for r in everyone if r.startswith("new"))


def pb_grpc_stub(channel: grpc.Channel) -> Any:
    return pb_grpc.DataAccessStub(channel)


def _load(service_process: Any, tmp_path: Path, rows: list[tuple[str, str, int]]) -> None:
    """Put ``rows`` in hot through a service that moves nothing (none is old enough)."""
    loading = service_process(_document(tmp_path, age_days=100_000))
    with grpc.insecure_channel(f"127.0.0.1:{loading.port}") as channel:
        pb_grpc_stub(channel).BatchInsert(
            pb.BatchInsertRequest(
                database="hot",
                table="events",
                columns=["day", "ref", "n"],
                rows=[pb.Row(values=[value(v) for v in r]) for r in rows],
            )
        )
    loading.process.send_signal(signal.SIGTERM)
    assert loading.process.wait(10) == 0


@pytest.mark.slow
def test_a_second_process_refuses_group_reads_until_the_mover_is_gone(
    tmp_path: Path, service_process: Any
) -> None:
    """Two service processes on the same files: the first holds the rule's claim and sits
    with a slice in both files; the second cannot see its swaps, so it refuses the group's
    reads (members by name still answer) until the first is SIGKILLed, then takes the claim
    over, finishes the slice, counts every row once and moves the rest."""
    rows = _old_and_new(old=23, recent=4)
    everyone = sorted(ref for _, ref, _ in rows)
    _load(service_process, tmp_path, rows)
    document = _document(tmp_path, slice_rows=5)
    data = Path(document["data_dir"])
    first = service_process(document, {"DATAACCESS_ARCHIVE_PAUSE_AFTER": "copy"})
    deadline = time.monotonic() + 20
    while "paused for good" not in first.log.read_text():
        assert time.monotonic() < deadline, first.log.read_text()
        time.sleep(0.05)
    assert len(_refs(data / "hot.db") + _refs(data / "cold.db")) == len(rows) + 5
    second = service_process(document)
    with grpc.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = pb_grpc_stub(channel)
        group = pb.QueryRequest(database="events_all", sql=TOTALS)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Query(group, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "another process archives" in (refused.value.details() or "")
        hot = stub.Query(pb.QueryRequest(database="hot", sql=TOTALS), timeout=5)
        assert plain_rows(hot)[0][0] == len(rows)
        report = stub.Health(pb.HealthRequest(), timeout=5)
        (check,) = [c for c in report.checks if c.name == "archive:events_all.events"]
        assert check.status == pb.HEALTH_STATUS_DEGRADED
        assert "another process archives" in check.message
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(5)
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = stub.Query(group, timeout=5)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert time.monotonic() < deadline, second.log.read_text()
                time.sleep(0.1)
        assert sum(r[0] for r in plain_rows(answer)) == len(rows)
        old = sorted(r for r in everyone if r.startswith("old"))
        deadline = time.monotonic() + 20
        while _refs(data / "cold.db") != old:
            assert time.monotonic() < deadline, (_refs(data / "cold.db"), second.log.read_text())
            time.sleep(0.1)
        assert _refs(data / "hot.db") == sorted(r for r in everyone if r.startswith("new"))
        answer = stub.Query(group, timeout=5)
        assert sum(r[0] for r in plain_rows(answer)) == len(rows)
        report = stub.Health(pb.HealthRequest(), timeout=5)
        (check,) = [c for c in report.checks if c.name == "archive:events_all.events"]
        assert check.status == pb.HEALTH_STATUS_HEALTHY, check.message


def _claim_is_free(lock: Path) -> bool:
    """Whether another process could take the rule's claim now."""
    descriptor = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)  # drops the probe's own lock too
    return True


async def test_a_stopping_server_keeps_the_claim_until_its_databases_are_closed(
    tmp_path: Path,
) -> None:
    """A stop ends the passes first, but a cancelled step may still commit and group
    reads still run through the grace: another process must not take the claim over
    (and finish the slice under them) before the databases are closed."""
    document = _document(tmp_path, interval_seconds=3600)
    lock = tmp_path / "data" / "hot.db.archive-events.lock"
    held_while_closing: list[bool] = []
    async with started(tmp_path, document) as running:
        assert not _claim_is_free(lock)
        await running.server.access.archiver.stop()
        assert not _claim_is_free(lock)
        assert await _totals(running) == (0, 0)  # group reads still answer
        router = running.server.router
        close = router.close

        async def closing() -> None:
            held_while_closing.append(not _claim_is_free(lock))
            await close()

        router.close = closing  # type: ignore[method-assign]
    assert held_while_closing == [True]
    assert _claim_is_free(lock)


@pytest.mark.unit
async def test_a_group_is_refused_until_every_rule_of_it_is_claimed_here() -> None:
    from service.routing.barrier import GroupBarrier

    barrier = GroupBarrier("events_all")
    barrier.refuse("a", "another process archives a")
    barrier.refuse("b", "another process archives b")
    barrier.admit("b")
    with pytest.raises(errors.Unavailable, match="archives a"):
        async with barrier.reading(time.monotonic() + 1):
            pass
    barrier.admit("a")
    async with barrier.reading(time.monotonic() + 1):
        assert barrier.refused == ""


async def test_two_rules_moving_one_table_are_refused(tmp_path: Path) -> None:
    from service.config import ConfigError
    from tests.conftest import build_config

    document = _document(tmp_path)
    group = document["groups"][0]
    second = {
        **group,
        "name": "events_again",
        "route": None,
        "archive": [{**group["archive"][0], "table": "EVENTS"}],
    }
    del second["route"]
    document["groups"].append(second)
    with pytest.raises(ConfigError, match="hot.EVENTS is already archived by groups.events_all"):
        build_config(tmp_path, document)


async def test_a_rule_naming_its_table_in_another_case_is_the_same_rule(tmp_path: Path) -> None:
    """``events`` and ``EVENTS`` are one SQLite table: a slice left copied under one is
    finished by a start that names the table in the other case, and both take one claim."""
    document = _document(tmp_path, interval_seconds=3600, slice_rows=100)
    async with started(tmp_path, document) as running:
        rows = _old_and_new(old=5, recent=2)
        await _insert(running, rows)
        rule, _, _ = await _copy_one_slice(running)  # and stopped before its delete
        first_lock = rule.mover.lock_path
    data = tmp_path / "data"
    assert len(_refs(data / "hot.db") + _refs(data / "cold.db")) == len(rows) + 5
    document["groups"][0]["archive"][0].update(table="EVENTS", interval_seconds=3600)
    async with started(tmp_path, document) as running:
        # Read with no pass moving: the start's first one has ended.
        while not running.server.access.archiver.figures()[0].passes:
            await asyncio.sleep(0.01)
        hot, cold = _refs(data / "hot.db"), _refs(data / "cold.db")
        assert sorted(hot + cold) == sorted(ref for _, ref, _ in rows)
        rule = running.server.access.archiver._rules[0]  # noqa: SLF001
        assert rule.mover.lock_path == first_lock == data / "hot.db.archive-events.lock"  # type: ignore[attr-defined]
        assert _refs(data / "cold.db") == sorted(r for _, r, _ in rows if r.startswith("old"))


async def test_a_member_that_cannot_be_served_refuses_the_group_not_half_of_it(
    tmp_path: Path,
) -> None:
    """With the archive unreadable at start, its stored bounds and slices cannot be read:
    a routed read of a moved day would follow the config's bound to live alone and miss
    the rows. The group's reads are refused instead; live by its name still answers."""
    document = _document(tmp_path, interval_seconds=3600)
    rows = _old_and_new(old=10, recent=2)
    async with started(tmp_path, document) as running:
        await _insert(running, rows)
        await running.server.access.archiver.run_pass(running.server.access.archiver._rules[0])  # noqa: SLF001
        assert len(_refs(running.data_dir / "cold.db")) == 10
    cold = tmp_path / "data" / "cold.db"
    cold.rename(cold.with_suffix(".moved"))
    cold.write_bytes(b"\x00" * 4096)  # unreadable as a database
    async with started(tmp_path, document) as running:
        routed = pb.QueryRequest(database="events_all", sql=TOTALS, route_key=value(OLD_DAYS[4]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await running.stub.Query(routed)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cold cannot be served" in (refused.value.details() or "")
        report = await running.stub.Health(pb.HealthRequest())
        (check,) = [c for c in report.checks if c.name == "archive:events_all.events"]
        assert (
            check.status == pb.HEALTH_STATUS_DEGRADED and "cold cannot be served" in check.message
        )
        live = await running.stub.Query(pb.QueryRequest(database="hot", sql=TOTALS))
        assert plain_rows(live)[0][0] == 2


def _two_rules(tmp_path: Path) -> dict[str, Any]:
    """An unrouted group whose two tables each have a rule."""
    document = _document(tmp_path, interval_seconds=0.2)
    visits = SCHEMA.replace("events", "visits")
    for side in ("hot", "cold"):
        (tmp_path / f"migrations/{side}/0002_visits.sql").write_text(visits)
    group = document["groups"][0]
    del group["route"]
    group["archive"].append({**group["archive"][0], "table": "visits"})
    return document


async def test_a_group_is_served_here_only_once_every_rule_of_it_is_claimed_here(
    tmp_path: Path,
) -> None:
    """Another holder of one rule's claim (an open file description of its own, as
    another process has): the group's reads are refused though this process holds the
    other rule, and served once it has taken that one over too."""
    document = _two_rules(tmp_path)
    (tmp_path / "data").mkdir()
    lock = tmp_path / "data" / "hot.db.archive-visits.lock"
    other = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        async with started(tmp_path, document) as running:
            archiver = running.server.access.archiver
            await asyncio.sleep(0.5)  # passes of the rule it holds have run
            assert archiver.figures()[0].passes >= 1
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _totals(running)
            assert "archives its visits rows" in (refused.value.details() or "")
            report = await running.stub.Health(pb.HealthRequest())
            checks = {c.name: c for c in report.checks}
            for table in ("events", "visits"):  # the group is refused: both say why
                check = checks[f"archive:events_all.{table}"]
                assert check.status == pb.HEALTH_STATUS_DEGRADED
                assert "archives its visits rows" in check.message
            os.close(other)
            other = -1
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert await _totals(running) == (0, 0)
                    break
                except grpc.aio.AioRpcError:
                    assert time.monotonic() < deadline, archiver.figures()
                    await asyncio.sleep(0.1)
            report = await running.stub.Health(pb.HealthRequest())
            checks = {c.name: c for c in report.checks}
            for table in ("events", "visits"):
                check = checks[f"archive:events_all.{table}"]
                assert check.status == pb.HEALTH_STATUS_HEALTHY, check.message
    finally:
        if other >= 0:
            os.close(other)


async def test_an_unexpected_failure_of_a_pass_does_not_end_archival(tmp_path: Path) -> None:
    document = _document(tmp_path, interval_seconds=0.2)
    async with started(tmp_path, document) as running:
        archiver = running.server.access.archiver
        rule = archiver._rules[0]  # noqa: SLF001
        begin_pass = rule.mover.begin_pass
        failures = 0

        async def failing(cutoff: SqlValue) -> ArchiveMark:
            nonlocal failures
            failures += 1
            raise RuntimeError("the lock file's disk went away")

        rule.mover.begin_pass = failing  # type: ignore[method-assign]
        deadline = time.monotonic() + 5
        while failures < 2:  # the loop went on after the first
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert "RuntimeError" in archiver.figures()[0].last_error
        rule.mover.begin_pass = begin_pass  # type: ignore[method-assign]
        await running.stub.BatchInsert(
            pb.BatchInsertRequest(
                database="hot",
                table="events",
                columns=["day", "ref", "n"],
                rows=[pb.Row(values=[value(v) for v in r]) for r in _old_and_new(3, 1)],
            )
        )
        while len(_refs(running.data_dir / "cold.db")) < 3:
            assert time.monotonic() < deadline + 5, archiver.figures()
            await asyncio.sleep(0.05)


# Rows far past gRPC's flow-control windows: a stream whose client stops reading holds on.
WIDE = "SELECT ref, hex(randomblob(200000)) FROM events"


async def test_a_group_stream_puts_swaps_off_and_reads_never_wait_for_it(tmp_path: Path) -> None:
    """A QueryStream of the group counts every row once: its client may read slowly, so
    a pass meanwhile moves nothing (it says why, and the next pass moves the rows) rather
    than hold the group's reads behind a swap waiting for the stream."""
    document = _document(tmp_path, interval_seconds=3600)
    document["limits"]["stream_chunk_rows"] = 5
    async with started(tmp_path, document) as running:
        rows = _old_and_new(old=20, recent=3)
        await _insert(running, rows)
        archiver = running.server.access.archiver
        rule = archiver._rules[0]  # noqa: SLF001
        stream: Any = running.stub.QueryStream(pb.QueryRequest(database="events_all", sql=WIDE))
        end = grpc.aio.EOF  # type: ignore[attr-defined]  # (not in grpc's stubs)
        first = await stream.read()  # the stream holds the group now
        passing = asyncio.ensure_future(archiver.run_pass(rule))
        await asyncio.sleep(0.5)  # the pass waits for the stream, the barrier open
        assert await asyncio.wait_for(_totals(running), 1) == (23, sum(n for *_, n in rows))
        await passing  # put off after its wait: not a failure
        figures = archiver.figures()[0]
        assert figures.last_error == "" and figures.rows_moved == 0
        assert rule.due - time.monotonic() < 6  # tried again soon, not in an hour
        report = await running.stub.Health(pb.HealthRequest())
        (check,) = [c for c in report.checks if c.name == "archive:events_all.events"]
        assert check.status == pb.HEALTH_STATUS_HEALTHY, check.message
        assert _refs(running.data_dir / "cold.db") == []
        refs = [r.values[0].text for r in first.rows]
        while (message := await stream.read()) is not end:
            refs += [r.values[0].text for r in message.rows]
        assert sorted(refs) == sorted(ref for _, ref, _ in rows)
        # A stream that ends while a pass waits lets it go on.
        stream = running.stub.QueryStream(pb.QueryRequest(database="events_all", sql=WIDE))
        await stream.read()
        passing = asyncio.ensure_future(archiver.run_pass(rule))
        await asyncio.sleep(0.3)
        while await stream.read() is not end:
            pass
        await passing
        assert archiver.figures()[0].last_error == ""
        assert len(_refs(running.data_dir / "cold.db")) == 20
