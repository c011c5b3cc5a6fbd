"""PostgreSQL values <-> the service's values (integer, real, text, blob, NULL).

The mapping, documented in the README:

- ``smallint``/``integer``/``bigint`` -> integer; ``real``/``double precision`` ->
  real; ``text``/``varchar``/``char``/enums -> text; ``bytea`` -> blob;
  ``boolean`` -> integer 1 or 0 (as SQLite stores it); NULL -> NULL.
- ``numeric``, the date and time types, ``interval``, ``json``/``jsonb``,
  ``uuid``, the network types, ``money``, ``xml`` -> text, exactly as
  PostgreSQL prints them (sessions run with ``TimeZone=UTC``, ``DateStyle=ISO``,
  ``IntervalStyle=iso_8601`` so the text is the same whichever server answers).
- Arrays -> text in PostgreSQL's array form (``{1,2,3}``).
- Parameters go the other way: text for any of the text-mapped types is parsed
  by PostgreSQL itself (``'2026-01-01'`` for a ``date``, ``'1.50'`` for a
  ``numeric``); integer 1/0 for a ``boolean``; a blob for ``bytea``.

Those types are exchanged in PostgreSQL's text format (asyncpg codecs set on
every connection), so no Python ``Decimal``/``datetime`` is ever built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from service.db.postgres.session import Conn
from service.values import SqlRow, SqlValue

TEXT_TYPES = (
    "numeric",
    "timestamp",
    "timestamptz",
    "date",
    "time",
    "timetz",
    "interval",
    "json",
    "jsonb",
    "uuid",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "money",
    "xml",
)
SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "application_name": "dataaccess",
}
# COPY's text format: a backslash escapes these; \N is NULL.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _bool_in(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "t" if value else "f"


def _bool_out(text: str) -> int:
    return 1 if text == "t" else 0


async def set_codecs(connection: Conn) -> None:
    """Exchange the text-mapped types as text, and booleans as 1/0, on ``connection``."""
    for name in TEXT_TYPES:
        await connection.set_type_codec(
            name, schema="pg_catalog", encoder=str, decoder=str, format="text"
        )
    await connection.set_type_codec(
        "bool", schema="pg_catalog", encoder=_bool_in, decoder=_bool_out, format="text"
    )


def plain(value: Any) -> SqlValue:
    """One value asyncpg returned, as the service's value."""
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    if isinstance(value, list | tuple):
        return array_text(value)
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return str(value)


def plain_row(record: Iterable[Any]) -> SqlRow:
    """A record as the service's row (integer, real, text, blob or NULL per column)."""
    return tuple(v if v is None or type(v) in _PLAIN else plain(v) for v in record)


_PLAIN = {int, float, str, bytes}


def array_text(items: Sequence[Any]) -> str:
    """A Python list as PostgreSQL prints an array: ``{1,2,NULL,"a b"}``."""
    parts = []
    for item in items:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, list | tuple):
            parts.append(array_text(item))
        elif isinstance(item, int | float):
            parts.append(str(item))
        else:
            text = str(item)
            if text == "" or any(c in text for c in ' {},"\\') or text.upper() == "NULL":
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            parts.append(text)
    return "{" + ",".join(parts) + "}"


def copy_text(rows: Iterable[SqlRow]) -> bytes:
    """Rows in COPY's text format: PostgreSQL parses each value for its column's type."""
    lines = []
    for row in rows:
        lines.append("\t".join(_copy_field(value) for value in row))
    lines.append("")
    return "\n".join(lines).encode()


def _copy_field(value: SqlValue) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, bool):
        return "t" if value else "f"
    return repr(value) if isinstance(value, float) else str(value)
