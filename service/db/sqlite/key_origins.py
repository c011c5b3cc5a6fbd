"""What a read's key registers hold, as its program (``bytecode.Program``) shows.

A key is trusted only when its register holds a parameter or a literal (or a
copy of one), or a field of an IN list's ephemeral table filled only with such
values; when every conversion SQLite may apply to it on the way to the seek is
one the key's column applies itself; and when it holds one value from the seek
to the loop's last step. ``key_seeks`` finds the seeks; this module says which
keys they may use.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

from service.db.sqlite.bytecode import Op, Program
from service.db.sqlite.key_sources import KeyedLookup, Literal, Param, Source
from service.db.sqlite.key_specs import Affinity, KeySpec

# More looked-up keys than this (an IN list, or a product of two) is not keyed.
MAX_KEYS = 1000
# Uses of an IN list's ephemeral table that read it without changing what it holds.
_EPHEMERAL_READS = frozenset(
    "OpenEphemeral NullRow Rewind Last Next Prev Column Close Found NotFound".split()
)
_EPHEMERAL_MOVES = frozenset("Rewind Last Next Prev Found NotFound".split())
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


@dataclass(frozen=True)
class _EphemeralField:
    """A key register read from field ``field`` of an IN list's ephemeral table."""

    cursor: int
    field: int


_Origin = Source | _EphemeralField


@dataclass(frozen=True)
class Seek:
    """A key lookup found on one cursor: its key registers' origins, and the span of
    the program over which the key must hold (the seek to the loop's last step)."""

    origins: tuple[_Origin, ...]
    registers: tuple[int, ...]
    start: int
    end: int


class KeyOrigins:
    """The sources a program's key registers hold, and the keys a seek may use."""

    def __init__(self, program: Program) -> None:
        self.program = program

    def origin(self, register: int, depth: int = 0) -> _Origin | None:
        """What a key register holds: the one source all its writers write (the same
        parameter or literal written twice is one value), or a field of an IN list's
        ephemeral table; None if its writers differ or one is anything else."""
        writers = self.program.writers.get(register, [])
        origins = {self._origin_of(op, register, depth) for op in writers}
        if len(origins) != 1:
            return None
        return origins.pop()

    def _origin_of(self, op: Op, register: int, depth: int) -> _Origin | None:
        """What ``op`` writes into ``register``, if it is a source (or a copy of one)."""
        if depth > 8:
            return None
        literal = self._literal(op)
        if literal is not None:
            return literal
        if op.opcode == "Variable":
            return Param(op.p1, op.p4 or None)
        if op.opcode in ("SCopy", "IntCopy"):
            return self.origin(op.p1, depth + 1)
        if op.opcode == "Copy":
            return self.origin(op.p1 + register - op.p2, depth + 1)
        if op.opcode == "Column" and op.p4 is None and self._is_in_list(op.p1):
            return _EphemeralField(op.p1, op.p2)
        return None

    def _literal(self, op: Op) -> Literal | None:
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

    def _holds_still(self, seek: Seek) -> bool:
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

    def lookup(self, spec: KeySpec, seeks: list[Seek]) -> KeyedLookup | None:
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
