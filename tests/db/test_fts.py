"""Full-text search: an FTS5 table in allowed_tables can be queried and written.

FTS5 keeps its data in shadow tables (``<name>_data``, ``_idx``, ``_content``,
``_docsize``, ``_config``) that it reads and writes through statements of its
own, which the guard sees too. They are allowed for the virtual table that
owns them, and still refused when a caller's statement names them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from service.db.sqlite.guard import Catalog, Guard, ShapeMemo
from tests.conftest import Running, failure_of, plain_rows, row, started, value

MIGRATION = """
CREATE VIRTUAL TABLE docs USING fts5(title, body);
INSERT INTO docs (title, body) VALUES ('first', 'hello world'), ('second', 'goodbye moon');
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
"""
SHADOWS = ["docs_data", "docs_idx", "docs_content", "docs_docsize", "docs_config"]
MATCH = "SELECT title FROM docs WHERE docs MATCH ? ORDER BY rank"


async def _server(tmp_path: Path, allowed: list[str] | None) -> Any:
    migrations = tmp_path / "migrations"
    migrations.mkdir(exist_ok=True)
    (migrations / "0001_docs.sql").write_text(MIGRATION)
    database: dict[str, Any] = {
        "name": "search",
        "path": "search.db",
        "migrations": str(migrations),
    }
    if allowed is not None:
        database["allowed_tables"] = allowed
    document = {
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "databases": [database],
    }
    return started(tmp_path, document)


@pytest.fixture(params=[["docs", "notes"], None], ids=["allowed", "default"])
async def search(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    """A server whose database has an FTS5 table, listed in allowed_tables or by default."""
    async with await _server(tmp_path, request.param) as running:
        yield running


async def _match(running: Running, words: str) -> pb.QueryResponse:
    request = pb.QueryRequest(database="search", sql=MATCH, params=[value(words)])
    return await running.stub.Query(request)


async def test_match_queries_and_writes_work_and_are_never_stale(search: Running) -> None:
    first = await _match(search, "hello")
    assert plain_rows(first) == [("first",)]
    assert [t for t in first.tags if t.startswith("table:")] == ["table:search.docs"]
    assert (await _match(search, "hello")).cache_status == pb.CACHE_STATUS_HIT_LOCAL

    inserted = await search.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="search",
            table="docs",
            columns=["title", "body"],
            rows=[row("third", "hello again")],
        )
    )
    assert list(inserted.invalidated_tags) == ["table:search.docs"]
    again = await _match(search, "hello")
    assert again.cache_status == pb.CACHE_STATUS_MISS
    assert sorted(plain_rows(again)) == [("first",), ("third",)]

    statement = pb.Statement(sql="DELETE FROM docs WHERE title = ?", param_sets=[row("first")])
    await search.stub.BatchUpdate(pb.BatchUpdateRequest(database="search", statements=[statement]))
    assert plain_rows(await _match(search, "hello")) == [("third",)]
    count = await search.stub.Query(
        pb.QueryRequest(database="search", sql="SELECT count(*) FROM docs")
    )
    assert plain_rows(count) == [(2,)]


@pytest.mark.parametrize("shadow", SHADOWS)
async def test_shadow_tables_named_by_a_caller_are_refused(search: Running, shadow: str) -> None:
    for sql in [
        f"SELECT * FROM {shadow}",
        f'SELECT count(*) FROM main."{shadow.upper()}"',
        f"SELECT d.title FROM docs AS d JOIN {shadow} ON 1 WHERE docs MATCH 'hello'",
    ]:
        failure = await failure_of(search.stub.Query(pb.QueryRequest(database="search", sql=sql)))
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED, sql
    statement = pb.Statement(sql=f"DELETE FROM {shadow}")
    failure = await failure_of(
        search.stub.BatchUpdate(pb.BatchUpdateRequest(database="search", statements=[statement]))
    )
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    failure = await failure_of(
        search.stub.BatchInsert(
            pb.BatchInsertRequest(database="search", table=shadow, columns=["id"], rows=[row(9)])
        )
    )
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert plain_rows(await _match(search, "hello")) == [("first",)]  # the index is intact


async def test_a_virtual_table_not_allowed_keeps_its_shadow_tables_refused(tmp_path: Path) -> None:
    async with await _server(tmp_path, ["notes"]) as running:
        for sql in [MATCH, "SELECT count(*) FROM docs_content"]:
            request = pb.QueryRequest(
                database="search", sql=sql, params=[value("hello")] if "?" in sql else []
            )
            failure = await failure_of(running.stub.Query(request))
            assert failure.code == grpc.StatusCode.PERMISSION_DENIED


async def test_fts5_functions_work_and_random_over_fts_is_never_cached(search: Running) -> None:
    sql = (
        "SELECT highlight(docs, 1, '[', ']'), snippet(docs, 1, '<', '>', '...', 4),"
        " bm25(docs) < 0 FROM docs WHERE docs MATCH 'world'"
    )
    answer = await search.stub.Query(pb.QueryRequest(database="search", sql=sql))
    assert plain_rows(answer) == [("hello [world]", "hello <world>", 1)]
    request = pb.QueryRequest(
        database="search", sql="SELECT random(), title FROM docs WHERE docs MATCH 'moon'"
    )
    statuses = [(await search.stub.Query(request)).cache_status for _ in range(3)]
    assert statuses == [pb.CACHE_STATUS_BYPASS] * 3


def test_a_cached_statement_keeps_its_shape_when_its_virtual_table_prepares_its_own() -> None:
    """Pure logic: SQLite authorizes only the virtual table's own statement when a cached
    statement runs; the shape remembered for the caller's SQL must not be replaced."""
    catalog = Catalog(
        {"docs": "docs", "docs_idx": "docs_idx"},
        frozenset({"docs"}),
        {"docs_idx": "docs"},
        frozenset(),
    )
    guard = Guard(frozenset(), ShapeMemo(), writer=False)
    guard.learn(catalog, None)
    sql = "SELECT random(), title FROM docs WHERE docs MATCH ?"
    guard.begin(sql)  # first prepare: the statement's own actions
    for action, arg1, arg2 in [
        (sqlite3.SQLITE_READ, "docs", "title"),
        (sqlite3.SQLITE_FUNCTION, None, "random"),
    ]:
        assert guard(action, arg1, arg2, "main", None) == sqlite3.SQLITE_OK
    learnt = guard.shape_of(sql)
    assert learnt is not None and learnt.volatile and learnt.reads == {"docs"}

    guard.begin(sql)  # a later run of the cached statement: only FTS5's own statement
    assert guard(sqlite3.SQLITE_READ, "docs_idx", "term", "main", None) == sqlite3.SQLITE_OK
    assert guard.shape_of(sql) == learnt

    guard.memo = ShapeMemo()  # forgotten: whatever it calls, it is not cached
    guard.begin(sql)
    assert guard(sqlite3.SQLITE_READ, "docs_idx", "term", "main", None) == sqlite3.SQLITE_OK
    fallback = guard.shape_of(sql)
    assert fallback is not None and fallback.volatile and fallback.reads == {"docs"}

    guard.begin("SELECT * FROM docs_idx")  # named by the caller: refused
    assert guard(sqlite3.SQLITE_READ, "docs_idx", "term", "main", None) == sqlite3.SQLITE_DENY
