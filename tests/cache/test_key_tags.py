"""Key-level invalidation end to end: a write drops only the cached reads of the keys it
changed, over every way SQLite changes a row, and never leaves one stale.

Each test caches keyed reads, makes one kind of write through the service,
and reads again: a read of a key the write changed must be a fresh miss with
the new rows, a read of a key it did not change must stay a hit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.cache.test_cache_redis import with_redis
from tests.conftest import (
    RedisProcess,
    Running,
    base_document,
    plain_rows,
    row,
    sqlite_database,
    started,
    value,
)

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    email TEXT COLLATE NOCASE UNIQUE,
    region TEXT
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer INTEGER REFERENCES customers(id) ON DELETE CASCADE ON UPDATE CASCADE,
    day INTEGER,
    amount REAL
);
CREATE INDEX orders_customer_day ON orders(customer, day);
CREATE TABLE audit (id INTEGER PRIMARY KEY, customer INTEGER, note TEXT);
CREATE INDEX audit_customer ON audit(customer);
CREATE TRIGGER orders_audit AFTER INSERT ON orders BEGIN
    INSERT INTO audit (customer, note) VALUES (NEW.customer, 'order');
END;
CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER) WITHOUT ROWID;
CREATE TABLE tokens (code TEXT UNIQUE ON CONFLICT REPLACE, owner INTEGER);
CREATE INDEX tokens_owner ON tokens(owner);
CREATE TABLE scores (player INTEGER, game INTEGER, points INTEGER, PRIMARY KEY (player, game));
CREATE TABLE labels (id INTEGER PRIMARY KEY, k TEXT UNIQUE);
CREATE VIEW label_view AS SELECT id, k FROM labels;
CREATE TRIGGER label_view_insert INSTEAD OF INSERT ON label_view BEGIN
    INSERT INTO labels (id, k) VALUES (NEW.id, NEW.k);
END;
CREATE TABLE notes (id INTEGER PRIMARY KEY, x TEXT);
CREATE TRIGGER notes_label AFTER INSERT ON notes BEGIN
    INSERT OR REPLACE INTO label_view (id, k) VALUES (NULL, NEW.x);
END;
"""
SEED = [
    "INSERT INTO customers (id, email, region) VALUES"
    " (1, 'a@x.com', 'eu'), (2, 'b@x.com', 'us'), (3, 'c@x.com', 'eu'), (4, 'd@x.com', 'us')",
    "INSERT INTO orders (id, customer, day, amount) VALUES"
    " (10, 1, 1, 1.0), (11, 1, 2, 2.0), (12, 2, 1, 3.0), (13, 3, 1, 4.0), (14, 4, 1, 5.0)",
    "INSERT INTO stock (sku, qty) VALUES ('a', 1), ('b', 2)",
    "INSERT INTO tokens (code, owner) VALUES ('t1', 1), ('t2', 2)",
    "INSERT INTO scores (player, game, points) VALUES (1, 1, 10), (1, 2, 20), (2, 1, 30)",
    "INSERT INTO labels (id, k) VALUES (1, 'z')",
]
BY_CUSTOMER = "SELECT id, amount FROM orders WHERE customer = ? ORDER BY id"
STATUS = {
    pb.CACHE_STATUS_MISS: "miss",
    pb.CACHE_STATUS_HIT_LOCAL: "hit",
    pb.CACHE_STATUS_HIT_REDIS: "hit",
    pb.CACHE_STATUS_BYPASS: "bypass",
}


def shop_document(tmp_path: Path, **cache: Any) -> dict[str, Any]:
    """The test config plus the ``shop`` database, its schema and seed rows as a migration."""
    migrations = tmp_path / "shop_migrations"
    migrations.mkdir(exist_ok=True)
    (migrations / "0001_shop.sql").write_text(SCHEMA + ";\n".join(SEED) + ";\n")
    document = base_document(tmp_path / "data")
    document["databases"].append({"name": "shop", "path": "shop.db", "migrations": str(migrations)})
    document["cache"] = cache
    return document


@pytest.fixture
def document(tmp_path: Path) -> dict[str, Any]:
    return shop_document(tmp_path)


@pytest.fixture
async def shop(tmp_path: Path, document: dict[str, Any]) -> Any:
    async with started(tmp_path, document) as running:
        yield running


async def read(running: Running, sql: str, *params: Any) -> tuple[list[Any], str, list[str]]:
    """Rows, cache status and tags of one read on ``shop``."""
    response = await running.stub.Query(
        pb.QueryRequest(database="shop", sql=sql, params=[value(p) for p in params])
    )
    return plain_rows(response), STATUS[response.cache_status], list(response.tags)


async def update(running: Running, sql: str, *params: Any) -> list[str]:
    """One BatchUpdate statement; the tags it invalidated."""
    response = await running.stub.BatchUpdate(
        pb.BatchUpdateRequest(
            database="shop", statements=[pb.Statement(sql=sql, param_sets=[row(*params)])]
        )
    )
    return list(response.invalidated_tags)


async def insert(
    running: Running, table: str, columns: list[str], *rows: tuple[Any, ...], **kw: Any
) -> list[str]:
    response = await running.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="shop", table=table, columns=columns, rows=[row(*r) for r in rows], **kw
        )
    )
    return list(response.invalidated_tags)


async def cached(running: Running, sql: str, *params: Any) -> list[Any]:
    """Read twice: a miss then a hit, and the rows."""
    rows, status, _ = await read(running, sql, *params)
    again, hit, _ = await read(running, sql, *params)
    assert (again, hit) == (rows, "hit"), f"{sql} {params} was not cached: {status}, {hit}"
    return rows


async def fresh(running: Running, sql: str, *params: Any) -> list[Any]:
    """A read that must be a miss (its entry was dropped), and its rows."""
    rows, status, _ = await read(running, sql, *params)
    assert status == "miss", f"{sql} {params} was served from the cache after a write to it"
    return rows


async def until_miss(
    running: Running, sql: str, *params: Any, tries: int, pause: float
) -> tuple[list[Any], str]:
    """Read until the entry is dropped (news from elsewhere takes a moment), at most
    ``tries`` times; the last rows and status."""
    for _ in range(tries):
        rows, status, _ = await read(running, sql, *params)
        if status == "miss":
            break
        await asyncio.sleep(pause)
    return rows, status


async def still_hit(running: Running, sql: str, *params: Any) -> list[Any]:
    rows, status, _ = await read(running, sql, *params)
    assert status == "hit", f"{sql} {params} was dropped by a write to another key"
    return rows


# What a read is tagged with


async def test_a_point_read_is_tagged_by_its_key_and_key_generation_not_its_table(
    shop: Running,
) -> None:
    _, status, tags = await read(shop, BY_CUSTOMER, 1)
    assert status == "miss"
    keys = [t for t in tags if t.startswith("key:shop.orders.customer=")]
    assert len(keys) == 1, tags
    assert "keys:shop.orders" in tags
    assert "table:shop.orders" not in tags
    assert "database:shop" in tags


async def test_equal_values_by_sqlite_rules_share_a_key(shop: Running) -> None:
    _, _, as_int = await read(shop, BY_CUSTOMER, 1)
    _, _, as_text = await read(
        shop, "SELECT id, amount FROM orders WHERE customer = ? ORDER BY id", "1"
    )
    _, _, as_real = await read(shop, "SELECT id, amount FROM orders WHERE customer = ?", 1.0)
    key = [t for t in as_int if t.startswith("key:")]
    assert key == [t for t in as_text if t.startswith("key:")]
    assert key == [t for t in as_real if t.startswith("key:")]
    _, _, upper = await read(shop, "SELECT id FROM customers WHERE email = ?", "A@X.COM")
    _, _, lower = await read(shop, "SELECT region FROM customers WHERE email = ?", "a@x.com")
    assert [t for t in upper if t.startswith("key:")] == [t for t in lower if t.startswith("key:")]


async def test_reads_sqlite_does_not_answer_by_key_keep_their_table_tag(shop: Running) -> None:
    for sql, params in [
        ("SELECT id FROM orders WHERE customer > ?", (1,)),
        ("SELECT id FROM orders WHERE customer = ? OR day = ?", (1, 2)),
        ("SELECT id FROM orders WHERE customer + 0 = ?", (1,)),
        ("SELECT id FROM orders WHERE amount = ?", (1.0,)),
        ("SELECT count(*) FROM orders", ()),
        (
            "SELECT id FROM orders WHERE customer IN (SELECT id FROM customers WHERE region = ?)",
            ("eu",),
        ),
    ]:
        _, _, tags = await read(shop, sql, *params)
        assert "table:shop.orders" in tags, (sql, tags)
        assert not [t for t in tags if t.startswith("key:shop.orders")], (sql, tags)


async def test_key_tags_off_tags_every_read_by_table(tmp_path: Path) -> None:
    async with started(tmp_path, shop_document(tmp_path, key_tags=False)) as running:
        _, _, tags = await read(running, BY_CUSTOMER, 1)
        assert "table:shop.orders" in tags
        assert not [t for t in tags if t.startswith(("key:", "keys:"))]
        await cached(running, BY_CUSTOMER, 1)
        await update(running, "UPDATE orders SET amount = 9 WHERE id = 12")  # customer 2
        await fresh(running, BY_CUSTOMER, 1)


# Each way a write changes rows


async def test_a_write_to_one_key_leaves_another_keys_entry_a_hit(shop: Running) -> None:
    await cached(shop, BY_CUSTOMER, 1)
    await cached(shop, BY_CUSTOMER, 2)
    await update(shop, "UPDATE orders SET amount = 30 WHERE id = 12")
    await still_hit(shop, BY_CUSTOMER, 1)
    assert await fresh(shop, BY_CUSTOMER, 2) == [(12, 30.0)]


async def test_insert_of_a_key(shop: Running) -> None:
    await cached(shop, BY_CUSTOMER, 1)
    await cached(shop, BY_CUSTOMER, 4)
    await insert(shop, "orders", ["id", "customer", "day", "amount"], (20, 4, 2, 7.0))
    assert await fresh(shop, BY_CUSTOMER, 4) == [(14, 5.0), (20, 7.0)]
    await still_hit(shop, BY_CUSTOMER, 1)


async def test_update_moving_a_row_between_keys_drops_the_old_and_new_key(shop: Running) -> None:
    await cached(shop, BY_CUSTOMER, 1)
    await cached(shop, BY_CUSTOMER, 2)
    await cached(shop, BY_CUSTOMER, 3)
    await update(shop, "UPDATE orders SET customer = 2 WHERE id = 10")
    assert await fresh(shop, BY_CUSTOMER, 1) == [(11, 2.0)]
    assert await fresh(shop, BY_CUSTOMER, 2) == [(10, 1.0), (12, 3.0)]
    await still_hit(shop, BY_CUSTOMER, 3)


async def test_delete(shop: Running) -> None:
    await cached(shop, BY_CUSTOMER, 1)
    await update(shop, "DELETE FROM orders WHERE id = ?", 11)
    assert await fresh(shop, BY_CUSTOMER, 1) == [(10, 1.0)]


async def test_foreign_key_cascades_drop_the_child_rows_keys(shop: Running) -> None:
    await cached(shop, BY_CUSTOMER, 3)
    await cached(shop, BY_CUSTOMER, 30)
    await cached(shop, BY_CUSTOMER, 4)
    await update(shop, "UPDATE customers SET id = 30 WHERE id = 3")  # ON UPDATE CASCADE
    assert await fresh(shop, BY_CUSTOMER, 3) == []
    assert await fresh(shop, BY_CUSTOMER, 30) == [(13, 4.0)]
    await update(shop, "DELETE FROM customers WHERE id = 4")  # ON DELETE CASCADE
    assert await fresh(shop, BY_CUSTOMER, 4) == []


async def test_a_trigger_writing_another_table_drops_that_tables_keys(shop: Running) -> None:
    audit = "SELECT count(*) FROM audit WHERE customer = ?"
    assert await cached(shop, audit, 2) == [(1,)]  # the seed's order
    await cached(shop, audit, 3)
    await insert(shop, "orders", ["customer", "day", "amount"], (2, 9, 1.0))
    assert await fresh(shop, audit, 2) == [(2,)]
    await still_hit(shop, audit, 3)


async def test_insert_or_replace_drops_the_replaced_rows_keys(shop: Running) -> None:
    await cached(shop, BY_CUSTOMER, 1)
    # Row 10 (customer 1) is replaced by a row of customer 2: its delete fires no trigger.
    await insert(
        shop,
        "orders",
        ["id", "customer", "day", "amount"],
        (10, 2, 5, 8.0),
        on_conflict=pb.ON_CONFLICT_REPLACE,
    )
    assert await fresh(shop, BY_CUSTOMER, 1) == [(11, 2.0)]
    await cached(shop, BY_CUSTOMER, 1)
    await update(shop, "REPLACE INTO orders (id, customer, day, amount) VALUES (11, 3, 1, 1.0)")
    assert await fresh(shop, BY_CUSTOMER, 1) == []


async def test_a_schema_level_on_conflict_replace_drops_the_replaced_rows_keys(
    shop: Running,
) -> None:
    owned = "SELECT code FROM tokens WHERE owner = ?"
    assert await cached(shop, owned, 1) == [("t1",)]
    await insert(shop, "tokens", ["code", "owner"], ("t1", 2))  # a plain INSERT that replaces
    assert await fresh(shop, owned, 1) == []


async def test_a_replace_inside_a_trigger_through_a_views_instead_of_trigger(
    shop: Running,
) -> None:
    """The outer write says no REPLACE, but a trigger's INSERT OR REPLACE into a view runs
    the view's INSTEAD OF trigger under REPLACE: label 1 goes with no trigger telling."""
    label = "SELECT id, k FROM labels WHERE id = ?"
    assert await cached(shop, label, 1) == [(1, "z")]
    await update(shop, "INSERT INTO notes (id, x) VALUES (5, 'z')")
    assert await fresh(shop, label, 1) == []


async def test_upserts_on_a_without_rowid_table_and_a_composite_key(shop: Running) -> None:
    sku = "SELECT qty FROM stock WHERE sku = ?"
    assert await cached(shop, sku, "a") == [(1,)]
    await cached(shop, sku, "b")
    await insert(
        shop,
        "stock",
        ["sku", "qty"],
        ("a", 5),
        on_conflict=pb.ON_CONFLICT_UPSERT,
        conflict_columns=["sku"],
    )
    assert await fresh(shop, sku, "a") == [(5,)]
    await still_hit(shop, sku, "b")
    game = "SELECT points FROM scores WHERE player = ? AND game = ?"
    assert await cached(shop, game, 1, 1) == [(10,)]
    await cached(shop, game, 1, 2)
    await update(
        shop,
        "INSERT INTO scores (player, game, points) VALUES (?, ?, ?)"
        " ON CONFLICT (player, game) DO UPDATE SET points = points + excluded.points",
        1,
        2,
        5,
    )
    await still_hit(shop, game, 1, 1)
    assert await fresh(shop, game, 1, 2) == [(25,)]


async def test_a_rowid_change_drops_the_old_and_new_rowid(shop: Running) -> None:
    by_id = "SELECT customer FROM orders WHERE id = ?"
    assert await cached(shop, by_id, 12) == [(2,)]
    assert await cached(shop, by_id, 120) == []
    await update(shop, "UPDATE orders SET id = 120 WHERE id = 12")
    assert await fresh(shop, by_id, 12) == []
    assert await fresh(shop, by_id, 120) == [(2,)]


async def test_nocase_keys(shop: Running) -> None:
    by_email = "SELECT region FROM customers WHERE email = ?"
    assert await cached(shop, by_email, "A@X.com") == [("eu",)]
    await update(shop, "UPDATE customers SET region = 'apac' WHERE id = 1")
    assert await fresh(shop, by_email, "a@X.COM") == [("apac",)]
    await cached(shop, by_email, "new@x.com")
    await insert(shop, "customers", ["id", "email"], (9, "NEW@X.COM"))
    assert await fresh(shop, by_email, "new@x.com") == [(None,)]


async def test_affinity_text_against_an_integer_column(shop: Running) -> None:
    assert await cached(shop, BY_CUSTOMER, "2") == [(12, 3.0)]
    await update(shop, "UPDATE orders SET amount = 6 WHERE id = 12")
    assert await fresh(shop, BY_CUSTOMER, "2") == [(12, 6.0)]


async def test_in_lists(shop: Running) -> None:
    listed = "SELECT id FROM orders WHERE customer IN (?, ?, 3) ORDER BY id"
    assert await cached(shop, listed, 1, 2) == [(10,), (11,), (12,), (13,)]
    await update(shop, "UPDATE orders SET amount = 0 WHERE id = 14")  # customer 4
    await still_hit(shop, listed, 1, 2)
    await update(shop, "DELETE FROM orders WHERE id = 13")  # customer 3, the literal
    assert await fresh(shop, listed, 1, 2) == [(10,), (11,), (12,)]


async def test_a_join_keyed_on_one_side_still_sees_the_other_sides_writes(shop: Running) -> None:
    joined = (
        "SELECT o.id, c.region FROM orders o JOIN customers c ON c.id = o.customer"
        " WHERE o.customer = ? ORDER BY o.id"
    )
    assert await cached(shop, joined, 2) == [(12, "us")]
    await update(shop, "UPDATE customers SET region = 'eu' WHERE id = 2")
    assert await fresh(shop, joined, 2) == [(12, "eu")]


async def test_a_bulk_write_past_the_threshold_drops_every_keyed_read_of_the_table(
    tmp_path: Path,
) -> None:
    async with started(tmp_path, shop_document(tmp_path, max_keys_per_write=2)) as running:
        await cached(running, BY_CUSTOMER, 1)
        await cached(running, BY_CUSTOMER, 3)
        tags = await update(running, "UPDATE orders SET amount = amount + 1 WHERE customer <> 1")
        assert "keys:shop.orders" in tags
        assert await fresh(running, BY_CUSTOMER, 1) == [(10, 1.0), (11, 2.0)]
        assert await fresh(running, BY_CUSTOMER, 3) == [(13, 5.0)]


async def test_invalidating_the_table_tag_drops_its_keyed_reads(shop: Running) -> None:
    await cached(shop, BY_CUSTOMER, 1)
    response = await shop.stub.Invalidate(pb.InvalidateRequest(tags=["table:shop.orders"]))
    assert "keys:shop.orders" in response.invalidated_tags
    await fresh(shop, BY_CUSTOMER, 1)


async def test_stats_count_keyed_and_table_tagged_loads_and_keys_bumped(shop: Running) -> None:
    await shop.stub.Stats(pb.StatsRequest(reset=True))
    await read(shop, BY_CUSTOMER, 1)
    await read(shop, "SELECT count(*) FROM orders")
    await update(shop, "UPDATE orders SET customer = 2 WHERE id = 10")
    stats = await shop.stub.Stats(pb.StatsRequest())
    assert (stats.cache[0].keyed_loads, stats.cache[0].table_tagged_loads) == (1, 1)
    writes = next(w for w in stats.writes if w.database == "shop")
    # customer 1 -> 2 moves keys customer, (customer, day) both ways; the rowid stays
    assert writes.keys_bumped >= 4
    assert writes.key_generations_bumped == 0


# Races, other processes, other replicas


async def test_keyed_reads_after_an_acknowledged_write_are_never_stale(shop: Running) -> None:
    """Writers move rows between customers 1 and 2 and bump amounts; readers of each key
    must never see a total older than the last acknowledged write."""
    total = "SELECT count(*), coalesce(sum(amount), 0) FROM orders WHERE customer = ?"
    acknowledged: dict[int, tuple[int, float]] = {}
    stale: list[Any] = []
    done = False

    async def reader(customer: int) -> None:
        while not done:
            floor = acknowledged.get(customer)
            rows, _, _ = await read(shop, total, customer)
            if floor is not None and tuple(rows[0]) != floor and floor_is_newer(rows[0], floor):
                stale.append((customer, rows[0], floor))

    def floor_is_newer(seen: tuple[int, float], floor: tuple[int, float]) -> bool:
        return seen[1] < floor[1]  # amounts only grow

    def expected(customer: int) -> tuple[int, float]:
        with sqlite3.connect(shop.data_dir / "shop.db") as conn:
            found = conn.execute(total, (customer,)).fetchone()
        return int(found[0]), float(found[1])

    readers = [asyncio.ensure_future(reader(c)) for c in (1, 2, 3) for _ in range(3)]
    try:
        for step in range(60):
            await update(shop, "UPDATE orders SET amount = amount + 1 WHERE id = ?", 10 + step % 4)
            for customer in (1, 2, 3):
                acknowledged[customer] = expected(customer)
    finally:
        done = True
        await asyncio.gather(*readers)
    assert stale == []


async def test_a_write_on_one_server_drops_the_key_on_another_and_only_that_key(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    document = with_redis(shop_document(tmp_path), redis_server)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with started(tmp_path / "a", document) as one, started(tmp_path / "b", document) as other:
        await cached(other, BY_CUSTOMER, 1)
        await cached(other, BY_CUSTOMER, 2)
        await update(one, "UPDATE orders SET amount = 50 WHERE id = 12")
        # pub/sub reaches the other server's L1 within moments
        rows, status = await until_miss(other, BY_CUSTOMER, 2, tries=50, pause=0.02)
        assert (rows, status) == ([(12, 50.0)], "miss")
        await still_hit(other, BY_CUSTOMER, 1)


async def test_a_write_by_another_process_drops_keyed_reads(shop: Running) -> None:
    await cached(shop, BY_CUSTOMER, 1)
    with sqlite3.connect(shop.data_dir / "shop.db") as conn:
        conn.execute("UPDATE orders SET amount = 99 WHERE id = 10")
    # the writer notices another process's commit within its period
    rows, status = await until_miss(shop, BY_CUSTOMER, 1, tries=100, pause=0.05)
    assert rows == [(10, 99.0), (11, 2.0)]


async def test_pub_sub_alone_drops_the_key_on_another_server_and_skips_its_own_news(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    """With L1 never asking Redis (a long validation window), only the channel can tell
    the other server's L1 of a write: it must, within a second, for that key only."""
    document = with_redis(shop_document(tmp_path), redis_server, l1_validation_window_seconds=60.0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with started(tmp_path / "a", document) as one, started(tmp_path / "b", document) as other:
        await cached(other, BY_CUSTOMER, 1)
        await cached(other, BY_CUSTOMER, 2)
        await cached(one, BY_CUSTOMER, 3)
        await update(one, "UPDATE orders SET amount = 60 WHERE id = 12")
        rows, status = await until_miss(other, BY_CUSTOMER, 2, tries=50, pause=0.02)
        assert (rows, status) == ([(12, 60.0)], "miss")
        await still_hit(other, BY_CUSTOMER, 1)
        await still_hit(one, BY_CUSTOMER, 3)  # its own news did not disturb its L1


async def test_a_read_keyed_before_a_schema_change_is_not_cached_under_the_old_keys(
    shop: Running,
) -> None:
    """A read takes its key lookups, another process drops the index they use, the service
    writes (seeing the new schema) and only then does the read load: it must not be
    cached under keys the writes no longer report."""
    await cached(shop, BY_CUSTOMER, 1)  # the SQL's lookups are learnt: keyed on customer
    database = sqlite_database(shop.server, "shop")
    learn = database.read_shape
    reached, go_on = asyncio.Event(), asyncio.Event()

    async def paused(sql: str, params: Any, deadline: float) -> Any:
        shape = await learn(sql, params, deadline)
        if params == (2,):
            reached.set()
            await go_on.wait()
        return shape

    database.read_shape = paused  # type: ignore[method-assign]
    pending = asyncio.ensure_future(read(shop, BY_CUSTOMER, 2))
    await reached.wait()
    with sqlite3.connect(shop.data_dir / "shop.db") as other:
        other.execute("DROP INDEX orders_customer_day")
    await update(shop, "UPDATE orders SET amount = amount WHERE id = 14")  # sees the schema
    go_on.set()
    rows, _, _ = await pending
    database.read_shape = learn  # type: ignore[method-assign]
    assert rows == [(12, 3.0)]
    await update(shop, "UPDATE orders SET amount = 99 WHERE id = 12")
    rows, status, tags = await read(shop, BY_CUSTOMER, 2)
    assert rows == [(12, 99.0)], (status, tags)
    assert "table:shop.orders" in tags  # no index on customer now: a table scan


async def test_a_replica_with_key_tags_off_still_drops_the_others_keyed_reads(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    """Two servers on one file and one Redis, one with key tags off (or an older release
    mid-upgrade): its writes know no keys, so they drop the table's keyed reads whole."""
    keyed = with_redis(shop_document(tmp_path), redis_server)
    untracked = with_redis(shop_document(tmp_path), redis_server, key_tags=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with started(tmp_path / "a", untracked) as one, started(tmp_path / "b", keyed) as other:
        await cached(other, BY_CUSTOMER, 2)
        tags = await update(one, "UPDATE orders SET amount = 70 WHERE id = 12")
        assert "keys:shop.orders" in tags
        rows, status = await until_miss(other, BY_CUSTOMER, 2, tries=50, pause=0.02)
        assert (rows, status) == ([(12, 70.0)], "miss")


async def test_a_key_holding_text_that_is_not_utf8_never_fails_a_write(shop: Running) -> None:
    """Another process stored bytes that are not UTF-8 as text in a key column: writes to
    that row still commit, and the keys around it are still dropped."""
    by_email = "SELECT id FROM customers WHERE email = ?"
    with sqlite3.connect(shop.data_dir / "shop.db") as other:
        other.execute("INSERT INTO customers (id, email) VALUES (77, CAST(X'FF61' AS TEXT))")
    assert await cached(shop, by_email, "a@x.com") == [(1,)]
    await update(shop, "UPDATE customers SET email = 'a@x.com' || id WHERE id IN (1, 77)")
    assert await fresh(shop, by_email, "a@x.com") == []
    await update(shop, "DELETE FROM customers WHERE id = 77")


@pytest.mark.parametrize("encoding", ["UTF-16le", "UTF-16be"])
async def test_text_keys_in_a_utf16_database(tmp_path: Path, encoding: str) -> None:
    document = shop_document(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "shop.db") as made:  # text is stored as UTF-16 from the start
        made.execute(f"PRAGMA encoding = '{encoding}'")
        made.execute("CREATE TABLE first (x)")
    async with started(tmp_path, document) as running:
        by_email = "SELECT region FROM customers WHERE email = ?"
        assert await cached(running, by_email, "A@x.com") == [("eu",)]
        await update(running, "UPDATE customers SET region = 'apac' WHERE id = 1")
        assert await fresh(running, by_email, "a@X.com") == [("apac",)]
        await cached(running, by_email, "né@x.com")
        await insert(running, "customers", ["id", "email"], (9, "NÉ@X.COM".replace("É", "é")))
        assert await fresh(running, by_email, "né@x.com") == [(None,)]
