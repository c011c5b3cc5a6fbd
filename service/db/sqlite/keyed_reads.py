"""Which tables a read looks up only by key, as SQLite's own program for it shows.

A cached read is tagged with every table it reads, so any write to the table
drops it. When a statement reads a table only through equality lookups on a
key (the rowid, or a prefix of an index) whose values come from its
parameters or literals, its result depends only on the rows with those key
values, and it can be tagged by digests of them instead (``KeySpec``).

SQLite decides how a statement reads each table, so the answer is read from
its program (``EXPLAIN``) and checked against its plan (``EXPLAIN QUERY
PLAN``). Neither is a stable interface: only the shapes that
``tests/db/test_keyed_reads.py`` pins are trusted, and anything else (an
opcode not listed here, a cursor used in a way not recognised, a key value
computed rather than bound) leaves the table unkeyed, to fall back to its
table tag. A missed lookup costs hit rate; a wrong one would serve stale rows.

What makes a table keyed (every cursor on it must fit; see ``_Analysis``):

* Rowid: one table cursor, positioned only by ``SeekRowid``/``NotExists``.
* Index (or a WITHOUT ROWID table's primary key): one index cursor, positioned
  only by one ``SeekGE`` (``SeekLE``) immediately followed by ``IdxGT``
  (``IdxLT``) on the same key registers, the loop's ``Next`` (``Prev``)
  returning to that bound: together they visit exactly the entries equal to
  the key. A table cursor beside it may only follow the index's entry
  (``DeferredSeek``, or ``NotFound`` on the index's primary-key columns for
  WITHOUT ROWID).
* Key registers: written only by ``Variable`` or a literal (or copies of
  one), or read from an IN list's ephemeral table filled only with such
  values. Parameters and literals do not change while the statement runs, so
  a key written once holds the same value at the seek and at every bound check.
* Affinity: SQLite may convert a key before the seek; any conversion it
  applies must be the column's own (what ``KeySpec.read_digest`` applies).
  Stored values already carry the column's affinity, so a conversion
  SQLite skips can only make the seek find fewer rows, never other ones.
* Collation: the spec's must be the index's, as the cursor's key info shows it;
  the columns are the ones the plan line names for that index.

Nothing is keyed in a program prepared against another schema version than the
catalog's (its root pages would name other tables), nor in one that reads a
virtual table (which may read any table through statements of its own).
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from service.db.sqlite.key_specs import Affinity, KeyCatalog, KeySpec, TableKeys, Unknown
from service.values import Params, SqlValue

# More looked-up keys than this (an IN list, or a product of two) is not keyed.
MAX_KEYS = 1000


@dataclass(frozen=True)
class Param:
    """A bound parameter: its 1-based index in the statement, and its name as written
    (``:cust``, ``@x``, ``$y``, ``?3``), or None for a bare ``?``."""

    index: int
    name: str | None


@dataclass(frozen=True)
class Literal:
    """A value written in the statement's text."""

    value: SqlValue


Source = Param | Literal


class _Missing:
    """A parameter the request did not bind."""


_MISSING = _Missing()


@dataclass(frozen=True)
class KeyedLookup:
    """How a statement reads one table: only the rows whose ``spec`` columns equal one
    of ``values`` (one tuple of sources per looked-up key)."""

    spec: KeySpec
    values: tuple[tuple[Source, ...], ...]

    def digests(self, params: Params) -> tuple[str, ...] | None:
        """``spec.read_digest`` of each value tuple with ``params`` bound; None when a
        value is not reproduced exactly (``Unknown``) or a parameter is missing."""
        found: dict[str, None] = {}
        for sources in self.values:
            values: list[SqlValue] = []
            for source in sources:
                value = source.value if isinstance(source, Literal) else _bound(source, params)
                if isinstance(value, _Missing):
                    return None
                values.append(value)
            try:
                found[self.spec.read_digest(values)] = None
            except Unknown:
                return None
        return tuple(found)


def _bound(param: Param, params: Params) -> SqlValue | _Missing:
    """The value bound to ``param`` as Python's sqlite3 binds it: a dict by the name
    without its prefix character, a sequence by position."""
    if isinstance(params, dict):
        if param.name is None or param.name[1:] not in params:
            return _MISSING
        return params[param.name[1:]]
    if not 1 <= param.index <= len(params):
        return _MISSING
    return params[param.index - 1]


def keyed_lookups(
    raw: sqlite3.Connection, sql: str, params: Params, catalog: KeyCatalog
) -> dict[str, KeyedLookup]:
    """Declared table name -> its keyed lookup, for each table the statement reads only
    through key lookups.

    Runs on the reader's thread after ``sql`` was prepared under the guard (which lets
    ``EXPLAIN`` pass). ``params`` only prepare it: the answer depends on the SQL text and
    the schema alone. Any doubt, including SQLite refusing the statement, keys nothing.
    """
    try:
        rows = raw.execute(f"EXPLAIN {sql}", params).fetchall()
        plan = [str(row[3]) for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        program = _Program([_Op.of(row) for row in rows], sql)
    except (sqlite3.Error, _Unsupported, ValueError):
        return {}
    if program.schema_cookie() != catalog.schema_version or program.has_virtual_tables():
        return {}  # a stale catalog names pages wrongly; a virtual table reads what it likes
    found: dict[str, KeyedLookup] = {}
    for table, cursors in program.cursors_by_table(catalog).items():
        keys = catalog.keys_of(table)
        if keys is None:
            continue
        try:
            lookup = _Analysis(raw, program, plan, keys, cursors).lookup()
        except (sqlite3.Error, _Unsupported, ValueError):
            lookup = None
        if lookup is not None:
            found[keys.table] = lookup
    return found


class _Unsupported(Exception):
    """A program with something this module does not know: nothing in it is keyed."""


@dataclass(frozen=True)
class _Op:
    """One row of ``EXPLAIN``."""

    addr: int
    opcode: str
    p1: int
    p2: int
    p3: int
    p4: str | None
    p5: int

    @classmethod
    def of(cls, row: Sequence[object]) -> _Op:
        addr, opcode, p1, p2, p3, p4, p5 = row[:7]
        return cls(
            int(str(addr)),
            str(opcode),
            int(str(p1)),
            int(str(p2)),
            int(str(p3)),
            None if p4 is None else str(p4),
            int(str(p5)),
        )


def _nothing(op: _Op) -> tuple[int, ...]:
    return ()


def _reg_p1(op: _Op) -> tuple[int, ...]:
    return (op.p1,)


def _reg_p2(op: _Op) -> tuple[int, ...]:
    return (op.p2,)


def _reg_p3(op: _Op) -> tuple[int, ...]:
    return (op.p3,)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# The registers each opcode this module knows writes. An opcode not listed makes the
# whole program unsupported: its effect on registers and cursors would be a guess.
# Affinity and MustBeInt convert in place; they are followed apart (``_Program.marks``).
_WRITES: dict[str, Callable[[_Op], Iterable[int]]] = {
    **dict.fromkeys(
        _words(
            """
            Init Goto Halt HaltIfNull Transaction TableLock ResultRow Return EndCoroutine
            Once If IfNot IsNull NotNull IsType Eq Ne Lt Le Gt Ge ElseEq Jump Compare
            Permutation Noop Explain Trace Abortable ReleaseReg Expire Filter
            OpenRead ReopenIdx OpenWrite OpenEphemeral OpenAutoindex OpenPseudo OpenDup
            SorterOpen VOpen Close NullRow Rewind Last Next Prev SorterSort Sort SorterNext
            SeekGE SeekGT SeekLE SeekLT SeekRowid NotExists SeekHit SeekEnd SeekScan
            IdxGE IdxGT IdxLE IdxLT IfNoHope NotFound Found NoConflict DeferredSeek
            FinishSeek IdxInsert SorterInsert Insert Delete IdxDelete VFilter VNext IfEmpty
            IfSmaller ResetSorter SequenceTest IfNotOpen ColumnsUsed CursorHint
            SorterCompare Affinity MustBeInt
            """
        ),
        _nothing,
    ),
    **dict.fromkeys(
        _words(
            """
            Integer Int64 Real String8 String Blob Variable SCopy IntCopy Not BitNot IsTrue
            ZeroOrNull OffsetLimit BeginSubrtn Rowid IdxRowid Count Sequence RowData
            SorterData VRowid Pagecount MaxPgcnt
            """
        ),
        _reg_p2,
    ),
    **dict.fromkeys(
        _words(
            """
            Column Offset VColumn IfNullRow Add Subtract Multiply Divide Remainder Concat
            BitAnd BitOr ShiftLeft ShiftRight And Or Function PureFunc AggValue AggStep
            AggStep1 AggInverse MakeRecord
            """
        ),
        _reg_p3,
    ),
    **dict.fromkeys(
        _words(
            """
            AddImm Cast RealAffinity IfPos DecrJumpZero IfNotZero Gosub Yield InitCoroutine
            SoftNull RowSetAdd RowSetTest FilterAdd MemMax AggFinal
            """
        ),
        _reg_p1,
    ),
    "Null": lambda op: range(op.p2, max(op.p2, op.p3) + 1),
    "Copy": lambda op: range(op.p2, op.p2 + op.p3 + 1),
    "Move": lambda op: (*range(op.p1, op.p1 + op.p3), *range(op.p2, op.p2 + op.p3)),
    "NewRowid": lambda op: (op.p2, op.p3) if op.p3 else (op.p2,),
    "RowSetRead": lambda op: (op.p1, op.p3),
    "CollSeq": lambda op: (op.p1,) if op.p1 else (),
}
# Opcodes whose P1 is a cursor (DeferredSeek names its table cursor in P3 too, and
# OpenDup its original in P2).
_CURSOR_P1 = frozenset(
    _words(
        """
        OpenRead ReopenIdx OpenWrite OpenEphemeral OpenAutoindex OpenPseudo OpenDup
        SorterOpen VOpen Close NullRow Rewind Last Next Prev SorterSort Sort SorterNext
        SeekGE SeekGT SeekLE SeekLT SeekRowid NotExists SeekHit SeekEnd IdxGE IdxGT IdxLE
        IdxLT IfNoHope NotFound Found NoConflict DeferredSeek FinishSeek IdxInsert
        SorterInsert Insert Delete IdxDelete VFilter VNext IfEmpty IfSmaller ResetSorter
        SequenceTest IfNotOpen ColumnsUsed CursorHint SorterCompare Column Rowid IdxRowid
        Offset Count Sequence RowData SorterData VColumn VRowid IfNullRow NewRowid
        """
    )
)
_OPENS = frozenset(
    "OpenRead ReopenIdx OpenWrite OpenEphemeral OpenAutoindex OpenPseudo OpenDup SorterOpen"
    " VOpen".split()
)
# Uses of a table's cursor that read the row it is on (or none) and move nothing.
_ROW_READS = frozenset(
    "OpenRead ReopenIdx Column Rowid IdxRowid NullRow IfNullRow Close Offset FinishSeek"
    " ColumnsUsed CursorHint SeekHit".split()
)
# Uses of an IN list's ephemeral table that read it without changing what it holds.
_EPHEMERAL_READS = frozenset(
    "OpenEphemeral NullRow Rewind Last Next Prev Column Close Found NotFound".split()
)
_EPHEMERAL_MOVES = frozenset("Rewind Last Next Prev Found NotFound".split())
_OPFLAG_P2ISREG = 0x10  # the root page of an Open* is in a register
# Affinity characters (SQLITE_AFF_*) a key may be converted with, by its column's affinity:
# BLOB is no conversion; the three numeric ones convert alike for comparison.
_NUMERIC = frozenset("ACDE")
_ALLOWED_CONVERSIONS = {
    Affinity.BLOB: frozenset("A"),
    Affinity.TEXT: frozenset("AB"),
    Affinity.INTEGER: _NUMERIC,
    Affinity.REAL: _NUMERIC,
    Affinity.NUMERIC: _NUMERIC,
}
_MUST_BE_INT = "D"  # MustBeInt converts like INTEGER affinity (or gives up)


class _Program:
    """An ``EXPLAIN`` listing with who writes each register and who uses each cursor."""

    def __init__(self, ops: list[_Op], sql: str) -> None:
        self.ops = ops
        self.sql = sql
        self.writers: dict[int, list[_Op]] = defaultdict(list)
        self.marks: dict[int, list[str]] = defaultdict(list)  # in-place affinity conversions
        self.uses: dict[int, list[_Op]] = defaultdict(list)
        self.opens: dict[int, list[_Op]] = defaultdict(list)
        for index, op in enumerate(ops):
            if op.addr != index:
                raise _Unsupported("addresses out of order")
            written = _WRITES.get(op.opcode)
            if written is None:
                raise _Unsupported(op.opcode)
            for register in written(op):
                self.writers[register].append(op)
            self._note_conversions(op)
            self._note_cursors(op)

    def _note_conversions(self, op: _Op) -> None:
        if op.opcode == "Affinity" and op.p4 is not None and len(op.p4) == op.p2:
            for offset, char in enumerate(op.p4):
                self.marks[op.p1 + offset].append(char)
        elif op.opcode == "Affinity":
            raise _Unsupported("an Affinity without one character per register")
        elif op.opcode == "MustBeInt":
            self.marks[op.p1].append(_MUST_BE_INT)
        elif op.opcode == "MakeRecord" and op.p4:
            for offset, char in enumerate(op.p4[: op.p2]):
                self.marks[op.p1 + offset].append(char)

    def _note_cursors(self, op: _Op) -> None:
        if op.opcode in _CURSOR_P1:
            self.uses[op.p1].append(op)
        if op.opcode == "DeferredSeek":
            self.uses[op.p3].append(op)
        if op.opcode == "OpenDup":
            self.uses[op.p2].append(op)
        if op.opcode in _OPENS:
            self.opens[op.p1].append(op)
            if op.p5 & _OPFLAG_P2ISREG:
                raise _Unsupported("a cursor on a root page from a register")

    def at(self, addr: int) -> _Op | None:
        """The op at ``addr``, if there is one."""
        return self.ops[addr] if 0 <= addr < len(self.ops) else None

    def schema_cookie(self) -> int | None:
        """The schema version ``main`` had when the statement was prepared (the
        ``Transaction`` op checks it before the statement runs)."""
        for op in self.ops:
            if op.opcode == "Transaction" and op.p1 == 0:
                return op.p3
        return None

    def has_virtual_tables(self) -> bool:
        """Whether a virtual table is read: it may read any table through statements of
        its own (FTS5 with external content does), unseen in this program."""
        return any(op.opcode == "VOpen" for op in self.ops)

    def cursors_by_table(self, catalog: KeyCatalog) -> dict[str, list[tuple[int, str | None]]]:
        """Declared table -> (cursor, index name or None) of each cursor opened on one of
        its b-trees in ``main``."""
        found: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
        for cursor, opens in self.opens.items():
            for op in opens:
                if op.opcode in ("OpenRead", "ReopenIdx", "OpenWrite") and op.p3 == 0:
                    owner = catalog.roots.get(op.p2)
                    if owner is not None:
                        found[owner[0]].append((cursor, owner[1]))
        return found

    def literal_in_text(self, text: str) -> bool:
        """Whether ``text`` is written as a string literal in the SQL, so that the
        ``String8`` op shows it whole."""
        return "'" + text.replace("'", "''") + "'" in self.sql


@dataclass(frozen=True)
class _EphemeralField:
    """A key register read from field ``field`` of an IN list's ephemeral table."""

    cursor: int
    field: int


_Origin = Source | _EphemeralField


@dataclass(frozen=True)
class _Seek:
    """A key lookup found on one cursor: its key registers' origins, and the span of
    the program over which the key must hold (the seek to the loop's last step)."""

    origins: tuple[_Origin, ...]
    registers: tuple[int, ...]
    start: int
    end: int


class _Analysis:
    """Whether one table is read only through key lookups, and on which spec."""

    def __init__(
        self,
        raw: sqlite3.Connection,
        program: _Program,
        plan: list[str],
        keys: TableKeys,
        cursors: list[tuple[int, str | None]],
    ) -> None:
        self.raw = raw
        self.program = program
        self.plan = plan
        self.keys = keys
        self.cursors = cursors

    def lookup(self) -> KeyedLookup | None:
        """The table's keyed lookup, or None when any of its cursors is used otherwise."""
        numbers = [cursor for cursor, _ in self.cursors]
        if len(set(numbers)) != len(numbers):
            return None  # the same cursor opened twice (a RIGHT JOIN's second pass)
        for cursor in numbers:
            opens = self.program.opens[cursor]
            if len(opens) != 1 or opens[0].opcode == "OpenWrite":
                return None
        tables = [cursor for cursor, index in self.cursors if index is None]
        indexes = [(cursor, index) for cursor, index in self.cursors if index is not None]
        if len(tables) > 1 or len(indexes) > 1:
            return None  # two independent reads of the table (UNION, a subquery, OR)
        table = tables[0] if tables else None
        if indexes:
            cursor, index = indexes[0]
            found = self._index_lookup(cursor, f"INDEX {index}")
            if found is None or (table is not None and not self._follows(table, cursor)):
                return None
            return found
        if table is None:
            return None
        if self.keys.has_rowid:
            return self._rowid_lookup(table)
        return self._index_lookup(table, "PRIMARY KEY")  # a WITHOUT ROWID table's own b-tree

    # -- the rowid ------------------------------------------------------------------

    def _rowid_lookup(self, cursor: int) -> KeyedLookup | None:
        """A table cursor positioned only by ``SeekRowid``/``NotExists`` on keys."""
        seeks: list[_Seek] = []
        for op in self.program.uses[cursor]:
            if op.opcode in ("SeekRowid", "NotExists"):
                origin = self._origin(op.p3)
                if origin is None:
                    return None
                seeks.append(_Seek((origin,), (op.p3,), op.addr, op.addr))
            elif op.opcode not in _ROW_READS or op.opcode == "IdxRowid":
                return None
        spec = self._rowid_spec()
        if not seeks or spec is None or not self._plan_searches_rowid():
            return None
        return self._lookup(spec, seeks)

    def _rowid_spec(self) -> KeySpec | None:
        """The spec of the real rowid. With no alias its spec is named ``rowid``, which an
        index on a column called rowid is named too: SQLite is asked which it is."""
        name = self.keys.rowid_alias or "rowid"
        spec = next(
            (
                s
                for s in self.keys.specs
                if s.columns == (name,)
                and s.affinities == (Affinity.INTEGER,)
                and s.collations == ("BINARY",)
            ),
            None,
        )
        if spec is None or self.keys.rowid_alias is not None:
            return spec
        quoted = '"' + self.keys.table.replace('"', '""') + '"'
        probe = f"EXPLAIN QUERY PLAN SELECT 1 FROM main.{quoted} WHERE rowid = 0"
        lines = [str(row[3]) for row in self.raw.execute(probe).fetchall()]
        rowid_search = len(lines) == 1 and _ROWID_SEARCH.fullmatch(lines[0]) is not None
        return spec if rowid_search else None

    def _plan_searches_rowid(self) -> bool:
        return any(_ROWID_SEARCH.fullmatch(line) for line in self.plan)

    # -- an index (or a WITHOUT ROWID primary key) ----------------------------------------

    def _index_lookup(self, cursor: int, label: str) -> KeyedLookup | None:
        """An index cursor positioned only by one equality seek: ``SeekGE`` then, at
        once, ``IdxGT`` on the same key, every ``Next`` returning to that bound (or the
        same with ``SeekLE``/``IdxLT``/``Prev`` for a descending read)."""
        uses = self.program.uses[cursor]
        seeks = [op for op in uses if op.opcode in ("SeekGE", "SeekLE")]
        if len(seeks) != 1:
            return None
        seek = seeks[0]
        if seek.p4 is None or not seek.p4.isdigit():
            return None
        bound_opcode, step_opcode = (
            ("IdxGT", "Next") if seek.opcode == "SeekGE" else ("IdxLT", "Prev")
        )
        bound = self.program.at(seek.addr + 1)
        if bound is None or (bound.opcode, bound.p1, bound.p2, bound.p3, bound.p4) != (
            bound_opcode,
            cursor,
            seek.p2,
            seek.p3,
            seek.p4,
        ):
            return None
        width = int(seek.p4)
        steps = [op.addr for op in uses if op.opcode == step_opcode and op.p2 == bound.addr]
        for op in uses:
            if op in (seek, bound) or op.addr in steps or op.opcode in _ROW_READS:
                continue
            if op.opcode == "IfNoHope" and op.p3 == seek.p3 and 1 <= int(op.p4 or "0") <= width:
                continue  # gives up an IN loop early when no entry has the key's prefix
            if op.opcode == "DeferredSeek" and op.p1 == cursor:
                continue  # the table cursor's side is checked by _follows
            return None
        if not self._seek_scan_fits(seek, bound):
            return None
        registers = tuple(range(seek.p3, seek.p3 + width))
        origins = [self._origin(register) for register in registers]
        if any(origin is None for origin in origins):
            return None
        spec = self._index_spec(cursor, label, width)
        if spec is None:
            return None
        end = max(steps, default=bound.addr)
        found = _Seek(tuple(o for o in origins if o is not None), registers, seek.addr, end)
        return self._lookup(spec, [found])

    def _seek_scan_fits(self, seek: _Op, bound: _Op) -> bool:
        """A ``SeekScan`` before the seek steps to the key instead of seeking and jumps
        past the bound only when it got there; it must not jump anywhere else."""
        before = self.program.at(seek.addr - 1)
        if before is None or before.opcode != "SeekScan":
            return True
        return before.p5 == 0 and before.p2 == bound.addr + 1

    def _index_spec(self, cursor: int, label: str, width: int) -> KeySpec | None:
        """The spec of the index's first ``width`` columns: the columns as the plan names
        them for this index, the collations as the cursor's key info has them."""
        collations = _key_collations(self.program.opens[cursor][0].p4)
        if collations is None or len(collations) < width or width < 1:
            return None
        for spec in self.keys.specs:
            if (
                len(spec.columns) == width
                and spec.collations == collations[:width]
                and _plan_searches(self.plan, label, spec.columns)
            ):
                return spec
        return None

    def _follows(self, table: int, index: int) -> bool:
        """Whether the table cursor is only ever moved to the row of the index cursor's
        entry (and read there)."""
        for op in self.program.uses[table]:
            if op.opcode in _ROW_READS and op.opcode != "IdxRowid":
                continue
            if op.opcode == "DeferredSeek" and op.p1 == index and op.p3 == table:
                continue
            if op.opcode == "NotFound" and not self.keys.has_rowid and op.p4 is not None:
                width = int(op.p4)
                own = _key_collations(self.program.opens[table][0].p4)
                registers = range(op.p3, op.p3 + width)
                if (
                    own is not None
                    and len(own) == width
                    and all(
                        self._written_only_by(register, "Column", index) for register in registers
                    )
                ):
                    continue  # the primary key of the index's entry
            return False
        return True

    def _written_only_by(self, register: int, opcode: str, cursor: int) -> bool:
        writers = self.program.writers.get(register, [])
        return bool(writers) and all(w.opcode == opcode and w.p1 == cursor for w in writers)

    # -- key values -------------------------------------------------------------------

    def _origin(self, register: int, depth: int = 0) -> _Origin | None:
        """What a key register holds: the one source all its writers write (the same
        parameter or literal written twice is one value), or a field of an IN list's
        ephemeral table; None if its writers differ or one is anything else."""
        writers = self.program.writers.get(register, [])
        origins = {self._origin_of(op, register, depth) for op in writers}
        if len(origins) != 1:
            return None
        return origins.pop()

    def _origin_of(self, op: _Op, register: int, depth: int) -> _Origin | None:
        """What ``op`` writes into ``register``, if it is a source (or a copy of one)."""
        if depth > 8:
            return None
        literal = self._literal(op)
        if literal is not None:
            return literal
        if op.opcode == "Variable":
            return Param(op.p1, op.p4 or None)
        if op.opcode in ("SCopy", "IntCopy"):
            return self._origin(op.p1, depth + 1)
        if op.opcode == "Copy":
            return self._origin(op.p1 + register - op.p2, depth + 1)
        if op.opcode == "Column" and op.p4 is None and self._is_in_list(op.p1):
            return _EphemeralField(op.p1, op.p2)
        return None

    def _literal(self, op: _Op) -> Literal | None:
        """The value a literal op writes; a real or a blob is shown inexactly by
        ``EXPLAIN``, so it is not taken."""
        if op.opcode == "Integer":
            return Literal(op.p1)
        if op.opcode == "Int64" and op.p4 is not None:
            return Literal(int(op.p4))
        if op.opcode == "String8" and op.p4 is not None and self.program.literal_in_text(op.p4):
            return Literal(op.p4)
        if op.opcode == "Null":
            return Literal(None)
        return None

    def _is_in_list(self, cursor: int) -> bool:
        """Whether the cursor is an ephemeral table that is only filled, then read."""
        opens = self.program.opens.get(cursor, [])
        if len(opens) != 1 or opens[0].opcode != "OpenEphemeral":
            return False
        for op in self.program.uses[cursor]:
            if op.opcode == "OpenDup" or not (
                op.opcode in _EPHEMERAL_READS or op.opcode == "IdxInsert"
            ):
                return False
        return True

    def _in_list_records(self, cursor: int) -> list[range] | None:
        """The register ranges of the records inserted into an IN list's ephemeral table:
        every ``IdxInsert`` into it inserts what a ``MakeRecord`` made (one range per
        record shape, however many elements share it)."""
        inserted = {op.p2 for op in self.program.uses[cursor] if op.opcode == "IdxInsert"}
        ranges: dict[range, None] = {}
        for record in inserted:  # each element's IdxInsert reads the same record register
            makers = self.program.writers.get(record, [])
            if not makers or any(op.opcode != "MakeRecord" for op in makers):
                return None
            ranges.update(dict.fromkeys(range(op.p1, op.p1 + op.p2) for op in makers))
        return list(ranges)

    def _in_list_rows(self, cursor: int) -> list[tuple[Source, ...]] | None:
        """The rows an IN list's ephemeral table may hold. A record's field register is
        written once per list element, so it may hold any of those sources: the product
        over a record's fields over-approximates its rows (exact for one field)."""
        records = self._in_list_records(cursor)
        if records is None:
            return None
        rows: dict[tuple[Source, ...], None] = {}
        for record in records:
            fields: list[list[Source]] = []
            for register in record:
                sources: dict[Source, None] = {}
                for op in self.program.writers.get(register, []):
                    source = self._origin_of(op, register, 0)
                    if not isinstance(source, Param | Literal):
                        return None
                    sources[source] = None
                if not sources or len(sources) > MAX_KEYS:
                    return None
                fields.append(list(sources))
            for row in itertools.product(*fields):
                rows[row] = None
                if len(rows) > MAX_KEYS:
                    return None
        return list(rows)

    def _conversions(self, register: int, depth: int = 0) -> set[str]:
        """Every affinity conversion SQLite may apply to a register's value, there or in
        the registers it was copied from (``?``: a chain too long to follow, which no
        column allows)."""
        found = set(self.program.marks.get(register, []))
        for op in self.program.writers.get(register, []):
            if op.opcode in ("SCopy", "IntCopy", "Copy"):
                source = op.p1 + (register - op.p2 if op.opcode == "Copy" else 0)
                found |= self._conversions(source, depth + 1) if depth < 8 else {"?"}
        return found

    def _key_conversions(self, register: int, origin: _Origin) -> set[str]:
        """Every conversion a key may get on its way to the seek: in its register, and
        for an IN list's value in the record it was inserted as."""
        found = self._conversions(register)
        if isinstance(origin, _EphemeralField):
            for record in self._in_list_records(origin.cursor) or ():
                if origin.field < len(record):
                    found |= self._conversions(record[origin.field])
        return found

    def _holds_still(self, seek: _Seek) -> bool:
        """Whether every key holds one value from the seek to the loop's last step: its
        register is not written in between, nor its IN list's cursor moved."""
        for register, origin in zip(seek.registers, seek.origins, strict=True):
            if not isinstance(origin, _EphemeralField):
                continue  # a parameter or literal is the same value each time it is written
            span = range(seek.start, seek.end + 1)
            if any(op.addr in span for op in self.program.writers[register]):
                return False
            moves = self.program.uses[origin.cursor]
            if any(op.opcode in _EPHEMERAL_MOVES and op.addr in span for op in moves):
                return False
        return True

    def _lookup(self, spec: KeySpec, seeks: list[_Seek]) -> KeyedLookup | None:
        """The lookup on ``spec`` of every key the seeks may use, if each key's value is
        a source SQLite converts only as the spec does."""
        values: dict[tuple[Source, ...], None] = {}
        for seek in seeks:
            if not self._holds_still(seek):
                return None
            for position, (register, origin) in enumerate(
                zip(seek.registers, seek.origins, strict=True)
            ):
                allowed = _ALLOWED_CONVERSIONS[spec.affinities[position]]
                if not self._key_conversions(register, origin) <= allowed:
                    return None
            tuples = self._key_tuples(seek.origins)
            if tuples is None:
                return None
            values.update(dict.fromkeys(tuples))
            if len(values) > MAX_KEYS:
                return None
        return KeyedLookup(spec, tuple(values))

    def _key_tuples(self, origins: tuple[_Origin, ...]) -> list[tuple[Source, ...]] | None:
        """Each key the origins may make: fields of one IN list go together (one row at a
        time), and the lists and single sources combine."""
        choices: list[list[dict[int, Source]]] = []
        fixed = {p: o for p, o in enumerate(origins) if isinstance(o, Param | Literal)}
        fields: dict[int, dict[int, int]] = defaultdict(dict)  # IN list -> position -> field
        for position, origin in enumerate(origins):
            if isinstance(origin, _EphemeralField):
                fields[origin.cursor][position] = origin.field
        for cursor, wanted in fields.items():
            rows = self._in_list_rows(cursor)
            if rows is None or any(f >= len(row) for row in rows for f in wanted.values()):
                return None
            choices.append([{p: row[f] for p, f in wanted.items()} for row in rows])
        keys: dict[tuple[Source, ...], None] = {}
        for combination in itertools.product(*choices):
            chosen = dict(fixed)
            for part in combination:
                chosen.update(part)
            keys[tuple(chosen[p] for p in range(len(origins)))] = None
            if len(keys) > MAX_KEYS:
                return None
        return list(keys)


_ROWID_SEARCH = re.compile(r"SEARCH .+ USING INTEGER PRIMARY KEY \(rowid=\?\)(?: LEFT-JOIN)?")


def _plan_searches(plan: list[str], label: str, columns: Sequence[str]) -> bool:
    """Whether the plan names ``label`` (``INDEX name`` or ``PRIMARY KEY``) on exactly
    one line, and that line searches it by equality on exactly ``columns``."""
    mentions = re.compile(rf" USING (?:COVERING )?{re.escape(label)}(?: |$)")
    lines = [line for line in plan if mentions.search(line)]
    if len(lines) != 1:
        return False
    terms = " AND ".join(f"{column}=?" for column in columns)
    search = rf"SEARCH .+ USING (?:COVERING )?{re.escape(label)} \({re.escape(terms)}\)"
    return re.fullmatch(search + "(?: LEFT-JOIN)?", lines[0]) is not None


def _key_collations(key_info: str | None) -> tuple[str, ...] | None:
    """The collation of each key field in an ``OpenRead``'s key info as ``EXPLAIN``
    shows it: ``k(3,,NOCASE,-B)`` (an empty name or ``B`` is BINARY, ``-`` descending,
    ``N.`` nulls last)."""
    if key_info is None or not key_info.startswith("k(") or not key_info.endswith(")"):
        return None
    count, *fields = key_info[2:-1].split(",")
    if not count.isdigit() or int(count) != len(fields):
        return None
    collations: list[str] = []
    for field in fields:
        name = field.removeprefix("-").removeprefix("N.")
        collations.append("BINARY" if name in ("", "B") else name.upper())
    return tuple(collations)
