"""The Python values a statement takes and returns: SQLite's storage classes, rows, parameters.

Pure types, no protobuf: their proto form and the conversion live in service.api.codec.
"""

from __future__ import annotations

SqlValue = None | int | float | str | bytes
SqlRow = tuple[SqlValue, ...]
Params = tuple[SqlValue, ...] | dict[str, SqlValue]
