"""One configured SQLite database behind the ``Database`` door: readers, writer, schema.

It opens the writer (creating the file, in WAL mode), reads the schema,
opens the reader pool and watches for writes made by other processes; the
door's verbs run on those connections, each read in a ``db.query`` span.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

from opentelemetry import trace

from service import errors
from service.config import ArchiveRule, DatabaseConfig, Limits, ReplicationConfig, SqliteSettings
from service.db.door import (
    PRIMARY,
    AfterCommit,
    Column,
    Database,
    DatabaseFigures,
    Finding,
    Freshness,
    KeyTracking,
    QueryPlan,
    Rows,
    Severity,
    SliceMover,
    Statements,
    TagsOfWrite,
    TagsOfWriteOn,
    WriteOutcome,
)
from service.db.sqlite import commit_counter, idempotency, outbox, probe
from service.db.sqlite.archiving import SqliteSliceMover
from service.db.sqlite.connection import SqliteConnection, open_connection
from service.db.sqlite.group_commit import WriteBatcher
from service.db.sqlite.guard import ShapeMemo
from service.db.sqlite.key_capture import KeyCapture
from service.db.sqlite.maintenance import Maintenance
from service.db.sqlite.outside_writes import watch_data_version
from service.db.sqlite.plans import (
    TINY_TABLE_ROWS,
    limit_stops_the_scan,
    query_plan,
    scanned_table,
)
from service.db.sqlite.pool import PoolPolicy, ReaderPool
from service.db.sqlite.read_shapes import KeyedShape, ReadShapes
from service.db.sqlite.reads import SqliteRowStream, close_stream, fetch_rows, open_stream
from service.db.sqlite.replication import replication_finding
from service.db.sqlite.schema import Schema, read_schema, rows_up_to
from service.db.sqlite.write_plans import StatementPlan, WritePlan, plan_insert
from service.domain import InsertRequest, WriteOptions, WriteSnapshot
from service.fingerprint import fingerprint
from service.values import Params

log = logging.getLogger(__name__)
DB_SYSTEM = "sqlite"
_PROBE_SECONDS = 1.0


class SqliteDatabase:
    """Opens, serves and closes one database file."""

    def __init__(
        self,
        config: DatabaseConfig,
        settings: SqliteSettings,
        limits: Limits,
        after_commit: AfterCommit | None = None,
        use_outbox: bool = False,
        tracer: trace.Tracer | None = None,
        tracking: KeyTracking | None = None,
        replication: ReplicationConfig | None = None,
    ) -> None:
        self.config = config
        self._tracking = tracking or KeyTracking(enabled=False)
        self._replication = replication  # set: Litestream owns checkpoints
        self._tracer = tracer or trace.NoOpTracerProvider().get_tracer(__name__)
        self._after_commit = after_commit
        self._use_outbox = use_outbox
        self._undelivered: tuple[list[str], list[int]] = ([], [])
        self._settings = settings
        self._limits = limits
        self._read_memo = ShapeMemo()
        self._write_memo = ShapeMemo()
        self._expected_indexes = probe.expected_indexes(config.migrations)
        self.schema = Schema({})
        self.allowed: frozenset[str] = frozenset()
        self._writer_conn: SqliteConnection | None = None
        self._writer: WriteBatcher | None = None
        self._maintenance: Maintenance | None = None
        self._failure: errors.DataAccessError | None = None
        self.file_identity: tuple[int, int] | None = None
        self._outside_writes: asyncio.Future[None] | None = None
        policy = PoolPolicy(
            size=limits.readers_per_database,
            acquire_timeout=limits.acquire_timeout_seconds,
            idle_timeout=limits.reader_idle_timeout_seconds,
            max_lifetime=limits.reader_max_lifetime_seconds,
            validate_after_idle=limits.reader_validate_after_idle_seconds,
        )
        self.pool = ReaderPool(config.name, policy, self._open_reader, tracer)
        self._shapes = ReadShapes(config.name, self._read_memo, self.pool)

    @property
    def name(self) -> str:
        """The database's configured name."""
        return self.config.name

    @property
    def failure(self) -> errors.DataAccessError | None:
        """Why the database cannot serve, or None."""
        return self._failure

    def fail(self, failure: errors.DataAccessError) -> None:
        """Serve ``failure`` to every call from now on."""
        self._failure = failure

    @property
    def declared_names(self) -> frozenset[str]:
        """Every schema object's declared name."""
        return self.schema.names

    @property
    def writer(self) -> WriteBatcher:
        """The database's group-commit writer."""
        assert self._writer is not None, "open() first"
        return self._writer

    # Reads

    async def read_shape(self, sql: str, params: Params, deadline: float) -> KeyedShape | None:
        """The tables ``sql`` reads and how it looks them up: remembered, or learnt by
        preparing it under EXPLAIN."""
        return await self._shapes.read_shape(sql, params, deadline)

    async def read(
        self,
        sql: str,
        params: Params,
        max_rows: int,
        max_bytes: int,
        deadline: float,
        freshness: Freshness = PRIMARY,
    ) -> Rows:
        """Run a read on a reader and fetch up to ``max_rows`` rows within ``max_bytes``
        (the file is the only copy: every freshness is met)."""
        async with self.pool.reader(deadline) as conn:
            attributes = self._query_attributes(sql)
            with self._tracer.start_as_current_span(
                "db.query", kind=trace.SpanKind.CLIENT, attributes=attributes
            ) as span:
                started = time.monotonic()
                fetched = await conn.run(
                    lambda raw: fetch_rows(raw, conn.guard, sql, params, max_rows, max_bytes),
                    deadline,
                )
                span.set_attribute("db.response.returned_rows", len(fetched.rows))
        reads = fetched.shape.reads if fetched.shape is not None else frozenset()
        elapsed_ms = (time.monotonic() - started) * 1000
        return Rows(
            self._columns(fetched.columns, reads), fetched.rows, fetched.more, reads, elapsed_ms
        )

    @asynccontextmanager
    async def stream(
        self,
        sql: str,
        params: Params,
        chunk_bytes: int,
        deadline: float,
        freshness: Freshness = PRIMARY,
    ) -> AsyncIterator[SqliteRowStream]:
        """Run a read whose rows are fetched chunk by chunk while the context is open."""
        # Not the current span: a context entered here would be left across yields.
        span = self._tracer.start_span(
            "db.query", kind=trace.SpanKind.CLIENT, attributes=self._query_attributes(sql)
        )
        rows: SqliteRowStream | None = None
        try:
            async with self.pool.reader(deadline) as conn:
                opened = await conn.run(
                    lambda raw: open_stream(raw, conn.guard, sql, params), deadline
                )
                try:
                    reads = opened.shape.reads if opened.shape is not None else frozenset()
                    columns = self._columns(opened.columns, reads)
                    rows = SqliteRowStream(conn, opened, columns, reads, chunk_bytes, deadline)
                    yield rows
                finally:
                    await conn.run(lambda raw: close_stream(opened))
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
            raise
        finally:
            span.set_attribute("db.response.returned_rows", rows.sent if rows else 0)
            span.end()

    def _columns(self, names: Sequence[str], reads: frozenset[str]) -> list[Column]:
        return [(name, self.schema.decl_type(name, reads)) for name in names]

    def _query_attributes(self, sql: str) -> dict[str, str]:
        """A db.query span's attributes: the SQL as a fingerprint, never its values."""
        return {
            "db.system.name": DB_SYSTEM,
            "db.namespace": self.name,
            "db.query.text": fingerprint(sql, self.schema.names),
        }

    async def plan_of(self, sql: str, params: Params, deadline: float) -> QueryPlan:
        """How SQLite would run a read, and the whole-table scan worth an index, if any."""
        async with self.pool.reader(deadline) as conn:
            lines = await conn.run(lambda raw: query_plan(raw, conn.guard, sql, params), deadline)
            scanned = scanned_table(lines)
            if scanned is None or limit_stops_the_scan(sql, lines):
                return QueryPlan(lines)
            table = self.schema.table(scanned)
            if table is None:  # an alias: how many rows it holds is not known
                return QueryPlan(lines, scanned)
            count = functools.partial(rows_up_to, table=table.name, bound=TINY_TABLE_ROWS + 1)
            if await conn.run_trusted(count, deadline) <= TINY_TABLE_ROWS:
                return QueryPlan(lines)
            return QueryPlan(lines, scanned_table(lines))

    def columns_of(self, table: str) -> set[str]:
        """The lower-cased columns of ``table`` (empty when unknown)."""
        return self.schema.columns_of(table)

    # Writes

    def check_insert(self, request: InsertRequest) -> None:
        """Raise unless ``request`` fits the schema and may write its table."""
        plan_insert(request, self.schema, self.allowed)

    async def insert(
        self, request: InsertRequest, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        """Insert rows in one transaction; the tags are bumped after the COMMIT."""
        plan = plan_insert(request, self.schema, self.allowed)
        return await self._submit(plan, write, deadline, tags_of)

    async def update(
        self, statements: Statements, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        """Run DML statements in one transaction; the tags are bumped after the COMMIT."""
        return await self._submit(StatementPlan(statements), write, deadline, tags_of)

    async def submit_own(
        self, plan: WritePlan, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        """The service's own write (archival): queued and committed as a caller's is, its
        tags bumped after the COMMIT; the plan itself runs its statements past the guard."""
        return await self._submit(plan, write, deadline, tags_of)

    async def _submit(
        self, plan: WritePlan, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        if write.idempotency_key:
            window = self._limits.idempotency_window_seconds
            plan = idempotency.IdempotentPlan(plan, write.idempotency_key, window)

        def with_cascades(outcome: WriteOutcome) -> Sequence[str]:
            return tags_of(self._cascaded(outcome))

        # The writer hands the tags to the cache after the COMMIT, before answering. The
        # outcome's position is its transaction's count in the file (commit_counter): the
        # file is the only copy, so it only has to grow (a read asking for it is always met).
        return self._cascaded(await self.writer.submit(plan, deadline, with_cascades))

    def _cascaded(self, outcome: WriteOutcome) -> WriteOutcome:
        """``outcome`` naming also the tables its foreign-key actions changed."""
        tables = self.schema.changed_with(outcome.tables)
        if self._tracking.enabled or outcome.replayed:
            return replace(outcome, tables=tables)
        # Untracked, its keys are unknown: another replica on this file (or an older run's
        # entries in Redis) may hold reads keyed on them, so their generation goes.
        return replace(outcome, tables=tables, key_generations=tables)

    # Health and figures

    async def probe(self, deep: bool) -> list[Finding]:
        """The file, a probe query on a reader, the settings, the disk; integrity when deep."""
        started = time.monotonic()
        path = self.config.path
        unreadable = await asyncio.to_thread(probe.unreadable, path, self.file_identity)
        if unreadable:
            return [Finding("", Severity.CRITICAL, unreadable, probe.ms_since(started))]
        deadline = time.monotonic() + _PROBE_SECONDS * (10 if deep else 1)
        try:
            async with self.pool.reader(deadline) as conn:
                looked = await conn.run_trusted(lambda raw: probe.look(raw, deep), deadline)
        except errors.DataAccessError as exc:
            return [Finding("", Severity.CRITICAL, exc.message, probe.ms_since(started))]
        found = [Finding("", Severity.HEALTHY, "probe query answered", probe.ms_since(started))]
        found += probe.findings(looked, self._expected_indexes, deep)
        found.insert(4, await asyncio.to_thread(probe.disk, path))
        if self._replication is not None:
            found.append(await replication_finding(path, self._replication))
        if self._maintenance is not None:
            found += self._maintenance.findings()
        return found

    def figures(self) -> DatabaseFigures:
        """The reader pool's and the writer's counters."""
        writes = WriteSnapshot(self.name, **vars(self.writer.counters))
        runs = self._maintenance.runs() if self._maintenance is not None else ()
        return DatabaseFigures(self.pool.snapshot(), writes, self.writer.queued, maintenance=runs)

    def reset_figures(self) -> None:
        """Start the counters again."""
        self.pool.reset_stats()
        self.writer.reset_counters()

    def undelivered(self) -> tuple[list[str], Callable[[], None]]:
        """Tags a previous run committed but may not have bumped, and their receipt."""
        tags, rows = self._undelivered
        writer = self._writer  # bound now: the receipt may come after close()

        def delivered() -> None:
            if writer is not None:
                writer.delivered(rows)

        return tags, delivered

    def mover(self, rule: ArchiveRule, target: Database, tags_of: TagsOfWriteOn) -> SliceMover:
        """The steps moving ``rule``'s rows from this file to ``target`` (SQLite too)."""
        if not isinstance(target, SqliteDatabase):
            raise errors.FailedPrecondition(f"archive: {target.name} is not a SQLite database")
        return SqliteSliceMover(rule, self, target, tags_of)

    # Opening and closing

    async def open(self) -> None:
        """Open the writer (creating the file, in WAL mode), read the schema, open the readers."""
        conn = await self._open_connection(writer=True)
        if self._replication is not None:
            # Litestream's rule: one owner of checkpoints, and it is Litestream.
            await conn.run_trusted(lambda raw: raw.execute("PRAGMA wal_autocheckpoint = 0"))
        self._writer_conn = conn
        # stat() opens no descriptor, so it cannot drop SQLite's POSIX locks.
        stat = self.config.path.stat()
        self.file_identity = (stat.st_dev, stat.st_ino)
        try:
            await conn.run_trusted(idempotency.create)
            await conn.run_trusted(commit_counter.create)
            if self._use_outbox:
                await conn.run_trusted(lambda raw: raw.execute(outbox.CREATE_TABLE))
                self._undelivered = await conn.run_trusted(outbox.undelivered)
            self.schema = await conn.run_trusted(read_schema)
            self.allowed = conn.guard.allowed_tables
            capture = await self._capture_keys(conn)
            self._writer = WriteBatcher(
                conn,
                self._limits.write_queue_size,
                256 if self._limits.group_commit else 1,
                self._after_commit,
                self._use_outbox,
                self._tracer,
                capture=capture,
            )
            await self._writer.start()
            await self.pool.open()
            self._watch_outside_writes()
            await self._start_maintenance(conn, self._writer)
        except BaseException:
            await self.close()
            raise

    async def _start_maintenance(self, conn: SqliteConnection, writer: WriteBatcher) -> None:
        """Optimize now (migrations were applied before the open) and on its schedule."""
        auto_vacuum = await conn.run_trusted(
            lambda raw: int(raw.execute("PRAGMA auto_vacuum").fetchone()[0])
        )
        self._maintenance = Maintenance(self.name, self._settings, writer, auto_vacuum)
        await self._maintenance.start()

    async def _capture_keys(self, conn: SqliteConnection) -> KeyCapture | None:
        """Watch the keys writes change (temp triggers on the writer) when tracking is on;
        reads are keyed only on the tables it watches."""
        if not self._tracking.enabled:
            return None
        capture = KeyCapture(self._tracking, on_catalog=self._shapes.use_catalog)
        catalog = await conn.run_trusted(lambda raw: capture.install(raw, conn.guard))
        self._shapes.use_catalog(catalog)  # before the readers open: nothing was learnt yet
        return capture

    async def _open_reader(self) -> SqliteConnection:
        return await self._open_connection(writer=False)

    async def _open_connection(self, *, writer: bool) -> SqliteConnection:
        return await open_connection(
            self.name,
            self.config.path,
            self.config.allowed_tables,
            self._write_memo if writer else self._read_memo,
            self._settings,
            self._limits,
            writer=writer,
        )

    def _watch_outside_writes(self) -> None:
        every = self._settings.outside_writes_check_seconds
        if every > 0 and self._after_commit is not None and self._writer_conn is not None:
            watch = watch_data_version(self.name, self._writer_conn, self._after_commit, every)
            self._outside_writes = asyncio.ensure_future(watch)

    async def close(self) -> None:
        """Commit queued writes, close the readers, checkpoint the WAL and close the writer."""
        if self._maintenance is not None:
            await self._maintenance.close()
            self._maintenance = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._outside_writes is not None:
            self._outside_writes.cancel()
            await asyncio.gather(self._outside_writes, return_exceptions=True)
            self._outside_writes = None
        await self.pool.close()
        conn = self._writer_conn
        if conn is None:
            return
        try:
            if self._replication is None:  # else Litestream checkpoints, after its last sync
                await conn.run_trusted(_checkpoint)
        except errors.DataAccessError as exc:
            log.warning("checkpoint of %s failed: %s", self.name, exc.message)
        finally:
            await conn.close()
            self._writer_conn = None


def _checkpoint(raw: sqlite3.Connection) -> None:
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
