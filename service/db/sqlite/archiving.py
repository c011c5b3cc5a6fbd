"""One archive rule's steps between two SQLite files, each a transaction of one file.

Two files never commit together (in WAL mode not even with ATTACH), so each
step records itself in the file it changes, and a stop between two steps is
completed from those records before the group serves again:

- copy (target): the slice's rows, and the slice in
  ``_dataaccess_archive_slices`` as ``copied`` with its (source rowid, target
  rowid) pairs;
- delete (source): every row of the slice still as it was copied (one changed
  or deleted since stays: the source's version wins), and the rowids deleted
  in ``_dataaccess_archive_deleted``; when no row below the cutoff is left,
  the rule's stored boundary moves to it in the same transaction;
- finish (target): the copies of the rows the source kept are dropped (all of
  them when the source holds no record: its delete never committed) and the
  slice is ``done``.

So after any stop each row is in exactly one file once ``finish`` ran. The
steps go through the files' writers, as callers' writes do, so their tables'
and keys' cache tags are bumped after each commit.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

from service import errors
from service.config import ArchiveRule
from service.db.door import ArchiveMark, ArchiveSlice, SliceEnd, TagsOfWriteOn, WriteOutcome
from service.db.sqlite.guard import Guard
from service.db.sqlite.write_plans import WritePlan
from service.domain import WriteOptions
from service.values import SqlValue

if TYPE_CHECKING:
    from service.db.sqlite.database import SqliteDatabase

T = TypeVar("T")
STEP_SECONDS = 30.0  # a step is at most slice_rows rows: this only bounds a stuck disk
KEEP_FINISHED = 1000  # finished slices kept in the target's journal, newest first
_SOURCE_TABLES = (
    "CREATE TABLE IF NOT EXISTS _dataaccess_archive_marks"
    # No declared type: the bounds keep the date column's own type and value.
    " (rule TEXT PRIMARY KEY, boundary, moving_below)",
    "CREATE TABLE IF NOT EXISTS _dataaccess_archive_deleted"
    " (slice TEXT PRIMARY KEY, rule TEXT NOT NULL, rowids TEXT NOT NULL)",
)
_TARGET_TABLES = (
    "CREATE TABLE IF NOT EXISTS _dataaccess_archive_slices"
    " (slice TEXT PRIMARY KEY, rule TEXT NOT NULL, pairs TEXT, state TEXT NOT NULL,"
    " moved INTEGER NOT NULL DEFAULT 0, kept INTEGER NOT NULL DEFAULT 0, at REAL NOT NULL)",
)


def _name(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class _Trusted:
    """Runs the service's own statements past the guard inside a writer's job."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def __enter__(self) -> None:
        self._guard.trusted = True

    def __exit__(self, *_: object) -> None:
        self._guard.trusted = False


@dataclass
class _Schema:
    """Creates the journal tables of one side."""

    statements: Sequence[str]
    replaces = False

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        with _Trusted(guard):
            for statement in self.statements:
                raw.execute(statement)
        return WriteOutcome((), 0, frozenset())


@dataclass
class _BeginPass:
    """Source: rows below ``cutoff`` are moving, or, none being left, the boundary is it."""

    rule: ArchiveRule
    cutoff: SqlValue
    replaces = False
    mark: ArchiveMark = field(default_factory=ArchiveMark)

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        with _Trusted(guard):
            if _any_below(raw, self.rule, self.cutoff):
                raw.execute(
                    "INSERT INTO _dataaccess_archive_marks (rule, moving_below) VALUES (?, ?)"
                    " ON CONFLICT (rule) DO UPDATE SET moving_below = excluded.moving_below"
                    " WHERE moving_below IS NULL OR moving_below < excluded.moving_below",
                    (self.rule.key, self.cutoff),
                )
            else:
                _move_boundary(raw, self.rule, self.cutoff)
            self.mark = _read_mark(raw, self.rule)
        return WriteOutcome((), 0, frozenset())


@dataclass
class _Copy:
    """Target: the slice's rows, and the slice recorded as copied."""

    rule: ArchiveRule
    rows: ArchiveSlice
    replaces = False

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        columns = ", ".join(_name(c) for c in self.rows.columns)
        marks = ", ".join("?" * len(self.rows.columns))
        # OR ABORT: a table's ON CONFLICT REPLACE would drop an archived row (unseen by
        # total_changes) to make room for the copy.
        sql = f"INSERT OR ABORT INTO {_name(self.rule.table)} ({columns}) VALUES ({marks})"
        back = f"SELECT {columns} FROM {_name(self.rule.table)} WHERE rowid = ?"
        pairs = []
        with _Trusted(guard):
            _require_rowid(raw, self.rule.table)
            for rowid, row in zip(self.rows.rowids, self.rows.rows, strict=True):
                copied = _alone(raw, sql, row, f"inserting into {self._where}")
                self._check_stored(row, raw.execute(back, (copied,)).fetchone())
                pairs.append((rowid, copied))
            if pairs:  # finishing drops copies: that delete must not write elsewhere either
                raw.execute("SAVEPOINT archive_probe")
                try:
                    drop = f"DELETE FROM {_name(self.rule.table)} WHERE rowid = ?"
                    _alone(raw, drop, (pairs[0][1],), f"deleting from {self._where}")
                finally:
                    if raw.in_transaction:  # a trigger's RAISE(ROLLBACK) ended it all
                        raw.execute("ROLLBACK TO archive_probe")
                        raw.execute("RELEASE archive_probe")
            raw.execute(
                "INSERT INTO _dataaccess_archive_slices (slice, rule, pairs, state, at)"
                " VALUES (?, ?, ?, 'copied', ?)",
                (self.rows.id, self.rule.key, json.dumps(pairs), time.time()),
            )
            return WriteOutcome((len(pairs),), 0, _declared(raw, self.rule.table))

    @property
    def _where(self) -> str:
        return f"{self.rule.target}.{self.rule.table}"

    def _check_stored(self, row: Sequence[SqlValue], stored: Sequence[SqlValue]) -> None:
        """Refuse (the copy rolls back) a row the target would keep as another value: a
        column type there converting it (TEXT '007' into an INTEGER column is 7), or a
        trigger or default changing it."""
        for column, sent, kept in zip(self.rows.columns, row, stored, strict=True):
            if type(sent) is not type(kept) or sent != kept or _signs_differ(sent, kept):
                raise errors.FailedPrecondition(
                    f"archive: {self.rule.target}.{self.rule.table}.{column} would keep "
                    f"{_shown(sent)} as {_shown(kept)}; give the archive's table the "
                    "source's column types"
                )


def _alone(raw: sqlite3.Connection, sql: str, params: Sequence[SqlValue], doing: str) -> int:
    """Run a one-row INSERT or DELETE that must change that row and nothing else; the
    row's rowid. A trigger that writes elsewhere (an audit table, child rows), skips the
    row or refuses it would turn a move into something else: the step rolls back."""
    cursor = _only(raw, sql, params, doing)
    if cursor.rowcount != 1:
        raise errors.FailedPrecondition(
            f"archive: {doing} changed no row (a trigger on the table skipped it); "
            "archival moves rows of tables whose triggers do not skip or write"
        )
    return cast(int, cursor.lastrowid)


def _only(
    raw: sqlite3.Connection, sql: str, params: Sequence[SqlValue], doing: str
) -> sqlite3.Cursor:
    """Run a statement that must change only the rows it names (its ``rowcount``): no
    trigger or foreign-key action may write elsewhere."""
    before = raw.total_changes
    try:
        cursor = raw.execute(sql, params)
    except sqlite3.IntegrityError as exc:  # a constraint, or a trigger's RAISE
        raise errors.FailedPrecondition(f"archive: {doing} failed: {exc}") from exc
    changed = raw.total_changes - before
    if changed != cursor.rowcount:
        raise errors.FailedPrecondition(
            f"archive: {doing} changes {changed} rows for {cursor.rowcount} (a trigger or a "
            "foreign key's action on the table); archival moves rows of tables whose "
            "triggers do not skip or write"
        )
    return cursor


def _signs_differ(sent: SqlValue, kept: SqlValue) -> bool:
    """-0.0 and 0.0 are equal, and not the same value."""
    if isinstance(sent, float) and isinstance(kept, float):
        return math.copysign(1.0, sent) != math.copysign(1.0, kept)
    return False


def _shown(value: SqlValue) -> str:
    """A value and its SQLite type, short, for a message."""
    kind = {int: "integer", float: "real", str: "text", bytes: "blob"}.get(type(value), "null")
    text = repr(value)
    return f"{text[:40]}{'...' if len(text) > 40 else ''} ({kind})"


@dataclass
class _Delete:
    """Source: the rows still as copied go, recorded; the boundary moves if none is left."""

    rule: ArchiveRule
    rows: ArchiveSlice
    cutoff: SqlValue
    replaces = False

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        # The same value: binary (a NOCASE column's 'A' IS 'a') and of the same type
        # (1 IS 1.0); and still no row of another table pointing at it (added since the
        # pick: deleting it would cascade to a row that does not move).
        same = " AND ".join(
            f"{_name(c)} IS ? COLLATE BINARY AND typeof({_name(c)}) = typeof(?)"
            for c in self.rows.columns
        )
        with _Trusted(guard):
            info = raw.execute(f"PRAGMA table_xinfo({_name(self.rule.table)})").fetchall()
            free = "".join(f" AND {c}" for c in _references(raw, self.rule.table, info))
            sql = f"DELETE FROM {_name(self.rule.table)} AS moving WHERE rowid = ? AND {same}{free}"
            deleted = []
            still = f"SELECT 1 FROM {_name(self.rule.table)} AS moving WHERE rowid = ? AND "
            still += f"{same}{free}"
            doing = f"deleting from {self.rule.source}.{self.rule.table}"
            for rowid, row in zip(self.rows.rowids, self.rows.rows, strict=True):
                params = (rowid, *(value for value in row for _ in range(2)))
                if _only(raw, sql, params, doing).rowcount:
                    deleted.append(rowid)
                elif raw.execute(still, params).fetchone() is not None:
                    _alone(raw, sql, params, doing)  # a trigger skipped it: raises
            raw.execute(
                "INSERT INTO _dataaccess_archive_deleted (slice, rule, rowids) VALUES (?, ?, ?)",
                (self.rows.id, self.rule.key, json.dumps(deleted)),
            )
            if not _any_below(raw, self.rule, self.cutoff):
                _move_boundary(raw, self.rule, self.cutoff)
            return WriteOutcome((len(deleted),), 0, _declared(raw, self.rule.table))


@dataclass
class _Finish:
    """Target: drop the copies of the rows the source kept; the slice is done."""

    rule: ArchiveRule
    slice_id: str
    pairs: Sequence[tuple[int, int]]
    deleted: frozenset[int] | None  # None: the source never committed its delete
    replaces = False
    end: tuple[int, int] = (0, 0)

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        sql = f"DELETE FROM {_name(self.rule.table)} WHERE rowid = ?"
        deleted = self.deleted or frozenset()
        kept = [target for source, target in self.pairs if source not in deleted]
        doing = f"dropping a copy from {self.rule.target}.{self.rule.table}"
        with _Trusted(guard):
            for rowid in kept:
                # No row: already gone (a write by the member's name). Else it must go,
                # alone: a copy left would be counted twice.
                if (
                    not _only(raw, sql, (rowid,), doing).rowcount
                    and raw.execute(
                        f"SELECT 1 FROM {_name(self.rule.table)} WHERE rowid = ?", (rowid,)
                    ).fetchone()
                ):
                    _alone(raw, sql, (rowid,), doing)  # a trigger skipped it: raises
            moved = len(self.pairs) - len(kept)
            raw.execute(
                "UPDATE _dataaccess_archive_slices SET state = 'done', pairs = NULL,"
                " moved = ?, kept = ? WHERE slice = ?",
                (moved, len(kept), self.slice_id),
            )
            raw.execute(
                "DELETE FROM _dataaccess_archive_slices WHERE rule = ? AND state = 'done'"
                " AND slice NOT IN (SELECT slice FROM _dataaccess_archive_slices WHERE rule = ?"
                " AND state = 'done' ORDER BY at DESC LIMIT ?)",
                (self.rule.key, self.rule.key, KEEP_FINISHED),
            )
            tables = _declared(raw, self.rule.table) if kept else frozenset()
        self.end = (moved, len(kept))
        return WriteOutcome((len(kept),), 0, tables)


@dataclass
class _Forget:
    """Source: the records of slices the target finished."""

    slices: Sequence[str]
    replaces = False

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        with _Trusted(guard):
            raw.executemany(
                "DELETE FROM _dataaccess_archive_deleted WHERE slice = ?",
                [(s,) for s in self.slices],
            )
        return WriteOutcome((), 0, frozenset())


def _declared(raw: sqlite3.Connection, table: str) -> frozenset[str]:
    """``table`` as its file declares it: cache tags name tables so."""
    found = raw.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
        (table,),
    ).fetchone()
    return frozenset({str(found[0]) if found else table})


def _any_below(raw: sqlite3.Connection, rule: ArchiveRule, cutoff: SqlValue) -> bool:
    sql = f"SELECT EXISTS (SELECT 1 FROM {_name(rule.table)} WHERE {_name(rule.date_column)} < ?)"
    return bool(raw.execute(sql, (cutoff,)).fetchone()[0])


def _move_boundary(raw: sqlite3.Connection, rule: ArchiveRule, cutoff: SqlValue) -> None:
    """No row below ``cutoff`` is left in the source: the boundary is at least there. A
    window of an earlier pass reaching past it (a longer age since) stays open."""
    raw.execute(
        "INSERT INTO _dataaccess_archive_marks (rule, boundary) VALUES (?, ?)"
        " ON CONFLICT (rule) DO UPDATE SET"
        " boundary = max(coalesce(boundary, excluded.boundary), excluded.boundary),"
        " moving_below = CASE WHEN moving_below > max(coalesce(boundary, excluded.boundary),"
        " excluded.boundary) THEN moving_below END",
        (rule.key, cutoff),
    )


def _read_mark(raw: sqlite3.Connection, rule: ArchiveRule) -> ArchiveMark:
    found = raw.execute(
        "SELECT boundary, moving_below FROM _dataaccess_archive_marks WHERE rule = ?",
        (rule.key,),
    ).fetchone()
    return ArchiveMark(*found) if found else ArchiveMark()


def _pick(
    raw: sqlite3.Connection, rule: ArchiveRule, cutoff: SqlValue
) -> tuple[tuple[str, ...], list[tuple[SqlValue, ...]]]:
    """The next rows below ``cutoff``, oldest first, and the columns they are copied by.

    A row another table's foreign key still points at stays (deleting it would cascade
    to rows that do not move, or fail): the boundary waits for it.
    """
    info = raw.execute(f"PRAGMA table_xinfo({_name(rule.table)})").fetchall()
    if not info:
        raise errors.FailedPrecondition(f"archive: no table {rule.table!r}")
    _require_rowid(raw, rule.table)
    columns = tuple(
        str(row[1])
        for row in info
        # Generated and hidden columns are the table's to compute; without keep_ids the
        # integer primary key (the rowid) is the target's to give.
        if row[6] == 0 and (rule.keep_ids or not _is_rowid_alias(raw, rule.table, row))
    )
    listed = ", ".join(_name(c) for c in columns)
    date = _name(rule.date_column)
    unreferenced = "".join(f" AND {clause}" for clause in _references(raw, rule.table, info))
    sql = (
        f"SELECT rowid, {listed} FROM {_name(rule.table)} AS moving WHERE {date} < ?"
        f"{unreferenced} ORDER BY {date}, rowid LIMIT ?"
    )
    return columns, raw.execute(sql, (cutoff, rule.slice_rows)).fetchall()


_NAME_IN_FILE = 64  # of a table's name in its lock file's (file names stop at 255 bytes)


def _file_safe(table: str) -> str:
    """``table`` as part of a file name: one lock per source table, whatever the target
    (two processes whose configs disagree on it must not both move its rows)."""
    safe = re.sub(r"[^a-z0-9_.-]", "_", table)
    if safe == table and len(table) <= _NAME_IN_FILE:
        return table
    return f"{safe[:_NAME_IN_FILE]}-{hashlib.sha256(table.encode()).hexdigest()[:12]}"


def _require_rowid(raw: sqlite3.Connection, table: str) -> None:
    """Slices name their rows by rowid in both files' journals."""
    found = raw.execute("SELECT wr FROM pragma_table_list(?)", (table,)).fetchone()
    if found is not None and found[0]:
        raise errors.FailedPrecondition(
            f"archive: {table} is a WITHOUT ROWID table; archival moves rowid tables only"
        )


def _is_rowid_alias(raw: sqlite3.Connection, table: str, column: tuple[object, ...]) -> bool:
    """Whether ``column`` (a table_xinfo row) is ``table``'s INTEGER PRIMARY KEY."""
    if column[5] != 1 or str(column[2]).upper() != "INTEGER":
        return False
    keys = raw.execute(
        f"SELECT count(*) FROM pragma_table_info({_quote(table)}) WHERE pk > 0"
    ).fetchone()[0]
    return int(keys) == 1


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _references(
    raw: sqlite3.Connection, table: str, info: Sequence[tuple[object, ...]]
) -> list[str]:
    """``NOT EXISTS`` clauses: no row of another table's foreign key points at the row."""
    primary = [str(row[1]) for row in sorted(info, key=lambda r: int(str(r[5]))) if row[5]]
    clauses = []
    tables = raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    for (child,) in tables:
        keys: dict[int, list[tuple[str, str]]] = {}
        for fk in raw.execute(f"PRAGMA foreign_key_list({_name(str(child))})").fetchall():
            if str(fk[2]).lower() == table.lower():
                keys.setdefault(int(fk[0]), []).append((str(fk[3]), str(fk[4] or "")))
        for pairs in keys.values():
            parents = [to or primary[i] for i, (_, to) in enumerate(pairs)]
            same = " AND ".join(
                f"child.{_name(source)} = moving.{_name(parent)}"
                for (source, _), parent in zip(pairs, parents, strict=True)
            )
            clauses.append(f"NOT EXISTS (SELECT 1 FROM {_name(str(child))} AS child WHERE {same})")
    return clauses


class SqliteSliceMover:
    """The ``SliceMover`` of one rule between two SQLite databases of this process."""

    def __init__(
        self,
        rule: ArchiveRule,
        source: SqliteDatabase,
        target: SqliteDatabase,
        tags_of: TagsOfWriteOn,
    ) -> None:
        self.rule = rule
        self._source = source
        self._target = target
        self._tags_of = tags_of
        self._ready = False
        self._lock: int | None = None
        path = source.config.path
        name = f"{path.name}.archive-{_file_safe(rule.folded_table)}.lock"
        self.lock_path = path.with_name(name)

    def claim(self) -> bool:
        """Hold ``lock_path`` (flock, dropped with the process, SIGKILL included): another
        process finishing this process's slice between its copy and its delete would drop
        the copies of rows about to be deleted."""
        if self._lock is not None:
            return True
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._lock = descriptor
        return True

    def release(self) -> None:
        """Drop the claim (a file of its own: SQLite's locks on the database stay)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def _write(self, database: SqliteDatabase, plan: WritePlan) -> WriteOutcome:
        deadline = time.monotonic() + STEP_SECONDS

        def tags(outcome: WriteOutcome) -> Sequence[str]:
            return self._tags_of(database.name, outcome)

        return await database.submit_own(plan, WriteOptions(), deadline, tags)

    async def _read_source(self, work: Callable[[sqlite3.Connection], T]) -> T:
        deadline = time.monotonic() + STEP_SECONDS
        async with self._source.pool.reader(deadline) as conn:
            return await conn.run_trusted(work, deadline)

    async def _prepare(self) -> None:
        if not self._ready:
            await self._write(self._source, _Schema(_SOURCE_TABLES))
            await self._write(self._target, _Schema(_TARGET_TABLES))
            self._ready = True

    async def mark(self) -> ArchiveMark:
        """The rule's stored bounds."""
        await self._prepare()
        return await self._read_source(lambda raw: _read_mark(raw, self.rule))

    async def begin_pass(self, cutoff: SqlValue) -> ArchiveMark:
        """Rows below ``cutoff`` are moving from now on (or the boundary is there)."""
        await self._prepare()
        plan = _BeginPass(self.rule, cutoff)
        await self._write(self._source, plan)
        return plan.mark

    async def pick(self, cutoff: SqlValue) -> ArchiveSlice | None:
        """The next ``slice_rows`` rows below ``cutoff``, oldest first."""
        columns, rows = await self._read_source(lambda raw: _pick(raw, self.rule, cutoff))
        if not rows:
            return None
        return ArchiveSlice(
            uuid.uuid4().hex,
            columns,
            tuple(cast(int, row[0]) for row in rows),
            tuple(tuple(row[1:]) for row in rows),
        )

    async def copy(self, rows: ArchiveSlice) -> None:
        """The slice into the target, journalled as copied."""
        await self._write(self._target, _Copy(self.rule, rows))

    async def delete(self, rows: ArchiveSlice, cutoff: SqlValue) -> None:
        """The rows still as copied out of the source, recorded there."""
        await self._write(self._source, _Delete(self.rule, rows, cutoff))

    async def finish(self) -> list[SliceEnd]:
        """Complete every slice the target holds as copied, then forget the source's records."""
        await self._prepare()
        ends = []
        for slice_id, pairs in await self._copied():
            deleted = await self._deleted(slice_id)
            plan = _Finish(self.rule, slice_id, pairs, deleted)
            await self._write(self._target, plan)
            ends.append(SliceEnd(plan.end[0], plan.end[1], ArchiveMark()))
        recorded = await self._read_source(
            lambda raw: [
                str(row[0])
                for row in raw.execute(
                    "SELECT slice FROM _dataaccess_archive_deleted WHERE rule = ?",
                    (self.rule.key,),
                )
            ]
        )
        if recorded:
            # Every slice the target still had as copied was finished above.
            await self._write(self._source, _Forget(recorded))
        mark = await self.mark()
        return [SliceEnd(end.moved, end.kept, mark) for end in ends]

    async def _copied(self) -> list[tuple[str, list[tuple[int, int]]]]:
        deadline = time.monotonic() + STEP_SECONDS
        sql = (
            "SELECT slice, pairs FROM _dataaccess_archive_slices"
            " WHERE rule = ? AND state = 'copied' ORDER BY at"
        )
        async with self._target.pool.reader(deadline) as conn:
            rows = await conn.run_trusted(
                lambda raw: raw.execute(sql, (self.rule.key,)).fetchall(), deadline
            )
        return [(str(s), [(int(a), int(b)) for a, b in json.loads(p)]) for s, p in rows]

    async def _deleted(self, slice_id: str) -> frozenset[int] | None:
        found = await self._read_source(
            lambda raw: raw.execute(
                "SELECT rowids FROM _dataaccess_archive_deleted WHERE slice = ?", (slice_id,)
            ).fetchone()
        )
        if found is None:
            return None
        return frozenset(int(rowid) for rowid in json.loads(found[0]))

    async def pending(self, cutoff: SqlValue) -> tuple[int, SqlValue, SqlValue]:
        """Rows below ``cutoff`` in the source, and their oldest and newest dates."""
        date, table = _name(self.rule.date_column), _name(self.rule.table)
        sql = f"SELECT count(*), min({date}), max({date}) FROM {table} WHERE {date} < ?"
        found = await self._read_source(lambda raw: raw.execute(sql, (cutoff,)).fetchone())
        return int(found[0]), found[1], found[2]
