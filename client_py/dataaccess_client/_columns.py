"""A BatchInsert's rows in the columnar form (``column_data``), when every column allows it.

Each column goes out as one packed array of one storage class plus a NULL
bitmap, which costs both ends a few operations per column instead of a
message per value. A column allows it when its values, NULLs aside, are all
of one type: ``int``, ``float``, ``str``, or bytes (``bytes``, ``bytearray``,
``memoryview``). Anything else (a column mixing integers and texts, a
``bool``, an int or str subclass, an integer past 64 bits, rows of unequal
length) is sent as rows, so it is checked and refused exactly as it always
was.

A server older than the columnar form ignores ``column_data``: it reads no
rows, writes nothing and answers ``rows_received`` 0 (a field it does not
know), so ``as_rows_if_unread`` gives the request again as rows to send
instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import compress
from typing import cast

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client._convert import to_row
from dataaccess_client._models import SqlInput

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_BLOB_TYPES = frozenset({bytes, bytearray, memoryview})
# By type: the column's kind, its array's name, and the placeholder of a NULL row.
_KINDS: dict[type, tuple[pb.ColumnKind.ValueType, str, SqlInput]] = {
    int: (pb.COLUMN_KIND_INTEGER, "integers", 0),
    float: (pb.COLUMN_KIND_REAL, "reals", 0.0),
    str: (pb.COLUMN_KIND_TEXT, "texts", ""),
    bytes: (pb.COLUMN_KIND_BLOB, "blobs", b""),
}
_ARRAYS = {kind: array for kind, array, _ in _KINDS.values()}
# bytes([0, 1, ...]) -> b"01...": NULL flags as the digits of a binary number.
_DIGITS = bytes.maketrans(b"\x00\x01", b"01")


def set_rows(request: pb.BatchInsertRequest, rows: Iterable[Iterable[SqlInput]]) -> None:
    """Set ``rows`` on ``request``: as ``column_data`` when every column allows it, else
    as ``rows``."""
    batch = [tuple(row) for row in rows]
    columns = column_data(batch, len(request.columns))
    if columns is None:
        request.rows.extend(to_row(row) for row in batch)
    else:
        request.column_data.extend(columns)


def column_data(rows: Sequence[Sequence[SqlInput]], width: int) -> list[pb.ColumnData] | None:
    """The columns of ``rows`` (``width`` values each), or None to send them as rows."""
    if not rows:
        return None
    try:
        columns = list(zip(*rows, strict=True))
    except ValueError:  # rows of unequal length: the server names the row
        return None
    if len(columns) != width:
        return None
    encoded = []
    for values in columns:
        column = _column(values)
        if column is None:
            return None
        encoded.append(column)
    return encoded


def _column(values: tuple[SqlInput, ...]) -> pb.ColumnData | None:
    """One column, or None when its values are not all of one kind (NULLs aside)."""
    present = set(map(type, values))
    types = present - {type(None)}
    if types and types <= _BLOB_TYPES and types != {bytes}:
        values = tuple(v if v is None else bytes(v) for v in values)  # type: ignore[arg-type]
        types = {bytes}
    if len(types) > 1:
        return None
    found = _KINDS.get(types.pop()) if types else _KINDS[int]  # only NULLs: as integers
    if found is None:
        return None
    kind, array, zero = found
    column = pb.ColumnData(kind=kind)
    if type(None) in present:
        flags = [v is None for v in values]
        column.nulls = _bitmap(flags)
        filled = list(values)
        for index in compress(range(len(filled)), flags):
            filled[index] = zero
        values = tuple(filled)
    if kind == pb.COLUMN_KIND_INTEGER and not _fits_int64(cast("tuple[int, ...]", values)):
        return None  # sent as rows, it is refused as it always was
    getattr(column, array).extend(values)
    return column


def _fits_int64(values: tuple[int, ...]) -> bool:
    return _INT64_MIN <= min(values) and max(values) <= _INT64_MAX


def _bitmap(flags: list[bool]) -> bytes:
    """One bit per row, least significant bit first, row i at bit i % 8 of byte i // 8."""
    digits = bytes(flags)[::-1].translate(_DIGITS)
    return int(digits, 2).to_bytes((len(flags) + 7) // 8, "little")


def as_rows_if_unread(
    request: pb.BatchInsertRequest, response: pb.BatchInsertResponse
) -> pb.BatchInsertRequest | None:
    """``request`` with its rows as rows when the server read none of its ``column_data``
    (it predates them, and wrote nothing); else None."""
    if not request.column_data or response.rows_received:
        return None
    columns = [_values(column) for column in request.column_data]
    again = pb.BatchInsertRequest()
    again.CopyFrom(request)
    del again.column_data[:]
    again.rows.extend(to_row(row) for row in zip(*columns, strict=True))
    return again if again.rows else None


def _values(column: pb.ColumnData) -> list[SqlInput]:
    """The values of one column this module encoded, NULLs included."""
    values: list[SqlInput] = list(getattr(column, _ARRAYS[column.kind]))
    nulls = int.from_bytes(column.nulls, "little")
    for index in range(len(values)):
        if nulls >> index & 1:
            values[index] = None
    return values
