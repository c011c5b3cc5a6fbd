"""Write work: BatchInsert plans checked against the schema, and the functions that run them.

A plan is built on the event loop from the request and the schema (so bad
identifiers fail before anything is queued); its ``run`` executes on the
writer's thread inside the transaction the WriteBatcher opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service import errors
from service.db.door import WriteOutcome
from service.db.sqlite.guard import Guard
from service.db.sqlite.schema import Schema, TableInfo, quote_identifier
from service.domain import InsertRequest
from service.values import SqlRow

_INSERT_VERBS = {
    "abort": "INSERT",
    "ignore": "INSERT OR IGNORE",
    "replace": "INSERT OR REPLACE",
    "upsert": "INSERT",
}
_DRAIN_ROWS = 256  # RETURNING rows read at a time, only to reach the statement's end


class WritePlan(Protocol):
    """Work that writes, run on the writer's thread inside a savepoint."""

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome: ...


@dataclass(frozen=True)
class InsertPlan:
    """One BatchInsert: quoted SQL from schema names, and its rows."""

    sql: str
    table: str
    rows: Sequence[SqlRow]
    # The SQL says so already: kept out of repr, which fingerprints idempotent requests.
    upsert: bool = field(default=False, repr=False)

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        """Insert every row; runs on the writer's thread inside a savepoint."""
        before = _last_insert_rowid(raw)
        guard.begin(self.sql)
        cursor = raw.executemany(self.sql, self.rows)
        shape = guard.shape_of(self.sql)
        count = max(cursor.rowcount, 0)
        tables = shape.writes if shape is not None else frozenset({self.table})
        return WriteOutcome((count,), self._new_rowid(raw, guard, count, before), tables)

    def _new_rowid(self, raw: sqlite3.Connection, guard: Guard, count: int, before: int) -> int:
        """The rowid of the last row this plan inserted; 0 when no row got one.

        SQLite leaves last_insert_rowid() as it was when no row got a new rowid
        (a WITHOUT ROWID table, every row ignored, an upsert that only
        updated): that value belongs to an earlier write, perhaps another
        caller's, and is not reported.
        """
        after = _last_insert_rowid(raw)
        if not count:
            return 0
        if after != before:
            return after
        # Unchanged: the same rowid again (the highest row was deleted and
        # re-inserted), unless the table has none or an upsert only updated.
        return after if not self.upsert and _has_rowid(raw, guard, self.table) else 0


@dataclass(frozen=True)
class StatementPlan:
    """One BatchUpdate: DML statements, each with its parameter sets."""

    statements: Sequence[tuple[str, Sequence[SqlRow]]]

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        """Run the statements in order; runs on the writer's thread inside a savepoint."""
        counts: list[int] = []
        tables: set[str] = set()
        for index, (sql, param_sets) in enumerate(self.statements):
            where = f"statements[{index}].sql"
            sets = list(param_sets) or [()]
            guard.begin(sql)
            try:
                cursor = raw.execute(sql, sets[0])
            except sqlite3.ProgrammingError as exc:
                raise errors.InvalidArgument(str(exc), field=where) from exc
            shape = guard.shape_of(sql)
            if shape is None or not shape.writes:
                raise errors.InvalidArgument(
                    "BatchUpdate takes INSERT, UPDATE, DELETE or upsert statements only",
                    field=where,
                )
            counts.append(_rows_written(raw, cursor, sql, sets[1:]))
            tables |= shape.writes
        last_rowid = _last_insert_rowid(raw)
        return WriteOutcome(tuple(counts), last_rowid, frozenset(tables))


def _rows_written(
    raw: sqlite3.Connection, first: sqlite3.Cursor, sql: str, rest: Sequence[SqlRow]
) -> int:
    """The rows one statement wrote over all its parameter sets, as SQLite's changes() counts.

    That is the rows the statement itself inserted, updated or deleted: not
    rows written by triggers or foreign-key actions (total_changes() counts
    those too). With RETURNING, SQLite reports the count only once the
    statement has run to its end, so its rows are read (and dropped) first;
    executemany() would never read them and count 0.
    """
    if first.description is None:  # no RETURNING: the count is final already
        count = max(first.rowcount, 0)
        return count + (max(raw.executemany(sql, rest).rowcount, 0) if rest else 0)
    count = _drain(first)
    for params in rest:
        count += _drain(raw.execute(sql, params))
    return count


def _drain(cursor: sqlite3.Cursor) -> int:
    """Read a RETURNING statement to its end, a bounded chunk at a time; its count."""
    while cursor.fetchmany(_DRAIN_ROWS):
        pass
    return max(cursor.rowcount, 0)


def _last_insert_rowid(raw: sqlite3.Connection) -> int:
    return int(raw.execute("SELECT last_insert_rowid()").fetchone()[0])


def _has_rowid(raw: sqlite3.Connection, guard: Guard, table: str) -> bool:
    """False for a WITHOUT ROWID table, whose inserts leave last_insert_rowid() alone."""
    guard.trusted = True  # a pragma, which callers' statements may not use
    try:
        found = raw.execute("SELECT wr FROM pragma_table_list(?)", (table,)).fetchone()
    finally:
        guard.trusted = False
    return found is None or not found[0]


def plan_insert(request: InsertRequest, schema: Schema, allowed: frozenset[str]) -> InsertPlan:
    """Check a BatchInsert against the schema and build its SQL from the schema's names."""
    table = schema.table(request.table)
    if table is None:
        raise errors.NotFound(f"no such table: {request.table}", field="table")
    if table.name.lower() not in allowed:
        raise errors.PermissionDenied(f"writes to table {table.name!r} are not allowed")
    columns = _columns(table, request.columns, "columns")
    if not columns:
        raise errors.InvalidArgument("columns: at least one column is needed", field="columns")
    _check_rows(request.rows, len(columns))
    verb = _INSERT_VERBS.get(request.on_conflict)
    if verb is None:
        raise errors.InvalidArgument(
            f"unknown on_conflict {request.on_conflict}", field="on_conflict"
        )
    names = ", ".join(map(quote_identifier, columns))
    head = f"{verb} INTO {quote_identifier(table.name)} ({names})"
    values = f"VALUES ({', '.join('?' * len(columns))})"
    upsert = _upsert_clause(request, table, columns) if request.on_conflict == "upsert" else ""
    return InsertPlan(f"{head} {values}{upsert}", table.name, request.rows, bool(upsert))


def _upsert_clause(request: InsertRequest, table: TableInfo, columns: list[str]) -> str:
    conflict = _columns(table, request.conflict_columns, "conflict_columns")
    if not conflict:
        raise errors.InvalidArgument("UPSERT needs conflict_columns", field="conflict_columns")
    update = _columns(table, request.update_columns, "update_columns") or [
        c for c in columns if c not in conflict
    ]
    target = ", ".join(map(quote_identifier, conflict))
    if not update:
        return f" ON CONFLICT ({target}) DO NOTHING"
    sets = ", ".join(f"{quote_identifier(c)} = excluded.{quote_identifier(c)}" for c in update)
    return f" ON CONFLICT ({target}) DO UPDATE SET {sets}"


def _columns(table: TableInfo, names: Sequence[str], field: str) -> list[str]:
    declared = []
    for index, name in enumerate(names):
        column = table.column(name)
        if column is None:
            raise errors.NotFound(f"no such column: {table.name}.{name}", field=f"{field}[{index}]")
        if column[0] in declared:
            raise errors.InvalidArgument(f"column {name} given twice", field=f"{field}[{index}]")
        declared.append(column[0])
    return declared


def _check_rows(rows: Sequence[SqlRow], width: int) -> None:
    for index, row in enumerate(rows):
        if len(row) != width:
            raise errors.InvalidArgument(
                f"row has {len(row)} values for {width} columns", field=f"rows[{index}]"
            )
