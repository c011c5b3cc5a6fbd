"""The Python values a statement takes and returns: SQLite's storage classes, rows, parameters.

Pure types and the wire-size estimate of a row, no protobuf: their proto form and the
conversion live in service.api.codec.
"""

from __future__ import annotations

SqlValue = None | int | float | str | bytes
SqlRow = tuple[SqlValue, ...]
Params = tuple[SqlValue, ...] | dict[str, SqlValue]


def row_bytes(row: SqlRow) -> int:
    """About how many bytes a row takes on the wire, whatever engine read it."""
    return sum(len(v) if isinstance(v, str | bytes) else 9 for v in row) + 2
