"""Review of the PostgreSQL backend: each test here proves a violation of one of the two
promises (no acknowledged write lost, no read served stale after a write was
acknowledged) or of the confinement of reads, on a real PostgreSQL 15 with a
superuser's URL. Every test fails on the code as reviewed; its docstring gives the
steps, what was observed against what was expected, and the likely cause and fix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, plain_rows, row, started, value

pytestmark = pytest.mark.integration

BASE_SCHEMA = """
CREATE TABLE parents (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE items (
    id         integer PRIMARY KEY,
    parent_id  integer REFERENCES parents (id),
    name       text
);
CREATE INDEX items_parent ON items (parent_id);
INSERT INTO parents (id, name) VALUES (1, 'one'), (2, 'two');
INSERT INTO items (id, parent_id, name) VALUES (1, 1, 'first');
"""
# Long enough for several rounds of the schema poll (0.5 s) and for a notification.
SETTLE_SECONDS = 3.0


def _document(tmp_path: Path, url: str, extra_sql: str) -> dict[str, Any]:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_base.sql").write_text(BASE_SCHEMA, encoding="utf-8")
    if extra_sql:
        (folder / "0002_extra.sql").write_text(extra_sql, encoding="utf-8")
    return {
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "databases": [{"name": "kitchen", "url": url, "migrations": str(folder)}],
        "limits": {"readers_per_database": 2, "acquire_timeout_seconds": 2.0},
        "shutdown_grace_seconds": 2,
    }


@asynccontextmanager
async def serving(tmp_path: Path, url: str, extra_sql: str = "") -> AsyncIterator[Running]:
    """A server with ``kitchen`` on PostgreSQL: the base schema plus ``extra_sql``."""
    async with started(tmp_path, _document(tmp_path, url, extra_sql)) as server:
        yield server


async def query(server: Running, sql: str, *params: Any) -> pb.QueryResponse:
    request = pb.QueryRequest(database="kitchen", sql=sql, params=[value(p) for p in params])
    response: pb.QueryResponse = await server.stub.Query(request, timeout=20)
    return response


async def update(server: Running, sql: str, *param_sets: tuple[Any, ...]) -> None:
    statement = pb.Statement(sql=sql, param_sets=[row(*p) for p in param_sets])
    await server.stub.BatchUpdate(
        pb.BatchUpdateRequest(database="kitchen", statements=[statement]), timeout=20
    )


async def insert(server: Running, table: str, columns: list[str], *rows: tuple[Any, ...]) -> None:
    await server.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen", table=table, columns=columns, rows=[row(*r) for r in rows]
        ),
        timeout=20,
    )


async def direct(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` from a connection of its own, as another client would."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return [tuple(r) for r in await connection.fetch(sql, *params)]
    finally:
        await connection.close()


def status(answer: pb.QueryResponse) -> str:
    return pb.CacheStatus.Name(answer.cache_status)


async def settled_rows(
    server: Running, expected: list[tuple[Any, ...]], sql: str, *params: Any
) -> tuple[list[tuple[Any, ...]], str]:
    """The read's rows once they equal ``expected``, or the last ones after SETTLE_SECONDS
    (a notification or a schema poll may take a moment); with the last cache status."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        answer = await query(server, sql, *params)
        rows = plain_rows(answer)
        if rows == expected or time.monotonic() > deadline:
            return rows, status(answer)
        await asyncio.sleep(0.1)


# Confinement of reads


async def test_a_quote_in_an_alias_hides_a_refused_call_and_its_lock_outlives_the_read(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: high (confinement). Refused functions are found by name in the plan's
    expressions after ``_STRING_LITERAL`` removes string literals; the literal regex is
    applied before quoted names are removed, so a ``'`` inside a quoted alias
    (``"a'b"``) opens a fake literal that swallows the call up to the next quote.

    Steps: Query ``SELECT "a'b".name || pg_advisory_lock(4242)::text || p.name FROM items
    "a'b" JOIN parents p ...``. Expected: PERMISSION_DENIED (``pg_advisory`` is refused,
    a session-level lock outlives the read's ROLLBACK). Observed: the read is answered
    and the pooled reader session keeps holding advisory lock 4242 afterwards (seen in
    ``pg_locks``); any refused function (``pg_advisory_lock``, ``dblink_connect``,
    ``pg_notify``, volatile ones for caching) can be hidden the same way.

    Fix: strip quoted identifiers and string literals in one left-to-right scan (a single
    alternation regex ``"(?:[^"]|"")*"|'(?:[^']|'')*'``), or better, take function OIDs
    from the plan tree rather than its printed text (e.g. resolve every name ``pg_proc``
    has against the deparsed text without any stripping, refusing on any match)."""
    async with serving(tmp_path, postgres_url) as server:
        sql = (
            'SELECT "a\'b".name || pg_advisory_lock(4242)::text || p.name'
            ' FROM items "a\'b" JOIN parents p ON p.id = "a\'b".parent_id'
            ' WHERE "a\'b".id = $1'
        )
        try:
            await query(server, sql, 1)
            outcome = "answered"
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
        held = await direct(
            postgres_url,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
        )
        assert (outcome, held) == ("PERMISSION_DENIED", []), (outcome, held)


async def test_a_quote_in_an_alias_hides_a_volatile_call_so_its_result_is_cached(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: medium. The same fake literal hides ``random()`` from the cacheability
    check. Steps: Query twice ``SELECT "a'b".name || random()::text || 'x' || p.name FROM
    items "a'b" JOIN parents p ...``. Expected: BYPASS (a volatile call), two different
    answers. Observed: MISS then HIT_LOCAL with the same "random" value (the ``'x'``
    literal after the call closes the fake literal opened in the alias).
    Fix: as in the test above."""
    async with serving(tmp_path, postgres_url) as server:
        sql = (
            "SELECT \"a'b\".name || random()::text || 'x' || p.name"
            ' FROM items "a\'b" JOIN parents p ON p.id = "a\'b".parent_id'
            ' WHERE "a\'b".id = $1'
        )
        first = await query(server, sql, 1)
        second = await query(server, sql, 1)
        assert (status(first), status(second)) == ("CACHE_STATUS_BYPASS", "CACHE_STATUS_BYPASS")


# Hidden reads: results cached under too few tags


async def test_a_quoted_user_function_name_is_not_seen_and_its_read_stays_stale(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: high (stale read after an acknowledged write). ``plans.analyse`` removes
    every quoted identifier before looking for ``name(``, and PostgreSQL prints a
    function whose name needs quoting (mixed case, as ORMs make them) as
    ``"countItems"()``: the call disappears, so neither the user-defined check nor the
    volatility check sees it.

    Steps: a migration makes ``"countItems"()`` (plpgsql, STABLE, counts ``items``);
    Query ``SELECT "countItems"() AS n`` (1), BatchInsert a row into ``items`` (acked),
    Query again. Expected: 2 (or at least BYPASS, the read is a hidden read). Observed:
    1 from HIT_LOCAL, the result cached with no table tag at all.

    Fix: collect call names from quoted identifiers too (``"name"(`` -> ``name``), i.e.
    remove quoted names only where they are not followed by ``(``; resolve names
    case-sensitively in ``pg_proc``."""
    extra = """
    CREATE FUNCTION "countItems"() RETURNS bigint LANGUAGE plpgsql STABLE
      AS $$BEGIN RETURN (SELECT count(*) FROM items); END$$;
    """
    async with serving(tmp_path, postgres_url, extra) as server:
        sql = 'SELECT "countItems"() AS n'
        assert plain_rows(await query(server, sql)) == [(1,)]
        await insert(server, "items", ["id", "parent_id", "name"], (2, 1, "second"))
        answer = await query(server, sql)
        assert plain_rows(answer) == [(2,)], status(answer)


async def test_an_operator_created_after_start_hides_its_functions_reads(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: medium. User-defined operators are loaded once at open
    (``_USER_OPERATORS`` in ``_prepare_schema``) and never again: ``_schema_changed``
    does not reload them, and creating a function or an operator does not change the
    schema fingerprint anyway. An operator made later (another replica's migration, a
    DBA) is treated as a built-in, and its function's table reads are untagged.

    Steps: start; another client creates ``op_count`` (plpgsql STABLE, counts items) and
    ``CREATE OPERATOR ### (... FUNCTION = op_count)``; Query ``SELECT 1 ### 2 AS n``
    (1); BatchInsert into items (acked); Query again. Expected: 2 (the read BYPASSes the
    cache). Observed: 1 from HIT_LOCAL.

    Fix: check operators against ``pg_operator`` at learn time (oid >= 16384 of every
    operator symbol in the plan text), and/or include pg_proc/pg_operator/pg_rewrite/
    pg_cast changes in the fingerprint."""
    async with serving(tmp_path, postgres_url) as server:
        await direct(
            postgres_url,
            "CREATE FUNCTION op_count(integer, integer) RETURNS bigint LANGUAGE plpgsql STABLE"
            " AS $$BEGIN RETURN (SELECT count(*) FROM items); END$$",
        )
        await direct(
            postgres_url,
            "CREATE OPERATOR ### (LEFTARG = integer, RIGHTARG = integer, FUNCTION = op_count)",
        )
        await asyncio.sleep(1.5)  # a few schema polls
        sql = "SELECT 1 ### 2 AS n"
        assert plain_rows(await query(server, sql)) == [(1,)]
        await insert(server, "items", ["id", "parent_id", "name"], (2, 1, "second"))
        answer = await query(server, sql)
        assert plain_rows(answer) == [(2,)], status(answer)


async def test_an_immutable_user_function_is_folded_away_and_its_read_cached(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: low (a mislabelled function, but the README promises every user-defined
    function BYPASSes the cache). PostgreSQL evaluates an IMMUTABLE function with
    constant arguments while planning, so the plan shows only its result (``1``): no
    call name, nothing hidden, cached with no tag of the table it read.

    Steps: migration makes ``frozen_count()`` IMMUTABLE plpgsql counting items; Query
    ``SELECT frozen_count() AS n`` (1); BatchInsert into items (acked); Query again.
    Expected: 2 (BYPASS). Observed: 1 from HIT_LOCAL.

    Fix: find user-defined functions before constant folding: look up every identifier
    of the SQL text in ``pg_proc`` (oid >= 16384) and treat a match as a hidden read."""
    extra = """
    CREATE FUNCTION frozen_count() RETURNS bigint LANGUAGE plpgsql IMMUTABLE
      AS $$BEGIN RETURN (SELECT count(*) FROM items); END$$;
    """
    async with serving(tmp_path, postgres_url, extra) as server:
        sql = "SELECT frozen_count() AS n"
        assert plain_rows(await query(server, sql)) == [(1,)]
        await insert(server, "items", ["id", "parent_id", "name"], (2, 1, "second"))
        answer = await query(server, sql)
        assert plain_rows(answer) == [(2,)], status(answer)


async def test_a_moment_spelt_at_run_time_is_cached(tmp_path: Path, postgres_url: str) -> None:
    """Severity: low-medium. 'now' is caught only as a literal of the SQL text
    (``names_a_moment``) or a whole parameter; text that becomes 'now' inside the
    statement and is cast to a timestamp is a CoerceViaIO printed as a cast, no call.

    Steps: Query ``SELECT (('no' || 'w')::timestamptz)::text AS t`` twice, 1.1 s apart.
    Expected: BYPASS, two different moments. Observed: MISS then HIT_LOCAL with the
    first moment (the plan even shows ``'now'::cstring`` after constant folding).

    Fix: run the moment check on the plan text too (string literals of the plan), and
    treat casts to date/time types from non-constant text as stable (uncacheable)."""
    async with serving(tmp_path, postgres_url) as server:
        sql = "SELECT (('no' || 'w')::timestamptz)::text AS t"
        first = await query(server, sql)
        await asyncio.sleep(1.1)
        second = await query(server, sql)
        assert status(second) == "CACHE_STATUS_BYPASS", (plain_rows(first), plain_rows(second))


# Changes the capture triggers or the schema poll miss


async def test_a_view_redefined_by_another_client_keeps_its_old_tables(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: high (stale after an acknowledged write). The schema fingerprint covers
    pg_class (oid, name, natts, kind), triggers and columns of tables, but not a view's
    definition (pg_rewrite): ``CREATE OR REPLACE VIEW`` keeps the view's oid and columns,
    so no reload happens, the learnt shape (reads = {parents}) stays in the memo, and the
    cached entry stays current.

    Steps: migration ``CREATE VIEW v AS SELECT id, name FROM parents``; Query
    ``SELECT name FROM v ORDER BY id`` (cached); another client replaces v with
    ``SELECT id, name FROM items``; BatchInsert a row into items (acked, bumps items);
    Query again. Expected: the items' names. Observed: ['one', 'two'] from HIT_LOCAL,
    for good.

    Fix: add pg_rewrite (ev_class, md5 of ev_action) to the fingerprint (and pg_proc,
    pg_operator, pg_cast of the schema for the checks above)."""
    extra = "CREATE VIEW v AS SELECT id, name FROM parents;"
    async with serving(tmp_path, postgres_url, extra) as server:
        sql = "SELECT name FROM v ORDER BY id"
        assert plain_rows(await query(server, sql)) == [("one",), ("two",)]
        await direct(postgres_url, "CREATE OR REPLACE VIEW v AS SELECT id, name FROM items")
        await asyncio.sleep(1.5)
        await insert(server, "items", ["id", "parent_id", "name"], (2, 1, "second"))
        rows, last = await settled_rows(server, [("first",), ("second",)], sql)
        assert rows == [("first",), ("second",)], last


async def test_a_deferred_constraint_trigger_writes_after_the_changes_were_read(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: high (stale after an acknowledged write, for good). The writer reads
    ``dataaccess.changed`` before COMMIT; a DEFERRABLE INITIALLY DEFERRED constraint
    trigger runs at COMMIT, after that: the capture trigger of the table it writes
    appends to the setting (the writer flag is still on, so no ``pg_notify`` either)
    and nobody reads it.

    Steps: migration makes ``counts(id, n)`` and a deferred constraint trigger on
    parents that adds 1 to counts.n; Query ``SELECT n FROM counts WHERE id = $1`` (0)
    and ``SELECT n FROM counts`` (0); BatchInsert a parent (acked). Expected: both
    reads answer 1. Observed: 0 from HIT_LOCAL.

    Fix: ``SET CONSTRAINTS ALL IMMEDIATE`` before reading ``dataaccess.changed`` (it
    fires deferred triggers and checks then, and one failing still fails the write),
    or read the changes from a deferred trigger of the service's own that runs last."""
    extra = """
    CREATE TABLE counts (id integer PRIMARY KEY, n integer NOT NULL);
    INSERT INTO counts VALUES (1, 0);
    CREATE FUNCTION count_parent() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN UPDATE counts SET n = n + 1 WHERE id = 1; RETURN NULL; END$$;
    CREATE CONSTRAINT TRIGGER parents_counted AFTER INSERT ON parents
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION count_parent();
    """
    async with serving(tmp_path, postgres_url, extra) as server:
        keyed, whole = "SELECT n FROM counts WHERE id = $1", "SELECT n FROM counts"
        assert plain_rows(await query(server, keyed, 1)) == [(0,)]
        assert plain_rows(await query(server, whole)) == [(0,)]
        await insert(server, "parents", ["id", "name"], (3, "three"))
        assert await direct(postgres_url, "SELECT n FROM counts") == [(1,)]
        after_keyed = await query(server, keyed, 1)
        after_whole = await query(server, whole)
        assert (plain_rows(after_keyed), plain_rows(after_whole)) == ([(1,)], [(1,)]), (
            status(after_keyed),
            status(after_whole),
        )


async def test_an_update_through_an_inheritance_parent_leaves_the_childs_reads_stale(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: high (stale after an acknowledged write). A statement names one table;
    PostgreSQL fires the statement-level triggers of that table only, with the child
    tables' rows in its transition tables. An UPDATE of ``base`` changing a row stored
    in ``child`` reports ``base`` and base's keys only: reads of ``child`` (tagged
    ``table:kitchen.child`` or ``key:kitchen.child.id=...``) are never dropped.

    Steps: migration ``base(id pk, v)``, ``child () INHERITS (base)`` with its own
    primary key, one child row (7, 'old'); Query ``SELECT v FROM child WHERE id = $1``
    (keyed on child.id); BatchUpdate ``UPDATE base SET v = 'new' WHERE id = 7`` (acked).
    Expected: 'new'. Observed: 'old' from HIT_LOCAL. (A table-tagged read of child is
    dropped here only because the service's own plan check lists child among the
    statement's relations; the same UPDATE by another client notifies ``base`` only.)

    Fix: when a table has inheritance children (pg_inherits), report the change for
    every table of the hierarchy (bump the children's table tags and key generations
    on a parent's change, or key the parent's transition rows by ``tableoid`` in the
    capture function), or never cache reads of tables in an inheritance hierarchy."""
    extra = """
    CREATE TABLE base (id integer PRIMARY KEY, v text);
    CREATE TABLE child (CONSTRAINT child_pkey PRIMARY KEY (id)) INHERITS (base);
    INSERT INTO child (id, v) VALUES (7, 'old');
    """
    async with serving(tmp_path, postgres_url, extra) as server:
        keyed = "SELECT v FROM child WHERE id = $1"
        assert plain_rows(await query(server, keyed, 7)) == [("old",)]
        await update(server, "UPDATE base SET v = $1 WHERE id = $2", ("new", 7))
        after = await query(server, keyed, 7)
        assert plain_rows(after) == [("new",)], status(after)


async def test_writes_in_replica_mode_by_another_client_are_never_seen(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: medium (outside writes missed for good). Capture triggers are plain
    ENABLEd triggers: a session with ``session_replication_role = replica`` does not
    fire them, and that is exactly how logical replication's apply worker (the served
    database as a subscriber), ``pg_restore --disable-triggers`` and many bulk loaders
    write. No notification, no poll: the cached read is served for ever.

    Steps: Query ``SELECT name FROM items WHERE id = $1`` (cached); another client runs
    ``SET session_replication_role = replica; UPDATE items SET name = 'changed'`` and
    commits. Expected: 'changed' within a few seconds. Observed: 'first' (HIT_LOCAL).

    Fix: create the capture triggers and then ``ALTER TABLE ... ENABLE ALWAYS TRIGGER``
    them, so they fire in every replication role."""
    async with serving(tmp_path, postgres_url) as server:
        sql = "SELECT name FROM items WHERE id = $1"
        assert plain_rows(await query(server, sql, 1)) == [("first",)]
        connection = await asyncpg.connect(postgres_url, timeout=10)
        try:
            await connection.execute("SET session_replication_role = replica")
            await connection.execute("UPDATE items SET name = 'changed' WHERE id = 1")
        finally:
            await connection.close()
        rows, last = await settled_rows(server, [("changed",)], sql, 1)
        assert rows == [("changed",)], last


async def test_a_disabled_capture_trigger_is_not_noticed_and_keyed_reads_go_stale(
    tmp_path: Path, postgres_url: str
) -> None:
    """Severity: medium-high (stale after an acknowledged write of the service itself).
    ``ALTER TABLE items DISABLE TRIGGER USER`` (a common step of bulk loads) disables the
    capture triggers too; the fingerprint hashes trigger oids, not ``tgenabled``, so the
    service never notices. Its own writes then bump the table tag (from the plan) but
    no key tag, and keyed entries do not carry the table tag.

    Steps: Query ``SELECT name FROM items WHERE id = $1`` (keyed, cached); another client
    disables the user triggers of items; BatchUpdate ``UPDATE items SET name = 'new'
    WHERE id = 1`` through the service (acked). Expected: 'new'. Observed: 'first'
    (HIT_LOCAL).

    Fix: put ``tgenabled`` in the fingerprint and re-enable (ENABLE ALWAYS) the capture
    triggers on a change; when the writer's statement touched a table but its capture
    trigger reported nothing, bump the table's key generation instead of no key."""
    async with serving(tmp_path, postgres_url) as server:
        sql = "SELECT name FROM items WHERE id = $1"
        assert plain_rows(await query(server, sql, 1)) == [("first",)]
        await direct(postgres_url, "ALTER TABLE items DISABLE TRIGGER USER")
        await asyncio.sleep(1.5)
        await update(server, "UPDATE items SET name = $1 WHERE id = $2", ("new", 1))
        answer = await query(server, sql, 1)
        assert plain_rows(answer) == [("new",)], status(answer)


async def test_an_idempotent_retry_acknowledged_from_the_record_bumps_nothing(
    tmp_path: Path, postgres_url: str, redis_server: Any
) -> None:
    """Severity: medium (stale after an acknowledged write, for up to the outbox grace of
    5 s plus a sweep period). ``PgWriter._in_transaction`` answers a replayed key with
    ``found, [], 0``: no tags. If the first attempt committed and its replica died before
    bumping (the case idempotency keys exist for), the retry is acknowledged while the
    cache still serves the old rows until some replica sweeps the outbox row.

    Steps: two servers on one PostgreSQL database and one Redis; B caches ``SELECT name
    FROM items WHERE id = $1``; A runs a BatchUpdate with idempotency key K whose
    post-commit bump never happens (A's after-commit hook hangs, as if A died after
    COMMIT); the client gives up and retries K on B, which replays the stored answer
    (acked). Expected: B's next read answers 'new'. Observed: 'first' from the cache.

    Fix: keep the write's tags in the idempotency record and bump them again on a replay
    (bumping is idempotent), or on a replay deliver the outbox rows still undelivered
    before answering."""
    documents = []
    for name in ("a", "b"):
        where = tmp_path / name
        where.mkdir()
        document = _document(where, postgres_url, "")
        document["redis_url"] = redis_server.url
        documents.append((where, document))
    async with started(*documents[0]) as a, started(*documents[1]) as b:
        sql = "SELECT name FROM items WHERE id = $1"
        assert plain_rows(await query(b, sql, 1)) == [("first",)]
        assert status(await query(b, sql, 1)) != "CACHE_STATUS_MISS"

        async def dies_after_commit(_tags: Any, _receipt: Any) -> None:
            await asyncio.sleep(30)

        writer = a.server.router.databases["kitchen"].writer  # type: ignore[attr-defined]
        writer._after_commit = dies_after_commit
        statement = pb.Statement(
            sql="UPDATE items SET name = $1 WHERE id = $2", param_sets=[row("new", 1)]
        )
        request = pb.BatchUpdateRequest(
            database="kitchen", statements=[statement], idempotency_key="K-1"
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await a.stub.BatchUpdate(request, timeout=1.0)
        assert await direct(postgres_url, "SELECT name FROM items WHERE id = 1") == [("new",)]
        await b.stub.BatchUpdate(request, timeout=10)  # the retry: acknowledged
        answer = await query(b, sql, 1)
        assert plain_rows(answer) == [("new",)], status(answer)
