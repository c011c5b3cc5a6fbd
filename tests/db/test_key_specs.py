"""Key digests against SQLite itself: a bound read value and a stored value that SQLite
compares as equal must share a digest, or a write would miss a cached read.

For each affinity and collation (with and without an index, as ``=`` and ``IS``), every
value of ``VALUES`` is stored, then every value is bound in ``WHERE col = ?``: each row
SQLite finds must have the read value's digest, unless the read side said ``Unknown``
(the read then falls back to its table tag). The values a normal caller sends (plain
integers, plain text, reals for a numeric column) must never be ``Unknown``.
"""

from __future__ import annotations

import random
import sqlite3

import pytest

from service.db.sqlite.key_specs import (
    Affinity,
    KeySpec,
    Unknown,
    _digest_text,
    affinity_of,
    apply_affinity,
    comparison_class,
    read_key_catalog,
)
from service.values import SqlValue

VALUES: list[SqlValue] = [
    *(0, 5, -5, 7, 1000, 2**31, 2**62, -(2**63), 2**63 - 1),
    *(5.0, 5.5, -0.0, 0.1, 1e300, -1e-300, float("inf"), float("-inf"), 2.0**63, -(2.0**63)),
    *("5", "05", "+5", "-5", "-0", "00", "007", " 5", "5 ", "\t5", "5\n", "5.0", "5.50", "-5.0"),
    *("5.5", "0.1", ".5", "5.", "1e3", "5e0", "1e", "1E3", "0x10", "0X1F", "inf", "NaN"),
    *("9223372036854775807", "9223372036854775808", "123456789012345678", "1234567890123456789"),
    *("0.1234567890123456", "2.157138", "-1.28685832", "1000000000000000.0"),
    *("٣", "١٢", "٣.٥", "5\u00a0", "\u00a05", "５"),  # non-ASCII digits and spaces: text
    *("abc", "ABC", "Abc", "abc ", "ABC  ", " abc", "", " ", "é", "É", "straße", "STRASSE"),
    *("a\x00b", "A\x00c", "a\x00", "a\x00b ", "\x00"),
    *(b"", b"5", b"abc", b"ABC", b"\x00", b"abc "),
    None,
]
DECLARED = {
    Affinity.INTEGER: "INTEGER",
    Affinity.TEXT: "TEXT",
    Affinity.BLOB: "",
    Affinity.REAL: "REAL",
    Affinity.NUMERIC: "NUMERIC",
}
COLLATIONS = ("BINARY", "NOCASE", "RTRIM")


def _column_table(affinity: Affinity, collation: str, indexed: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        f"CREATE TABLE t (id INTEGER PRIMARY KEY, col {DECLARED[affinity]} COLLATE {collation})"
    )
    if indexed:
        conn.execute("CREATE INDEX t_col ON t (col)")
    conn.executemany("INSERT INTO t (col) VALUES (?)", [(v,) for v in VALUES])
    return conn


@pytest.mark.parametrize("indexed", [True, False], ids=["index", "scan"])
@pytest.mark.parametrize("collation", COLLATIONS)
@pytest.mark.parametrize("affinity", list(Affinity))
def test_a_read_digest_equals_the_digest_of_every_row_sqlite_finds(
    affinity: Affinity, collation: str, indexed: bool
) -> None:
    conn = _column_table(affinity, collation, indexed)
    spec = KeySpec("t", ("col",), (affinity,), (collation,))
    if indexed:  # the catalog reads the same spec from the schema
        keys = read_key_catalog(conn).keys_of("t")
        assert keys is not None and spec in keys.specs
    stored = dict(conn.execute("SELECT id, col FROM t").fetchall())
    missed = []
    for value in VALUES:
        try:
            digest = spec.read_digest([value])
        except Unknown:
            continue
        for operator in ("=", "IS"):
            found = conn.execute(f"SELECT id FROM t WHERE col {operator} ?", (value,))
            for (row,) in found.fetchall():
                if spec.stored_digest([stored[row]]) != digest:
                    missed.append((operator, value, stored[row]))
    assert missed == []


def _normal_values(affinity: Affinity) -> list[SqlValue]:
    plain: list[SqlValue] = [0, 5, -5, 2**62, -(2**63), 2**63 - 1, None, b"", b"\x00x"]
    plain += ["", "abc", "ABC", "a b ", "é", "straße", "٣", "0x10", "user@example.com"]
    plain += ["5", "05", "-5", "123456789012345678", "5.0", "100.00"]
    if affinity is not Affinity.TEXT:
        plain += [5.0, 5.5, -0.0, 0.1, 1e300, float("inf"), 2.0**63]
    return plain


@pytest.mark.parametrize("collation", COLLATIONS)
@pytest.mark.parametrize("affinity", list(Affinity))
def test_values_a_normal_caller_sends_are_never_unknown(affinity: Affinity, collation: str) -> None:
    spec = KeySpec("t", ("col",), (affinity,), (collation,))
    for value in _normal_values(affinity):
        spec.read_digest([value])  # raises Unknown if not


@pytest.mark.parametrize(
    ("value", "affinity"),
    [
        (5.5, Affinity.TEXT),  # SQLite writes the real as text its own way
        ("1e3", Affinity.INTEGER),
        (" 5", Affinity.NUMERIC),
        ("5.5", Affinity.REAL),  # sqlite3AtoF may land a bit away from float()
        ("2.157138", Affinity.NUMERIC),
        ("9223372036854775807", Affinity.INTEGER),
    ],
)
def test_unknown_where_sqlite_is_not_reproduced(value: SqlValue, affinity: Affinity) -> None:
    with pytest.raises(Unknown):
        apply_affinity(value, affinity)


def _converted(affinity: Affinity, values: list[SqlValue]) -> list[SqlValue]:
    """The values as SQLite stores them in a column of ``affinity``."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE t (col {DECLARED[affinity]})")
    conn.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    return [row[0] for row in conn.execute("SELECT col FROM t ORDER BY rowid")]


# Not REAL: a REAL column stores 2**63 - 1 and '123456789012345678' as (rounded) reals
# but compares them as the integers they are; the first test covers its comparisons.
@pytest.mark.parametrize("affinity", [a for a in Affinity if a is not Affinity.REAL])
def test_apply_affinity_converts_as_sqlite_stores(affinity: Affinity) -> None:
    mine: list[tuple[SqlValue, SqlValue]] = []
    for value in VALUES:
        try:
            mine.append((value, apply_affinity(value, affinity)))
        except Unknown:
            pass
    theirs = _converted(affinity, [value for value, _ in mine])
    for (value, converted), stored in zip(mine, theirs, strict=True):
        assert comparison_class(converted, "BINARY") == comparison_class(stored, "BINARY"), value


def test_decimal_text_is_converted_as_sqlite_does_or_unknown() -> None:
    """Random decimal text, bound to a numeric column: sqlite3AtoF computes in long
    double, so only values it provably agrees on are converted (1 in ~27000 differs)."""
    rnd = random.Random(20240611)
    texts = []
    for _ in range(60_000):
        digits = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(1, 15)))
        point = rnd.randint(1, len(digits))
        texts.append(("-" if rnd.random() < 0.3 else "") + digits[:point] + "." + digits[point:])
    texts = [t if not t.endswith(".") else t + "0" for t in texts]
    texts += ["2.157138", "-1.28685832", "-37565.62606323", "5.000", "-0.0", "120.00"]
    stored = _converted(Affinity.REAL, list(texts))
    converted = 0
    for text, value in zip(texts, stored, strict=True):
        try:
            mine = apply_affinity(text, Affinity.REAL)
        except Unknown:
            continue
        converted += 1
        assert comparison_class(mine, "BINARY") == comparison_class(value, "BINARY"), text
    assert converted > 0


def test_comparison_classes_are_sqlites_equality() -> None:
    """Two bound values (no affinity) are equal under a collation exactly when their
    comparison classes are."""
    conn = sqlite3.connect(":memory:")
    values = [v for v in VALUES if v is not None]
    wrong = []
    for collation in COLLATIONS:
        sql = f"SELECT ? = ? COLLATE {collation}"
        for left in values:
            for right in values:
                equal = conn.execute(sql, (left, right)).fetchone()[0] == 1
                same = comparison_class(left, collation) == comparison_class(right, collation)
                if equal != same:
                    wrong.append((collation, left, right, equal))
    assert wrong == []


def test_nocase_stops_at_the_first_nul_as_sqlite_does() -> None:
    conn = sqlite3.connect(":memory:")
    assert conn.execute("SELECT 'a' || char(0) || 'b' = 'A' || char(0) || 'c' COLLATE NOCASE")
    spec = KeySpec("t", ("c",), (Affinity.TEXT,), ("NOCASE",))
    assert spec.read_digest(["a\x00b"]) == spec.stored_digest(["A\x00c"])
    assert spec.read_digest(["a\x00b"]) != spec.stored_digest(["a\x00bc"])  # lengths differ
    assert spec.read_digest(["ab"]) != spec.stored_digest(["a\x00"])


@pytest.mark.parametrize(
    ("declared", "affinity"),
    [
        ("INT", Affinity.INTEGER),
        ("INTEGER", Affinity.INTEGER),
        ("BIGINT", Affinity.INTEGER),
        ("POINT", Affinity.INTEGER),  # "INT" anywhere, as SQLite's rule says
        ("VARCHAR(10)", Affinity.TEXT),
        ("CLOB", Affinity.TEXT),
        ("TEXT", Affinity.TEXT),
        ("BLOB", Affinity.BLOB),
        ("", Affinity.BLOB),
        ("REAL", Affinity.REAL),
        ("FLOAT", Affinity.REAL),
        ("DOUBLE PRECISION", Affinity.REAL),
        ("NUMERIC", Affinity.NUMERIC),
        ("DECIMAL(10,2)", Affinity.NUMERIC),
        ("BOOLEAN", Affinity.NUMERIC),
        ("STRING", Affinity.NUMERIC),
    ],
)
def test_affinity_of_declared_types_as_sqlite_stores(declared: str, affinity: Affinity) -> None:
    assert affinity_of(declared) is affinity
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE t (col {declared})")
    conn.executemany("INSERT INTO t VALUES (?)", [("5",), (5,), (5.0,), ("x",)])
    theirs = [row[0] for row in conn.execute("SELECT typeof(col) FROM t ORDER BY rowid")]
    expected = {
        Affinity.INTEGER: ["integer", "integer", "integer", "text"],
        Affinity.NUMERIC: ["integer", "integer", "integer", "text"],
        Affinity.REAL: ["real", "real", "real", "text"],
        Affinity.TEXT: ["text", "text", "text", "text"],
        Affinity.BLOB: ["text", "integer", "real", "text"],
    }
    assert theirs == expected[affinity]


def test_catalog_specs_of_a_schema() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(
        """
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, day TEXT,
                             name TEXT COLLATE NOCASE);
        CREATE INDEX orders_customer_day ON orders (customer, day);
        CREATE INDEX orders_name ON orders (name);
        CREATE INDEX orders_lower ON orders (lower(day), customer);
        CREATE TABLE plain (a, b);
        CREATE TABLE pairs (k TEXT, n INTEGER, v, PRIMARY KEY (k, n)) WITHOUT ROWID;
        CREATE TABLE shadowed (rowid INTEGER, v TEXT);
        """
    )
    catalog = read_key_catalog(conn)
    assert catalog.schema_version == conn.execute("PRAGMA schema_version").fetchone()[0]
    orders = catalog.keys_of("ORDERS")
    assert orders is not None and orders.rowid_alias == "id"
    assert orders.specs[0].columns == ("id",)
    assert {(s.columns, s.collations) for s in orders.specs} == {
        (("id",), ("BINARY",)),
        (("customer",), ("BINARY",)),
        (("customer", "day"), ("BINARY", "BINARY")),
        (("name",), ("NOCASE",)),  # the column's collation, taken by its index
    }  # an expression index has no spec: its key is not a column
    plain = catalog.keys_of("plain")
    assert plain is not None and [s.columns for s in plain.specs] == [("rowid",)]
    pairs = catalog.keys_of("pairs")
    assert pairs is not None and not pairs.has_rowid
    assert [s.columns for s in pairs.specs] == [("k",), ("k", "n")]
    shadowed = catalog.keys_of("shadowed")
    assert shadowed is not None and shadowed.specs == ()  # "rowid" is a column there
    roots = {name: root for root, (_, name) in catalog.roots.items() if name}
    assert set(roots) == {"orders_customer_day", "orders_name", "orders_lower"}


@pytest.mark.parametrize("values", [(0,), (-5,), (2**63 - 1,), (-(2**63),), (1, 2), (7, -8, 9)])
def test_integer_keys_digest_exactly_as_the_general_path(values: tuple[int, ...]) -> None:
    collations = ("NOCASE", "BINARY", "RTRIM")[: len(values)]
    spec = KeySpec(
        "t",
        tuple(f"c{i}" for i in range(len(values))),
        (Affinity.INTEGER,) * len(values),
        collations,
    )
    assert spec.stored_digest(values) == _digest_text(collations, values)
    assert spec.stored_digest(values) == spec.stored_digest(tuple(float(v) for v in values)) or any(
        abs(v) >= 2**53 for v in values
    )
