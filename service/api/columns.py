"""A BatchInsert's columnar form (``column_data``) -> the row tuples the write path takes.

Each column is one packed array of one storage class plus a NULL bitmap, so a
column becomes a Python list in one call (``list(column.integers)``), NULLs are
patched in only where the bitmap has bits, and ``zip`` turns the columns into
rows: a few operations per column instead of several per value. The rows are
the same tuples the row form decodes to, so everything below (SQLite, the
PostgreSQL COPY text, idempotency fingerprints) sees no difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain, compress

from dataaccess.v1 import data_access_pb2 as pb
from service.errors import InvalidArgument
from service.values import SqlRow, SqlValue

_ARRAYS = {
    pb.COLUMN_KIND_INTEGER: "integers",
    pb.COLUMN_KIND_REAL: "reals",
    pb.COLUMN_KIND_TEXT: "texts",
    pb.COLUMN_KIND_BLOB: "blobs",
}
# The NULL flags of a bitmap byte, least significant bit first.
_BITS = [tuple(bool(byte >> bit & 1) for bit in range(8)) for byte in range(256)]


def rows_from_columns(columns: Sequence[pb.ColumnData], width: int, max_rows: int) -> list[SqlRow]:
    """The rows of ``column_data`` for ``width`` column names, checked field by field.

    The shape (kinds, lengths, at most ``max_rows`` rows) is checked before any value
    is read: a byte per row on the wire must not become a tuple per row in memory
    past the limit.
    """
    if len(columns) != width:
        raise InvalidArgument(
            f"column_data has {len(columns)} columns for {width} names in columns: "
            "give one per column",
            field="column_data",
        )
    arrays = [_array(column, f"column_data[{i}]") for i, column in enumerate(columns)]
    count = len(getattr(columns[0], arrays[0])) if columns else 0
    if count > max_rows:
        raise InvalidArgument(
            f"{count} rows in one call is over limits.max_batch_rows ({max_rows}): split it",
            field="column_data",
        )
    for index, (column, name) in enumerate(zip(columns, arrays, strict=True)):
        if len(getattr(column, name)) != count:
            raise InvalidArgument(
                f"column_data[{index}].{name} has {len(getattr(column, name))} values, "
                f"column_data[0] has {count}: every column needs one value per row",
                field=f"column_data[{index}].{name}",
            )
    values = [
        _values(column, name, f"column_data[{i}]")
        for i, (column, name) in enumerate(zip(columns, arrays, strict=True))
    ]
    return list(zip(*values, strict=True))


def _array(column: pb.ColumnData, field: str) -> str:
    """The name of the one array holding the column's values."""
    name = _ARRAYS.get(column.kind)
    if name is None:
        raise InvalidArgument(
            "kind must be COLUMN_KIND_INTEGER, _REAL, _TEXT or _BLOB", field=f"{field}.kind"
        )
    for other in _ARRAYS.values():
        if other != name and len(getattr(column, other)):  # its values would be lost
            raise InvalidArgument(
                f"a {pb.ColumnKind.Name(column.kind)} column carries its values in {name} "
                f"only, not in {other}",
                field=f"{field}.{other}",
            )
    return name


def _values(column: pb.ColumnData, name: str, field: str) -> list[SqlValue]:
    """One column's values, NULLs included."""
    values: list[SqlValue] = list(getattr(column, name))
    if column.nulls:
        _patch_nulls(values, column.nulls, f"{field}.nulls")
    if name == "reals" and any(map(math.isnan, column.reals)):
        _refuse_nan(column.reals, values, field)
    return values


def _refuse_nan(reals: Sequence[float], values: list[SqlValue], field: str) -> None:
    """Refuse the first NaN of a row that is not NULL (a NULL row's placeholder is not read)."""
    for index, (real, value) in enumerate(zip(reals, values, strict=True)):
        if value is not None and math.isnan(real):
            raise InvalidArgument(
                "NaN cannot be stored: SQLite turns it into NULL", field=f"{field}.reals[{index}]"
            )


def _patch_nulls(values: list[SqlValue], nulls: bytes, field: str) -> None:
    """Set the rows the bitmap marks to None."""
    count = len(values)
    if len(nulls) != (count + 7) // 8:
        raise InvalidArgument(
            f"nulls has {len(nulls)} bytes for {count} rows: one bit per row, "
            f"{(count + 7) // 8} bytes",
            field=field,
        )
    if int.from_bytes(nulls, "little") >> count:
        raise InvalidArgument(f"nulls marks rows past the last one ({count} rows)", field=field)
    for index in compress(range(count), chain.from_iterable(map(_BITS.__getitem__, nulls))):
        values[index] = None
