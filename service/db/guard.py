"""SQLite authorizers: default-deny guards for readers and the writer, and what they saw.

SQLite asks the authorizer about every action while it prepares a statement,
so the guard both refuses what a caller may not do and records which tables
a statement reads and writes (through triggers too). Prepared statements are
cached per connection and not authorized again, so the shapes are remembered
per SQL text in a ``ShapeMemo`` shared by a database's connections.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from dataclasses import dataclass, field

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
    """.split()
)
WRITE_FUNCTIONS = READ_FUNCTIONS | {"last_insert_rowid", "changes", "total_changes"}

_WRITE_ACTIONS = {
    sqlite3.SQLITE_INSERT: "INSERT",
    sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE",
}
_CONTROL_ACTIONS = {sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT}
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
    """The tables one statement reads and writes, as its authorizer saw them."""

    reads: frozenset[str]
    writes: frozenset[str]


@dataclass
class _Sighting:
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    seen: bool = False
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
        self.memo = memo
        self.writer = writer
        self.trusted = False
        self._sighting = _Sighting()

    def begin(self) -> None:
        """Start watching a new statement."""
        self._sighting = _Sighting()

    @property
    def refusal(self) -> str | None:
        """Why the last statement was refused, if it was."""
        return self._sighting.refusal

    def shape_of(self, sql: str) -> StatementShape | None:
        """The shape of the statement just prepared, or remembered from an earlier prepare."""
        sighting = self._sighting
        if not sighting.seen:
            return self.memo.get(sql)
        shape = StatementShape(frozenset(sighting.reads), frozenset(sighting.writes))
        self.memo.put(sql, shape)
        return shape

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _inner: str | None
    ) -> int:
        if self.trusted:
            return sqlite3.SQLITE_OK
        self._sighting.seen = True
        refusal = self._judge(action, arg1, arg2)
        if refusal is None:
            return sqlite3.SQLITE_OK
        self._sighting.refusal = refusal
        return sqlite3.SQLITE_DENY

    def _judge(self, action: int, arg1: str | None, arg2: str | None) -> str | None:
        if action == sqlite3.SQLITE_SELECT or action == sqlite3.SQLITE_RECURSIVE:
            return None
        if action == sqlite3.SQLITE_READ:
            if not arg2 and (arg1 or "").lower() not in self.known_tables:
                return None  # count(*) over a CTE: its rows come from reads already judged
            return self._judge_table(arg1, self._sighting.reads, "read")
        if action == sqlite3.SQLITE_FUNCTION:
            allowed = WRITE_FUNCTIONS if self.writer else READ_FUNCTIONS
            return None if (arg2 or "").lower() in allowed else f"function {arg2}() is not allowed"
        if self.writer and action in _WRITE_ACTIONS:
            return self._judge_table(arg1, self._sighting.writes, _WRITE_ACTIONS[action])
        if action in _WRITE_ACTIONS:
            return f"Query is read-only: {_WRITE_ACTIONS[action]} is refused (use BatchUpdate)"
        if action in _CONTROL_ACTIONS:
            return "transaction control is the service's own"
        return f"{_ACTION_NAMES.get(action, str(action))} is not allowed"

    def _judge_table(self, table: str | None, into: set[str], verb: str) -> str | None:
        name = (table or "").lower()
        if table is None or name.startswith("sqlite_") or name not in self.allowed_tables:
            return f"{verb} of table {table!r} is not allowed"
        into.add(table)
        return None
