"""Rows -> QueryResponse: the in-place encoder gives the messages built by hand."""

from __future__ import annotations

from google.protobuf import struct_pb2

from dataaccess.v1 import data_access_pb2 as pb
from service.api.codec import add_rows
from service.values import SqlValue


def _added(rows: list[tuple[SqlValue, ...]]) -> pb.QueryResponse:
    response = pb.QueryResponse()
    add_rows(response.rows, rows)
    return response


def test_every_storage_class_is_encoded_as_the_built_messages_are() -> None:
    rows: list[tuple[SqlValue, ...]] = [
        (1, 2.5, "text", b"\x00blob", None),
        (2**63 - 1, -(2**63), "", b"", -0.0),
        (),
    ]
    built = pb.QueryResponse(
        rows=[
            pb.Row(
                values=[
                    pb.Value(integer=1),
                    pb.Value(real=2.5),
                    pb.Value(text="text"),
                    pb.Value(blob=b"\x00blob"),
                    pb.Value(null=struct_pb2.NULL_VALUE),
                ]
            ),
            pb.Row(
                values=[
                    pb.Value(integer=2**63 - 1),
                    pb.Value(integer=-(2**63)),
                    pb.Value(text=""),
                    pb.Value(blob=b""),
                    pb.Value(real=-0.0),
                ]
            ),
            pb.Row(),
        ]
    )
    assert _added(rows) == built
    assert _added(rows).rows[0].values[4].WhichOneof("kind") == "null"
    assert _added(rows).rows[0].values[4].null == struct_pb2.NULL_VALUE


def test_subclasses_and_byte_views_take_their_base_kind() -> None:
    class Label(str):
        pass

    [row] = _added([(True, Label("x"), bytearray(b"a"), memoryview(b"m"))]).rows  # type: ignore[list-item]
    assert [v.WhichOneof("kind") for v in row.values] == ["integer", "text", "blob", "blob"]
    assert (row.values[0].integer, row.values[1].text) == (1, "x")
    assert (row.values[2].blob, row.values[3].blob) == (b"a", b"m")
