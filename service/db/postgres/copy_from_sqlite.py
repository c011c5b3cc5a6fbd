"""``python -m service copy SOURCE TARGET``: copy one configured SQLite database's tables
and rows into a configured PostgreSQL database, resumably, and compare the row counts.

- The SQLite file is opened read-only (``file:...?mode=ro``); each batch is one short
  statement on a worker thread, so the running service is never blocked.
- A table missing from the target schema is created from the SQLite declaration, its
  column types mapped by SQLite's affinity rules (:func:`postgres_type`), with the primary
  key and NOT NULL; an existing table (made by PostgreSQL migrations, say) is used as is.
- Rows go in key order (rowid, or the primary key of a WITHOUT ROWID table), ``BATCH_ROWS``
  at a time, by COPY in text format. Each batch commits in one transaction with its row of
  ``_dataaccess_copy_progress`` (the last key copied), so a re-run after a crash goes on
  after the last committed batch: no row twice, none skipped. A finished table is skipped.
- Virtual tables (FTS) and their shadow tables are not copied: make them with migrations.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from service.config import Config, DatabaseConfig, PostgresDatabaseConfig
from service.db.postgres import catalog
from service.db.postgres.catalog import INTERNAL_PREFIX, quote
from service.db.postgres.session import Conn
from service.db.postgres.sqlite_source import (
    CopyError,
    SourceTable,
    SqliteSource,
    create_table_sql,
)
from service.db.postgres.values import SESSION_SETTINGS, copy_text
from service.values import SqlRow, SqlValue

__all__ = ["CopyError", "TableCount", "check_counts", "copy_database", "counts_table"]
BATCH_ROWS = 5_000
PROGRESS_TABLE = f"{INTERNAL_PREFIX}copy_progress"
_TEXT_TYPES = {"text", "varchar", "bpchar", "name", "citext"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableCount:
    """One table's rows in SQLite and in PostgreSQL, after the copy."""

    table: str
    source: int
    target: int


async def copy_database(
    config: Config, source: str, target: str, batch_rows: int = BATCH_ROWS
) -> list[TableCount]:
    """Copy SQLite database ``source`` into PostgreSQL database ``target`` (both named in
    ``config``), or go on with an interrupted copy; every table's row counts afterwards."""
    sqlite_config, postgres_config = _pair(config, source, target)
    reader = await SqliteSource.open(sqlite_config.path)
    try:
        connection = await _connect(postgres_config)
        try:
            return await _copy_all(reader, connection, source, postgres_config.schema, batch_rows)
        finally:
            await connection.close()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise CopyError(f"{target}: {_postgres_message(exc)}") from exc
    except sqlite3.Error as exc:
        raise CopyError(f"{source}: {exc}") from exc
    finally:
        reader.close()


def counts_table(counts: Sequence[TableCount]) -> str:
    """The counts as a plain text table: table, SQLite rows, PostgreSQL rows, ok or DIFFERS."""
    rows = [("table", "sqlite", "postgresql", "")]
    rows += [
        (c.table, str(c.source), str(c.target), "ok" if c.source == c.target else "DIFFERS")
        for c in counts
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{t:<{widths[0]}}  {s:>{widths[1]}}  {p:>{widths[2]}}  {mark}".rstrip()
        for t, s, p, mark in rows
    ]
    return "\n".join(lines) + "\n"


def check_counts(counts: Sequence[TableCount]) -> None:
    """Raise :class:`CopyError` (one line) naming every table whose counts differ."""
    differ = [f"{c.table} (sqlite {c.source}, postgresql {c.target})" for c in counts]
    differ = [line for c, line in zip(counts, differ, strict=True) if c.source != c.target]
    if differ:
        raise CopyError(
            "row counts differ after the copy: " + ", ".join(differ) + "; were rows written"
            " to SQLite after their table was copied? Stop writes, then re-copy those tables"
        )


def _pair(
    config: Config, source: str, target: str
) -> tuple[DatabaseConfig, PostgresDatabaseConfig]:
    sqlite_config, postgres_config = config.database(source), config.database(target)
    if not isinstance(sqlite_config, DatabaseConfig):
        raise CopyError(f"{source}: not a configured SQLite database")
    if not isinstance(postgres_config, PostgresDatabaseConfig):
        raise CopyError(f"{target}: not a configured PostgreSQL database")
    return sqlite_config, postgres_config


async def _connect(config: PostgresDatabaseConfig) -> Conn:
    settings = {**SESSION_SETTINGS, "application_name": "dataaccess copy"}
    try:
        return await asyncpg.connect(config.url, timeout=10, server_settings=settings)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise CopyError(f"{config.name}: cannot connect to PostgreSQL: {exc}") from exc


async def _copy_all(
    reader: SqliteSource, connection: Conn, source: str, schema: str, batch_rows: int
) -> list[TableCount]:
    # Held until the connection closes: a second copy of the same source would race this one.
    if not await connection.fetchval(
        "SELECT pg_try_advisory_lock(hashtextextended($1, 7))", f"dataaccess-copy:{source}"
    ):
        raise CopyError(f"{source}: another copy of this database is running")
    await connection.execute(
        f"CREATE SCHEMA IF NOT EXISTS {quote(schema)};"
        f"CREATE TABLE IF NOT EXISTS {quote(schema)}.{PROGRESS_TABLE} (source text NOT NULL,"
        " tbl text NOT NULL, last_key text, rows bigint NOT NULL DEFAULT 0,"
        " done boolean NOT NULL DEFAULT false, PRIMARY KEY (source, tbl))"
    )
    tables = await reader.tables()
    known = await catalog.load(connection, schema)
    for table in tables:
        if known.table(table.name) is None:
            await connection.execute(create_table_sql(schema, table))
    known = await catalog.load(connection, schema)
    counts = []
    for table in tables:
        info = known.table(table.name)
        assert info is not None  # made above
        await _TableCopy(reader, connection, source, schema, table, info).run(batch_rows)
        target = await connection.fetchval(
            f"SELECT count(*) FROM {quote(schema)}.{quote(info.name)}"
        )
        counts.append(TableCount(table.name, await reader.count(table), int(target)))
    return counts


class _TableCopy:
    """One table's copy: resumed from its progress row, batch by batch."""

    def __init__(
        self,
        reader: SqliteSource,
        connection: Conn,
        source: str,
        schema: str,
        table: SourceTable,
        info: catalog.TableInfo,
    ) -> None:
        self.reader, self.connection, self.source = reader, connection, source
        self.schema, self.table, self.info = schema, table, info
        self.columns = [_target_column(info, schema, name) for name in table.column_names]
        self.adapters = [_adapter(info.columns[c]) for c in self.columns]
        self.progress = f"{quote(schema)}.{PROGRESS_TABLE}"

    async def run(self, batch_rows: int) -> None:
        """Copy every row not copied yet, ``batch_rows`` per transaction."""
        after, copied, done = await self._resume_point()
        if done:
            log.info("copy: %s already copied, skipped", self.table.name)
            return
        while True:
            rows = await self.reader.batch(self.table, after, batch_rows)
            last = rows[-1][: len(self.table.key)] if rows else None
            finished = len(rows) < batch_rows
            async with self.connection.transaction():
                if rows:
                    await self._copy(rows)
                    after, copied = list(last or ()), copied + len(rows)
                await self._record(after, copied, finished)
            log.info("copy: %s, %d rows copied", self.table.name, copied)
            if finished:
                return

    async def _resume_point(self) -> tuple[list[SqlValue] | None, int, bool]:
        row = await self.connection.fetchrow(
            f"SELECT last_key, rows, done FROM {self.progress} WHERE source = $1 AND tbl = $2",
            self.source,
            self.table.name,
        )
        if row is not None:
            return _key_from_text(row["last_key"]), int(row["rows"]), bool(row["done"])
        target = f"{quote(self.schema)}.{quote(self.info.name)}"
        if await self.connection.fetchval(f"SELECT EXISTS (SELECT 1 FROM {target})"):
            raise CopyError(
                f"{self.schema}.{self.info.name} already has rows this copy did not write;"
                " empty it (or drop it) to copy into it"
            )
        return None, 0, False

    async def _copy(self, rows: list[tuple[SqlValue, ...]]) -> None:
        skip = len(self.table.key)
        try:
            values = self._values(rows, skip)
        except CopyError as exc:
            raise CopyError(f"{self.table.name}: {exc}") from exc
        await self.connection.copy_to_table(
            self.info.name,
            source=io.BytesIO(copy_text(values)),
            columns=self.columns,
            schema_name=self.schema,
            format="text",
        )

    def _values(self, rows: list[tuple[SqlValue, ...]], skip: int) -> list[SqlRow]:
        return [
            tuple(
                adapt(v) if adapt else v for adapt, v in zip(self.adapters, row[skip:], strict=True)
            )
            for row in rows
        ]

    async def _record(self, after: list[SqlValue] | None, copied: int, done: bool) -> None:
        await self.connection.execute(
            f"INSERT INTO {self.progress} (source, tbl, last_key, rows, done)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source, tbl) DO UPDATE"
            " SET last_key = excluded.last_key, rows = excluded.rows, done = excluded.done",
            self.source,
            self.table.name,
            _key_to_text(after),
            copied,
            done,
        )


def _target_column(info: catalog.TableInfo, schema: str, name: str) -> str:
    column = info.column(name)
    if column is None:
        raise CopyError(f"{schema}.{info.name} has no column {name!r} for the SQLite column")
    return column


def _adapter(type_name: str) -> Callable[[SqlValue], SqlValue] | None:
    """Converts what SQLite's dynamic typing let a column hold to what the target column
    takes (as SQLite's CAST would), or None when values go as they are."""
    if type_name == "bytea":
        return lambda v: v if v is None or isinstance(v, bytes) else str(v).encode()
    if type_name in _TEXT_TYPES:
        return _as_text
    return None


def _as_text(value: SqlValue) -> SqlValue:
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise CopyError(f"a blob that is not UTF-8 text is in a text column: {exc}") from exc


def _key_to_text(key: list[SqlValue] | None) -> str | None:
    if key is None:
        return None
    return json.dumps([{"x": v.hex()} if isinstance(v, bytes) else v for v in key])


def _key_from_text(text: str | None) -> list[SqlValue] | None:
    if text is None:
        return None
    return [bytes.fromhex(v["x"]) if isinstance(v, dict) else v for v in json.loads(text)]


def _postgres_message(exc: Exception) -> str:
    context = getattr(exc, "context", None)  # COPY's names the table, line and column
    return f"{exc} ({context})" if context else str(exc)
