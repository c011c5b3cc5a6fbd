"""Read work run on a reader's thread (execute and fetch in one hop, within limits), and
the stream of a read fetched chunk by chunk."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from service import errors
from service.db.door import Column
from service.db.sqlite.connection import SqliteConnection
from service.db.sqlite.guard import Guard, StatementShape
from service.values import Params, SqlRow, row_bytes


@dataclass(frozen=True)
class Fetched:
    """Rows fetched by one hop, and what the statement read."""

    columns: tuple[str, ...]
    rows: list[SqlRow]
    more: bool
    shape: StatementShape | None


def fetch_rows(
    raw: sqlite3.Connection, guard: Guard, sql: str, params: Params, limit: int, max_bytes: int
) -> Fetched:
    """Run ``sql`` and fetch up to ``limit`` rows; ``more`` says whether others follow."""
    cursor = _execute(raw, guard, sql, params)
    try:
        rows = _fetch_within(cursor, limit + 1, max_bytes)
        columns = tuple(d[0] for d in cursor.description or ())
        more = len(rows) > limit
        return Fetched(columns, rows[:limit], more, guard.shape_of(sql))
    finally:
        cursor.close()


@dataclass
class OpenStream:
    """A statement being streamed: its cursor stays on its connection's thread."""

    cursor: sqlite3.Cursor
    columns: tuple[str, ...]
    shape: StatementShape | None


def open_stream(raw: sqlite3.Connection, guard: Guard, sql: str, params: Params) -> OpenStream:
    """Run ``sql`` for streaming; rows are fetched chunk by chunk with ``fetch_chunk``."""
    cursor = _execute(raw, guard, sql, params)
    columns = tuple(d[0] for d in cursor.description or ())
    return OpenStream(cursor, columns, guard.shape_of(sql))


def fetch_chunk(stream: OpenStream, max_rows: int, max_bytes: int) -> tuple[list[SqlRow], bool]:
    """The next rows of a stream, at most ``max_rows`` and about ``max_bytes``; and whether
    the cursor is exhausted (a chunk cut by bytes is short but not the end)."""
    chunk: list[SqlRow] = []
    size = 0
    while len(chunk) < max_rows and size < max_bytes:
        row = stream.cursor.fetchone()
        if row is None:
            return chunk, True
        chunk.append(row)
        size += row_bytes(row)
    return chunk, False


def close_stream(stream: OpenStream) -> None:
    """Let go of a stream's cursor."""
    stream.cursor.close()


def _execute(raw: sqlite3.Connection, guard: Guard, sql: str, params: Params) -> sqlite3.Cursor:
    guard.begin(sql)
    cursor = raw.execute(sql, params)
    if cursor.description is None:
        cursor.close()
        raise errors.InvalidArgument("Query takes a statement that returns rows", field="sql")
    return cursor


def _fetch_within(cursor: sqlite3.Cursor, limit: int, max_bytes: int) -> list[SqlRow]:
    """Up to ``limit`` rows, refused as soon as they pass ``max_bytes``."""
    # Row by row, not fetchmany(limit): 10,000 rows of a few MB each would all be in
    # memory before their size could be looked at.
    rows: list[SqlRow] = []
    total = 0
    for row in cursor:
        total += row_bytes(row)
        if total > max_bytes:
            raise errors.ResourceExhausted(
                f"the result is over {max_bytes} bytes: cut it with max_rows or use QueryStream"
            )
        rows.append(row)
        if len(rows) >= limit:
            break
    return rows


class SqliteRowStream:
    """A statement being streamed on a reader lent for as long as the stream is open."""

    def __init__(
        self,
        conn: SqliteConnection,
        opened: OpenStream,
        columns: Sequence[Column],
        reads: frozenset[str],
        chunk_bytes: int,
        deadline: float,
    ) -> None:
        self._conn = conn
        self._opened = opened
        self.columns = columns
        self.reads = reads
        self._chunk_bytes = chunk_bytes
        self._deadline = deadline
        self.sent = 0

    async def next_chunk(self, max_rows: int) -> tuple[list[SqlRow], bool]:
        """Up to ``max_rows`` more rows, and whether the statement is exhausted."""
        work = functools.partial(_next_chunk, self._opened, max_rows, self._chunk_bytes)
        rows, exhausted = await self._conn.run(work, self._deadline)
        self.sent += len(rows)
        return rows, exhausted

    def unsent(self, rows: int) -> None:
        """Rows fetched but not sent: the span counts rows returned to the caller."""
        self.sent -= rows


def _next_chunk(
    opened: OpenStream, rows: int, max_bytes: int, _raw: sqlite3.Connection
) -> tuple[list[SqlRow], bool]:
    return fetch_chunk(opened, rows, max_bytes)
