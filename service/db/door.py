"""The one door to a database, whatever its engine: the verbs the tiers above use.

``access``, ``routing`` and ``observe`` reach a database only through the
``Database`` protocol and the plain values here; pools, connections, the
group-commit writer and the statement guard stay behind it. SQLite
(``service.db.sqlite``) is the one implementation today; a second engine is
added beside it without touching the tiers above.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from service import errors
from service.config import ArchiveRule
from service.domain import InsertRequest, WriteOptions, WriteSnapshot
from service.values import Params, SqlRow, SqlValue

Column = tuple[str, str]  # (name, declared type)
Statements = Sequence[tuple[str, Sequence[SqlRow]]]  # (sql, parameter sets), as BatchUpdate


@dataclass(frozen=True)
class KeyTracking:
    """Whether reads are tagged by the keys they look up and writes by the keys they
    change, and how many keys of one table one write may name before it drops every
    keyed read of that table instead."""

    enabled: bool = True
    max_keys_per_write: int = 256


@dataclass(frozen=True)
class KeyLookup:
    """The keys one read looks a table up by: the key's columns (``customer`` or
    ``customer,day``) and one digest per looked-up value (several for an IN list)."""

    columns: str
    digests: tuple[str, ...]


@dataclass(frozen=True)
class Freshness:
    """Where a read may run: on a read replica that has replayed at least ``after`` (the
    caller's newest write there), or only on the primary. Results that fill the cache are
    read on the primary, so a lagging replica can never put an old answer there."""

    replica: bool = False
    after: int = 0


PRIMARY = Freshness()


class ReadShape(Protocol):
    """What a read statement reads (declared table names), and whether it is cacheable."""

    @property
    def reads(self) -> frozenset[str]: ...

    def cacheable(self, params: Params) -> bool:
        """Whether the result, with ``params`` bound, stays the same until a write."""
        ...

    def keyed(self, params: Params) -> dict[str, KeyLookup]:
        """The tables read only by equality lookups on a key, with ``params`` bound: the
        result depends on no other rows of them. Every other table read is not keyed."""
        ...

    def current(self) -> bool:
        """Whether its key lookups still name the keys writes report. False once the
        schema changed under them: a result read now must not be cached under them."""
        ...


@dataclass(frozen=True)
class Rows:
    """The rows one read fetched, with their columns and what the statement read."""

    columns: Sequence[Column]
    rows: list[SqlRow]
    more: bool  # rows past the cap exist
    reads: frozenset[str]
    elapsed_ms: float


class RowStream(Protocol):
    """A read being streamed: its columns, what it reads, and its rows chunk by chunk."""

    @property
    def columns(self) -> Sequence[Column]: ...

    @property
    def reads(self) -> frozenset[str]: ...

    async def next_chunk(self, max_rows: int) -> tuple[list[SqlRow], bool]:
        """Up to ``max_rows`` more rows (fewer when the chunk's bytes run out), and
        whether the statement is exhausted."""
        ...

    def unsent(self, rows: int) -> None:
        """Rows fetched but not sent (cut by the caller's max_rows): not counted as returned."""
        ...


@dataclass(frozen=True)
class WriteOutcome:
    """What one write RPC changed."""

    rows_affected: tuple[int, ...]
    last_insert_rowid: int
    tables: frozenset[str]  # declared names; as the door answers it, cascades included
    replayed: bool = False  # an idempotent retry's stored answer: nothing was written now
    # (table, key columns, digest) of the old and new key values of every row changed,
    # as the engine reported them (triggers, cascades, upserts included)
    keys: frozenset[tuple[str, str, str]] = frozenset()
    # Tables whose every keyed read must go: rows changed that the keys do not name
    # (REPLACE's conflict deletes, more keys than KeyTracking allows, no tracking)
    key_generations: frozenset[str] = frozenset()
    position: int = 0  # the commit's position on its database (service.consistency)

    @property
    def rows_written(self) -> int:
        """Rows this call wrote now (none when replayed)."""
        return 0 if self.replayed else sum(self.rows_affected)


# After the COMMIT and before the caller is answered: the tags a write bumps.
TagsOfWrite = Callable[[WriteOutcome], Sequence[str]]
# The tags a committed write bumps on the database it names.
TagsOfWriteOn = Callable[[str, WriteOutcome], Sequence[str]]
# After each COMMIT: the tags it changed, and a receipt to call once they were delivered.
AfterCommit = Callable[[list[str], Callable[[], None] | None], Awaitable[None]]


@dataclass(frozen=True)
class PoolSnapshot:
    """A reader pool's counters at one moment."""

    database: str
    size: int
    in_use: int
    waiters: int
    acquire_p50_ms: float
    acquire_p99_ms: float
    timeouts: int
    recycled: int
    replica_reads: int = 0  # reads a read replica answered
    primary_reads: int = 0  # reads the primary answered


@dataclass(frozen=True)
class DatabaseFigures:
    """A database's counters for Stats and metrics."""

    pool: PoolSnapshot
    writes: WriteSnapshot
    write_queue: int  # write calls waiting for the writer
    # PostgreSQL: the largest replay lag its primary reported at the last health probe
    # (0 when its standbys are caught up or it has none); None: not measured
    replication_lag_seconds: float | None = None
    maintenance: tuple[MaintenanceRuns, ...] = ()


@dataclass(frozen=True)
class MaintenanceRuns:
    """One scheduled maintenance task of a database: its runs by result, and the last."""

    task: str  # "optimize", "incremental_vacuum"
    runs: dict[str, int]  # by result: "ok", "timeout", "error", "inactive"
    last_run: float = 0.0  # wall-clock seconds; 0: never ran
    last_result: str = ""
    last_message: str = ""


@dataclass(frozen=True)
class QueryPlan:
    """How the engine would run a read: its plan, and a whole-table scan worth advice."""

    lines: list[str]
    scanned_table: str | None = None  # a table the plan reads whole, when that is worth an index


class Severity(StrEnum):
    """How a probe finding counts towards health."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Finding:
    """One thing a probe found: ``aspect`` is '' for the database as a whole."""

    aspect: str
    severity: Severity
    message: str
    duration_ms: float = 0.0


@dataclass(frozen=True)
class ArchiveMark:
    """Where a rule's rows are, as its source file stores it: every row dated below
    ``boundary`` is in the target; rows below ``moving_below`` may be in either member
    (a pass is moving them); the rest are in the source. None: no such bound yet."""

    boundary: SqlValue = None
    moving_below: SqlValue = None


@dataclass(frozen=True)
class ArchiveSlice:
    """Rows of the source picked to move together: their rowids, columns and values."""

    id: str
    columns: tuple[str, ...]
    rowids: tuple[int, ...]
    rows: tuple[SqlRow, ...]


@dataclass(frozen=True)
class SliceEnd:
    """How a slice ended: rows moved, rows left in the source (changed after their copy,
    or gone), and the mark after it."""

    moved: int
    kept: int
    mark: ArchiveMark


class SliceMover(Protocol):
    """One archive rule's steps between its source and target, each a transaction of
    one file, each recorded in that file so that a stop between two is completed."""

    def claim(self) -> bool:
        """Take the rule's files for this process (kept until ``release``): False while
        another process archives them. Only the claimant may finish or move slices."""
        ...

    def release(self) -> None:
        """Let another process claim the rule's files."""
        ...

    async def mark(self) -> ArchiveMark:
        """The rule's stored bounds."""
        ...

    async def begin_pass(self, cutoff: SqlValue) -> ArchiveMark:
        """Store that rows below ``cutoff`` are moving, before any of them moves."""
        ...

    async def pick(self, cutoff: SqlValue) -> ArchiveSlice | None:
        """The next rows below ``cutoff`` to move (None: no row is left below it)."""
        ...

    async def copy(self, rows: ArchiveSlice) -> None:
        """Copy the slice into the target, with its journal entry, in one transaction."""
        ...

    async def delete(self, rows: ArchiveSlice, cutoff: SqlValue) -> None:
        """Delete from the source the rows still as they were copied, recording which, in
        one transaction; the boundary moves to ``cutoff`` in it when none is left below."""
        ...

    async def finish(self) -> list[SliceEnd]:
        """Complete every slice the target's journal holds unfinished: drop the copies of
        rows the source kept (all of them when its delete never committed)."""
        ...

    async def pending(self, cutoff: SqlValue) -> tuple[int, SqlValue, SqlValue]:
        """Rows below ``cutoff`` in the source now, and their oldest and newest dates."""
        ...


class Database(Protocol):
    """One configured database, as every tier above ``db`` sees it."""

    @property
    def name(self) -> str: ...

    @property
    def failure(self) -> errors.DataAccessError | None:
        """Why the database cannot serve (it answers this error alone), or None."""
        ...

    @property
    def declared_names(self) -> frozenset[str]:
        """Every schema object's declared name, for fingerprints."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def fail(self, failure: errors.DataAccessError) -> None:
        """Serve ``failure`` to every call from now on."""
        ...

    async def read_shape(self, sql: str, params: Params, deadline: float) -> ReadShape | None:
        """What ``sql`` reads, learnt from the engine without running it."""
        ...

    async def read(
        self,
        sql: str,
        params: Params,
        max_rows: int,
        max_bytes: int,
        deadline: float,
        freshness: Freshness = PRIMARY,
    ) -> Rows:
        """Run a read and fetch up to ``max_rows`` rows within ``max_bytes``."""
        ...

    def stream(
        self,
        sql: str,
        params: Params,
        chunk_bytes: int,
        deadline: float,
        freshness: Freshness = PRIMARY,
    ) -> AbstractAsyncContextManager[RowStream]:
        """Run a read whose rows are fetched chunk by chunk while the context is open."""
        ...

    def check_insert(self, request: InsertRequest) -> None:
        """Raise unless ``request`` fits the schema and may write its table."""
        ...

    async def insert(
        self, request: InsertRequest, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        """Insert rows in one transaction; the tags are bumped after the COMMIT."""
        ...

    async def update(
        self, statements: Statements, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        """Run DML statements in one transaction; the tags are bumped after the COMMIT."""
        ...

    async def plan_of(self, sql: str, params: Params, deadline: float) -> QueryPlan:
        """How the engine would run a read, and the whole-table scan worth an index, if any."""
        ...

    def columns_of(self, table: str) -> set[str]:
        """The lower-cased columns of ``table`` (empty when unknown)."""
        ...

    async def probe(self, deep: bool) -> list[Finding]:
        """Check that the database serves: quickly, or deeply (integrity too)."""
        ...

    def figures(self) -> DatabaseFigures: ...

    def reset_figures(self) -> None: ...

    def undelivered(self) -> tuple[list[str], Callable[[], None]]:
        """Tags a previous run committed but may not have bumped, and how to mark them
        delivered."""
        ...

    def mover(self, rule: ArchiveRule, target: Database, tags_of: TagsOfWriteOn) -> SliceMover:
        """The steps moving ``rule``'s rows from this database to ``target``."""
        ...
