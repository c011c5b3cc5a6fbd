"""SQLite authorizers: default-deny guards for readers and the writer, and what they saw.

SQLite asks the authorizer about every action while it prepares a statement,
so the guard both refuses what a caller may not do and records which tables
a statement reads and writes (through triggers too), by their declared
names, and whether its result depends on the clock or on chance. Prepared
statements are cached per connection and not authorized again, so the
shapes are remembered per SQL text in a ``ShapeMemo`` shared by a
database's connections.
"""

from __future__ import annotations

import re
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass, field

from service.db.sqlite.volatility import (
    CLOCK_FUNCTIONS,
    VOLATILE_FUNCTIONS,
    binds_now,
    sql_reads_now,
)
from service.values import Params

READ_FUNCTIONS = frozenset(
    """
    abs char coalesce concat concat_ws format glob hex ifnull iif instr length like likelihood
    likely lower ltrim max min nullif octet_length printf quote random randomblob replace round
    rtrim sign soundex substr substring trim typeof unhex unicode unlikely upper zeroblob
    date time datetime julianday unixepoch strftime timediff
    avg count group_concat string_agg sum total
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value
    nth_value
    acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log log10
    log2 mod pi pow power radians sin sinh sqrt tan tanh trunc
    json json_array json_array_length json_extract json_insert json_object json_patch
    json_remove json_replace json_set json_type json_valid json_quote json_group_array
    json_group_object jsonb jsonb_array jsonb_extract jsonb_insert jsonb_object jsonb_patch
    jsonb_remove jsonb_replace jsonb_set jsonb_group_array jsonb_group_object
    current_timestamp current_date current_time
    match bm25 highlight snippet matchinfo offsets
    """.split()
)
WRITE_FUNCTIONS = READ_FUNCTIONS | {"last_insert_rowid", "changes", "total_changes"}

_WRITE_ACTIONS = {
    sqlite3.SQLITE_INSERT: "INSERT",
    sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE",
}
_CONTROL_ACTIONS = {sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT}
_INTERNAL_TABLES = frozenset({"sqlite_schema", "sqlite_master", "sqlite_temp_schema"})
# The function the writer's own TEMP triggers call with each changed row's key values
# (key_capture.py); only those triggers may call it.
KEY_FUNCTION = "_dataaccess_key"
_ACTION_NAMES = {
    value: name.removeprefix("SQLITE_")
    for name, value in vars(sqlite3).items()
    if name.startswith("SQLITE_")
    and isinstance(value, int)
    and 0 < value <= 33
    and name not in ("SQLITE_OK", "SQLITE_DENY", "SQLITE_IGNORE")
}


@dataclass(frozen=True)
class StatementShape:
    """The tables one statement reads and writes, as its authorizer saw them (declared
    names), and whether its result may change with no write: ``volatile`` always,
    ``clock`` when a bound value is ``'now'``."""

    reads: frozenset[str]
    writes: frozenset[str]
    volatile: bool = False
    clock: bool = False

    def cacheable(self, params: Params) -> bool:
        """Whether the statement's result, with ``params`` bound, is the same until a write."""
        return not self.volatile and not (self.clock and binds_now(params))


@dataclass(frozen=True)
class Catalog:
    """What a guard knows of its database's schema, read when a connection opens."""

    declared: dict[str, str]  # lower-cased name -> declared name, of every schema object
    tables: frozenset[str]  # user tables and views, the default allowed set
    shadows: dict[str, str]  # lower-cased shadow table -> lower-cased virtual table
    clock_views: frozenset[str]  # lower-cased views whose SQL asks for the current time


@dataclass
class _Sighting:
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)  # called by the statement itself
    seen: bool = False
    own: bool = False  # an action of the statement itself, not only a virtual table's own
    shadows: bool = False  # a virtual table read or wrote its shadow tables
    volatile: bool = False
    refusal: str | None = None


class ShapeMemo:
    """Statement shapes by SQL text, bounded, shared by one database's connections."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._shapes: OrderedDict[str, StatementShape] = OrderedDict()
        self._capacity = capacity

    def get(self, sql: str) -> StatementShape | None:
        """The shape remembered for ``sql``, if any."""
        shape = self._shapes.get(sql)
        if shape is not None:
            self._shapes.move_to_end(sql)
        return shape

    def put(self, sql: str, shape: StatementShape) -> None:
        """Remember the shape of ``sql``."""
        self._shapes[sql] = shape
        self._shapes.move_to_end(sql)
        while len(self._shapes) > self._capacity:
            self._shapes.popitem(last=False)


class Guard:
    """A default-deny authorizer for one connection; ``writer`` allows DML too.

    Used only on its connection's thread: ``begin`` before a statement,
    ``shape_of`` after it, ``trusted`` for the service's own control statements.
    """

    def __init__(self, allowed_tables: frozenset[str], memo: ShapeMemo, *, writer: bool) -> None:
        self.allowed_tables = frozenset(t.lower() for t in allowed_tables)
        self.known_tables: frozenset[str] = frozenset()
        self.catalog = Catalog({}, frozenset(), {}, frozenset())
        self.memo = memo
        self.writer = writer
        self.trusted = False
        # The writer's own key-capture triggers: name -> the (lower-cased) table each watches
        self.key_triggers: dict[str, str] = {}
        # Set by the writer while a job runs in a savepoint of its own (it shares its transaction)
        self.in_savepoint = False
        self._sighting = _Sighting()
        self._named_shadows: frozenset[str] = frozenset()

    def learn(self, catalog: Catalog, allowed: frozenset[str] | None) -> None:
        """Take the schema (``allowed``: the configured tables, or None for every user table)."""
        self.catalog = catalog
        self.allowed_tables = frozenset(t.lower() for t in (allowed or catalog.tables))
        self.known_tables = frozenset(catalog.declared) | _INTERNAL_TABLES | {"sqlite_temp_master"}

    def begin(self, sql: str) -> None:
        """Start watching a new statement, ``sql`` as the caller wrote it."""
        self._sighting = _Sighting()
        shadows = self.catalog.shadows
        # A virtual table reads its shadow tables through statements of its own; a
        # caller's statement that names one is refused.
        self._named_shadows = _named(sql, shadows) if shadows else frozenset()

    @property
    def refusal(self) -> str | None:
        """Why the last statement was refused, if it was."""
        return self._sighting.refusal

    def shape_of(self, sql: str) -> StatementShape | None:
        """The shape of the statement just prepared, or remembered from an earlier prepare."""
        sighting = self._sighting
        if not sighting.seen:
            return self.memo.get(sql)
        if sighting.shadows and not sighting.own:
            # A cached statement ran and its virtual table prepared statements of its own:
            # they say nothing of the functions it calls, so never cached if not known.
            known = self.memo.get(sql)
            reads, writes = frozenset(sighting.reads), frozenset(sighting.writes)
            return known or StatementShape(reads, writes, volatile=True)
        clock = bool(sighting.functions & CLOCK_FUNCTIONS)
        volatile = sighting.volatile or bool(sighting.functions & VOLATILE_FUNCTIONS)
        shape = StatementShape(
            frozenset(sighting.reads),
            frozenset(sighting.writes),
            volatile=volatile or (clock and sql_reads_now(sql)),
            clock=clock,
        )
        self.memo.put(sql, shape)
        return shape

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, inner: str | None
    ) -> int:
        if self.trusted:
            return sqlite3.SQLITE_OK
        self._sighting.seen = True
        if inner is not None and self._key_capture(action, arg1, arg2, inner):
            return sqlite3.SQLITE_OK  # the service's own bookkeeping: not the statement's shape
        refusal = self._judge(action, arg1, arg2, inner)
        if refusal is None:
            return sqlite3.SQLITE_OK
        self._sighting.refusal = refusal
        return sqlite3.SQLITE_DENY

    def _key_capture(self, action: int, arg1: str | None, arg2: str | None, inner: str) -> bool:
        """Whether this is an action of one of the writer's key-capture triggers, which
        read the watched table's OLD and NEW columns and call KEY_FUNCTION, nothing else."""
        watched = self.key_triggers.get(inner)
        if watched is None:
            return False
        if action == sqlite3.SQLITE_FUNCTION:
            return arg2 == KEY_FUNCTION
        if action == sqlite3.SQLITE_READ:
            return (arg1 or "").lower() == watched
        return action == sqlite3.SQLITE_SELECT

    def _judge(
        self, action: int, arg1: str | None, arg2: str | None, inner: str | None
    ) -> str | None:
        if action == sqlite3.SQLITE_SELECT or action == sqlite3.SQLITE_RECURSIVE:
            return None
        if action == sqlite3.SQLITE_READ:
            if not arg2 and (arg1 or "").lower() not in self.known_tables:
                return None  # count(*) over a CTE: its rows come from reads already judged
            return self._judge_table(arg1, self._sighting.reads, "read")
        if action == sqlite3.SQLITE_FUNCTION:
            self._sighting.own = True
            return self._judge_function((arg2 or "").lower(), inner)
        if self.writer and action in _WRITE_ACTIONS:
            return self._judge_table(arg1, self._sighting.writes, _WRITE_ACTIONS[action])
        if action in _WRITE_ACTIONS:
            return f"Query is read-only: {_WRITE_ACTIONS[action]} is refused (use BatchUpdate)"
        if action in _CONTROL_ACTIONS:
            return "transaction control is the service's own"
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() == "data_version" and not arg2:
            return None  # read-only; FTS5 asks it whether another connection wrote
        return f"{_ACTION_NAMES.get(action, str(action))} is not allowed"

    def _judge_function(self, name: str, inner: str | None) -> str | None:
        if name not in (WRITE_FUNCTIONS if self.writer else READ_FUNCTIONS):
            return f"function {name}() is not allowed"
        if inner is None:
            self._sighting.functions.add(name)
        elif name in VOLATILE_FUNCTIONS or inner.lower() in self.catalog.clock_views:
            self._sighting.volatile = True  # called by a view (or trigger): its SQL is not ours
        return None

    def _judge_table(self, table: str | None, into: set[str], verb: str) -> str | None:
        name = (table or "").lower()
        if name.startswith("sqlite_"):
            return f"{verb} of table {table!r} is not allowed"
        if table is not None and name in self.allowed_tables:
            self._sighting.own = True
        elif self._is_own_shadow(name):
            self._sighting.shadows = True
            name = self.catalog.shadows[name]  # tagged as its virtual table, which is allowed
        else:
            return f"{verb} of table {table!r} is not allowed"
        # SQLite reports a table as the statement spelt it when no column is used
        # (count(*) FROM PUB); tags need the one name writes are tagged with.
        into.add(self.catalog.declared.get(name, name))
        return None

    def _is_own_shadow(self, name: str) -> bool:
        """A shadow table of an allowed virtual table, used by that table, not named by SQL."""
        owner = self.catalog.shadows.get(name)
        return owner in self.allowed_tables and name not in self._named_shadows


def read_catalog(raw: sqlite3.Connection) -> Catalog:
    """Read what a guard needs from the schema; runs on the connection's thread."""
    objects = raw.execute("SELECT type, name, sql FROM sqlite_schema").fetchall()
    declared = {str(name).lower(): str(name) for _, name, _ in objects}
    listed = raw.execute("SELECT name, type FROM pragma_table_list WHERE schema = 'main'")
    kinds = {str(name).lower(): str(kind) for name, kind in listed.fetchall()}
    virtual = [name for name, kind in kinds.items() if kind == "virtual"]
    shadows = {
        name: max((o for o in virtual if name.startswith(o + "_")), key=len, default="")
        for name, kind in kinds.items()
        if kind == "shadow"
    }
    tables = frozenset(
        str(name)
        for kind, name, _ in objects
        if kind in ("table", "view")
        and str(name).lower() not in shadows
        and not str(name).lower().startswith("sqlite_")
        and str(name) != "schema_migrations"
        and not str(name).startswith("_dataaccess_")
    )
    clock_views = frozenset(
        str(name).lower() for kind, name, sql in objects if kind == "view" and _asks_now(sql)
    )
    return Catalog(declared, tables, shadows, clock_views)


def _asks_now(sql: object) -> bool:
    return isinstance(sql, str) and sql_reads_now(sql)


def _named(sql: str, shadows: dict[str, str]) -> frozenset[str]:
    """The shadow tables ``sql`` names (a mention inside a literal counts too: refused is safe)."""
    lowered = sql.lower()
    return frozenset(
        name for name in shadows if re.search(rf"(?<![\w$]){re.escape(name)}(?![\w$])", lowered)
    )
