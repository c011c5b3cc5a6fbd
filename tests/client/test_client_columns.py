"""The client's columnar encoding of a BatchInsert, without a server: which form it picks,
and that the server decodes the columns to the very rows the row form gives."""

from __future__ import annotations

import enum
import math

import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client import _columns, _convert, _rpcs
from service.api.requests import insert_request as decoded

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def request(rows, columns=("a", "b")):
    return _rpcs.batch_insert.call("live", "t", list(columns), rows).request


def as_rows(rows, columns=("a", "b")):
    """The same rows as the client would send them in the row form."""
    message = pb.BatchInsertRequest(database="live", table="t", columns=list(columns))
    message.rows.extend(_convert.to_row(row) for row in rows)
    return message


def sent_form(message: pb.BatchInsertRequest) -> str:
    assert not (message.rows and message.column_data)
    return "columns" if message.column_data else "rows"


def server_rows(message: pb.BatchInsertRequest):
    """What the server's decoder makes of the request, after a trip over the wire."""
    parsed = pb.BatchInsertRequest.FromString(message.SerializeToString())
    return decoded(parsed, max_rows=100_000).rows


EVERY_KIND = [
    (0, 0.0, "", b"", None),
    (INT64_MIN, -1.5, "tab\tand\nnewline \\ é ☃", b"\x00\xff", None),
    (None, None, None, None, None),
    (INT64_MAX, math.inf, "x" * 300, bytes(range(256)), None),
    (-1, 1e-300, "NULL", b"\\N", None),
]


def test_single_kind_columns_go_as_columns_and_decode_to_the_row_forms_rows():
    columns = ("i", "r", "t", "b", "n")
    message = request(EVERY_KIND, columns)
    assert sent_form(message) == "columns"
    kinds = [c.kind for c in message.column_data]
    assert kinds == [
        pb.COLUMN_KIND_INTEGER,
        pb.COLUMN_KIND_REAL,
        pb.COLUMN_KIND_TEXT,
        pb.COLUMN_KIND_BLOB,
        pb.COLUMN_KIND_INTEGER,  # only NULLs: sent as integers, every row marked
    ]
    rows = server_rows(message)
    assert rows == server_rows(as_rows(EVERY_KIND, columns)) == EVERY_KIND
    assert [type(v) for v in rows[1]] == [int, float, str, bytes, type(None)]


def test_a_null_row_holds_the_kinds_zero_and_a_bit_in_the_mask():
    values = [(None,) if i in (0, 7, 8, 12) else (i,) for i in range(13)]
    [column] = request(values, ["a"]).column_data
    assert list(column.integers) == [0 if i in (0, 7, 8, 12) else i for i in range(13)]
    assert column.nulls == bytes([0b1000_0001, 0b0001_0001])
    assert not column.texts and not column.reals and not column.blobs
    assert server_rows(request(values, ["a"])) == values


@pytest.mark.parametrize("count", [1, 7, 8, 9, 16, 17, 1000])
def test_the_mask_has_one_bit_per_row_whatever_the_count(count):
    values = [(None if i % 3 == 0 else f"v{i}",) for i in range(count)]
    [column] = request(values, ["a"]).column_data
    assert len(column.nulls) == (count + 7) // 8
    assert server_rows(request(values, ["a"])) == values


def test_a_column_without_nulls_sends_no_mask():
    [column, _] = request([(1, "a"), (2, "b")]).column_data
    assert column.nulls == b""


def test_other_buffers_are_blobs():
    rows = [(bytearray(b"ab"), 1), (memoryview(b"cd"), 2), (b"ef", 3), (None, 4)]
    message = request(rows)
    assert sent_form(message) == "columns"
    assert server_rows(message) == [(b"ab", 1), (b"cd", 2), (b"ef", 3), (None, 4)]


class Level(enum.IntEnum):
    LOW = 1


@pytest.mark.parametrize(
    "column",
    [
        [1, "1"],  # integers and texts
        [1, 1.5],  # integers and reals: SQLite would store them as they are, so kept apart
        ["a", b"a"],  # text and blob
        [1, Level.LOW],  # an int subclass goes as the row form takes it
    ],
)
def test_a_column_mixing_kinds_sends_the_batch_as_rows(column):
    rows = [(value, i) for i, value in enumerate(column)]
    message = request(rows)
    assert sent_form(message) == "rows"
    assert server_rows(message) == [(int(v) if isinstance(v, Level) else v, i) for v, i in rows]


def test_a_bool_is_refused_as_the_row_form_refuses_it():
    with pytest.raises(TypeError, match="bool"):
        request([(True, 1), (False, 2)])
    with pytest.raises(TypeError, match="bool"):
        request([(1, 1), (True, 2)])


@pytest.mark.parametrize("big", [INT64_MAX + 1, INT64_MIN - 1])
def test_an_integer_past_64_bits_is_refused_as_the_row_form_refuses_it(big):
    with pytest.raises(ValueError, match="64-bit"):
        request([(1, 1), (big, 2)])


def test_rows_of_unequal_length_go_as_rows_for_the_server_to_name():
    message = request([(1, 2), (3,)])
    assert sent_form(message) == "rows"
    assert [len(r.values) for r in message.rows] == [2, 1]


def test_a_row_width_other_than_the_columns_goes_as_rows():
    assert sent_form(request([(1, 2, 3)])) == "rows"


def test_no_rows_sends_neither():
    message = request([])
    assert not message.rows and not message.column_data


def test_rows_may_be_any_iterables():
    message = request(iter([[1, "a"], (2, "b")]))
    assert sent_form(message) == "columns"
    assert server_rows(message) == [(1, "a"), (2, "b")]


def test_nan_goes_as_columns_for_the_server_to_refuse():
    message = request([(float("nan"), 1)])
    assert sent_form(message) == "columns"
    assert math.isnan(message.column_data[0].reals[0])


def test_columns_a_server_did_not_read_go_again_as_the_same_rows():
    message = request(EVERY_KIND, ("i", "r", "t", "b", "n"))
    again = _columns.as_rows_if_unread(message, pb.BatchInsertResponse())
    assert again is not None and not again.column_data
    assert [_convert.from_row(r) for r in again.rows] == EVERY_KIND
    assert list(again.columns) == list(message.columns) and again.table == message.table


def test_columns_a_server_read_or_rows_never_go_again():
    message = request([(1, "a")])
    assert _columns.as_rows_if_unread(message, pb.BatchInsertResponse(rows_received=1)) is None
    assert (
        _columns.as_rows_if_unread(request([(1, "a"), ("b", 2)]), pb.BatchInsertResponse()) is None
    )
