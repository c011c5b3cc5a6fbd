"""SQLite's program for a statement (``EXPLAIN``) as a model: who writes each register,
who uses each cursor.

``keyed_reads`` judges from this model whether a read looks tables up only by key.
Only the opcodes listed here are known, each with the registers it writes; a program
with any other opcode is ``Unsupported`` as a whole, as its effect on registers and
cursors would be a guess.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from service.db.sqlite.key_specs import KeyCatalog


class Unsupported(Exception):
    """A program with something this module does not know: nothing in it is keyed."""


@dataclass(frozen=True)
class Op:
    """One row of ``EXPLAIN``."""

    addr: int
    opcode: str
    p1: int
    p2: int
    p3: int
    p4: str | None
    p5: int

    @classmethod
    def of(cls, row: Sequence[object]) -> Op:
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


def _nothing(op: Op) -> tuple[int, ...]:
    return ()


def _reg_p1(op: Op) -> tuple[int, ...]:
    return (op.p1,)


def _reg_p2(op: Op) -> tuple[int, ...]:
    return (op.p2,)


def _reg_p3(op: Op) -> tuple[int, ...]:
    return (op.p3,)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# The registers each opcode this module knows writes. An opcode not listed makes the
# whole program unsupported: its effect on registers and cursors would be a guess.
# Affinity and MustBeInt convert in place; they are followed apart (``Program.marks``).
_WRITES: dict[str, Callable[[Op], Iterable[int]]] = {
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
_OPFLAG_P2ISREG = 0x10  # the root page of an Open* is in a register
_MUST_BE_INT = "D"  # MustBeInt converts like INTEGER affinity (or gives up)


class Program:
    """An ``EXPLAIN`` listing with who writes each register and who uses each cursor."""

    def __init__(self, ops: list[Op], sql: str) -> None:
        self.ops = ops
        self.sql = sql
        self.writers: dict[int, list[Op]] = defaultdict(list)
        self.marks: dict[int, list[str]] = defaultdict(list)  # in-place affinity conversions
        self.uses: dict[int, list[Op]] = defaultdict(list)
        self.opens: dict[int, list[Op]] = defaultdict(list)
        for index, op in enumerate(ops):
            if op.addr != index:
                raise Unsupported("addresses out of order")
            written = _WRITES.get(op.opcode)
            if written is None:
                raise Unsupported(op.opcode)
            for register in written(op):
                self.writers[register].append(op)
            self._note_conversions(op)
            self._note_cursors(op)

    def _note_conversions(self, op: Op) -> None:
        if op.opcode == "Affinity" and op.p4 is not None and len(op.p4) == op.p2:
            for offset, char in enumerate(op.p4):
                self.marks[op.p1 + offset].append(char)
        elif op.opcode == "Affinity":
            raise Unsupported("an Affinity without one character per register")
        elif op.opcode == "MustBeInt":
            self.marks[op.p1].append(_MUST_BE_INT)
        elif op.opcode == "MakeRecord" and op.p4:
            for offset, char in enumerate(op.p4[: op.p2]):
                self.marks[op.p1 + offset].append(char)

    def _note_cursors(self, op: Op) -> None:
        if op.opcode in _CURSOR_P1:
            self.uses[op.p1].append(op)
        if op.opcode == "DeferredSeek":
            self.uses[op.p3].append(op)
        if op.opcode == "OpenDup":
            self.uses[op.p2].append(op)
        if op.opcode in _OPENS:
            self.opens[op.p1].append(op)
            if op.p5 & _OPFLAG_P2ISREG:
                raise Unsupported("a cursor on a root page from a register")

    def at(self, addr: int) -> Op | None:
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
