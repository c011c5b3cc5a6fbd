"""Reads rows to insert from CSV and JSONL files, in batches, counting the bytes read.

CSV: the header row names the columns. An empty field is NULL; a field that
reads back unchanged as a 64-bit integer (``42``, ``-7``, not ``007`` or ``+5``)
is an integer; a number with a point or an exponent (``1.5``, ``2e3``) is a
float; anything else is text. JSONL: one object per line, the first object's
keys are the columns; a later object may leave a column out (NULL) but not add
one. JSON ``true``/``false`` become 1/0, as SQLite stores booleans; nested
arrays and objects are refused.

Parameter sets (``dataaccess update``): each is a JSON array of values, one
per ``?`` in order, where ``{"$base64": "..."}`` is a blob (as ``--json``
prints one); a file of them is JSONL (one array per line) or CSV (a header
row, then one set per record, read as the rows to insert are). Several
statements for one transaction (``update --statements``) are JSONL, one
object a line: ``{"sql": "...", "sets": [[...], ...]}`` (``sets`` optional:
the statement runs once without parameters).
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import BinaryIO, Literal, TypeVar

from dataaccess_client._models import Row, SqlValue

RowFormat = Literal["csv", "jsonl"]
T = TypeVar("T")

_INTEGER = re.compile(r"-?[0-9]+")
# A point or an exponent is required, so that 007 and +5 stay text.
_FLOAT = re.compile(r"[+-]?(([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class RowFileError(ValueError):
    """A row file that cannot be read: its name, line and what is wrong."""


def json_param_set(text: str) -> Row:
    """One parameter set given as a JSON array, like ``[1, "x", null]``."""
    what = 'a parameter set is a JSON array, like [1, "x", null]'
    values = _loaded(text, what)
    if not isinstance(values, list):
        raise ValueError(f"{what}, not: {text}")
    return tuple(json_param(value) for value in values)


def _loaded(text: str, what: str) -> object:
    """``text`` as JSON; if it is not, a message that says ``what`` was expected."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}; not JSON ({exc.msg}): {text.strip()}") from None


def json_param(value: object) -> SqlValue:
    """One JSON value as a SQL value: true/false are 1/0, ``{"$base64": "..."}`` a blob."""
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, int | float | str):
        return value
    if (
        isinstance(value, dict)
        and value.keys() == {"$base64"}
        and isinstance(value["$base64"], str)
    ):
        try:
            return base64.b64decode(value["$base64"], validate=True)
        except binascii.Error:
            raise ValueError(f"not base64: {value['$base64']!r}") from None
    raise ValueError(f'{json.dumps(value)} is not a SQL value (a blob is {{"$base64": ...}})')


def read_param_sets(
    stream: BinaryIO, fmt: RowFormat, name: str = "<stream>", null: str = ""
) -> list[Row]:
    """Every parameter set in a JSONL (one JSON array a line) or CSV (header first) stream;
    in CSV the field ``null`` is NULL."""
    if fmt == "csv":
        reader = RowReader(stream, "csv", name, null)
        return [row for batch in reader.batches(10_000) for row in batch]
    return _each_line(stream, name, json_param_set)


Statement = tuple[str, list[Row]]


def read_statements(stream: BinaryIO, name: str = "<stream>") -> list[Statement]:
    """Every statement of a JSONL stream, each ``{"sql": ..., "sets": [[...], ...]}``."""
    return _each_line(stream, name, _statement)


def _each_line(stream: BinaryIO, name: str, parse: Callable[[str], T]) -> list[T]:
    """``parse`` of every line that is not blank; a failure names the file and line."""
    lines = LineCounter(stream)
    found = []
    for line in lines:
        if line.strip():
            try:
                found.append(parse(line))
            except ValueError as exc:
                raise RowFileError(f"{name}:{lines.line_number}: {exc}") from None
    return found


def _statement(line: str) -> Statement:
    what = 'a statement is a JSON object like {"sql": "...", "sets": [[1, "x"]]}'
    obj = _loaded(line, what)
    if not isinstance(obj, dict) or not isinstance(obj.get("sql"), str):
        raise ValueError(f"{what}, not: {line.strip()}")
    if extra := obj.keys() - {"sql", "sets"}:
        raise ValueError(f"unknown keys: {', '.join(sorted(extra))} (a statement has sql, sets)")
    sets = obj.get("sets", [])
    if not isinstance(sets, list) or not all(isinstance(one, list) for one in sets):
        raise ValueError("sets: expected a list of JSON arrays")
    return obj["sql"], [tuple(json_param(value) for value in one) for one in sets]


def format_of(name: str) -> RowFormat:
    """The format a file name's extension implies: jsonl for .jsonl/.ndjson, else csv."""
    return "jsonl" if name.lower().endswith((".jsonl", ".ndjson")) else "csv"


def number_or_text(text: str) -> SqlValue:
    """``text`` as an int or a float when it reads as one (see the module docstring)."""
    integer = _int64_or_none(text)
    if integer is not None:
        return integer
    if _FLOAT.fullmatch(text):
        number = float(text)
        # 1e999 overflows to inf, which SQLite would not store as written.
        return number if math.isfinite(number) else text
    return text


def _int64_or_none(text: str) -> int | None:
    if not _INTEGER.fullmatch(text):
        return None
    number = int(text)
    return number if str(number) == text and _INT64_MIN <= number <= _INT64_MAX else None


class LineCounter:
    """The lines of a binary stream, decoded as UTF-8, counting the bytes consumed."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.bytes_read = 0
        self.line_number = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self._stream:
            self.bytes_read += len(raw)
            self.line_number += 1
            yield raw.decode("utf-8-sig" if self.line_number == 1 else "utf-8")


class RowReader:
    """The columns and rows of one CSV or JSONL stream."""

    def __init__(
        self, stream: BinaryIO, fmt: RowFormat, name: str = "<stream>", null: str = ""
    ) -> None:
        self._lines = LineCounter(stream)
        self._name = name
        self._null = null  # the CSV field that is NULL (by default the empty one)
        self._rows: Iterator[Row]
        if fmt == "csv":
            self.columns, self._rows = self._csv()
        else:
            self.columns, self._rows = self._jsonl()

    @property
    def bytes_read(self) -> int:
        """Bytes consumed so far, for a progress bar."""
        return self._lines.bytes_read

    def batches(self, size: int) -> Iterator[list[Row]]:
        """The rows in lists of at most ``size``."""
        if size < 1:
            raise ValueError("the batch size must be at least 1")
        while batch := list(islice(self._rows, size)):
            yield batch

    def _error(self, message: str) -> RowFileError:
        return RowFileError(f"{self._name}:{self._lines.line_number}: {message}")

    def _csv(self) -> tuple[list[str], Iterator[Row]]:
        records = csv.reader(self._lines)
        header = next(records, None)
        if not header:
            raise self._error("no header row naming the columns")
        return header, self._csv_rows(records, len(header))

    def _csv_rows(self, records: Iterable[list[str]], width: int) -> Iterator[Row]:
        for record in records:
            if not record:
                continue  # a blank line
            if len(record) != width:
                raise self._error(f"{len(record)} fields where the header has {width}")
            null = self._null
            yield tuple(None if field == null else number_or_text(field) for field in record)

    def _jsonl(self) -> tuple[list[str], Iterator[Row]]:
        objects = self._json_objects()
        first = next(objects, None)
        if first is None:
            raise self._error("no JSON object to take the columns from")
        columns = list(first)
        return columns, self._jsonl_rows(columns, first, objects)

    def _json_objects(self) -> Iterator[dict[str, object]]:
        for line in self._lines:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise self._error(f"not JSON: {exc.msg}") from None
            if not isinstance(value, dict):
                raise self._error("each line must be one JSON object")
            yield value

    def _jsonl_rows(
        self, columns: list[str], first: dict[str, object], rest: Iterator[dict[str, object]]
    ) -> Iterator[Row]:
        yield self._json_row(columns, first)
        for obj in rest:
            yield self._json_row(columns, obj)

    def _json_row(self, columns: list[str], obj: dict[str, object]) -> Row:
        extra = obj.keys() - set(columns)
        if extra:
            raise self._error(f"keys not among the first object's: {', '.join(sorted(extra))}")
        return tuple(self._json_value(obj.get(column)) for column in columns)

    def _json_value(self, value: object) -> SqlValue:
        if isinstance(value, bool):
            return int(value)
        if value is None or isinstance(value, int | float | str):
            return value
        raise self._error(f"a nested {type(value).__name__} is not a SQL value")
