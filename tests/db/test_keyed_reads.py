"""Golden tests of keyed_reads: which tables SQLite's programs show a statement reads
only through key lookups, on which spec, with which sources.

The analysis trusts SQLite's bytecode (``EXPLAIN``) and plan text, neither of which is a
stable interface. These tests pin, for SQLite 3.40, both the verdicts over many
statement forms and the bytecode facts the analysis relies on, so a future SQLite that
shapes a program differently fails here loudly instead of being keyed on a guess. Each
keyed case also checks the claim itself on data: deleting every row of a keyed table
whose key is not one of the read's digests leaves the result unchanged.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from service.db.sqlite.bytecode import _WRITES
from service.db.sqlite.bytecode import Op as _Op
from service.db.sqlite.bytecode import Program as _Program
from service.db.sqlite.guard import Guard, ShapeMemo, read_catalog
from service.db.sqlite.key_seeks import Analysis as _Analysis
from service.db.sqlite.key_seeks import _key_collations
from service.db.sqlite.key_specs import KeyCatalog, KeySpec, read_key_catalog
from service.db.sqlite.keyed_reads import (
    MAX_KEYS,
    KeyedLookup,
    Literal,
    Param,
    Source,
    keyed_lookups,
)
from service.values import Params

SCHEMA = """
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, day TEXT, amount REAL,
                     name TEXT, note TEXT);
CREATE INDEX orders_customer_day ON orders (customer, day);
CREATE INDEX orders_name_nocase ON orders (name COLLATE NOCASE);
CREATE INDEX orders_note ON orders (note);
CREATE INDEX orders_positive ON orders (amount) WHERE amount > 0;
CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT UNIQUE, region TEXT);
CREATE TABLE plain (a, b);
CREATE TABLE pairs (k TEXT, n INTEGER, v TEXT, w, PRIMARY KEY (k, n)) WITHOUT ROWID;
CREATE INDEX pairs_v ON pairs (v);
CREATE TABLE tags (tag TEXT COLLATE NOCASE, item INTEGER);
CREATE INDEX tags_tag ON tags (tag);
CREATE TABLE shadowed (rowid INTEGER, v TEXT);
CREATE INDEX shadowed_rowid ON shadowed (rowid);
CREATE TABLE loose (a, b);
CREATE TABLE sorted (a INTEGER, b TEXT);
CREATE INDEX sorted_a_desc ON sorted (a DESC, b);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100;
CREATE VIRTUAL TABLE docs USING fts5(title, body);

INSERT INTO customers VALUES (1, 'a@x', 'north'), (2, 'b@x', 'south'), (3, 'c@x', 'north'),
                             (5, 'e@x', 'east');
INSERT INTO orders VALUES
    (1, 1, '2024-01-01', 10.0, 'Ann', 'x'), (2, 1, '2024-01-02', 150.0, 'ann', 'y'),
    (3, 2, '2024-01-01', -5.0, 'Bob', 'x'), (4, 2, '2024-01-03', 200.0, 'ANN', NULL),
    (5, 3, '2024-01-01', 0.0, 'Cy', 'z'), (6, 5, '2024-01-02', 7.5, 'bob', 'x'),
    (7, NULL, '2024-01-01', 1.0, NULL, 'w'), (8, 5, '2024-01-05', 120.0, 'Dee', 'y'),
    (9, 3, '2024-01-02', 7.5, 'ann ', 'x');
INSERT INTO plain VALUES ('p', 1), ('q', 2), (NULL, 3), ('r', 4);
INSERT INTO pairs VALUES ('a', 1, 'v1', 'w1'), ('a', 2, 'v2', NULL), ('b', 1, 'v1', 'w3'),
                         ('c', 5, 'v3', 'w4');
INSERT INTO tags VALUES ('Red', 1), ('red', 2), ('Blue', 3), ('BLUE', 4), ('green', 5);
INSERT INTO shadowed VALUES (10, 'ten'), (20, 'twenty'), (10, 'dix');
INSERT INTO loose VALUES (1, 'x'), (2, 'y'), (1, 'z');
INSERT INTO sorted VALUES (1, 'a'), (2, 'b'), (2, 'c'), (3, 'd');
INSERT INTO docs VALUES ('first', 'hello world'), ('second', 'goodbye moon');
"""
# Statistics that make SQLite choose a skip-scan (events: few kinds, many rows each) and
# a SeekScan (readings: a handful of rows per sensor), loaded as ANALYZE would.
ANALYZED = """
CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT, at INTEGER, x);
CREATE INDEX events_kind_at ON events (kind, at);
CREATE TABLE readings (sensor INTEGER, seq INTEGER, v);
CREATE INDEX readings_sensor_seq ON readings (sensor, seq);
INSERT INTO events VALUES (1, 'a', 10, 1), (2, 'b', 10, 2), (3, 'a', 20, 3);
INSERT INTO readings VALUES (1, 1, 'x'), (1, 2, 'y'), (1, 3, 'z'), (2, 1, 'w');
ANALYZE;
DELETE FROM sqlite_stat1;
INSERT INTO sqlite_stat1 VALUES ('events', 'events_kind_at', '1000000 500000 2'),
                                ('readings', 'readings_sensor_seq', '1000000 2 1');
ANALYZE sqlite_schema;
"""
# How each table's rows are told apart when the data check deletes some.
ROW_IDENTITY = {"pairs": ("k", "n")}


def P(index: int, name: str | None = None) -> Param:
    return Param(index, name)


def L(value: Any) -> Literal:
    return Literal(value)


Expected = dict[str, tuple[tuple[str, ...], tuple[tuple[Source, ...], ...]]]


def _case(sql: str, params: Params, expected: Expected, *, analyzed: bool = False) -> Any:
    return pytest.param(sql, params, expected, analyzed, id=sql)


KEYED = [
    # The rowid, by its alias and by its own names
    _case("SELECT * FROM orders WHERE id = ?", (2,), {"orders": (("id",), ((P(1),),))}),
    _case("SELECT * FROM orders WHERE _rowid_ = ?", (2,), {"orders": (("id",), ((P(1),),))}),
    _case("SELECT * FROM orders WHERE oid = ?", (2,), {"orders": (("id",), ((P(1),),))}),
    _case("SELECT * FROM plain WHERE rowid = ?", (2,), {"plain": (("rowid",), ((P(1),),))}),
    _case(
        "SELECT * FROM orders WHERE customer = ? AND id = ?",
        (1, 2),
        {"orders": (("id",), ((P(2),),))},  # the customer term only narrows the row
    ),
    # Index prefixes
    _case(
        "SELECT * FROM orders WHERE customer = ?",
        (1,),
        {"orders": (("customer",), ((P(1),),))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer = ? AND day = ?",
        (1, "2024-01-02"),
        {"orders": (("customer", "day"), ((P(1), P(2)),))},
    ),
    _case(
        "SELECT * FROM orders WHERE day = ? AND customer = ?",
        ("2024-01-02", 1),
        {"orders": (("customer", "day"), ((P(2), P(1)),))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer = ? AND day = ? AND amount > 5",
        (1, "2024-01-02"),
        {"orders": (("customer", "day"), ((P(1), P(2)),))},
    ),
    _case(
        "SELECT * FROM orders WHERE (customer, day) = (?, ?)",
        (1, "2024-01-02"),
        {"orders": (("customer", "day"), ((P(1), P(2)),))},
    ),
    _case(
        "SELECT day FROM orders WHERE customer = ?",
        (2,),
        {"orders": (("customer",), ((P(1),),))},  # a covering index: no table cursor
    ),
    _case(
        "SELECT * FROM customers WHERE email = ?",
        ("b@x",),
        {"customers": (("email",), ((P(1),),))},  # a UNIQUE constraint's index
    ),
    _case(
        "SELECT * FROM sorted WHERE a = ?",
        (2,),
        {"sorted": (("a",), ((P(1),),))},  # a DESC index column
    ),
    _case(
        "SELECT * FROM orders WHERE amount = ? AND amount > 0",
        (7.5,),
        {"orders": (("amount",), ((P(1),),))},  # a partial index
    ),
    _case(
        "SELECT * FROM shadowed WHERE rowid = ?",
        (10,),
        {"shadowed": (("rowid",), ((P(1),),))},  # the column called rowid, by its index
    ),
    # IN lists and what SQLite makes one of
    _case(
        "SELECT * FROM orders WHERE customer IN (?, ?, ?)",
        (1, 3, 9),
        {"orders": (("customer",), ((P(1),), (P(2),), (P(3),)))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer IN (1, 2, 3)",
        (),
        {"orders": (("customer",), ((L(1),), (L(2),), (L(3),)))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer IN (?, 5)",
        (2,),
        {"orders": (("customer",), ((P(1),), (L(5),)))},
    ),
    _case(
        "SELECT id FROM orders WHERE id IN (?, 3)",
        (1,),
        {"orders": (("id",), ((P(1),), (L(3),)))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer = ? OR customer = ?",
        (1, 5),
        {"orders": (("customer",), ((P(1),), (P(2),)))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer = ? AND day IN (?, ?)",
        (1, "2024-01-01", "2024-01-02"),
        {"orders": (("customer", "day"), ((P(1), P(2)), (P(1), P(3))))},
    ),
    _case(
        "SELECT id FROM orders WHERE customer IN (?, ?) AND day IN (?, ?)",
        (1, 2, "2024-01-01", "2024-01-03"),
        {
            "orders": (
                ("customer", "day"),
                ((P(1), P(3)), (P(1), P(4)), (P(2), P(3)), (P(2), P(4))),
            )
        },
    ),
    _case(
        "SELECT * FROM orders WHERE customer IN (?, ?) ORDER BY customer DESC",
        (1, 2),
        {"orders": (("customer",), ((P(1),), (P(2),)))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer IN (SELECT 1)",
        (),
        {"orders": (("customer",), ((L(1),),))},  # filled from a literal: sound
    ),
    # Parameter names and literals
    _case(
        "SELECT * FROM orders WHERE customer = :c",
        {"c": 1},
        {"orders": (("customer",), ((P(1, ":c"),),))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer = @c AND day = $d",
        {"c": 1, "d": "2024-01-01"},
        {"orders": (("customer", "day"), ((P(1, "@c"), P(2, "$d")),))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer = ?2 AND day = ?1",
        ("2024-01-01", 1),
        {"orders": (("customer", "day"), ((P(2, "?2"), P(1, "?1")),))},
    ),
    _case("SELECT * FROM orders WHERE customer = 5", (), {"orders": (("customer",), ((L(5),),))}),
    _case("SELECT * FROM orders WHERE customer = -5", (), {"orders": (("customer",), ((L(-5),),))}),
    _case(
        "SELECT * FROM orders WHERE customer = '5'",
        (),
        {"orders": (("customer",), ((L("5"),),))},  # INTEGER affinity makes it 5
    ),
    _case(
        "SELECT * FROM orders WHERE customer = 12345678901234",
        (),
        {"orders": (("customer",), ((L(12345678901234),),))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer IS ?",
        (None,),
        {"orders": (("customer",), ((P(1),),))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer IS NULL",
        (),
        {"orders": (("customer",), ((L(None),),))},
    ),
    # Collations: the index's, which the query's must match to seek by equality
    _case(
        "SELECT * FROM orders WHERE name = ? COLLATE NOCASE",
        ("ANN",),
        {"orders": (("name",), ((P(1),),))},
    ),
    _case("SELECT * FROM tags WHERE tag = ?", ("RED",), {"tags": (("tag",), ((P(1),),))}),
    # Shapes around the lookup
    _case(
        "SELECT * FROM orders WHERE customer = ? ORDER BY day DESC LIMIT 1",
        (1,),
        {"orders": (("customer",), ((P(1),),))},
    ),
    _case(
        "SELECT * FROM orders WHERE customer = ? LIMIT ? OFFSET ?",
        (1, 1, 1),
        {"orders": (("customer",), ((P(1),),))},
    ),
    _case(
        "SELECT count(*) FROM orders WHERE customer = ?",
        (1,),
        {"orders": (("customer",), ((P(1),),))},
    ),
    _case(
        "SELECT max(day) FROM orders WHERE customer = ?",
        (1,),
        {"orders": (("customer",), ((P(1),),))},  # SeekLE/IdxLT on the customer alone
    ),
    _case(
        "SELECT day, count(*) FROM orders WHERE customer = ? GROUP BY day",
        (1,),
        {"orders": (("customer",), ((P(1),),))},
    ),
    _case(
        "SELECT DISTINCT day FROM orders WHERE customer = ?",
        (1,),
        {"orders": (("customer",), ((P(1),),))},
    ),
    _case(
        "SELECT * FROM big_orders WHERE customer = ?",
        (1,),
        {"orders": (("customer",), ((P(1),),))},  # a view reads its table
    ),
    _case(
        "WITH mine AS (SELECT * FROM orders WHERE customer = ?) SELECT * FROM mine",
        (1,),
        {"orders": (("customer",), ((P(1),),))},
    ),
    # WITHOUT ROWID: the primary key is the table's own b-tree
    _case(
        "SELECT * FROM pairs WHERE k = ? AND n = ?",
        ("a", 2),
        {"pairs": (("k", "n"), ((P(1), P(2)),))},
    ),
    _case("SELECT * FROM pairs WHERE k = ?", ("a",), {"pairs": (("k",), ((P(1),),))}),
    _case(
        "SELECT * FROM pairs WHERE k = ? AND n IN (1, 2)",
        ("a",),
        {"pairs": (("k", "n"), ((P(1), L(1)), (P(1), L(2))))},
    ),
    _case(
        "SELECT * FROM pairs WHERE v = ?",
        ("v1",),
        {"pairs": (("v",), ((P(1),),))},  # its index, then NotFound on the primary key
    ),
    # Joins and subqueries: each table on its own
    _case(
        "SELECT o.id, c.region FROM orders o JOIN customers c ON c.id = o.customer"
        " WHERE o.customer = ?",
        (1,),
        {"orders": (("customer",), ((P(1),),)), "customers": (("id",), ((P(1),),))},
    ),
    _case(
        "SELECT o.id, c.region FROM orders o JOIN customers c ON c.id = o.customer"
        " WHERE c.email = ?",
        ("b@x",),
        {"customers": (("email",), ((P(1),),))},  # orders is sought by a join column
    ),
    _case(
        "SELECT o.*, c.* FROM orders o, customers c WHERE o.customer = ? AND c.id = ?",
        (1, 2),
        {"orders": (("customer",), ((P(1),),)), "customers": (("id",), ((P(2),),))},
    ),
    _case(
        "SELECT c.id, o.id FROM customers c LEFT JOIN orders o ON o.customer = c.id WHERE c.id = ?",
        (2,),
        {"customers": (("id",), ((P(1),),))},
    ),
    _case(
        "SELECT o.id, (SELECT region FROM customers c WHERE c.id = o.customer)"
        " FROM orders o WHERE o.customer = ?",
        (1,),
        {"orders": (("customer",), ((P(1),),))},
    ),
    _case(
        "SELECT * FROM orders o WHERE o.customer = ?"
        " AND EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer)",
        (2,),
        {"orders": (("customer",), ((P(1),),)), "customers": (("id",), ((P(1),),))},
    ),
    _case(
        "SELECT * FROM readings WHERE sensor = ? AND seq IN (?, ?, ?)",
        (1, 1, 3, 4),
        {"readings": (("sensor", "seq"), ((P(1), P(2)), (P(1), P(3)), (P(1), P(4))))},
        analyzed=True,  # a SeekScan steps to each key instead of seeking
    ),
]
NOT_KEYED = [
    _case("SELECT * FROM orders", (), {}),
    _case("SELECT count(*) FROM orders", (), {}),
    _case("SELECT * FROM orders WHERE customer = ? AND day > ?", (1, "2024-01-01"), {}),
    _case("SELECT * FROM orders WHERE customer > ?", (1,), {}),
    _case("SELECT * FROM orders WHERE customer BETWEEN ? AND ?", (1, 2), {}),
    _case("SELECT * FROM orders WHERE customer = ? OR id = ?", (1, 5), {}),
    _case("SELECT * FROM orders WHERE customer = ? OR day = ?", (1, "2024-01-05"), {}),
    _case("SELECT * FROM orders WHERE lower(name) = ?", ("ann",), {}),
    _case("SELECT * FROM orders WHERE +customer = ?", (1,), {}),
    _case("SELECT * FROM orders WHERE customer = ? + 1", (1,), {}),
    _case("SELECT * FROM orders WHERE customer = abs(?)", (-1,), {}),
    _case("SELECT * FROM orders WHERE customer = CAST(? AS INTEGER)", ("1",), {}),
    _case("SELECT * FROM orders WHERE customer = 5.0", (), {}),  # EXPLAIN shows reals inexactly
    _case("SELECT * FROM orders WHERE note = x'78'", (), {}),  # ... and blobs not at all
    _case(
        "SELECT * FROM orders WHERE name = ?", ("Ann",), {}
    ),  # BINARY: the NOCASE index is no use
    _case("SELECT * FROM orders WHERE note = ? COLLATE NOCASE", ("X",), {}),
    _case("SELECT * FROM tags WHERE tag = ? COLLATE BINARY", ("Red",), {}),
    _case("SELECT * FROM orders WHERE name LIKE ?", ("an%",), {}),
    _case("SELECT min(day) FROM orders WHERE customer = ?", (1,), {}),  # SeekGT past NULLs
    _case(
        "SELECT * FROM orders WHERE customer IN (SELECT id FROM customers WHERE region = ?)",
        ("north",),
        {},
    ),
    _case(
        "SELECT * FROM orders WHERE (customer, day) IN (VALUES (?, ?), (2, '2024-01-03'))",
        (1, "2024-01-01"),
        {},
    ),
    _case("SELECT * FROM orders WHERE id = ? UNION SELECT * FROM orders WHERE id = ?", (1, 2), {}),
    _case(
        "SELECT * FROM orders WHERE customer = ? UNION ALL SELECT * FROM orders WHERE customer = ?",
        (1, 2),
        {},
    ),
    _case(
        "SELECT * FROM orders o WHERE customer = ?"
        " AND amount = (SELECT max(amount) FROM orders WHERE customer = o.customer)",
        (1,),
        {},  # a second cursor on orders
    ),
    _case(
        "SELECT o.id, c.region FROM orders o RIGHT JOIN customers c ON o.customer = c.id"
        " WHERE o.customer = ?",
        (1,),
        {},
    ),
    _case("SELECT * FROM shadowed WHERE oid = ?", (1,), {}),  # its spec "rowid" is a column
    _case("SELECT * FROM loose x JOIN loose y ON y.b = x.b WHERE x.a = ?", (1,), {}),
    _case("SELECT * FROM docs WHERE docs MATCH ?", ("hello",), {}),
    _case("SELECT * FROM docs WHERE rowid = ?", (1,), {}),
    _case(
        "SELECT o.id FROM orders o JOIN docs d ON d.rowid = o.id WHERE o.id = ?",
        (1,),
        {},  # a virtual table may read any table behind the program's back
    ),
    _case("SELECT * FROM events WHERE at = ?", (10,), {}, analyzed=True),  # skip-scan
    _case(
        "SELECT id FROM orders WHERE customer IN (" + ", ".join(["?"] * (MAX_KEYS + 1)) + ")",
        tuple(range(MAX_KEYS + 1)),
        {},
    ),
]


def _database(analyzed: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(ANALYZED if analyzed else SCHEMA)
    return conn


def _shape(found: dict[str, KeyedLookup]) -> Expected:
    return {table: (lookup.spec.columns, lookup.values) for table, lookup in found.items()}


def _bound(source: Source, params: Params) -> Any:
    if isinstance(source, Literal):
        return source.value
    if isinstance(params, dict):
        assert source.name is not None
        return params[source.name[1:]]
    return params[source.index - 1]


def _rows(conn: sqlite3.Connection, sql: str, params: Params) -> list[tuple[Any, ...]]:
    return sorted(conn.execute(sql, params).fetchall(), key=repr)


def _delete_other_keys(conn: sqlite3.Connection, spec: KeySpec, digests: tuple[str, ...]) -> int:
    """Delete every row of the spec's table whose key has none of ``digests``."""
    identity = ROW_IDENTITY.get(spec.table, ("_rowid_",))
    columns = ", ".join(f'"{c}"' for c in (*identity, *spec.columns))
    doomed = [
        row[: len(identity)]
        for row in conn.execute(f'SELECT {columns} FROM "{spec.table}"').fetchall()
        if spec.stored_digest(row[len(identity) :]) not in digests
    ]
    where = " AND ".join(f'"{c}" IS ?' for c in identity)
    conn.executemany(f'DELETE FROM "{spec.table}" WHERE {where}', doomed)
    return len(doomed)


@pytest.mark.parametrize(("sql", "params", "expected", "analyzed"), KEYED + NOT_KEYED)
def test_golden(sql: str, params: Params, expected: Expected, analyzed: bool) -> None:
    with closing(_database(analyzed)) as conn:
        catalog = read_key_catalog(conn)
        found = keyed_lookups(conn, sql, params, catalog)
        assert _shape(found) == expected
        for lookup in found.values():
            wanted = [
                lookup.spec.read_digest([_bound(s, params) for s in v]) for v in lookup.values
            ]
            assert lookup.digests(params) == tuple(dict.fromkeys(wanted))


@pytest.mark.parametrize(("sql", "params", "expected", "analyzed"), KEYED)
def test_a_keyed_result_depends_only_on_rows_with_its_keys(
    sql: str, params: Params, expected: Expected, analyzed: bool
) -> None:
    with closing(_database(analyzed)) as conn:
        found = keyed_lookups(conn, sql, params, read_key_catalog(conn))
        before = _rows(conn, sql, params)
        deleted = 0
        for lookup in found.values():
            digests = lookup.digests(params)
            assert digests is not None
            deleted += _delete_other_keys(conn, lookup.spec, digests)
        assert deleted > 0, "the check deleted nothing: pick data with other keys"
        assert _rows(conn, sql, params) == before


def test_nocase_lookups_are_keyed_on_the_nocase_spec() -> None:
    with closing(_database(False)) as conn:
        catalog = read_key_catalog(conn)
        for sql, table in [
            ("SELECT * FROM orders WHERE name = ? COLLATE NOCASE", "orders"),
            ("SELECT * FROM tags WHERE tag = ?", "tags"),
        ]:
            lookup = keyed_lookups(conn, sql, ("ANN",), catalog)[table]
            assert lookup.spec.collations == ("NOCASE",)
            assert lookup.digests(("ann",)) == lookup.digests(("ANN",))


def test_literal_keys_digest_as_the_bound_value_would() -> None:
    with closing(_database(False)) as conn:
        catalog = read_key_catalog(conn)
        text = keyed_lookups(conn, "SELECT * FROM orders WHERE customer = '5'", (), catalog)
        bound = keyed_lookups(conn, "SELECT * FROM orders WHERE customer = ?", (5,), catalog)
        assert text["orders"].digests(()) == bound["orders"].digests((5,))


def test_digests_bind_params_as_python_sqlite3_does() -> None:
    spec = KeySpec("orders", ("customer", "day"), *_orders_customer_day())
    lookup = KeyedLookup(spec, ((P(1, ":c"), P(2, "?2")), (P(1, ":c"), L("2024-01-01"))))
    by_name = lookup.digests({"c": 1, "2": "2024-01-02"})
    assert by_name == (
        spec.read_digest([1, "2024-01-02"]),
        spec.read_digest([1, "2024-01-01"]),
    )
    assert lookup.digests((1, "2024-01-02")) == by_name  # a sequence binds by position
    assert lookup.digests({"c": 1}) is None  # missing
    assert lookup.digests((1,)) is None
    assert lookup.digests(("1e3", "2024-01-02")) is None  # not reproduced exactly: Unknown
    same = KeyedLookup(spec, ((P(1), P(2)), (P(1), P(3))))
    assert same.digests((1, "d", "d")) == (spec.read_digest([1, "d"]),)  # deduplicated
    bare = KeyedLookup(spec, ((P(1), P(2)),))
    assert bare.digests({"1": 1, "2": "d"}) is None  # a bare ? has no name to bind by


def _orders_customer_day() -> tuple[Any, Any]:
    with closing(_database(False)) as conn:
        keys = read_key_catalog(conn).keys_of("orders")
        assert keys is not None
        spec = keys.spec(["customer", "day"])
        assert spec is not None
        return spec.affinities, spec.collations


def test_a_catalog_of_another_schema_version_keys_nothing() -> None:
    with closing(_database(False)) as conn:
        catalog = read_key_catalog(conn)
        conn.execute("CREATE INDEX orders_day ON orders (day)")
        assert keyed_lookups(conn, "SELECT * FROM orders WHERE id = ?", (1,), catalog) == {}
        fresh = read_key_catalog(conn)
        assert keyed_lookups(conn, "SELECT * FROM orders WHERE id = ?", (1,), fresh) != {}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM orders WHERE id = ?; SELECT 1",  # two statements
        "SELEC * FROM orders WHERE id = ?",
        "EXPLAIN SELECT * FROM orders WHERE id = ?",
    ],
)
def test_what_sqlite_refuses_keys_nothing(sql: str) -> None:
    with closing(_database(False)) as conn:
        assert keyed_lookups(conn, sql, (1,), read_key_catalog(conn)) == {}


@pytest.fixture
def guarded() -> Iterator[tuple[sqlite3.Connection, Guard, KeyCatalog]]:
    """A reader as the service opens one: every statement passes its guard."""
    conn = _database(False)
    catalog = read_key_catalog(conn)
    guard = Guard(frozenset(), ShapeMemo(), writer=False)
    guard.learn(read_catalog(conn), None)
    conn.set_authorizer(guard)
    with closing(conn):
        yield conn, guard, catalog


def test_the_analysis_passes_a_readers_guard(
    guarded: tuple[sqlite3.Connection, Guard, KeyCatalog],
) -> None:
    conn, guard, catalog = guarded
    for sql, expected in [
        ("SELECT * FROM plain WHERE rowid = ?", {"plain": (("rowid",), ((P(1),),))}),  # a probe
        ("SELECT * FROM shadowed WHERE oid = ?", {}),
        ("SELECT * FROM big_orders WHERE customer = ?", {"orders": (("customer",), ((P(1),),))}),
    ]:
        guard.begin(sql)
        conn.execute(f"EXPLAIN {sql}", (1,)).close()
        shape = guard.shape_of(sql)
        assert shape is not None and guard.refusal is None
        assert _shape(keyed_lookups(conn, sql, (1,), catalog)) == expected
        assert guard.refusal is None
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("PRAGMA table_info(orders)")  # the guard is on: a reader may not


# -- The bytecode facts the analysis relies on ---------------------------------------------


def _explain(conn: sqlite3.Connection, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
    return [tuple(row[1:7]) for row in conn.execute(f"EXPLAIN {sql}", params)]


def _plan(conn: sqlite3.Connection, sql: str, params: Params = ()) -> list[str]:
    return [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def test_sqlite_version_the_golden_shapes_were_taken_from() -> None:
    """Not a gate: the shapes below are pinned for this version; on another, any change
    in them fails its own test."""
    assert sqlite3.sqlite_version_info >= (3, 38, 0)  # SeekScan, IfNoHope, bloom filters


def test_every_opcode_of_the_golden_programs_is_known() -> None:
    """An opcode the analysis does not know makes it key nothing; a new SQLite that
    brings one to these statements must fail here, not quietly lose its keyed reads."""
    unknown: set[str] = set()
    for case in KEYED + NOT_KEYED:
        sql, params, _, analyzed = case.values
        with closing(_database(analyzed)) as conn:
            unknown |= {row[1] for row in conn.execute(f"EXPLAIN {sql}", params)} - set(_WRITES)
    assert unknown == set()


def test_an_equality_seek_is_seek_then_bound_then_step_back_to_the_bound() -> None:
    sql = "SELECT * FROM orders WHERE customer = ? AND day = ?"
    with closing(_database(False)) as conn:
        rows = list(conn.execute(f"EXPLAIN {sql}", (1, "d")))
    index = next(r[2] for r in rows if r[1] == "OpenRead" and r[5] == "k(3,,,)")
    seek = next(r for r in rows if r[1] == "SeekGE")
    bound = rows[seek[0] + 1]
    assert (seek[2], seek[4], seek[5]) == (index, 1, "2")  # cursor, first key register, width
    assert (bound[1], bound[2], bound[3], bound[4], bound[5]) == ("IdxGT", index, *seek[3:6])
    step = next(r for r in rows if r[1] == "Next" and r[2] == index)
    assert step[3] == bound[0]  # the loop returns to the bound, not to the seek
    deferred = next(r for r in rows if r[1] == "DeferredSeek")
    assert deferred[2] == index  # the table cursor follows the index's entry
    affinity = next(r for r in rows if r[1] == "Affinity")
    assert (affinity[2], affinity[3], affinity[5]) == (1, 2, "CB")  # NUMERIC, TEXT
    keys = [r for r in rows if r[1] == "Variable"]
    assert [(r[2], r[3]) for r in keys] == [(1, 1), (2, 2)]  # parameter -> key register


def test_between_reuses_the_key_register_for_its_upper_bound() -> None:
    """Why a key register written twice is refused: BETWEEN seeks with one value and
    bounds the loop with another in the same register."""
    with closing(_database(False)) as conn:
        rows = list(
            conn.execute("EXPLAIN SELECT * FROM orders WHERE customer BETWEEN ? AND ?", (1, 2))
        )
        seek = next(r for r in rows if r[1] == "SeekGE")
        bound = next(r for r in rows if r[1] == "IdxGT")
        assert (seek[4], seek[5]) == (bound[4], bound[5])  # same key register and width
        between = rows[seek[0] + 1 : bound[0]]
        rewrites = [r for r in between if r[1] == "Variable" and r[3] == seek[4]]
        assert [r[2] for r in rewrites] == [2]  # the upper bound's parameter, same register
    with closing(_database(False)) as conn:
        sql = "SELECT * FROM orders WHERE customer BETWEEN ? AND ?"
        assert keyed_lookups(conn, sql, (1, 1), read_key_catalog(conn)) == {}


def test_in_lists_fill_an_ephemeral_index_then_loop_over_it() -> None:
    with closing(_database(False)) as conn:
        ops = [r[0] for r in _explain(conn, "SELECT * FROM orders WHERE customer IN (?, 5)", (1,))]
        start = ops.index("OpenEphemeral")
        assert ops[start + 1 : start + 7] == [
            "Variable", "MakeRecord", "IdxInsert", "Integer", "MakeRecord", "IdxInsert",
        ]  # fmt: skip
        loop = ops.index("Rewind")
        assert ops[loop + 1 : loop + 6] == ["Column", "IsNull", "Affinity", "SeekGE", "IdxGT"]


def test_a_second_in_column_early_outs_with_ifnohope_and_seekhit() -> None:
    with closing(_database(False)) as conn:
        ops = [
            r[0]
            for r in _explain(
                conn, "SELECT * FROM orders WHERE customer = ? AND day IN (?, ?)", (1, "a", "b")
            )
        ]
        assert {"SeekHit", "IfNoHope"} <= set(ops)


def test_seekscan_is_a_prefix_of_the_seek_that_jumps_past_the_bound() -> None:
    with closing(_database(True)) as conn:
        rows = list(
            conn.execute(
                "EXPLAIN SELECT * FROM readings WHERE sensor = ? AND seq IN (?, ?, ?)", (1, 1, 2, 3)
            )
        )
        scan = next(r for r in rows if r[1] == "SeekScan")
        assert rows[scan[0] + 1][1] == "SeekGE" and rows[scan[0] + 2][1] == "IdxGT"
        assert (scan[3], scan[6]) == (scan[0] + 3, 0)


def test_a_without_rowid_secondary_index_finds_the_row_by_its_primary_key() -> None:
    with closing(_database(False)) as conn:
        rows = _explain(conn, "SELECT * FROM pairs WHERE v = ?", ("v1",))
        index = next(r for r in rows if r[0] == "OpenRead" and r[4] == "k(3,,,)")
        table = next(r for r in rows if r[0] == "OpenRead" and r[4] == "k(2,,)")
        found = next(r for r in rows if r[0] == "NotFound")
        assert (found[1], found[4]) == (table[1], "2")
        key = [r for r in rows if r[0] == "Column" and r[3] in (found[3], found[3] + 1)]
        assert [r[1] for r in key] == [index[1], index[1]]


def test_key_info_shows_each_fields_collation() -> None:
    with closing(_database(False)) as conn:

        def key_info(sql: str) -> list[str]:
            return [
                r[4]
                for r in _explain(conn, sql, ("x",))
                if r[0] == "OpenRead" and r[4] and r[4].startswith("k(")
            ]

        assert key_info("SELECT * FROM orders WHERE customer = ?") == ["k(3,,,)"]
        assert key_info("SELECT * FROM orders WHERE name = ? COLLATE NOCASE") == ["k(2,NOCASE,)"]
        assert key_info("SELECT * FROM sorted WHERE a = ?") == ["k(3,-,,)"]
        assert key_info("SELECT * FROM pairs WHERE k = ?") == ["k(2,,)"]
    assert _key_collations("k(3,,,)") == ("BINARY",) * 3
    assert _key_collations("k(2,NOCASE,)") == ("NOCASE", "BINARY")
    assert _key_collations("k(3,-,N.RTRIM,B)") == ("BINARY", "RTRIM", "BINARY")
    assert _key_collations("k(2,,)") == ("BINARY", "BINARY")
    assert _key_collations("k(3,,)") is None
    assert _key_collations("7") is None


def test_the_transaction_op_carries_the_schema_version() -> None:
    with closing(_database(False)) as conn:
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        transaction = next(
            r for r in _explain(conn, "SELECT 1 FROM orders") if r[0] == "Transaction"
        )
        assert (transaction[1], transaction[3]) == (0, version)


def test_variables_and_literals_as_explain_shows_them() -> None:
    with closing(_database(False)) as conn:
        names = [
            r[4]
            for r in _explain(
                conn,
                "SELECT * FROM plain WHERE a = ? OR a = :c OR a = @d OR a = $e OR a = ?7",
                (1,) * 7,
            )
            if r[0] == "Variable"
        ]
        assert sorted(names, key=str) == sorted([None, ":c", "@d", "$e", "?7"], key=str)
        shown = {
            r[0]: r[4]
            for sql in ["a = 0.30000000000000004", "a = x'00ff'", "a = 12345678901234"]
            for r in _explain(conn, f"SELECT * FROM plain WHERE {sql}")
            if r[0] in ("Real", "Blob", "Int64")
        }
        assert shown == {"Real": "0.3", "Blob": "", "Int64": "12345678901234"}  # inexact


def test_plan_lines_name_the_index_and_its_equality_terms() -> None:
    with closing(_database(False)) as conn:
        assert _plan(conn, "SELECT * FROM orders WHERE customer = ? AND day = ?", (1, "d")) == [
            "SEARCH orders USING INDEX orders_customer_day (customer=? AND day=?)"
        ]
        assert _plan(conn, "SELECT day FROM orders o WHERE customer = ?", (1,)) == [
            "SEARCH o USING COVERING INDEX orders_customer_day (customer=?)"
        ]
        assert _plan(conn, "SELECT * FROM orders WHERE id = ?", (1,)) == [
            "SEARCH orders USING INTEGER PRIMARY KEY (rowid=?)"
        ]
        assert _plan(conn, "SELECT * FROM pairs WHERE k = ? AND n = ?", ("a", 1)) == [
            "SEARCH pairs USING PRIMARY KEY (k=? AND n=?)"
        ]
        assert _plan(conn, "SELECT * FROM orders WHERE customer = ? AND day > ?", (1, "d")) == [
            "SEARCH orders USING INDEX orders_customer_day (customer=? AND day>?)"
        ]
        left = "SELECT c.id FROM customers c LEFT JOIN orders o ON o.customer = c.id WHERE c.id = ?"
        assert _plan(conn, left, (1,))[-1].endswith("(customer=?) LEFT-JOIN")
        assert _plan(conn, "SELECT * FROM plain WHERE rowid = 0") == [
            "SEARCH plain USING INTEGER PRIMARY KEY (rowid=?)"
        ]
        assert _plan(conn, "SELECT * FROM shadowed WHERE rowid = 0") == [
            "SEARCH shadowed USING INDEX shadowed_rowid (rowid=?)"
        ]  # the probe that tells a column called rowid from the rowid
    with closing(_database(True)) as conn:
        assert _plan(conn, "SELECT * FROM events WHERE at = ?", (1,)) == [
            "SEARCH events USING INDEX events_kind_at (ANY(kind) AND at=?)"
        ]


def test_a_conversion_the_column_does_not_make_refuses_the_key() -> None:
    """A BLOB-affinity column compares '5' and 5 apart; were SQLite to convert the key
    numerically before the seek, the read would find rows the digest does not name. The
    real program has no such op, so one is swapped in for its (no-op) IsNull."""
    conn = sqlite3.connect(":memory:")
    conn.executescript("CREATE TABLE untyped (x); CREATE INDEX untyped_x ON untyped (x);")
    sql = "SELECT * FROM untyped WHERE x = ?"
    catalog = read_key_catalog(conn)
    rows = [tuple(row) for row in conn.execute(f"EXPLAIN {sql}", ("5",))]
    plan = [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("5",))]
    keys = catalog.keys_of("untyped")
    assert keys is not None

    def analysed(program_rows: list[tuple[Any, ...]]) -> KeyedLookup | None:
        program = _Program([_Op.of(row) for row in program_rows], sql)
        cursors = program.cursors_by_table(catalog)["untyped"]
        return _Analysis(conn, program, plan, keys, cursors).lookup()

    assert analysed(rows) is not None
    check = next(row for row in rows if row[1] == "IsNull")
    numeric = (check[0], "Affinity", check[2], 1, 0, "C", 0, None)
    assert analysed([numeric if row is check else row for row in rows]) is None
    conn.close()


def test_a_long_in_list_is_analysed_in_linear_time() -> None:
    """An IN list is as long as a caller makes it: each element's IdxInsert reads the same
    record register, which must not be walked once per element (that took minutes)."""
    count = 20_000
    sql = "SELECT id FROM orders WHERE customer IN (" + ", ".join(["?"] * count) + ")"
    with closing(_database(False)) as conn:
        catalog = read_key_catalog(conn)
        started = time.monotonic()
        assert keyed_lookups(conn, sql, tuple(range(count)), catalog) == {}  # over MAX_KEYS
        assert time.monotonic() - started < 10
