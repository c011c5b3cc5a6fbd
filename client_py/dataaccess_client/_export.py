"""Writes a streamed query result as CSV or JSONL, one chunk at a time, never all of it at once.

CSV: a header row of the column names, then one record per row; NULL is an
empty field (as is an empty text: CSV cannot tell them apart) unless a
``null`` marker is given (``\\N``, say: then NULL is that field and an empty
text stays empty), a number as Python prints it, a blob its base64. JSONL:
one object per row keyed by column name (a name repeated in the result gets
``_2``, ``_3``, ...), with typed values: integers, reals, text, ``null``, and a blob as
``{"$base64": "..."}`` (as ``--json`` and ``update --set`` write one).
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Callable, Iterable
from typing import TextIO

from dataaccess_client._models import QueryResult, Row, SqlValue
from dataaccess_client._row_files import RowFormat

WriteRow = Callable[[Row], None]


class Export:
    """One export in progress: how many rows are written, and whether max_rows cut it."""

    def __init__(self, stream: TextIO, fmt: RowFormat, null: str = "") -> None:
        self._stream = stream
        self._fmt = fmt
        self._null = null
        self.rows = 0
        self.truncated = False

    def write(self, chunks: Iterable[QueryResult]) -> None:
        """Write every chunk's rows as they come; the header with the first."""
        write_row: WriteRow | None = None
        for chunk in chunks:
            if write_row is None:
                write_row = self._writer(chunk.columns)
            for row in chunk.rows:
                write_row(row)
            self.rows += len(chunk.rows)
            self.truncated = self.truncated or chunk.truncated
            self._stream.flush()

    def _writer(self, columns: list[str]) -> WriteRow:
        if self._fmt == "csv":
            records = csv.writer(self._stream, lineterminator="\n")
            records.writerow(columns)
            null = self._null
            return lambda row: records.writerow(_csv_field(value, null) for value in row)
        keys = unique_keys(columns)

        def write_object(row: Row) -> None:
            line = {key: _json_value(value) for key, value in zip(keys, row, strict=True)}
            self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")

        return write_object


def unique_keys(columns: list[str]) -> list[str]:
    """The column names as JSON keys, a repeated name suffixed ``_2``, ``_3``, ..."""
    seen: set[str] = set()
    keys = []
    for name in columns:
        key, n = name, 1
        while key in seen:
            n += 1
            key = f"{name}_{n}"
        seen.add(key)
        keys.append(key)
    return keys


def _csv_field(value: SqlValue, null: str) -> str:
    if value is None:
        return null
    field = base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else str(value)
    if null and field == null:
        # It would read back as NULL: refuse rather than corrupt.
        raise ValueError(f"the value {value!r} is written as the NULL marker {null!r}")
    return field


def _json_value(value: SqlValue) -> object:
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    return value
