"""Whether the cursors a program opens on one table only look it up by key.

Every cursor on the table must fit one of the shapes ``keyed_reads`` lists: a
table cursor positioned only by ``SeekRowid``/``NotExists``; or one index cursor
(or a WITHOUT ROWID table's own b-tree) positioned only by one equality seek and
its bound, a table cursor beside it only following the index's entry. The plan
(``EXPLAIN QUERY PLAN``) must name the same search, and the index's columns and
collations must be a key spec's. The values the seeks use are ``key_origins``'
to judge.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence

from service.db.sqlite.bytecode import Op, Program
from service.db.sqlite.key_origins import KeyOrigins, Seek
from service.db.sqlite.key_sources import KeyedLookup
from service.db.sqlite.key_specs import Affinity, KeySpec, TableKeys

# Uses of a table's cursor that read the row it is on (or none) and move nothing.
_ROW_READS = frozenset(
    "OpenRead ReopenIdx Column Rowid IdxRowid NullRow IfNullRow Close Offset FinishSeek"
    " ColumnsUsed CursorHint SeekHit".split()
)


class Analysis:
    """Whether one table is read only through key lookups, and on which spec."""

    def __init__(
        self,
        raw: sqlite3.Connection,
        program: Program,
        plan: list[str],
        keys: TableKeys,
        cursors: list[tuple[int, str | None]],
    ) -> None:
        self.raw = raw
        self.program = program
        self.plan = plan
        self.keys = keys
        self.cursors = cursors
        self.origins = KeyOrigins(program)

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
        seeks: list[Seek] = []
        for op in self.program.uses[cursor]:
            if op.opcode in ("SeekRowid", "NotExists"):
                origin = self.origins.origin(op.p3)
                if origin is None:
                    return None
                seeks.append(Seek((origin,), (op.p3,), op.addr, op.addr))
            elif op.opcode not in _ROW_READS or op.opcode == "IdxRowid":
                return None
        spec = self._rowid_spec()
        if not seeks or spec is None or not self._plan_searches_rowid():
            return None
        return self.origins.lookup(spec, seeks)

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
        origins = [self.origins.origin(register) for register in registers]
        if any(origin is None for origin in origins):
            return None
        spec = self._index_spec(cursor, label, width)
        if spec is None:
            return None
        end = max(steps, default=bound.addr)
        found = Seek(tuple(o for o in origins if o is not None), registers, seek.addr, end)
        return self.origins.lookup(spec, [found])

    def _seek_scan_fits(self, seek: Op, bound: Op) -> bool:
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
