"""Write work: BatchInsert plans checked against the schema, and the functions that run them.

A plan is built on the event loop from the request and the schema (so bad
identifiers fail before anything is queued); its ``run`` executes on the
writer's thread inside the transaction the WriteBatcher opened.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Iterator, Sequence
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
# The rest of the rows after the largest statements, in few distinct SQL texts (cached
# statements, shapes).
_SMALLER_CHUNKS = (16, 4, 1)
# Any mention of REPLACE (the function too): bumping a key generation too often is only a
# cache miss, too seldom a stale read.
_REPLACE_WORD = re.compile(r"\breplace\b", re.IGNORECASE)


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
    # ``sql`` in parts, to write several rows per statement: "INSERT ... INTO t (a, b)",
    # "(?, ?)" and the upsert clause. Empty head: one row per statement.
    head: str = field(default="", repr=False)
    values: str = field(default="", repr=False)
    tail: str = field(default="", repr=False)

    @property
    def replaces(self) -> bool:
        """Whether a conflict deletes the row in the way (INSERT OR REPLACE)."""
        return self.sql.startswith(_INSERT_VERBS["replace"] + " ")

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        """Insert every row; runs on the writer's thread in the job's transaction."""
        before = _last_insert_rowid(raw)
        count = 0
        tables: set[str] = set()
        for sql, param_sets in self._statements(raw, guard):
            guard.begin(sql)
            cursor = raw.executemany(sql, param_sets)
            shape = guard.shape_of(sql)
            count += max(cursor.rowcount, 0)
            tables |= shape.writes if shape is not None else {self.table}
        new_rowid = self._new_rowid(raw, guard, count, before)
        return WriteOutcome((count,), new_rowid, frozenset(tables))

    def _statements(
        self, raw: sqlite3.Connection, guard: Guard
    ) -> Iterator[tuple[str, Iterator[SqlRow]]]:
        """The rows in order, as (SQL of ``size`` rows, parameter sets of that many rows).

        SQLite runs the rows of one multi-row VALUES one after the other, as it
        runs them in separate statements: conflicts, upserts and triggers alike.
        """
        most = self._rows_per_statement(raw, guard)
        if most == 1 or len(self.rows) <= 1:
            yield self.sql, iter(self.rows)
            return
        start = 0
        for size in sorted({most, *(s for s in _SMALLER_CHUNKS if s < most)}, reverse=True):
            statements = (len(self.rows) - start) // size
            if not statements:
                continue
            end = start + statements * size
            yield self._sql_of(size), _flattened(self.rows, start, end, size)
            start = end

    def _rows_per_statement(self, raw: sqlite3.Connection, guard: Guard) -> int:
        """One row per statement, unless the job runs in a savepoint and the key capture
        watches the table: then each statement journals again every page it changes.

        Measured, 1000 rows into a table with one secondary index: alone in its
        transaction, 2.7 ms untracked, 3.6 ms tracked one row per statement,
        3.8 ms 199 rows per statement; in a savepoint, 3.3, 8.0 and 5.0 ms.
        """
        watched = self.table.lower() in guard.key_triggers.values()
        if not (self.head and len(self.rows) > 1 and guard.in_savepoint and watched):
            return 1
        width = len(self.rows[0])
        fixed = len(self.head.encode()) + len(self.tail.encode())  # the limit counts bytes
        room = raw.getlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH) - fixed - len(" VALUES ")
        by_length = (room + 2) // (len(self.values) + 2)  # rows joined by ", "
        by_params = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // max(width, 1)
        return max(1, min(by_length, by_params))

    def _sql_of(self, rows: int) -> str:
        if rows == 1:
            return self.sql
        return f"{self.head} VALUES {', '.join([self.values] * rows)}{self.tail}"

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


def _flattened(rows: Sequence[SqlRow], start: int, end: int, size: int) -> Iterator[SqlRow]:
    """``rows[start:end]`` as parameter sets of ``size`` rows each."""
    chain = itertools.chain.from_iterable
    return (tuple(chain(rows[at : at + size])) for at in range(start, end, size))


@dataclass(frozen=True)
class StatementPlan:
    """One BatchUpdate: DML statements, each with its parameter sets."""

    statements: Sequence[tuple[str, Sequence[SqlRow]]]

    @property
    def replaces(self) -> bool:
        """Whether a statement may resolve a conflict by REPLACE (the SQL says the word)."""
        return any(says_replace(sql) for sql, _ in self.statements)

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        """Run the statements in order; runs on the writer's thread in the job's transaction."""
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


def says_replace(sql: str) -> bool:
    """Whether ``sql`` may resolve a conflict by REPLACE, whose deletes fire no trigger."""
    return _REPLACE_WORD.search(sql) is not None


def may_replace(plan: WritePlan) -> bool:
    """Whether ``plan`` may delete rows by REPLACE, which no trigger sees.

    A plan that wraps another (an idempotent one) answers for the plan it
    runs; a plan that does not say is taken to replace.
    """
    says = getattr(plan, "replaces", None)
    if isinstance(says, bool):
        return says
    inner = getattr(plan, "plan", None)
    return may_replace(inner) if inner is not None else True


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
    values = f"({', '.join('?' * len(columns))})"
    upsert = _upsert_clause(request, table, columns) if request.on_conflict == "upsert" else ""
    sql = f"{head} VALUES {values}{upsert}"
    return InsertPlan(sql, table.name, request.rows, bool(upsert), head, values, upsert)


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
