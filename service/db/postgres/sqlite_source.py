"""The SQLite side of ``python -m service copy``: a file opened read-only, its tables as the
copy sees them, and the PostgreSQL types their declared types map to (SQLite's affinity
rules)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.db.postgres.catalog import INTERNAL_PREFIX, quote
from service.values import SqlValue


class CopyError(Exception):
    """The copy cannot go on, or the counts differ; the message says which and why."""


@dataclass(frozen=True)
class SourceTable:
    """One SQLite table: its columns (name, declared type, NOT NULL) and how to walk it."""

    name: str
    columns: tuple[tuple[str, str, bool], ...]
    primary_key: tuple[str, ...]
    key: tuple[str, ...]  # SQL expressions batches are ordered and resumed by

    @property
    def column_names(self) -> list[str]:
        """The columns' names, in declaration order."""
        return [name for name, _, _ in self.columns]


def postgres_type(declared: str) -> str:
    """The PostgreSQL type for a SQLite declared type, by SQLite's affinity rules (in
    their order: INT, then CHAR/CLOB/TEXT, then BLOB, then REAL/FLOA/DOUB, else NUMERIC).

    Columns with no declared type become ``text``; BOOLEAN becomes ``boolean``; the date
    and time names stay ``text``, exactly the text SQLite stored.
    """
    upper = declared.upper()
    base = upper.split("(")[0].strip()
    if "INT" in upper:
        return "bigint"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")) or not upper:
        return "text"
    if "BLOB" in upper:
        return "bytea"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "double precision"
    if base in ("BOOLEAN", "BOOL"):
        return "boolean"
    if base in ("DATE", "DATETIME", "TIMESTAMP", "TIME"):
        return "text"
    return "numeric"


def create_table_sql(schema: str, table: SourceTable) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for ``table`` in ``schema``."""
    parts = [
        f"{quote(name)} {postgres_type(declared)}" + (" NOT NULL" if not_null else "")
        for name, declared, not_null in table.columns
    ]
    if table.primary_key:
        parts.append(f"PRIMARY KEY ({', '.join(quote(c) for c in table.primary_key)})")
    return f"CREATE TABLE IF NOT EXISTS {quote(schema)}.{quote(table.name)} ({', '.join(parts)})"


class SqliteSource:
    """A SQLite file opened read-only; each call is one statement on a worker thread."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, path: Path) -> SqliteSource:
        """Open ``path`` read-only (it must exist)."""
        if not path.is_file():
            raise CopyError(f"{path}: no such SQLite file")
        uri = f"{path.resolve().as_uri()}?mode=ro"
        try:
            connection = await asyncio.to_thread(
                sqlite3.connect, uri, uri=True, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise CopyError(f"{path}: {exc}") from exc
        return cls(connection)

    def close(self) -> None:
        """Close the file."""
        self._connection.close()

    async def _fetch(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Any]:
        return await asyncio.to_thread(lambda: self._connection.execute(sql, params).fetchall())

    async def tables(self) -> list[SourceTable]:
        """The tables to copy, by name: not SQLite's, not the service's, not virtual."""
        listed = await self._fetch(
            "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table'"
            " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> 'schema_migrations'"
            " AND name NOT LIKE ? ESCAPE '\\' ORDER BY name",
            (INTERNAL_PREFIX.replace("_", "\\_") + "%",),
        )
        return [await self._table(name, bool(without_rowid)) for name, without_rowid in listed]

    async def _table(self, name: str, without_rowid: bool) -> SourceTable:
        info = await self._fetch(
            'SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (name,)
        )
        columns = tuple((col, declared, bool(not_null)) for col, declared, not_null, _ in info)
        primary_key = tuple(col for col, *_, pk in sorted(info, key=lambda c: c[3]) if pk)
        if without_rowid:
            key = tuple(quote(c) for c in primary_key)
        else:
            names = {c.lower() for c, _, _ in columns}
            free = [alias for alias in ("rowid", "_rowid_", "oid") if alias not in names]
            if not free:
                raise CopyError(f"{name}: its columns hide the rowid (rowid, _rowid_, oid)")
            key = (free[0],)
        return SourceTable(name, columns, primary_key, key)

    async def batch(
        self, table: SourceTable, after: list[SqlValue] | None, limit: int
    ) -> list[tuple[SqlValue, ...]]:
        """Up to ``limit`` rows after key ``after``, in key order: key values, then columns."""
        keys = ", ".join(table.key)
        select = ", ".join([keys, *(quote(c) for c in table.column_names)])
        where = ""
        if after is not None:
            where = f" WHERE ({keys}) > ({', '.join('?' for _ in after)})"
        sql = f"SELECT {select} FROM {quote(table.name)}{where} ORDER BY {keys} LIMIT {limit}"
        return [tuple(row) for row in await self._fetch(sql, after or ())]

    async def count(self, table: SourceTable) -> int:
        """The table's rows."""
        rows = await self._fetch(f"SELECT count(*) FROM {quote(table.name)}")
        return int(rows[0][0])
