"""One method per RPC, each reading top-down: router -> pool/writer -> SQLite -> result.

This layer speaks domain values (service.values, dataclasses), never protobuf
or gRPC. Deadlines are absolute ``time.monotonic()`` values.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from service import errors
from service.config import Limits
from service.db.database import Database
from service.db.pool import PoolSnapshot
from service.db.reads import OpenStream, close_stream, fetch_chunk, fetch_rows, open_stream
from service.db.writes import InsertRequest, StatementPlan, WriteOutcome, plan_insert
from service.router import Router
from service.values import Params, SqlRow

HEALTHY, DEGRADED, CRITICAL = "healthy", "degraded", "critical"


@dataclass(frozen=True)
class ReadRequest:
    """A Query or QueryStream."""

    database: str
    sql: str
    params: Params = ()
    max_rows: int = 0
    cache_tags: Sequence[str] = ()


@dataclass(frozen=True)
class ReadResult:
    """A Query's answer, or one chunk of a QueryStream."""

    columns: Sequence[tuple[str, str]]
    rows: Sequence[SqlRow]
    databases: Sequence[str]
    tags: Sequence[str]
    truncated: bool = False
    cache_status: str = "bypass"


@dataclass(frozen=True)
class WriteResult:
    """A committed BatchInsert or BatchUpdate."""

    rows_affected: Sequence[int]
    last_insert_rowid: int
    invalidated_tags: Sequence[str]


@dataclass(frozen=True)
class Check:
    """One health check's outcome."""

    name: str
    status: str
    message: str
    duration_ms: float


@dataclass(frozen=True)
class HealthReport:
    """The service's health: the worst check decides."""

    status: str
    score: float
    checks: Sequence[Check] = field(default_factory=list)


@dataclass(frozen=True)
class WriteSnapshot:
    """Commit counters of one database."""

    database: str
    transactions: int
    batches: int
    rows: int


@dataclass(frozen=True)
class StatsReport:
    """Pool and write counters of every database."""

    pools: Sequence[PoolSnapshot]
    writes: Sequence[WriteSnapshot]


class DataAccess:
    """The service's behaviour, one coroutine per RPC."""

    def __init__(self, router: Router, limits: Limits) -> None:
        self._router = router
        self._limits = limits

    async def query(self, request: ReadRequest, deadline: float) -> ReadResult:
        """Run a read on one database, within the row and byte limits."""
        database = self._router.database(request.database)
        self._check_sql(request.sql)
        cap = min(request.max_rows or self._limits.max_rows, self._limits.max_rows)
        async with database.pool.reader(deadline) as conn:
            fetched = await conn.run(
                lambda raw: fetch_rows(
                    raw, conn.guard, request.sql, request.params, cap, self._limits.max_result_bytes
                ),
                deadline,
            )
        if fetched.more and not 0 < request.max_rows <= self._limits.max_rows:
            raise errors.ResourceExhausted(
                f"the result is over {self._limits.max_rows} rows: set max_rows or use QueryStream"
            )
        reads = fetched.shape.reads if fetched.shape is not None else frozenset()
        return ReadResult(
            columns=[(name, database.schema.decl_type(name, reads)) for name in fetched.columns],
            rows=fetched.rows,
            databases=[database.name],
            tags=self._read_tags(database, reads, request.cache_tags),
            truncated=fetched.more,
        )

    async def query_stream(
        self, request: ReadRequest, deadline: float
    ) -> AsyncIterator[ReadResult]:
        """Run a read and yield its rows in bounded chunks; the first carries the columns."""
        database = self._router.database(request.database)
        self._check_sql(request.sql)
        limits = self._limits
        async with database.pool.reader(deadline) as conn:
            stream = await conn.run(
                lambda raw: open_stream(raw, conn.guard, request.sql, request.params), deadline
            )
            try:
                reads = stream.shape.reads if stream.shape is not None else frozenset()
                columns = [(n, database.schema.decl_type(n, reads)) for n in stream.columns]
                tags = self._read_tags(database, reads, request.cache_tags)
                sent, first = 0, True
                while True:
                    want = limits.stream_chunk_rows
                    if request.max_rows:
                        want = min(want, request.max_rows - sent + 1)
                    rows = await conn.run(
                        functools.partial(_next_chunk, stream, want, limits.stream_chunk_bytes),
                        deadline,
                    )
                    truncated = bool(request.max_rows) and sent + len(rows) > request.max_rows
                    rows = rows[: request.max_rows - sent] if truncated else rows
                    sent += len(rows)
                    if rows or first or truncated:
                        yield ReadResult(
                            columns if first else [],
                            rows,
                            [database.name],
                            tags if first else [],
                            truncated=truncated,
                        )
                    first = False
                    if truncated or len(rows) < want:
                        return
            finally:
                await conn.run(lambda raw: close_stream(stream))

    async def batch_insert(
        self, database_name: str, request: InsertRequest, extra_tags: Sequence[str], deadline: float
    ) -> WriteResult:
        """Insert rows into one table atomically, answered after the commit."""
        database = self._router.database(database_name)
        plan = plan_insert(request, database.schema, database.allowed)
        if not request.rows:
            return WriteResult((0,), 0, [])
        outcome = await database.writer.submit(plan, deadline)
        return self._written(database, outcome, extra_tags)

    async def batch_update(
        self,
        database_name: str,
        statements: Sequence[tuple[str, Sequence[SqlRow]]],
        extra_tags: Sequence[str],
        deadline: float,
    ) -> WriteResult:
        """Run DML statements in one transaction, answered after the commit."""
        database = self._router.database(database_name)
        if not statements:
            raise errors.InvalidArgument("at least one statement is needed", field="statements")
        for index, (sql, _) in enumerate(statements):
            self._check_sql(sql, f"statements[{index}].sql")
        outcome = await database.writer.submit(StatementPlan(statements), deadline)
        return self._written(database, outcome, extra_tags)

    async def invalidate(
        self, tags: Sequence[str], databases: Sequence[str], everything: bool
    ) -> list[str]:
        """Drop cached results; there is no cache yet, so this names what would be dropped."""
        for name in databases:
            self._router.database(name)
        bumped = list(tags) + [f"database:{name}" for name in databases]
        return bumped + (["*"] if everything else [])

    async def health(self) -> HealthReport:
        """Probe every database with a timed query on one of its readers."""
        checks = [await self._probe(db) for db in self._router.databases.values()]
        healthy = sum(c.status == HEALTHY for c in checks)
        score = healthy / len(checks) if checks else 0.0
        status = HEALTHY if healthy == len(checks) else CRITICAL if healthy == 0 else DEGRADED
        return HealthReport(status, score, checks)

    def stats(self, reset: bool) -> StatsReport:
        """Pool and write counters; ``reset`` clears them after reading."""
        databases = [db for db in self._router.databases.values() if db.failure is None]
        report = StatsReport(
            pools=[db.pool.snapshot() for db in databases],
            writes=[WriteSnapshot(db.name, **vars(db.writer.counters)) for db in databases],
        )
        if reset:
            for db in databases:
                db.pool.reset_stats()
                db.writer.reset_counters()
        return report

    async def _probe(self, database: Database) -> Check:
        started = time.monotonic()
        if database.failure is not None:
            return Check(f"database:{database.name}", CRITICAL, database.failure.message, 0.0)
        try:
            async with database.pool.reader(started + 1.0) as conn:
                await conn.run(lambda raw: raw.execute("SELECT 1").fetchall(), started + 1.0)
        except errors.DataAccessError as exc:
            return Check(f"database:{database.name}", CRITICAL, exc.message, _ms_since(started))
        return Check(
            f"database:{database.name}", HEALTHY, "probe query answered", _ms_since(started)
        )

    def _written(
        self, database: Database, outcome: WriteOutcome, extra_tags: Sequence[str]
    ) -> WriteResult:
        tags = [f"table:{database.name}.{table}" for table in sorted(outcome.tables)]
        return WriteResult(
            outcome.rows_affected, outcome.last_insert_rowid, tags + list(extra_tags)
        )

    def _read_tags(
        self, database: Database, reads: frozenset[str], extra: Sequence[str]
    ) -> list[str]:
        return [f"table:{database.name}.{table}" for table in sorted(reads)] + list(extra)

    def _check_sql(self, sql: str, field_name: str = "sql") -> None:
        if not sql.strip():
            raise errors.InvalidArgument("the SQL is empty", field=field_name)
        if len(sql) > self._limits.max_sql_length:
            raise errors.InvalidArgument(
                f"the SQL is over {self._limits.max_sql_length} characters", field=field_name
            )


def _next_chunk(
    stream: OpenStream, rows: int, max_bytes: int, _raw: sqlite3.Connection
) -> list[SqlRow]:
    return fetch_chunk(stream, rows, max_bytes)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000
