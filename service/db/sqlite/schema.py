"""The tables and columns of one database, read once after its migrations ran.

BatchInsert checks its identifiers here and quotes the schema's own names,
so nothing from a request is interpolated into SQL; Query takes declared
column types from here, and fingerprints the names that are not literals.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TableInfo:
    """One table: its name as declared and its columns' declared types."""

    name: str
    columns: dict[str, tuple[str, str]]  # lower-cased name -> (declared name, declared type)

    def column(self, name: str) -> tuple[str, str] | None:
        """The declared name and type of column ``name``, any case."""
        return self.columns.get(name.lower())


@dataclass(frozen=True)
class Schema:
    """Every user table of a database, by lower-cased name."""

    tables: dict[str, TableInfo]
    cascades: dict[str, frozenset[str]] = field(default_factory=dict)  # parent -> children
    names: frozenset[str] = frozenset()  # every declared name (objects, columns), lower-cased

    def table(self, name: str) -> TableInfo | None:
        """The table called ``name``, any case."""
        return self.tables.get(name.lower())

    def columns_of(self, table: str) -> set[str]:
        """The lower-cased column names of ``table`` (none if there is no such table)."""
        info = self.table(table)
        return set(info.columns) if info is not None else set()

    def changed_with(self, tables: frozenset[str]) -> frozenset[str]:
        """``tables`` and every table a foreign-key action on them can change, transitively."""
        changed, pending = set(tables), [t.lower() for t in tables]
        while pending:
            for child in self.cascades.get(pending.pop(), frozenset()):
                if child not in changed:
                    changed.add(child)
                    pending.append(child.lower())
        return frozenset(changed)

    def decl_type(self, column: str, tables: frozenset[str]) -> str:
        """The declared type of result column ``column`` if exactly one read table has it."""
        found = {
            info.column(column)[1]  # type: ignore[index]
            for table in tables
            if (info := self.table(table)) is not None and info.column(column) is not None
        }
        return found.pop() if len(found) == 1 else ""


def read_schema(raw: sqlite3.Connection) -> Schema:
    """Read the schema; runs on the connection's thread, outside the guard."""
    names = [
        str(name)
        for (name,) in raw.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name NOT GLOB '_dataaccess_*'"
        ).fetchall()
    ]
    tables = {}
    for name in names:
        info = raw.execute("SELECT name, type FROM pragma_table_info(?)", (name,)).fetchall()
        columns = {str(col).lower(): (str(col), str(decl)) for col, decl in info}
        tables[name.lower()] = TableInfo(name, columns)
    return Schema(tables, _cascades(raw, names), _declared_names(raw))


def _declared_names(raw: sqlite3.Connection) -> frozenset[str]:
    """Every name the schema declares: objects, and the columns of tables and views."""
    objects = [str(name) for (name,) in raw.execute("SELECT name FROM sqlite_schema").fetchall()]
    columns = raw.execute(
        "SELECT c.name FROM sqlite_schema AS s, pragma_table_info(s.name) AS c"
        " WHERE s.type IN ('table', 'view')"
    ).fetchall()
    found = {name.lower() for name in objects} | {str(name).lower() for (name,) in columns}
    return frozenset(found | {"main", "temp", "rowid", "oid", "_rowid_"})


def _cascades(raw: sqlite3.Connection, names: list[str]) -> dict[str, frozenset[str]]:
    """Which tables a write to each table can change through ON DELETE/UPDATE actions."""
    children: dict[str, set[str]] = {}
    for child in names:
        keys = raw.execute(
            'SELECT "table", on_update, on_delete FROM pragma_foreign_key_list(?)', (child,)
        ).fetchall()
        for parent, on_update, on_delete in keys:
            if {on_update, on_delete} - {"NO ACTION", "RESTRICT"}:
                children.setdefault(str(parent).lower(), set()).add(child)
    return {parent: frozenset(kids) for parent, kids in children.items()}


def rows_up_to(raw: sqlite3.Connection, table: str, bound: int) -> int:
    """How many rows ``table`` (a name read from the schema) holds, counting no further
    than ``bound``: a big table is not scanned to learn that it is big."""
    inner = f"SELECT 1 FROM {quote_identifier(table)} LIMIT {int(bound)}"
    return int(raw.execute(f"SELECT count(*) FROM ({inner})").fetchone()[0])


def quote_identifier(name: str) -> str:
    """``name`` as an SQL identifier; only ever given names read from the schema."""
    return '"' + name.replace('"', '""') + '"'
