"""Statement fingerprints: literals out (double-quoted ones SQLite reads as strings too),
comments out, identifiers and placeholders kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service.fingerprint import fingerprint
from tests.conftest import Running
from tests.observe.test_tracing import (
    Receiver,
    _attributes,
    _names,
    _spans_until,
    _traced_service,
    _traceparent,
    receiver,  # noqa: F401  (the fixture)
)


@pytest.mark.parametrize(
    ("sql", "shape"),
    [
        (
            "SELECT * FROM t WHERE a = 'x''y' AND b = 12.5e3",
            "SELECT * FROM t WHERE a = ? AND b = ?",
        ),
        (
            "SELECT x1, t2.y FROM t2 WHERE id IN (1, 2,3)",
            "SELECT x1, t2.y FROM t2 WHERE id IN (?, ?,?)",
        ),
        (
            'SELECT "col 1" FROM t -- the secret is 42\n WHERE k = ?',
            'SELECT "col 1" FROM t WHERE k = ?',
        ),
        ("SELECT X'ABCD', 0x1F /* note */ FROM t", "SELECT ?, ? FROM t"),
        ("select  a\n\tfrom   b", "select a from b"),
    ],
)
def test_fingerprints(sql: str, shape: str) -> None:
    assert fingerprint(sql, frozenset({"col 1"})) == shape


NAMES = frozenset({"items", "t", "name", "qty", "main"})


@pytest.mark.parametrize(
    ("sql", "shape"),
    [
        # SQLite reads "SSN-123" as a string: no column has that name.
        ('SELECT * FROM t WHERE name = "SSN-123"', "SELECT * FROM t WHERE name = ?"),
        ('SELECT "name" FROM t WHERE "qty" > "7"', 'SELECT "name" FROM t WHERE "qty" > ?'),
        ('SELECT * FROM t WHERE "secret" = 1', "SELECT * FROM t WHERE ? = ?"),
        ('SELECT "x""y" FROM t', "SELECT ? FROM t"),
        ('SELECT "unterminated', "SELECT ?"),
        # Where SQLite reads no expression a double-quoted token is a name.
        (
            'SELECT "i"."weird col" AS "Total" FROM "main"."items" AS "i"',
            'SELECT "i"."weird col" AS "Total" FROM "main"."items" AS "i"',
        ),
        (
            'WITH "c"(n) AS (SELECT 1) SELECT n FROM "c"',
            'WITH "c"(n) AS (SELECT ?) SELECT n FROM "c"',
        ),
        ("SELECT `a`, [b c] FROM t", "SELECT `a`, [b c] FROM t"),
    ],
)
def test_double_quoted_strings_are_masked(sql: str, shape: str) -> None:
    assert fingerprint(sql, NAMES) == shape


def test_without_the_schema_every_double_quoted_value_is_masked() -> None:
    assert fingerprint('SELECT "name" FROM t WHERE "name" = "x"') == "SELECT ? FROM t WHERE ? = ?"


async def test_stats_never_show_a_double_quoted_literal(running: Running) -> None:
    """Through the server: SQLite reads the value, Stats keep only the shape."""
    sql = 'SELECT "t" FROM items WHERE t = "SSN-123-45" OR "code" = "SSN-999"'
    answer = await running.stub.Query(pb.QueryRequest(database="kitchen", sql=sql))
    assert [c.name for c in answer.columns] == ["t"]
    stats = await running.stub.Stats(pb.StatsRequest())
    shapes = [s.fingerprint for s in stats.statements] + [s.fingerprint for s in stats.slow_queries]
    assert 'SELECT "t" FROM items WHERE t = ? OR "code" = ?' in shapes
    assert not [s for s in shapes if "SSN" in s]


async def test_the_exported_query_text_never_shows_a_double_quoted_literal(
    tmp_path: Path,
    document: dict[str, Any],
    receiver: tuple[Receiver, int],  # noqa: F811 (the fixture imported above)
    service_process: Any,
) -> None:
    found, port = receiver
    server = await _traced_service(service_process, document, port)
    sql = 'SELECT count(*) FROM items WHERE t = "SSN-123-45" AND "qty" >= 0'
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        header, trace_id, _ = _traceparent()
        await pb_grpc.DataAccessStub(channel).Query(
            pb.QueryRequest(database="kitchen", sql=sql), metadata=[("traceparent", header)]
        )
        spans = await _spans_until(found, trace_id, lambda s: "db.query" in _names(s))
    [query] = [s for s in spans if s.name == "db.query"]
    text = _attributes(query)["db.query.text"]
    assert text == 'SELECT count(*) FROM items WHERE t = ? AND "qty" >= ?'
