"""BatchInsert's columnar form (``column_data``) on both engines: the same rows, cache
invalidation, conflict modes and idempotency as the row form, and every malformed
request refused naming its field with nothing written."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client import _rpcs
from dataaccess_client._columns import set_rows
from tests.conftest import Running, failure_of, plain_rows, row, started
from tests.engines.conftest import Engine
from tests.engines.test_cache_engines import cached, fresh

ITEM_COLUMNS = ["id", "parent_id", "i", "r", "t", "b"]
# Every storage class, NULLs between them, and text COPY must escape ("\N" is not NULL).
ITEMS = [
    (1, 1, 2**62, 1.5, "tab\tand\nnewline \\ é ☃", b"\x00\xff"),
    (2, None, None, None, None, None),
    (3, 2, -(2**63), 1e-300, "", b""),
    (4, None, 0, 0.0, "\\N", b"\\N"),
    (5, 1, -1, -2.5, "NULL", bytes(range(256))),
]


def columnar(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], **options: Any
) -> pb.BatchInsertRequest:
    """The BatchInsertRequest in the columnar form, as the client package encodes it."""
    call = _rpcs.batch_insert.call("kitchen", "items", columns, rows, **options)
    request = cast("pb.BatchInsertRequest", call.request)
    del request.rows[:], request.column_data[:]
    set_rows(request, rows)
    assert request.column_data and not request.rows
    return request


def row_form(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], **options: Any
) -> pb.BatchInsertRequest:
    """The same insert in the row form."""
    request = columnar(columns, rows, **options)
    del request.column_data[:]
    request.rows.extend(row(*r) for r in rows)
    return request


async def test_every_kind_and_null_round_trips_as_the_row_form(
    served: Running, engine: Engine
) -> None:
    sent = await served.stub.BatchInsert(columnar(ITEM_COLUMNS, ITEMS))
    as_rows = [(100 + r[0], *r[1:]) for r in ITEMS]
    sent_as_rows = await served.stub.BatchInsert(row_form(ITEM_COLUMNS, as_rows))
    assert sent.rows_affected == sent_as_rows.rows_affected == len(ITEMS)
    assert sent.rows_received == sent_as_rows.rows_received == len(ITEMS)
    read = "SELECT id, parent_id, i, r, t, b FROM items WHERE id {} ORDER BY id"
    by_columns = plain_rows(
        await served.stub.Query(pb.QueryRequest(database="kitchen", sql=read.format("< 100")))
    )
    by_rows = plain_rows(
        await served.stub.Query(pb.QueryRequest(database="kitchen", sql=read.format("> 100")))
    )
    assert by_columns == ITEMS
    assert by_rows == as_rows
    stored = "SELECT i, r, t, b, t IS NULL FROM items ORDER BY id"
    direct = await engine.direct(stored)
    assert direct[: len(ITEMS)] == direct[len(ITEMS) :]


@pytest.fixture
async def with_flags(tmp_path: Path, engine: Engine) -> Any:
    """A server whose ``kitchen`` also has ``flags``, with a boolean column."""
    boolean = "boolean" if engine.postgres else "BOOLEAN"
    await engine.direct(f"CREATE TABLE flags (id integer PRIMARY KEY, ok {boolean}, note text)")
    document = engine.document()
    document["databases"][0]["allowed_tables"].append("flags")
    async with started(tmp_path, document) as server:
        yield server


async def test_a_boolean_column_takes_1_0_and_null_as_the_row_form_does(
    with_flags: Running, engine: Engine
) -> None:
    stub = with_flags.stub
    values = [(1, 1, "yes"), (2, 0, "no"), (3, None, None)]
    request = columnar(["id", "ok", "note"], values)
    request.table = "flags"
    await stub.BatchInsert(request)
    again = row_form(["id", "ok", "note"], [(10 + i, ok, note) for i, ok, note in values])
    again.table = "flags"
    await stub.BatchInsert(again)
    answer = await stub.Query(
        pb.QueryRequest(database="kitchen", sql="SELECT id, ok FROM flags ORDER BY id")
    )
    assert plain_rows(answer) == [(1, 1), (2, 0), (3, None), (11, 1), (12, 0), (13, None)]
    if engine.postgres:  # stored as booleans, not as text or integers
        stored = await engine.direct("SELECT ok FROM flags ORDER BY id")
        assert stored == [(True,), (False,), (None,)] * 2


async def test_a_columnar_insert_drops_the_cached_reads_it_changes(
    served: Running, engine: Engine
) -> None:
    p = engine.p
    assert await cached(served, "SELECT count(*) FROM items") == [(0,)]
    assert await cached(served, f"SELECT t FROM items WHERE id = {p(1)}", 5) == []
    await served.stub.BatchInsert(columnar(ITEM_COLUMNS, ITEMS))
    assert await fresh(served, "SELECT count(*) FROM items") == [(len(ITEMS),)]
    assert await fresh(served, f"SELECT t FROM items WHERE id = {p(1)}", 5) == [("NULL",)]


async def test_conflict_modes_take_columns(served: Running, engine: Engine) -> None:
    stub = served.stub

    def insert(rows: list[tuple[Any, ...]], **options: Any) -> Any:
        return stub.BatchInsert(columnar(["id", "t"], rows, **options))

    await insert([(1, "a"), (2, "b")])
    duplicate = await failure_of(insert([(3, "c"), (1, "again")]))
    assert duplicate.code == grpc.StatusCode.ALREADY_EXISTS
    ignored = await insert([(1, "x"), (3, "c")], on_conflict="ignore")
    assert ignored.rows_affected == 1
    await insert(
        [(1, "first"), (4, None), (1, "last")], on_conflict="upsert", conflict_columns=["id"]
    )
    read = pb.QueryRequest(database="kitchen", sql="SELECT id, t FROM items ORDER BY id")
    assert plain_rows(await stub.Query(read)) == [(1, "last"), (2, "b"), (3, "c"), (4, None)]
    replace = insert([(2, "replaced")], on_conflict="replace")
    if engine.postgres:
        refused = await failure_of(replace)
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.fields == ["on_conflict"]
        return
    assert (await replace).rows_affected == 1
    assert plain_rows(await stub.Query(read))[1] == (2, "replaced")


async def test_an_idempotency_key_holds_whichever_form_carries_the_rows(
    served: Running, engine: Engine
) -> None:
    rows = [(1, "a"), (2, None)]
    request = columnar(["id", "t"], rows, idempotency_key="columns-1")
    first, second = await asyncio.gather(
        served.stub.BatchInsert(request), served.stub.BatchInsert(request)
    )
    assert first.rows_affected == second.rows_affected == 2
    # The same rows as rows are the same request: replayed, not written again.
    replay = await served.stub.BatchInsert(row_form(["id", "t"], rows, idempotency_key="columns-1"))
    assert replay.rows_affected == 2
    assert await engine.direct("SELECT count(*) FROM items") == [(2,)]
    other = columnar(["id", "t"], [(3, "c")], idempotency_key="columns-1")
    reused = await failure_of(served.stub.BatchInsert(other))
    assert reused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert await engine.direct("SELECT count(*) FROM items") == [(2,)]


def _integers(*values: int, nulls: bytes = b"") -> pb.ColumnData:
    return pb.ColumnData(kind=pb.COLUMN_KIND_INTEGER, integers=values, nulls=nulls)


def _texts(*values: str) -> pb.ColumnData:
    return pb.ColumnData(kind=pb.COLUMN_KIND_TEXT, texts=values)


def _reals(*values: float, nulls: bytes = b"") -> pb.ColumnData:
    return pb.ColumnData(kind=pb.COLUMN_KIND_REAL, reals=values, nulls=nulls)


Change = Callable[[pb.BatchInsertRequest], None]
NAN = float("nan")
MALFORMED: list[tuple[str, list[pb.ColumnData], Change | None, str]] = [
    # (what, column_data for the columns id and r, a change to the request, the field named);
    # each is refused before an engine sees it, whatever the columns' types
    (
        "both forms",
        [_integers(1), _texts("a")],
        lambda r: r.rows.append(row(2, "b")),
        "column_data",
    ),
    ("a column too few", [_integers(1, 2)], None, "column_data"),
    ("a column too many", [_integers(1), _texts("a"), _texts("b")], None, "column_data"),
    (
        "arrays of unequal length",
        [_integers(1, 2, 3), _texts("a", "b")],
        None,
        "column_data[1].texts",
    ),
    (
        "a mask too long",
        [_integers(1, 2, 3, nulls=b"\x01\x00"), _texts("a", "b", "c")],
        None,
        "column_data[0].nulls",
    ),
    (
        "a mask too short",
        [_integers(*range(9), nulls=b"\x01"), _texts(*"abcdefghi")],
        None,
        "column_data[0].nulls",
    ),
    (
        "a mask past the last row",
        [_integers(1, 2, 3, nulls=b"\x08"), _texts("a", "b", "c")],
        None,
        "column_data[0].nulls",
    ),
    ("no kind", [pb.ColumnData(integers=[1]), _texts("a")], None, "column_data[0].kind"),
    (
        "values in another array",
        [_integers(1), pb.ColumnData(kind=pb.COLUMN_KIND_TEXT, texts=["a"], blobs=[b"a"])],
        None,
        "column_data[1].blobs",
    ),
    ("NaN", [_integers(1, 2), _reals(1.0, NAN)], None, "column_data[1].reals[1]"),
]


async def test_a_malformed_columnar_request_names_its_field_and_writes_nothing(
    served: Running, engine: Engine
) -> None:
    for what, columns, change, field in MALFORMED:
        request = pb.BatchInsertRequest(
            database="kitchen", table="items", columns=["id", "r"], column_data=columns
        )
        if change is not None:
            change(request)
        refused = await failure_of(served.stub.BatchInsert(request))
        assert (refused.code, refused.fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field]), what
    assert await engine.direct("SELECT count(*) FROM items") == [(0,)]
    # A NULL row's placeholder is never read, NaN included; no rows at all write nothing.
    placeholder = pb.BatchInsertRequest(
        database="kitchen",
        table="items",
        columns=["id", "r"],
        column_data=[_integers(1, 2), _reals(1.0, NAN, nulls=b"\x02")],
    )
    assert (await served.stub.BatchInsert(placeholder)).rows_affected == 2
    empty = pb.BatchInsertRequest(
        database="kitchen", table="items", columns=["id"], column_data=[_integers()]
    )
    assert (await served.stub.BatchInsert(empty)).rows_affected == 0
    assert await engine.direct("SELECT id, r FROM items ORDER BY id") == [(1, 1.0), (2, None)]
