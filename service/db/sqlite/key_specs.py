"""The key columns of each table, and key values normalised as SQLite compares them.

A read that SQLite answers through an equality lookup on a key (the rowid,
or a prefix of an index) depends only on the rows with those key values; a
write reports the old and new key values of every row it changed. The two
sides meet in a digest, so both must name equal values alike: SQLite's rules
are followed exactly, and where they cannot be reproduced for sure a read
value is ``None`` ("not known"), which makes the read fall back to its
table tag. A digest collision only ever drops an extra entry.

Read side: the column's affinity is applied to the bound value first (what
the ``Affinity`` opcode does before a seek), then the value is put in its
comparison class. Write side: the stored values already carry the affinity,
so only the comparison class is taken.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from service.values import SqlValue

_INT64 = 2**63
_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Text SQLite's numeric affinities may turn into a number: anything with a digit
# that is only sign, digits, a point, an exponent and white space. ASCII only: SQLite
# reads no other digits or spaces, while Python's int() and float() take '٣' as 3.
_NUMBER_LIKE = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)
_PLAIN_INTEGER = re.compile(r"[+-]?\d{1,18}", re.ASCII)
_PLAIN_DECIMAL = re.compile(r"[+-]?\d+\.\d+", re.ASCII)
COLLATIONS = frozenset({"BINARY", "NOCASE", "RTRIM"})


class Affinity(StrEnum):
    """A column's type affinity, by SQLite's rules for its declared type."""

    INTEGER = "INTEGER"
    TEXT = "TEXT"
    BLOB = "BLOB"
    REAL = "REAL"
    NUMERIC = "NUMERIC"


class Unknown(Exception):
    """A read value whose normalised form cannot be reproduced exactly."""


def affinity_of(declared_type: str, strict: bool = False) -> Affinity:
    """The affinity SQLite gives a column declared ``declared_type`` (section 3.1 of its
    datatype rules); ``ANY`` in a STRICT table converts nothing."""
    declared = declared_type.upper()
    if strict and declared == "ANY":
        return Affinity.BLOB
    if "INT" in declared:
        return Affinity.INTEGER
    if "CHAR" in declared or "CLOB" in declared or "TEXT" in declared:
        return Affinity.TEXT
    if "BLOB" in declared or not declared:
        return Affinity.BLOB
    if "REAL" in declared or "FLOA" in declared or "DOUB" in declared:
        return Affinity.REAL
    return Affinity.NUMERIC


def apply_affinity(value: SqlValue, affinity: Affinity) -> SqlValue:
    """``value`` as SQLite would compare it against a column of ``affinity``.

    Raises Unknown where the conversion is not reproduced exactly here (a real
    turned into text, text that is a number in a form other than plain digits).
    """
    if value is None or isinstance(value, bytes) or affinity is Affinity.BLOB:
        return value
    if affinity is Affinity.TEXT:
        if isinstance(value, float):
            raise Unknown("a real compared as text")  # SQLite's %!.15g is not Python's
        return str(value) if isinstance(value, int) else value
    if not isinstance(value, str):
        return value
    if not _NUMBER_LIKE.fullmatch(value):
        return value  # stays text: no number SQLite could read in it
    if _PLAIN_INTEGER.fullmatch(value):
        return int(value)
    if _PLAIN_DECIMAL.fullmatch(value) and len(value.strip("+-").replace(".", "")) <= 15:
        # SQLite's own conversion (sqlite3AtoF, in long double) is exact for an integral
        # value but may end one bit away from float()'s for others ('2.157138').
        number = float(value)
        if number.is_integer():
            return number
    raise Unknown("text that SQLite may read as a number")


def comparison_class(value: SqlValue, collation: str) -> tuple[str, object]:
    """``value`` in the form two values SQLite compares as equal share."""
    if value is None:
        return ("n", None)
    if isinstance(value, bool | int):
        return ("i", int(value))
    if isinstance(value, float):
        if value.is_integer() and -_INT64 <= value < _INT64:
            return ("i", int(value))  # SQLite compares integers and reals by value
        return ("r", value.hex())
    if isinstance(value, str):
        if collation == "NOCASE" and "\0" in value:
            # NOCASE compares up to the first NUL only (then the lengths in bytes).
            head = value[: value.index("\0") + 1].translate(_ASCII_FOLD)
            return ("t0", (head, len(value.encode("utf-8", "surrogatepass"))))
        if collation == "NOCASE":
            return ("t", value.translate(_ASCII_FOLD))  # NOCASE folds ASCII only
        if collation == "RTRIM":
            return ("t", value.rstrip(" "))
        return ("t", value)
    return ("b", bytes(value))


@dataclass(frozen=True)
class KeySpec:
    """One way a table is looked up by equality: the rowid or a prefix of an index.

    ``columns`` are declared names (``rowid`` for a rowid with no alias
    column); affinities and collations are those the lookup compares with.
    """

    table: str
    columns: tuple[str, ...]
    affinities: tuple[Affinity, ...]
    collations: tuple[str, ...]

    @functools.cached_property
    def name(self) -> str:
        """How a key tag names the columns: ``customer`` or ``customer,day``."""
        return ",".join(self.columns)

    def read_digest(self, values: Sequence[SqlValue]) -> str:
        """The digest of bound values (affinity applied first); raises Unknown."""
        return self._digest(
            [apply_affinity(v, a) for v, a in zip(values, self.affinities, strict=True)]
        )

    def stored_digest(self, values: Sequence[SqlValue]) -> str:
        """The digest of values as a row stores them."""
        return self._digest(values)

    def _digest(self, values: Sequence[SqlValue]) -> str:
        held = tuple(values)
        integers = [v for v in held if type(v) is int]
        if len(integers) == len(held):  # the common key: what _digest_text makes of it
            text = "|".join(self.collations) + "".join(f"\0i{v:d}" for v in integers)
            return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        if any(isinstance(v, str | bytes) and len(v) > _REMEMBERED_BYTES for v in held):
            return _digest_text(self.collations, held)  # not kept: the cache counts entries
        return _digest_of(self.collations, held)


# Python's equality never joins values SQLite keeps apart (1 == 1.0 == True share a
# comparison class anyway, and text never equals a blob), so digests can be remembered:
# hot keys are digested again on every write and read of them.
def _digest_text(collations: tuple[str, ...], values: tuple[SqlValue, ...]) -> str:
    if len(values) != len(collations):
        raise ValueError("one value per key column")
    # Each part is unambiguous and holds no NUL (repr escapes it in text), so the
    # NUL-joined text names exactly one tuple of comparison classes.
    parts = ["|".join(collations)]
    parts += [_class_text(v, c) for v, c in zip(values, collations, strict=True)]
    text = "\0".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=8).hexdigest()


_digest_of = functools.lru_cache(maxsize=65_536)(_digest_text)
_REMEMBERED_BYTES = 256  # longer key values are digested each time, never kept


def _class_text(value: SqlValue, collation: str) -> str:
    """``comparison_class`` as short text: the same for values SQLite compares as equal."""
    kind, canonical = comparison_class(value, collation)
    if kind == "i":
        return f"i{canonical}"
    if isinstance(canonical, bytes):
        return "b" + canonical.hex()
    return kind + repr(canonical)


@dataclass(frozen=True)
class TableKeys:
    """Every key spec of one table, and whether a write's triggers can watch it."""

    table: str
    specs: tuple[KeySpec, ...]
    rowid_alias: str | None  # the INTEGER PRIMARY KEY column, if there is one
    has_rowid: bool
    replaces: bool  # a constraint declares ON CONFLICT REPLACE: any write may delete rows

    def spec(self, columns: Sequence[str]) -> KeySpec | None:
        """The spec looking up exactly ``columns`` (declared names, any case), if any."""
        wanted = tuple(c.lower() for c in columns)
        return next((s for s in self.specs if tuple(c.lower() for c in s.columns) == wanted), None)


def read_table_keys(raw: sqlite3.Connection) -> dict[str, TableKeys]:
    """The key specs of every ordinary table in ``main`` by lower-cased name; runs on the
    connection's thread outside the guard. Virtual and internal tables have none."""
    listed = raw.execute(
        "SELECT name, type, wr, strict FROM pragma_table_list WHERE schema = 'main'"
    ).fetchall()
    found: dict[str, TableKeys] = {}
    for name, kind, without_rowid, strict in listed:
        name = str(name)
        if kind != "table" or name.startswith(("sqlite_", "_dataaccess_")):
            continue
        found[name.lower()] = _table_keys(raw, name, not without_rowid, bool(strict))
    return found


def _table_keys(raw: sqlite3.Connection, table: str, has_rowid: bool, strict: bool) -> TableKeys:
    columns = raw.execute(
        "SELECT cid, name, type, pk FROM pragma_table_xinfo(?)", (table,)
    ).fetchall()
    by_cid = {
        int(cid): (str(name), affinity_of(str(decl), strict)) for cid, name, decl, _ in columns
    }
    specs: dict[tuple[str, ...], KeySpec] = {}
    alias = _rowid_alias(raw, table, columns) if has_rowid else None
    shadowed = {str(c[1]).lower() for c in columns} & {"rowid", "oid", "_rowid_"}
    if has_rowid and (alias or not shadowed):  # a column called rowid hides the rowid
        rowid = KeySpec(table, (alias or "rowid",), (Affinity.INTEGER,), ("BINARY",))
        specs[rowid.columns + rowid.collations] = rowid
    for index in raw.execute("SELECT name FROM pragma_index_list(?)", (table,)).fetchall():
        for spec in _index_prefixes(raw, table, str(index[0]), by_cid):
            specs.setdefault(spec.columns + spec.collations, spec)
    return TableKeys(table, tuple(specs.values()), alias, has_rowid, _declares_replace(raw, table))


def _rowid_alias(
    raw: sqlite3.Connection, table: str, columns: list[tuple[object, ...]]
) -> str | None:
    """The column that is the rowid: a lone INTEGER PRIMARY KEY (not a DESC one)."""
    keys = [(str(name), str(decl)) for _, name, decl, pk in columns if int(str(pk)) > 0]
    if len(keys) != 1 or keys[0][1].upper() != "INTEGER":
        return None
    # "INTEGER PRIMARY KEY DESC" is not an alias: it has an index of its own.
    indexed = raw.execute(
        "SELECT 1 FROM pragma_index_list(?) WHERE origin = 'pk'", (table,)
    ).fetchone()
    return None if indexed else keys[0][0]


def _index_prefixes(
    raw: sqlite3.Connection, table: str, index: str, by_cid: dict[int, tuple[str, Affinity]]
) -> list[KeySpec]:
    """A spec per prefix of the index's key columns, up to its first expression."""
    rows = raw.execute(
        "SELECT cid, coll, key FROM pragma_index_xinfo(?) ORDER BY seqno", (index,)
    ).fetchall()
    specs: list[KeySpec] = []
    names: list[str] = []
    affinities: list[Affinity] = []
    collations: list[str] = []
    for cid, coll, key in rows:
        collation = str(coll or "BINARY").upper()
        if not key or int(cid) < 0 or collation not in COLLATIONS:
            break  # an expression, the rowid, or a collation not reproduced here
        name, affinity = by_cid[int(cid)]
        names.append(name)
        affinities.append(affinity)
        collations.append(collation)
        specs.append(KeySpec(table, tuple(names), tuple(affinities), tuple(collations)))
    return specs


def _declares_replace(raw: sqlite3.Connection, table: str) -> bool:
    """Whether the table's SQL may declare ON CONFLICT REPLACE (which deletes rows the
    triggers do not see): any word REPLACE counts, as a comment might split the clause."""
    found = raw.execute(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    sql = str(found[0]) if found and found[0] else ""
    return re.search(r"\breplace\b", sql, re.IGNORECASE) is not None


@dataclass(frozen=True)
class KeyCatalog:
    """What both sides of key tracking read from one database's schema at one version.

    ``roots`` names the table (and index, None for the table's own b-tree) each
    b-tree root page belongs to, as a program's ``OpenRead`` names it.
    """

    tables: dict[str, TableKeys]
    roots: dict[int, tuple[str, str | None]]
    schema_version: int

    def keys_of(self, table: str) -> TableKeys | None:
        """The key specs of ``table`` (any case), if it has any."""
        return self.tables.get(table.lower())


EMPTY_CATALOG = KeyCatalog({}, {}, -1)


def read_key_catalog(raw: sqlite3.Connection) -> KeyCatalog:
    """Read the key catalog; runs on the connection's thread outside the guard."""
    version = int(raw.execute("PRAGMA schema_version").fetchone()[0])
    tables = read_table_keys(raw)
    roots: dict[int, tuple[str, str | None]] = {}
    objects = raw.execute(
        "SELECT type, name, tbl_name, rootpage FROM sqlite_schema"
        " WHERE type IN ('table', 'index') AND rootpage > 0"
    ).fetchall()
    for kind, name, table, root in objects:
        declared = tables.get(str(table).lower())
        if declared is not None:
            roots[int(root)] = (declared.table, str(name) if kind == "index" else None)
    return KeyCatalog(tables, roots, version)
