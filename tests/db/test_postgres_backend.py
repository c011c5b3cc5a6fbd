"""The PostgreSQL backend through the gRPC stub, on a real PostgreSQL 15 (a fresh database
of the session's server per test): value mapping, the confinement of reads, keyed tags
learnt from plans, writes and their tags, errors, migrations, health and stats.

The configured URL is a superuser's: reads must be confined by the service alone.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from service.db.postgres.shapes import digest
from tests.conftest import (
    Failure,
    Running,
    _bad_request_fields,
    failure_of,
    plain_rows,
    row,
    started,
    value,
)
from tests.engines.conftest import KITCHEN_PG_MIGRATIONS

pytestmark = pytest.mark.integration

READER = "dataaccess_reader_kitchen"
ALLOWED = ["parents", "items", "notes", "typed", "people", "secret_view"]
EXTRA_MIGRATION = """
CREATE INDEX items_parent ON items (parent_id);
-- allowed by name in the config, but it reads secrets
CREATE VIEW secret_view AS SELECT id, value FROM secrets;
CREATE FUNCTION count_items() RETURNS bigint LANGUAGE sql STABLE
  AS 'SELECT count(*) FROM items';
CREATE FUNCTION count_pl() RETURNS bigint LANGUAGE plpgsql STABLE
  AS $$BEGIN RETURN (SELECT count(*) FROM items); END$$;
CREATE SEQUENCE counter;
CREATE EXTENSION dblink;
CREATE TABLE typed (
    id      integer PRIMARY KEY,
    flag    boolean,
    amount  numeric(10, 2),
    at      timestamptz,
    day     date,
    doc     json,
    docb    jsonb,
    u       uuid,
    span    interval,
    nums    integer[],
    words   text[],
    s       smallint,
    big     bigint,
    d       double precision,
    blob    bytea,
    note    text
);
CREATE TABLE people (id integer PRIMARY KEY, name text NOT NULL, age integer);
-- every new parent gets a note, written by the trigger
CREATE FUNCTION note_parent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO notes (id, parent_id, body) VALUES (NEW.id, NEW.id, 'made by trigger');
  RETURN NEW;
END$$;
CREATE TRIGGER parents_note AFTER INSERT ON parents FOR EACH ROW EXECUTE FUNCTION note_parent();
"""


def migrations_folder(where: Path) -> Path:
    """The kitchen schema and this module's additions, in a folder of their own."""
    folder = where / "migrations"
    shutil.copytree(KITCHEN_PG_MIGRATIONS, folder)
    (folder / "0003_extra.sql").write_text(EXTRA_MIGRATION, encoding="utf-8")
    return folder


def pg_document(data_dir: Path, url: str, migrations: Path, **limits: Any) -> dict[str, Any]:
    """A config with ``kitchen`` on PostgreSQL only."""
    return {
        "listen": "127.0.0.1:0",
        "data_dir": str(data_dir),
        "databases": [
            {
                "name": "kitchen",
                "url": url,
                "migrations": str(migrations),
                "allowed_tables": ALLOWED,
            }
        ],
        "limits": {"readers_per_database": 2, "acquire_timeout_seconds": 2.0, **limits},
        "shutdown_grace_seconds": 2,
    }


@pytest.fixture
async def pg(tmp_path: Path, postgres_url: str) -> AsyncIterator[Running]:
    """A server with ``kitchen`` on a fresh PostgreSQL database."""
    document = pg_document(tmp_path / "data", postgres_url, migrations_folder(tmp_path))
    async with started(tmp_path, document) as server:
        yield server


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def query(server: Running, sql: str, *params: Any, **options: Any) -> pb.QueryResponse:
    request = pb.QueryRequest(
        database="kitchen", sql=sql, params=[value(p) for p in params], **options
    )
    response: pb.QueryResponse = await server.stub.Query(request)
    return response


async def query_code(server: Running, sql: str, *params: Any) -> grpc.StatusCode | str:
    """How ``sql`` failed, or "answered" (so a loop's assertion names every case)."""
    request = pb.QueryRequest(database="kitchen", sql=sql, params=[value(p) for p in params])
    try:
        await server.stub.Query(request)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return "answered"


async def update(server: Running, sql: str, *param_sets: tuple[Any, ...]) -> pb.BatchUpdateResponse:
    statement = pb.Statement(sql=sql, param_sets=[row(*p) for p in param_sets])
    response: pb.BatchUpdateResponse = await server.stub.BatchUpdate(
        pb.BatchUpdateRequest(database="kitchen", statements=[statement])
    )
    return response


async def update_failure(server: Running, sql: str, *param_sets: tuple[Any, ...]) -> Failure:
    """How a BatchUpdate of ``sql`` failed (code OK if it did not)."""
    statement = pb.Statement(sql=sql, param_sets=[row(*p) for p in param_sets])
    request = pb.BatchUpdateRequest(database="kitchen", statements=[statement])
    try:
        await server.stub.BatchUpdate(request)
    except grpc.aio.AioRpcError as exc:
        return Failure(exc.code(), exc.details() or "", _bad_request_fields(exc))
    return Failure(grpc.StatusCode.OK, "answered", [])


async def direct(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` from a connection of our own, as the superuser."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return [tuple(r) for r in await connection.fetch(sql, *params)]
    finally:
        await connection.close()


# Value mapping


async def test_values_map_to_the_five_kinds_and_canonical_text(pg: Running) -> None:
    answer = await query(
        pg,
        "SELECT 7::smallint, 8::integer, (2^62)::bigint, 1.5::double precision, 'é'::text,"
        " '\\x00ff'::bytea, NULL::integer, true, false, 1.5::numeric(5, 2),"
        " '2026-01-02 03:04:05+02'::timestamptz, '2026-01-01'::date, '{\"a\": 1}'::json,"
        " '{\"b\": 2, \"a\": 1}'::jsonb, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid,"
        " '1 day 2 hours'::interval, ARRAY[1, 2], ARRAY['a b', NULL],"
        " '2026-01-01 10:00'::timestamp",
    )
    assert plain_rows(answer) == [
        (
            7,
            8,
            2**62,
            1.5,
            "é",
            b"\x00\xff",
            None,
            1,
            0,
            "1.50",
            "2026-01-02 01:04:05+00",
            "2026-01-01",
            '{"a": 1}',
            '{"a": 1, "b": 2}',
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "P1DT2H",
            "{1,2}",
            '{"a b",NULL}',
            "2026-01-01 10:00:00",
        )
    ]
    kinds = [v.WhichOneof("kind") for v in answer.rows[0].values]
    assert (
        kinds[:9]
        == ["integer", "integer", "integer", "real", "text", "blob", "null"] + ["integer"] * 2
    )
    assert set(kinds[9:]) == {"text"}
    assert [c.decl_type for c in answer.columns][:3] == ["int2", "int4", "int8"]


TYPED_COLUMNS = ["id", "flag", "amount", "at", "day", "doc", "docb", "u", "span", "nums"]
TYPED_COLUMNS += ["words", "s", "big", "d", "blob", "note"]
TYPED_ROW = (
    1,
    1,
    "12.5",
    "2026-03-04T05:06:07-01:00",
    "2026-01-01",
    '{"z": [1, 2]}',
    '{"z": 1, "a": null}',
    "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
    "PT90M",
    "{1,2}",
    '{"x y",z}',
    -3,
    -(2**40),
    0.25,
    b"\x00\x01\\\t\n",
    "tab\there\nand \\N",
)
TYPED_TEXT = (
    1,
    1,
    "12.50",
    "2026-03-04 06:06:07+00",
    "2026-01-01",
    '{"z": [1, 2]}',
    '{"a": null, "z": 1}',
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "PT1H30M",
    "{1,2}",
    '{"x y",z}',
    -3,
    -(2**40),
    0.25,
    b"\x00\x01\\\t\n",
    "tab\there\nand \\N",
)


async def test_text_parameters_are_parsed_by_postgresql_in_copy_and_in_statements(
    pg: Running,
) -> None:
    inserted = await pg.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen",
            table="typed",
            columns=TYPED_COLUMNS,
            rows=[row(*TYPED_ROW), row(2, *[None] * (len(TYPED_COLUMNS) - 1))],
        )
    )
    assert inserted.rows_affected == 2
    # an array has no Value kind: its text form goes in through an explicit cast
    casts = {"nums": "::text::integer[]", "words": "::text::text[]"}
    placeholders = ", ".join(
        f"${n}{casts.get(column, '')}" for n, column in enumerate(TYPED_COLUMNS, start=1)
    )
    done = await update(
        pg,
        f"INSERT INTO typed ({', '.join(TYPED_COLUMNS)}) VALUES ({placeholders})",
        (3, *TYPED_ROW[1:]),
        (4, 0, *TYPED_ROW[2:]),
    )
    assert list(done.rows_affected) == [2]
    columns = ", ".join(TYPED_COLUMNS)
    answer = await query(pg, f"SELECT {columns} FROM typed ORDER BY id")
    assert plain_rows(answer) == [
        TYPED_TEXT,
        (2, *[None] * (len(TYPED_COLUMNS) - 1)),
        (3, *TYPED_TEXT[1:]),
        (4, 0, *TYPED_TEXT[2:]),
    ]
    # text parameters for the text-mapped types in a read, 1/0 for a boolean
    # rows 1, 3 and 4 differ only by their boolean
    for sql, params in [
        ("SELECT id FROM typed WHERE day = $1 ORDER BY id", ("2026-01-01",)),
        ("SELECT id FROM typed WHERE amount = $1 ORDER BY id", ("12.50",)),
        ("SELECT id FROM typed WHERE at = $1 ORDER BY id", ("2026-03-04 06:06:07Z",)),
        (
            "SELECT id FROM typed WHERE u = $1 ORDER BY id",
            ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",),
        ),
        ("SELECT id FROM typed WHERE span = $1 ORDER BY id", ("90 minutes",)),
        ("SELECT id FROM typed WHERE docb = $1 ORDER BY id", ('{"z":1,"a":null}',)),
        ("SELECT id FROM typed WHERE flag = $1 ORDER BY id", (1,)),
    ]:
        found = await query(pg, sql, *params)
        expected = [(1,), (3,)] if "flag" in sql else [(1,), (3,), (4,)]
        assert plain_rows(found) == expected, sql
    assert plain_rows(await query(pg, "SELECT id FROM typed WHERE flag = $1", 0)) == [(4,)]
    assert plain_rows(await query(pg, "SELECT $1::date + 1", "2026-01-31")) == [("2026-02-01",)]


# Confinement of reads


async def test_reads_cannot_write(pg: Running) -> None:
    refused = {}
    for sql in [
        "INSERT INTO items (id) VALUES (1) RETURNING id",
        "UPDATE parents SET name = 'x' RETURNING id",
        "DELETE FROM parents RETURNING id",
        "WITH gone AS (DELETE FROM parents RETURNING id) SELECT * FROM gone",
        "WITH made AS (INSERT INTO items (id) VALUES (5) RETURNING id) SELECT * FROM made",
        "SELECT nextval('counter')",
        "SELECT setval('counter', 100)",
    ]:
        refused[sql] = await query_code(pg, sql)
    assert {k: v for k, v in refused.items() if v != grpc.StatusCode.PERMISSION_DENIED} == {}
    assert await direct(pg_url(pg), "SELECT count(*) FROM parents") == [(2,)]
    assert await direct(pg_url(pg), "SELECT count(*) FROM items") == [(0,)]
    assert await direct(pg_url(pg), "SELECT last_value, is_called FROM counter") == [(1, False)]


def pg_url(server: Running) -> str:
    """The configured URL of ``kitchen``."""
    database: Any = server.server.router.databases["kitchen"]
    url = database.config.url
    assert isinstance(url, str) and url
    return url


async def test_reads_cannot_reach_other_tables_catalogs_or_the_services_own(pg: Running) -> None:
    codes = {}
    for sql in [
        "SELECT * FROM secrets",
        "SELECT value FROM secret_view",  # allowed by name, but over secrets
        "SELECT i.id, s.value FROM items i JOIN secrets s USING (id)",
        "SELECT (SELECT value FROM secrets LIMIT 1)",
        "SELECT * FROM parents WHERE EXISTS (SELECT 1 FROM secrets)",
        "TABLE secrets",
        "SELECT * FROM public.secrets",
        "SELECT * FROM pg_authid",
        "SELECT rolname, rolpassword FROM pg_catalog.pg_authid",
        "SELECT * FROM pg_class",
        "SELECT * FROM pg_settings",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM _dataaccess_outbox",
        "SELECT * FROM _dataaccess_idempotency",
        "SELECT * FROM schema_migrations",
    ]:
        codes[sql] = await query_code(pg, sql)
    assert {k: v for k, v in codes.items() if v != grpc.StatusCode.PERMISSION_DENIED} == {}


async def test_reads_cannot_call_functions_that_reach_outside(pg: Running) -> None:
    codes = {}
    for sql in [
        "SELECT set_config('role', 'postgres', false)",
        "SELECT set_config('search_path', 'pg_catalog', false)",
        "SELECT pg_catalog.set_config('statement_timeout', '0', false)",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_read_binary_file('/etc/passwd')",
        "SELECT * FROM pg_ls_dir('.')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_lock(1)",
        "SELECT query_to_xml('SELECT * FROM secrets', true, true, '')",
        "SELECT table_to_xml('secrets', true, true, '')",
        "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(x integer)",
        "SELECT dblink_exec('dbname=postgres', 'CREATE TABLE pwned (x int)')",
        "SELECT pg_notify('dataaccess_changes', '{\"t\": \"items\"}')",
        "SELECT name FROM parents WHERE set_config('role', 'postgres', false) IS NOT NULL",
    ]:
        codes[sql] = await query_code(pg, sql)
    assert {k: v for k, v in codes.items() if v != grpc.StatusCode.PERMISSION_DENIED} == {}


async def test_user_defined_and_clock_functions_are_answered_uncached(pg: Running) -> None:
    for sql, expected in [
        ("SELECT count_items()", [(0,)]),
        ("SELECT count_pl()", [(0,)]),
        ("SELECT id, count_items() FROM parents WHERE id = $1", [(1, 0)]),
    ]:
        params = (1,) if "$1" in sql else ()
        for _ in range(2):
            answer = await query(pg, sql, *params)
            assert plain_rows(answer) == expected, sql
            assert answer.cache_status == pb.CACHE_STATUS_BYPASS, sql
    # a write the function reads is seen at once
    await update(pg, "INSERT INTO items (id) VALUES ($1)", (1,))
    assert plain_rows(await query(pg, "SELECT count_items()")) == [(1,)]
    assert plain_rows(await query(pg, "SELECT count_pl()")) == [(1,)]
    for sql in [
        "SELECT id, now() FROM parents",
        "SELECT id, random() FROM parents",
        "SELECT id, CURRENT_TIMESTAMP FROM parents",
        "SELECT id FROM parents WHERE name <> current_user",
        "SELECT id FROM parents WHERE clock_timestamp() > '2000-01-01'",
    ]:
        for _ in range(2):
            answer = await query(pg, sql)
            assert answer.cache_status == pb.CACHE_STATUS_BYPASS, sql


async def test_multiple_statements_are_refused(pg: Running) -> None:
    for sql in [
        "SELECT 1; SELECT 2",
        "SELECT id FROM parents; DELETE FROM parents",
        "SELECT id FROM parents; SET ROLE postgres",
    ]:
        assert await query_code(pg, sql) == grpc.StatusCode.INVALID_ARGUMENT, sql
    assert await direct(pg_url(pg), "SELECT count(*) FROM parents") == [(2,)]


SESSION = (
    "SELECT current_user::text, session_user::text, current_setting('search_path'),"
    " current_setting('TimeZone'), current_setting('IntervalStyle'),"
    " current_setting('transaction_read_only'), current_setting('statement_timeout') <> '0'"
    " FROM parents WHERE id = 1"
)


async def test_the_readers_session_is_unchanged_after_refused_and_failed_reads(
    pg: Running,
) -> None:
    async def session() -> list[tuple[Any, ...]]:
        answer = await query(pg, SESSION, cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS))
        return plain_rows(answer)

    expected = [(READER, "postgres", '"$user", public', "UTC", "iso_8601", "on", 1)]
    assert await session() == expected
    attempts = [
        "SELECT set_config('role', 'postgres', false)",
        "SELECT set_config('search_path', 'secret_schema', false)",
        "SELECT 1/0 FROM parents",
        "SELECT * FROM secrets",
        "SELECT name::integer FROM parents",
        "SELECT 1; SET ROLE postgres",
        "SET ROLE postgres",
        "RESET ROLE",
        "SET search_path = pg_catalog",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT count(*) FROM generate_series(1, 100000000)",
    ]
    for sql in attempts:
        request = pb.QueryRequest(
            database="kitchen", sql=sql, cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)
        )
        await failure_of(pg.stub.Query(request, timeout=0.5))
    await asyncio.sleep(0.2)
    # every reader connection (two) answers as the reader role, on the default path
    results = await asyncio.gather(*[session() for _ in range(6)])
    assert all(result == expected for result in results), results
    # and the reader still cannot see secrets
    assert await query_code(pg, "SELECT * FROM secrets") == grpc.StatusCode.PERMISSION_DENIED


# Keyed tags from plans


def key_tag(table: str, columns: str, *values: str) -> str:
    return f"key:kitchen.{table}.{columns}={digest(values)}"


async def test_an_equality_on_the_key_gives_key_tags(pg: Running) -> None:
    answer = await query(pg, "SELECT id, t FROM items WHERE id = $1", 7)
    assert key_tag("items", "id", "7") in answer.tags
    assert "keys:kitchen.items" in answer.tags
    assert "table:kitchen.items" not in answer.tags
    by_code = await query(pg, "SELECT id FROM items WHERE code = $1", "a'b")
    assert key_tag("items", "code", "a'b") in by_code.tags
    literal = await query(pg, "SELECT name FROM parents WHERE id = 2")
    assert key_tag("parents", "id", "2") in literal.tags


async def test_a_range_or_an_or_gives_the_table_tag(pg: Running) -> None:
    for sql, params in [
        ("SELECT id FROM items WHERE id > $1", (7,)),
        ("SELECT id FROM items WHERE id = $1 OR id = $2", (7, 8)),
        ("SELECT id FROM items WHERE id = $1 OR t = $2", (7, "x")),
        ("SELECT id FROM items", ()),
    ]:
        answer = await query(pg, sql, *params)
        assert "table:kitchen.items" in answer.tags, sql
        assert not any(tag.startswith("key:kitchen.items") for tag in answer.tags), sql


async def test_a_join_is_keyed_through_the_equivalence(pg: Running) -> None:
    answer = await query(
        pg,
        "SELECT o.id FROM items o JOIN parents p ON o.parent_id = p.id WHERE p.id = $1",
        1,
    )
    assert key_tag("parents", "id", "1") in answer.tags
    assert key_tag("items", "parent_id", "1") in answer.tags
    assert not any(tag.startswith("table:") for tag in answer.tags), list(answer.tags)


async def test_keyed_reads_are_dropped_by_writes_of_their_key_only(pg: Running) -> None:
    await update(pg, "INSERT INTO items (id, parent_id, t) VALUES ($1, $2, $3)", (1, 1, "a"))
    sql = "SELECT o.id, o.t FROM items o JOIN parents p ON o.parent_id = p.id WHERE p.id = $1"
    assert plain_rows(await query(pg, sql, 1)) == [(1, "a")]
    assert (await query(pg, sql, 1)).cache_status == pb.CACHE_STATUS_HIT_LOCAL
    # another parent's item: another key, the entry stays
    await update(pg, "INSERT INTO items (id, parent_id, t) VALUES ($1, $2, $3)", (2, 2, "b"))
    assert (await query(pg, sql, 1)).cache_status == pb.CACHE_STATUS_HIT_LOCAL
    # an item moved to parent 1: its NEW key drops the entry
    await update(pg, "UPDATE items SET parent_id = $1 WHERE id = $2", (1, 2))
    moved = await query(pg, sql + " ORDER BY o.id", 1)
    assert plain_rows(moved) == [(1, "a"), (2, "b")]
    assert plain_rows(await query(pg, sql, 1)) in ([(1, "a"), (2, "b")], [(2, "b"), (1, "a")])


async def test_a_key_compared_with_a_subquery_result_is_not_keyed_by_a_parameter(
    pg: Running,
) -> None:
    """PostgreSQL 15 prints an InitPlan's output as ``$1``, the same text as the caller's
    first parameter: the read below is keyed on items.id = <the qty given> while it
    reads the item whose id the subquery found, so a write to that item leaves a stale
    answer in the cache."""
    await update(pg, "INSERT INTO items (id, t, qty) VALUES ($1, $2, $3)", (1, "old", 0))
    sql = (
        "SELECT id, t FROM items WHERE qty = $1"
        " AND id = (SELECT min(p.id) FROM parents p WHERE p.name = 'one')"
    )
    assert plain_rows(await query(pg, sql, 0)) == [(1, "old")]
    await update(pg, "UPDATE items SET t = $1 WHERE id = $2", ("new", 1))
    again = await query(pg, sql, 0)
    assert plain_rows(again) == [(1, "new")], pb.CacheStatus.Name(again.cache_status)
    assert key_tag("items", "id", "0") not in again.tags


async def test_a_column_named_like_a_function_does_not_make_a_keyed_read_uncacheable(
    pg: Running,
) -> None:
    """``age`` is a column here, and also a stable function of pg_catalog."""
    await update(pg, "INSERT INTO people (id, name, age) VALUES ($1, $2, $3)", (1, "ann", 40))
    sql = "SELECT id, name, age FROM people WHERE id = $1"
    first = await query(pg, sql, 1)
    assert plain_rows(first) == [(1, "ann", 40)]
    assert first.cache_status == pb.CACHE_STATUS_MISS
    assert (await query(pg, sql, 1)).cache_status == pb.CACHE_STATUS_HIT_LOCAL


# Writes


async def test_batch_update_takes_dml_only(pg: Running) -> None:
    for sql in [
        "CREATE TABLE more (x integer)",
        "DROP TABLE items",
        "ALTER TABLE items ADD COLUMN extra integer",
        "TRUNCATE items",
        "TRUNCATE parents CASCADE",
        "CREATE INDEX ON items (t)",
        "GRANT SELECT ON secrets TO PUBLIC",
        "SELECT id FROM parents",
        "SET ROLE postgres",
    ]:
        failed = await update_failure(pg, sql)
        assert failed.code == grpc.StatusCode.INVALID_ARGUMENT, (sql, failed)
    url = pg_url(pg)
    assert await direct(url, "SELECT count(*) FROM parents") == [(2,)]
    assert await direct(url, "SELECT to_regclass('public.more') IS NULL") == [(True,)]
    assert await direct(url, "SELECT has_table_privilege('public', 'secrets', 'SELECT')") == [
        (False,)
    ]


async def test_a_refused_statement_is_named_by_its_place_in_the_request(pg: Running) -> None:
    """BadRequest names a field of BatchUpdateRequest: ``statements[1].sql``."""
    statements = [
        pb.Statement(sql="INSERT INTO items (id) VALUES ($1)", param_sets=[row(1)]),
        pb.Statement(sql="DROP TABLE items"),
    ]
    failed = await failure_of(
        pg.stub.BatchUpdate(pb.BatchUpdateRequest(database="kitchen", statements=statements))
    )
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.fields == ["statements[1].sql"], failed
    not_dml = [statements[0], pb.Statement(sql="SELECT id FROM parents")]
    failed = await failure_of(
        pg.stub.BatchUpdate(pb.BatchUpdateRequest(database="kitchen", statements=not_dml))
    )
    assert failed.fields == ["statements[1].sql"], failed
    assert await direct(pg_url(pg), "SELECT count(*) FROM items") == [(0,)]


async def test_batch_update_cannot_write_tables_not_allowed(pg: Running) -> None:
    codes = {}
    for sql in [
        "INSERT INTO secrets (id, value) VALUES (2, 'x')",
        "UPDATE secrets SET value = 'changed'",
        "DELETE FROM secrets",
        "UPDATE items SET t = (SELECT value FROM secrets LIMIT 1)",
        "INSERT INTO items (id, t) SELECT id + 100, value FROM secrets",
        "INSERT INTO _dataaccess_outbox (tags) VALUES ('[]')",
        "DELETE FROM schema_migrations",
        "WITH gone AS (DELETE FROM secrets RETURNING id)"
        " INSERT INTO items (id) SELECT id FROM gone",
        "WITH made AS (INSERT INTO secrets (id, value) VALUES (3, 'planted') RETURNING id)"
        " INSERT INTO items (id) SELECT id FROM made",
        "WITH changed AS (UPDATE secrets SET value = 'changed' WHERE id = 1 RETURNING id)"
        " INSERT INTO items (id) SELECT id FROM changed",
    ]:
        codes[sql] = (await update_failure(pg, sql)).code
    assert {k: v for k, v in codes.items() if v != grpc.StatusCode.PERMISSION_DENIED} == {}
    url = pg_url(pg)
    assert await direct(url, "SELECT id, value FROM secrets") == [(1, "do not read")]
    assert await direct(url, "SELECT count(*) FROM items") == [(0,)]


async def test_a_trigger_writing_another_table_bumps_both_tables(pg: Running) -> None:
    notes = "SELECT id, body FROM notes ORDER BY id"
    assert plain_rows(await query(pg, notes)) == []
    assert (await query(pg, notes)).cache_status == pb.CACHE_STATUS_HIT_LOCAL
    inserted = await pg.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen", table="parents", columns=["id", "name"], rows=[row(3, "three")]
        )
    )
    assert "table:kitchen.parents" in inserted.invalidated_tags
    assert "table:kitchen.notes" in inserted.invalidated_tags
    assert key_tag("notes", "id", "3") in inserted.invalidated_tags
    answer = await query(pg, notes)
    assert plain_rows(answer) == [(3, "made by trigger")]
    assert answer.cache_status == pb.CACHE_STATUS_MISS
    updated = await update(pg, "INSERT INTO parents (id, name) VALUES ($1, $2)", (4, "four"))
    assert {"table:kitchen.parents", "table:kitchen.notes"} <= set(updated.invalidated_tags)


async def test_an_upsert_with_duplicate_keys_keeps_the_last_row(pg: Running) -> None:
    await pg.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen", table="items", columns=["id", "t", "qty"], rows=[row(1, "a", 1)]
        )
    )
    done = await pg.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen",
            table="items",
            columns=["id", "t", "qty"],
            rows=[row(1, "first", 2), row(2, "x", 3), row(1, "last", 4), row(2, "y", 5)],
            on_conflict=pb.ON_CONFLICT_UPSERT,
            conflict_columns=["id"],
            update_columns=["t"],
        )
    )
    assert done.rows_affected == 2
    answer = await query(pg, "SELECT id, t, qty FROM items ORDER BY id")
    assert plain_rows(answer) == [(1, "last", 1), (2, "y", 5)]


async def test_replace_is_refused_naming_upsert(pg: Running) -> None:
    failed = await failure_of(
        pg.stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen",
                table="items",
                columns=["id"],
                rows=[row(1)],
                on_conflict=pb.ON_CONFLICT_REPLACE,
            )
        )
    )
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "UPSERT" in failed.details
    assert failed.fields == ["on_conflict"]


async def test_write_errors_map_to_their_status(pg: Running) -> None:
    await update(pg, "INSERT INTO items (id, code) VALUES ($1, $2)", (1, "c1"))
    cases = [
        ("INSERT INTO items (id) VALUES ($1)", (1,), grpc.StatusCode.ALREADY_EXISTS),
        ("INSERT INTO items (id, code) VALUES ($1, $2)", (2, "c1"), grpc.StatusCode.ALREADY_EXISTS),
        ("UPDATE parents SET name = $1 WHERE id = 2", ("one",), grpc.StatusCode.ALREADY_EXISTS),
        (
            "INSERT INTO items (id, parent_id) VALUES ($1, $2)",
            (3, 99),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            "INSERT INTO notes (id, parent_id) VALUES ($1, $2)",
            (1, 99),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            "INSERT INTO parents (id, name) VALUES ($1, NULL)",
            (5,),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        ("UPDATE items SET qty = $1", (-1,), grpc.StatusCode.FAILED_PRECONDITION),
        ("INSERT INTO nowhere (id) VALUES ($1)", (1,), grpc.StatusCode.NOT_FOUND),
        ("UPDATE items SET nothing = $1", (1,), grpc.StatusCode.NOT_FOUND),
        ("UPDAT items SET t = $1", ("x",), grpc.StatusCode.INVALID_ARGUMENT),
        ("INSERT INTO items (id) VALUES ($1, $2)", (1, 2), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    codes = {}
    for sql, params, expected in cases:
        codes[sql] = ((await update_failure(pg, sql, params)).code, expected)
    assert all(got == expected for got, expected in codes.values()), codes
    url = pg_url(pg)
    assert await direct(url, "SELECT id, code, qty FROM items") == [(1, "c1", 0)]
    assert await direct(url, "SELECT count(*) FROM notes") == [(0,)]
    # the same constraints through COPY
    for rows, expected in [
        ([row(1, None)], grpc.StatusCode.ALREADY_EXISTS),
        ([row(9, 99)], grpc.StatusCode.FAILED_PRECONDITION),
    ]:
        failed = await failure_of(
            pg.stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen", table="items", columns=["id", "parent_id"], rows=rows
                )
            )
        )
        assert failed.code == expected
    missing = await failure_of(
        pg.stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="nowhere", columns=["id"], rows=[row(1)]
            )
        )
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
    # reads: undefined table and column, syntax
    assert await query_code(pg, "SELECT * FROM nowhere") == grpc.StatusCode.NOT_FOUND
    assert await query_code(pg, "SELECT nothing FROM items") == grpc.StatusCode.NOT_FOUND
    assert await query_code(pg, "SELEC 1") == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_statement_past_its_deadline_is_cancelled(
    tmp_path: Path, postgres_url: str
) -> None:
    document = pg_document(
        tmp_path / "data", postgres_url, migrations_folder(tmp_path), default_deadline_seconds=1.0
    )
    async with started(tmp_path, document) as server:
        slow = (
            "UPDATE parents SET name = name"
            " WHERE (SELECT count(*) FROM generate_series(1, 1000000000)) > 0"
        )
        failed = await update_failure(server, slow)
        assert failed.code == grpc.StatusCode.DEADLINE_EXCEEDED, failed
        read = await failure_of(
            server.stub.Query(
                pb.QueryRequest(
                    database="kitchen",
                    sql="SELECT count(*) FROM generate_series(1, 1000000000)",
                    cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS),
                )
            )
        )
        assert read.code == grpc.StatusCode.DEADLINE_EXCEEDED, read
        await asyncio.sleep(0.2)
        running = await direct(
            postgres_url,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%generate_series%'"
            " AND state = 'active' AND pid <> pg_backend_pid()",
        )
        assert running == [(0,)]
        # the writer is free again
        done = await update(server, "UPDATE parents SET name = $1 WHERE id = 1", ("uno",))
        assert list(done.rows_affected) == [1]


# Migrations


async def test_two_servers_starting_at_once_apply_each_migration_once(
    tmp_path: Path, postgres_url: str
) -> None:
    migrations = migrations_folder(tmp_path)
    async with AsyncExitStack() as stack:
        servers = await asyncio.gather(
            *[
                stack.enter_async_context(
                    started(
                        tmp_path / name,
                        pg_document(tmp_path / name / "data", postgres_url, migrations),
                    )
                )
                for name in ("a", "b")
            ]
        )
        for server in servers:
            answer = await query(server, "SELECT id, name FROM parents ORDER BY id")
            assert plain_rows(answer) == [(1, "one"), (2, "two")]
    applied = await direct(postgres_url, "SELECT version, name FROM schema_migrations ORDER BY 1")
    assert applied == [(1, "kitchen"), (2, "deferred"), (3, "extra")]
    assert await direct(postgres_url, "SELECT count(*) FROM secrets") == [(1,)]


async def test_a_changed_applied_migration_stops_the_start(
    tmp_path: Path, postgres_url: str
) -> None:
    migrations = migrations_folder(tmp_path)
    document = pg_document(tmp_path / "data", postgres_url, migrations)
    async with started(tmp_path, document):
        pass
    first = migrations / "0001_kitchen.sql"
    first.write_text(first.read_text() + "\nCREATE TABLE sneaky (x integer);\n")
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the message is what counts
        async with started(tmp_path, document):
            pass
    message = str(caught.value)
    assert "0001_kitchen" in message and "changed after it was applied" in message, message
    assert await direct(postgres_url, "SELECT to_regclass('public.sneaky') IS NULL") == [(True,)]


# Health and stats


async def test_deep_health_reports_the_databases_role_replication_size_and_transactions(
    pg: Running,
) -> None:
    answer = await pg.stub.Health(pb.HealthRequest(deep=True))
    checks = {c.name: c for c in answer.checks if "kitchen" in c.name}
    names = " ".join(checks)
    for part in ("role", "replication", "size", "long_transactions"):
        assert part in names, names
    role = next(c for name, c in checks.items() if "role" in name)
    assert role.message == "primary"
    assert role.status == pb.HEALTH_STATUS_HEALTHY
    replication = next(c for name, c in checks.items() if "replication" in name)
    assert "no standbys" in replication.message
    size = next(c for name, c in checks.items() if name.endswith("size"))
    assert size.message.endswith("KiB") and int(size.message.split()[0]) > 0
    assert all(c.status == pb.HEALTH_STATUS_HEALTHY for c in checks.values()), checks
    assert answer.status == pb.HEALTH_STATUS_HEALTHY


async def test_stats_have_a_pool_and_writes_for_the_postgresql_database(pg: Running) -> None:
    await query(pg, "SELECT id FROM parents")
    await update(pg, "INSERT INTO items (id) VALUES ($1)", (1,), (2,))
    await pg.stub.BatchInsert(
        pb.BatchInsertRequest(database="kitchen", table="items", columns=["id"], rows=[row(3)])
    )
    stats = await pg.stub.Stats(pb.StatsRequest())
    pool = next(p for p in stats.pools if p.database == "kitchen")
    assert pool.size == 2
    assert pool.in_use == 0 and pool.waiters == 0 and pool.timeouts == 0
    writes = next(w for w in stats.writes if w.database == "kitchen")
    assert writes.transactions == 2 and writes.batches == 2
    assert writes.rows == 3
    assert writes.keys_bumped >= 3
    reset = await pg.stub.Stats(pb.StatsRequest(reset=True))
    assert next(w for w in reset.writes if w.database == "kitchen").rows == 3
    after = await pg.stub.Stats(pb.StatsRequest())
    assert next(w for w in after.writes if w.database == "kitchen").rows == 0
