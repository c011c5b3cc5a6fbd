"""Key capture on the real writer: every committed write names the old and new keys of every
row it changed, as SQLite's triggers saw them, or bumps the table's key generation."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service import errors
from service.config import Limits, SqliteSettings
from service.db.door import KeyTracking, WriteOutcome
from service.db.sqlite import commit_counter
from service.db.sqlite.connection import SqliteConnection, open_connection
from service.db.sqlite.group_commit import WriteBatcher
from service.db.sqlite.guard import ShapeMemo
from service.db.sqlite.idempotency import IdempotentPlan
from service.db.sqlite.idempotency import create as create_idempotency
from service.db.sqlite.key_capture import TRIGGER_PREFIX, KeyCapture
from service.db.sqlite.key_specs import KeyCatalog
from service.db.sqlite.schema import read_schema
from service.db.sqlite.write_plans import StatementPlan, WritePlan, may_replace, plan_insert
from service.domain import InsertRequest
from service.values import SqlValue

SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT COLLATE NOCASE UNIQUE, region TEXT);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer INTEGER REFERENCES customers(id) ON DELETE CASCADE ON UPDATE CASCADE,
    day INTEGER,
    amount REAL
);
CREATE INDEX orders_customer_day ON orders(customer, day);
CREATE TABLE notes (
    id INTEGER PRIMARY KEY,
    customer INTEGER REFERENCES customers(id) ON DELETE SET NULL,
    body TEXT
);
CREATE INDEX notes_customer ON notes(customer);
CREATE TABLE audit (id INTEGER PRIMARY KEY, customer INTEGER, note TEXT);
CREATE INDEX audit_customer ON audit(customer);
CREATE INDEX audit_note ON audit(note);
CREATE TRIGGER orders_audit AFTER INSERT ON orders BEGIN
    INSERT INTO audit (customer, note) VALUES (NEW.customer, 'order');
END;
CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER) WITHOUT ROWID;
CREATE TABLE ledger (id INTEGER PRIMARY KEY, sku TEXT);
CREATE TRIGGER stock_ledger AFTER UPDATE ON stock BEGIN
    INSERT OR REPLACE INTO ledger (id, sku) VALUES (1, NEW.sku);
END;
CREATE TABLE tokens (code TEXT UNIQUE ON CONFLICT REPLACE, owner INTEGER);
CREATE INDEX tokens_owner ON tokens(owner);
CREATE TABLE scores (player INTEGER, game INTEGER, points INTEGER, PRIMARY KEY (player, game));
CREATE TABLE shipments (
    id INTEGER PRIMARY KEY,
    customer INTEGER REFERENCES customers(id) DEFERRABLE INITIALLY DEFERRED
);
CREATE VIRTUAL TABLE docs USING fts5(body);
CREATE TABLE sizes (id INTEGER PRIMARY KEY, a INTEGER, twice INTEGER AS (a * 2) VIRTUAL);
CREATE INDEX sizes_twice ON sizes(twice);
INSERT INTO customers (id, email, region) VALUES (1, 'a@x.com', 'eu'), (2, 'b@x.com', 'us');
INSERT INTO orders (id, customer, day, amount) VALUES (10, 1, 1, 1.0), (11, 1, 2, 2.0);
INSERT INTO notes (id, customer, body) VALUES (20, 2, 'hi');
INSERT INTO stock (sku, qty) VALUES ('a', 1);
INSERT INTO tokens (code, owner) VALUES ('t1', 1);
INSERT INTO scores (player, game, points) VALUES (1, 1, 10);
"""
TRACKING = KeyTracking()
CUSTOMERS_REACH = frozenset({"customers", "orders", "notes", "audit"})  # FK actions, a trigger

Key = tuple[str, str, str]


@dataclass
class Writer:
    """A real writer connection, its WriteBatcher and its key capture."""

    conn: SqliteConnection
    batcher: WriteBatcher
    capture: KeyCapture
    catalog: KeyCatalog
    path: Path
    catalogs: list[KeyCatalog] = field(default_factory=list)

    async def update(self, *statements: str | tuple[str, Sequence[SqlValue]]) -> WriteOutcome:
        """One BatchUpdate job: each statement with its one parameter set."""
        return await self.submit(StatementPlan([_statement(s) for s in statements]))

    async def insert(
        self, table: str, columns: list[str], rows: Sequence[tuple[Any, ...]], **kw: Any
    ) -> WriteOutcome:
        """One BatchInsert job."""
        schema = await self.conn.run_trusted(read_schema)
        request = InsertRequest(table, columns, rows, **kw)
        return await self.submit(plan_insert(request, schema, self.conn.guard.allowed_tables))

    async def submit(self, plan: WritePlan) -> WriteOutcome:
        return await self.batcher.submit(plan, None)

    def key(self, table: str, columns: str, *values: SqlValue) -> Key:
        """The key a write reports for ``values`` of the key ``columns`` of ``table``."""
        keys = self.catalog.keys_of(table)
        assert keys is not None, table
        spec = keys.spec(columns.split(","))
        assert spec is not None, (table, columns)
        return (spec.table, spec.name, spec.stored_digest(values))

    def row(self, table: str, **values: SqlValue) -> set[Key]:
        """Every key of one row of ``table`` (given every key column's value)."""
        keys = self.catalog.keys_of(table)
        assert keys is not None, table
        return {
            (spec.table, spec.name, spec.stored_digest([values[c] for c in spec.columns]))
            for spec in keys.specs
        }


def _statement(given: str | tuple[str, Sequence[SqlValue]]) -> tuple[str, list[tuple[Any, ...]]]:
    sql, params = (given, ()) if isinstance(given, str) else given
    return sql, [tuple(params)]


@asynccontextmanager
async def writer(
    tmp_path: Path, tracking: KeyTracking = TRACKING, schema: str = SCHEMA
) -> AsyncIterator[Writer]:
    path = tmp_path / "keys.db"
    with contextlib.closing(sqlite3.connect(path)) as setup:
        setup.executescript(schema)
    conn = await open_connection(
        "keys", path, None, ShapeMemo(), SqliteSettings(), Limits(), writer=True
    )
    catalogs: list[KeyCatalog] = []
    capture = KeyCapture(tracking, on_catalog=catalogs.append)
    try:
        await conn.run_trusted(create_idempotency)  # as SqliteDatabase.open does
        await conn.run_trusted(commit_counter.create)
        catalog = await conn.run_trusted(lambda raw: capture.install(raw, conn.guard))
        batcher = WriteBatcher(conn, capture=capture)
        await batcher.start()
        try:
            yield Writer(conn, batcher, capture, catalog, path, catalogs)
        finally:
            await batcher.close()
    finally:
        await conn.close()


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[Writer]:
    async with writer(tmp_path) as made:
        yield made


def _other_connection(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


# Each way a row changes


async def test_an_insert_names_every_key_of_the_new_row(w: Writer) -> None:
    outcome = await w.update(
        "INSERT INTO customers (id, email, region) VALUES (3, 'c@x.com', 'eu')"
    )
    assert outcome.keys == w.row("customers", id=3, email="c@x.com")
    assert outcome.key_generations == frozenset()


async def test_an_update_moving_a_row_names_its_old_and_new_keys(w: Writer) -> None:
    outcome = await w.update("UPDATE orders SET customer = 2, day = 5 WHERE id = 10")
    old = w.row("orders", id=10, customer=1, day=1)
    assert outcome.keys == old | w.row("orders", id=10, customer=2, day=5)
    assert w.key("orders", "customer", 1) in outcome.keys
    assert w.key("orders", "customer,day", 2, 5) in outcome.keys


async def test_an_update_of_other_columns_names_the_rows_keys(w: Writer) -> None:
    outcome = await w.update("UPDATE orders SET amount = 9 WHERE id = 11")
    assert outcome.keys == w.row("orders", id=11, customer=1, day=2)


async def test_a_delete_names_the_old_keys(w: Writer) -> None:
    outcome = await w.update(("DELETE FROM orders WHERE id = ?", (11,)))
    assert outcome.keys == w.row("orders", id=11, customer=1, day=2)


async def test_a_cascading_delete_names_the_childrens_keys(w: Writer) -> None:
    outcome = await w.update("DELETE FROM customers WHERE id = 1")
    assert outcome.keys == (
        w.row("customers", id=1, email="a@x.com")
        | w.row("orders", id=10, customer=1, day=1)
        | w.row("orders", id=11, customer=1, day=2)
    )


async def test_on_delete_set_null_names_the_childs_old_and_new_keys(w: Writer) -> None:
    outcome = await w.update("DELETE FROM customers WHERE id = 2")
    assert outcome.keys == (
        w.row("customers", id=2, email="b@x.com")
        | w.row("notes", id=20, customer=2)
        | w.row("notes", id=20, customer=None)
    )


async def test_on_update_cascade_and_a_rowid_change_name_old_and_new_keys(w: Writer) -> None:
    outcome = await w.update("UPDATE customers SET id = 7 WHERE id = 1")
    assert outcome.keys == (
        w.row("customers", id=1, email="a@x.com")
        | w.row("customers", id=7, email="a@x.com")
        | w.row("orders", id=10, customer=1, day=1)
        | w.row("orders", id=10, customer=7, day=1)
        | w.row("orders", id=11, customer=1, day=2)
        | w.row("orders", id=11, customer=7, day=2)
    )
    assert {w.key("customers", "id", 1), w.key("customers", "id", 7)} <= outcome.keys


async def test_a_user_trigger_writing_another_table_names_that_tables_keys(w: Writer) -> None:
    outcome = await w.insert("orders", ["id", "customer", "day"], [(12, 2, 3)])
    # The seed's two orders wrote audit rows 1 and 2.
    assert outcome.keys == w.row("orders", id=12, customer=2, day=3) | w.row(
        "audit", id=3, customer=2, note="order"
    )
    assert outcome.key_generations == frozenset()


async def test_an_upsert_that_updates_names_the_old_and_new_keys(w: Writer) -> None:
    outcome = await w.insert(
        "customers",
        ["id", "email", "region"],
        [(1, "new@x.com", "us")],
        on_conflict="upsert",
        conflict_columns=["id"],
    )
    old, new = (
        w.row("customers", id=1, email="a@x.com"),
        w.row("customers", id=1, email="new@x.com"),
    )
    assert outcome.keys == old | new
    upserted = await w.update(
        "INSERT INTO scores (player, game, points) VALUES (1, 1, 5)"
        " ON CONFLICT (player, game) DO UPDATE SET game = 2"
    )
    assert upserted.keys == w.row("scores", rowid=1, player=1, game=1) | w.row(
        "scores", rowid=1, player=1, game=2
    )


async def test_a_without_rowid_table(w: Writer) -> None:
    outcome = await w.insert(
        "stock",
        ["sku", "qty"],
        [("b", 2), ("a", 5)],
        on_conflict="upsert",
        conflict_columns=["sku"],
    )
    # Updating 'a' fires stock_ledger, whose INSERT OR REPLACE may delete unseen rows.
    assert outcome.keys == {
        w.key("stock", "sku", "a"),
        w.key("stock", "sku", "b"),
        w.key("ledger", "id", 1),
    }
    assert outcome.key_generations == {"stock", "ledger"}
    assert not w.catalog.tables["stock"].has_rowid


async def test_composite_keys_name_every_prefix(w: Writer) -> None:
    outcome = await w.update("INSERT INTO scores (player, game, points) VALUES (4, 2, 1)")
    assert outcome.keys == {
        w.key("scores", "rowid", 2),
        w.key("scores", "player", 4),
        w.key("scores", "player,game", 4, 2),
    }


async def test_a_nocase_key_is_named_as_sqlite_compares_it(w: Writer) -> None:
    outcome = await w.update("UPDATE customers SET email = 'A@X.COM' WHERE id = 1")
    # The old and new email are one key under NOCASE: one digest for both.
    assert outcome.keys == w.row("customers", id=1, email="a@x.com")
    assert w.key("customers", "email", "A@X.com") in outcome.keys


async def test_values_are_named_as_the_row_stores_them(w: Writer) -> None:
    # Column affinity applies before the trigger sees the row: '12' is stored as 12.
    outcome = await w.update("INSERT INTO orders (id, customer, day) VALUES ('13', '2', 4.0)")
    assert outcome.keys >= w.row("orders", id=13, customer=2, day=4)


async def test_a_generated_column_key_is_named(w: Writer) -> None:
    outcome = await w.update("INSERT INTO sizes (id, a) VALUES (1, 3)")
    assert outcome.keys == w.row("sizes", id=1, twice=6)
    moved = await w.update("UPDATE sizes SET a = 4")
    assert moved.keys == w.row("sizes", id=1, twice=6) | w.row("sizes", id=1, twice=8)


async def test_a_1000_row_insert_names_every_row(tmp_path: Path) -> None:
    async with writer(tmp_path, KeyTracking(max_keys_per_write=10_000)) as w:
        rows = [(100 + i, f"c{i}@x.com", "eu") for i in range(1000)]
        outcome = await w.insert("customers", ["id", "email", "region"], rows)
        assert outcome.rows_affected == (1000,)
        assert outcome.last_insert_rowid == 1099
        expected: set[Key] = set()
        for id_, email, _ in rows:
            expected |= w.row("customers", id=id_, email=email)
        assert outcome.keys == expected


async def test_a_bulk_insert_sharing_a_transaction_takes_many_rows_per_statement(
    tmp_path: Path,
) -> None:
    async with writer(tmp_path, KeyTracking(max_keys_per_write=10_000)) as w:
        statements: list[str] = []
        await w.conn.run(lambda raw: raw.set_trace_callback(statements.append))
        rows = [(100 + i, f"c{i}@x.com", "eu") for i in range(1000)]
        upserts = [(1, "a2@x.com", "us"), (100, "u@x.com", "us")] * 300
        bulk, upserted, other = await asyncio.gather(
            w.insert("customers", ["id", "email", "region"], rows),
            w.insert(
                "customers",
                ["id", "email", "region"],
                upserts,
                on_conflict="upsert",
                conflict_columns=["id"],
            ),
            w.update("UPDATE notes SET body = 'x'"),
        )
        # Traced again as each trigger program starts: distinct texts are the statements run.
        inserts = {s for s in statements if s.startswith('INSERT INTO "customers"')}
        assert len(inserts) < 20  # one-row statements would be over 1000
        assert bulk.rows_affected == (1000,) and bulk.last_insert_rowid == 1099
        expected: set[Key] = set()
        for id_, email, _ in rows:
            expected |= w.row("customers", id=id_, email=email)
        assert bulk.keys == expected
        assert upserted.rows_affected == (600,) and upserted.last_insert_rowid == 0
        assert upserted.keys == (
            w.row("customers", id=1, email="a@x.com")
            | w.row("customers", id=1, email="a2@x.com")
            | w.row("customers", id=100, email="c0@x.com")
            | w.row("customers", id=100, email="u@x.com")
        )
        assert other.keys == w.row("notes", id=20, customer=2)
        with _other_connection(w.path) as check:
            assert check.execute("SELECT count(*) FROM customers").fetchone() == (1002,)
            found = check.execute("SELECT email FROM customers WHERE id IN (1, 100) ORDER BY id")
            assert found.fetchall() == [("a2@x.com",), ("u@x.com",)]


# What triggers cannot see: REPLACE


async def test_insert_or_replace_bumps_every_table_it_may_touch(w: Writer) -> None:
    outcome = await w.insert(
        "customers", ["id", "email", "region"], [(1, "z@x.com", "eu")], on_conflict="replace"
    )
    assert outcome.key_generations == CUSTOMERS_REACH
    assert outcome.keys >= w.row("customers", id=1, email="z@x.com")
    for sql in (
        "REPLACE INTO customers (id, email) VALUES (2, 'y@x.com')",
        "UPDATE OR REPLACE customers SET email = 'y@x.com' WHERE id = 2",
        "INSERT OR REPLACE INTO customers (id, email) VALUES (5, 'q@x.com')",
    ):
        assert (await w.update(sql)).key_generations == CUSTOMERS_REACH, sql


async def test_an_outer_replace_reaches_into_trigger_bodies(w: Writer) -> None:
    outcome = await w.update("INSERT OR REPLACE INTO orders (id, customer, day) VALUES (30, 2, 1)")
    assert outcome.key_generations == {"orders", "audit"}


async def test_a_schema_level_on_conflict_replace_bumps_its_table(w: Writer) -> None:
    outcome = await w.update("INSERT INTO tokens (code, owner) VALUES ('t1', 9)")
    assert outcome.key_generations == {"tokens"}
    assert w.key("tokens", "owner", 9) in outcome.keys


async def test_a_user_trigger_saying_replace_bumps_the_tables_it_writes(w: Writer) -> None:
    outcome = await w.update("UPDATE stock SET qty = 7 WHERE sku = 'a'")
    assert outcome.key_generations == {"stock", "ledger"}
    assert outcome.keys == {w.key("stock", "sku", "a"), w.key("ledger", "id", 1)}


async def test_a_replace_trigger_bumps_a_table_it_names_in_quotes(tmp_path: Path) -> None:
    lines = '"Order ""Lines"""'
    schema = (
        "CREATE TABLE src (id INTEGER PRIMARY KEY, v TEXT);"
        f"CREATE TABLE {lines} (id INTEGER PRIMARY KEY, v TEXT);"
        "CREATE TRIGGER src_copy AFTER INSERT ON src BEGIN"
        f" INSERT OR REPLACE INTO {lines} (id, v) VALUES (1, 'a\"b'); END;"
    )
    async with writer(tmp_path, schema=schema) as w:
        outcome = await w.update("INSERT INTO src (id, v) VALUES (1, 'a')")
        assert outcome.key_generations == {"src", 'Order "Lines"'}
        assert outcome.keys == {w.key("src", "id", 1), w.key('Order "Lines"', "id", 1)}


async def test_a_write_that_cannot_replace_bumps_nothing(w: Writer) -> None:
    outcome = await w.update("UPDATE customers SET region = 'x' WHERE id = 1")
    assert outcome.key_generations == frozenset()


def test_which_plans_may_replace() -> None:
    assert may_replace(StatementPlan([("REPLACE INTO t VALUES (1)", [])]))
    assert may_replace(StatementPlan([("UPDATE t SET a = replace(a, 'x', 'y')", [])]))
    assert not may_replace(StatementPlan([("UPDATE t SET a = 1", [])]))
    assert may_replace(IdempotentPlan(StatementPlan([("insert or replace into t", [])]), "k", 1.0))
    assert not may_replace(IdempotentPlan(StatementPlan([("DELETE FROM t", [])]), "k", 1.0))
    # A plan that does not say is taken to replace.
    assert may_replace(object())  # type: ignore[arg-type]


# Jobs sharing a transaction


async def test_a_failed_job_in_a_group_leaks_no_key_into_a_committed_one(w: Writer) -> None:
    failing = StatementPlan(
        [
            ("UPDATE orders SET day = 9 WHERE id = 10", [()]),
            ("INSERT INTO customers (id, email) VALUES (1, 'dup@x.com')", [()]),
        ]
    )
    succeeding = StatementPlan([("UPDATE customers SET region = 'x' WHERE id = 2", [()])])
    before = w.batcher.counters.transactions
    results = await asyncio.gather(
        w.submit(failing), w.submit(succeeding), w.submit(failing), return_exceptions=True
    )
    assert w.batcher.counters.transactions == before + 1  # one group
    assert isinstance(results[0], errors.AlreadyExists)
    assert isinstance(results[2], errors.AlreadyExists)
    assert isinstance(results[1], WriteOutcome)
    assert results[1].keys == w.row("customers", id=2, email="b@x.com")


async def test_a_job_failing_at_commit_leaves_the_others_keys_complete(w: Writer) -> None:
    # A deferred foreign key fails only at COMMIT: the group is run again job by job.
    good = StatementPlan([("UPDATE orders SET amount = 3 WHERE id = 10", [()])])
    bad = StatementPlan([("INSERT INTO shipments (id, customer) VALUES (1, 99)", [()])])
    results = await asyncio.gather(w.submit(bad), w.submit(good), return_exceptions=True)
    assert isinstance(results[0], errors.FailedPrecondition)
    assert isinstance(results[1], WriteOutcome)
    assert results[1].keys == w.row("orders", id=10, customer=1, day=1)


async def test_an_idempotent_replay_names_nothing(w: Writer) -> None:
    plan = IdempotentPlan(
        StatementPlan([("UPDATE orders SET day = 3 WHERE id = 11", [()])]), "k", 60
    )
    first = await w.submit(plan)
    assert first.keys == w.row("orders", id=11, customer=1, day=2) | w.row(
        "orders", id=11, customer=1, day=3
    )
    again = await w.submit(plan)
    assert again.replayed and not again.keys and not again.key_generations


# Bounds and switches


async def test_past_max_keys_per_write_the_table_is_bumped_instead(tmp_path: Path) -> None:
    async with writer(tmp_path, KeyTracking(max_keys_per_write=4)) as w:
        few = await w.update("UPDATE customers SET region = 'x' WHERE id IN (1, 2)")
        assert few.keys == w.row("customers", id=1, email="a@x.com") | w.row(
            "customers", id=2, email="b@x.com"
        )
        rows = [(100 + i, f"c{i}@x.com", "eu") for i in range(3)]  # 6 keys
        many = await w.insert("customers", ["id", "email", "region"], rows)
        assert many.keys == frozenset()
        assert many.key_generations == {"customers"}
        rows = [(1000 + i, f"d{i}@x.com", "eu") for i in range(5000)]
        await w.insert("customers", ["id", "email", "region"], rows)
        # Only the bumped table loses its keys; the others' are still named.
        mixed = await w.update("DELETE FROM customers WHERE id >= 1000", "DELETE FROM scores")
        assert mixed.key_generations == {"customers"}
        assert mixed.keys == w.row("scores", rowid=1, player=1, game=1)


async def test_tracking_off_installs_nothing_and_changes_no_outcome(tmp_path: Path) -> None:
    async with writer(tmp_path, KeyTracking(enabled=False)) as w:
        assert w.catalog.tables == {}
        temp = await w.conn.run_trusted(
            lambda raw: raw.execute("SELECT count(*) FROM sqlite_temp_schema").fetchone()[0]
        )
        assert temp == 0
        outcome = await w.update("INSERT OR REPLACE INTO customers (id, email) VALUES (1, 'q')")
        assert outcome.keys == frozenset() and outcome.key_generations == frozenset()
        assert "customers" in outcome.tables


async def test_a_virtual_table_is_not_watched_and_still_written(w: Writer) -> None:
    assert w.catalog.keys_of("docs") is None
    assert not [root for root, (table, _) in w.catalog.roots.items() if table == "docs"]
    outcome = await w.update("INSERT INTO docs (body) VALUES ('hello')")
    assert outcome.rows_affected == (1,) and not outcome.keys


# Another process changes the schema


async def test_a_schema_change_by_another_connection_reinstalls_the_triggers(w: Writer) -> None:
    await w.update("UPDATE audit SET note = 'x' WHERE id = 1")  # prepared with the old triggers
    with _other_connection(w.path) as other:
        # The old trigger on audit reads NEW.note, a column that is gone.
        other.executescript(
            "DROP INDEX audit_note; ALTER TABLE audit DROP COLUMN note;"
            " DROP TRIGGER orders_audit; CREATE INDEX orders_day ON orders(day);"
        )
    outcome = await w.update("UPDATE orders SET amount = 5 WHERE id = 10")
    assert len(w.catalogs) == 1 and w.capture.catalog is w.catalogs[0]
    new = w.catalogs[0]
    spec = new.tables["orders"].spec(["day"])
    assert spec is not None and new.tables["audit"].spec(["note"]) is None
    assert (spec.table, spec.name, spec.stored_digest([1])) in outcome.keys
    # Every keyed read of the old catalog may be keyed by what is gone: all bumped once.
    assert outcome.key_generations >= set(CUSTOMERS_REACH | {"stock", "tokens", "scores"})
    inserted = await w.update("INSERT INTO audit (customer) VALUES (5)")
    assert inserted.key_generations == frozenset()
    w.catalog = new
    assert [s.name for s in new.tables["audit"].specs] == ["id", "customer"]
    assert inserted.keys == w.row("audit", id=3, customer=5)


async def test_the_bump_waits_for_a_transaction_that_commits(w: Writer) -> None:
    with _other_connection(w.path) as other:
        other.execute("CREATE INDEX orders_day ON orders(day)")
    with pytest.raises(errors.AlreadyExists):
        await w.update("INSERT INTO customers (id) VALUES (1)")  # fails: nothing committed
    outcome = await w.update("UPDATE notes SET body = 'x' WHERE id = 20")
    assert "orders" in outcome.key_generations
    assert (await w.update("UPDATE notes SET body = 'y'")).key_generations == frozenset()


# The guard


async def test_a_caller_may_not_call_the_capture_function_or_touch_its_triggers(w: Writer) -> None:
    for sql in (
        "UPDATE customers SET region = _dataaccess_key(0, 1) WHERE id = 1",
        f'DROP TRIGGER temp."{TRIGGER_PREFIX}0_insert"',
        f'CREATE TEMP TRIGGER "{TRIGGER_PREFIX}99_insert" AFTER INSERT ON customers'
        " BEGIN SELECT 1; END",
    ):
        with pytest.raises(errors.PermissionDenied):
            await w.update(sql)
    with pytest.raises(errors.InvalidArgument, match="may not be modified"):
        await w.update("DELETE FROM sqlite_temp_schema")  # SQLite refuses before the guard
    triggers = await w.conn.run_trusted(
        lambda raw: raw.execute("SELECT count(*) FROM sqlite_temp_schema").fetchone()[0]
    )
    assert triggers == 3 * len(w.catalog.tables)


async def test_the_capture_triggers_add_nothing_to_a_writes_shape(w: Writer) -> None:
    outcome = await w.update("UPDATE orders SET amount = 1 WHERE id = 10")
    assert outcome.tables == {"orders"}
    assert w.conn.guard.key_triggers  # known to the guard by name
    assert set(w.conn.guard.key_triggers.values()) == set(w.catalog.tables)
