"""One configured PostgreSQL database behind the ``Database`` door.

It opens a writer pool (the configured role) and a reader pool (the reader
role), installs the capture triggers, keeps the catalog current (a cheap
fingerprint of the schema, polled), listens for writes made by others, and
runs the door's verbs: reads in READ ONLY transactions whose
``statement_timeout`` is the call's remaining deadline, each write RPC in one
transaction with its outbox row and idempotency record.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import asyncpg
from opentelemetry import trace

from service import errors
from service.config import ArchiveRule, Limits, PostgresDatabaseConfig
from service.db.door import (
    PRIMARY,
    AfterCommit,
    Database,
    DatabaseFigures,
    Finding,
    Freshness,
    KeyTracking,
    QueryPlan,
    Rows,
    SliceMover,
    Statements,
    TagsOfWrite,
    TagsOfWriteOn,
    WriteOutcome,
)
from service.db.postgres import health
from service.db.postgres.catalog import Catalog
from service.db.postgres.connections import ReaderPool, create_pool, timeout_ms
from service.db.postgres.error_map import translate
from service.db.postgres.replicas import ReadRouting
from service.db.postgres.session import Conn
from service.db.postgres.setup import set_up
from service.db.postgres.shapes import PgShape, ShapeMemo, check_write, explain, learn
from service.db.postgres.streams import PgRowStream, fetch_rows
from service.db.postgres.watch import Watch
from service.db.postgres.writer import PgWriter
from service.db.postgres.writes import plan_insert, undelivered
from service.domain import InsertRequest, WriteOptions
from service.fingerprint import fingerprint
from service.values import Params

log = logging.getLogger(__name__)
DB_SYSTEM = "postgresql"
_WRITE_MEMO_SIZE = 1024
REOPEN_SECONDS = 2.0


class PostgresDatabase:
    """Opens, serves and closes one PostgreSQL database."""

    def __init__(
        self,
        config: PostgresDatabaseConfig,
        limits: Limits,
        after_commit: AfterCommit | None = None,
        use_outbox: bool = False,
        tracer: trace.Tracer | None = None,
        tracking: KeyTracking | None = None,
        schema_check_seconds: float = 0.5,
    ) -> None:
        self.config = config
        self._limits = limits
        self._after_commit = after_commit
        self._use_outbox = use_outbox
        self._tracer = tracer or trace.NoOpTracerProvider().get_tracer(__name__)
        self._tracking = tracking or KeyTracking(enabled=False)
        self._schema_check_seconds = schema_check_seconds
        self.catalog = Catalog(config.schema)
        self._version = [0]
        self._memo = ShapeMemo()
        self._write_memo: dict[str, frozenset[str]] = {}  # checked DML -> its tables
        self._failure: errors.DataAccessError | None = None
        self._writers: asyncpg.Pool | None = None
        self._readers: ReaderPool | None = None
        self._routing: ReadRouting | None = None
        self._writer: PgWriter | None = None
        self._replication_lag: float | None = None  # as the last health probe found it
        self._watch: Watch | None = None
        self._reopening: asyncio.Future[None] | None = None
        self._origin = uuid.uuid4().hex  # tells this process's notifications from others'
        self._undelivered: tuple[list[str], list[int]] = ([], [])

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
        """Every table's name, for fingerprints."""
        return self.catalog.names

    @property
    def readers(self) -> ReaderPool:
        """The reader pool."""
        assert self._readers is not None, "open() first"
        return self._readers

    @property
    def routing(self) -> ReadRouting:
        """Which server answers a read."""
        assert self._routing is not None, "open() first"
        return self._routing

    @property
    def writer(self) -> PgWriter:
        """The writer."""
        assert self._writer is not None, "open() first"
        return self._writer

    # Reads

    async def read_shape(self, sql: str, params: Params, deadline: float) -> PgShape:
        """What ``sql`` reads and calls: remembered, or learnt from its generic plan."""
        if isinstance(params, dict):
            raise errors.InvalidArgument(
                f"{self.name}: PostgreSQL takes positional $n parameters, not named ones",
                field="named_params",
            )
        shape = self._memo.get(sql)
        if shape is not None:
            return shape
        version = self._version[0]
        async with self.readers.reader(deadline) as connection:
            try:
                async with connection.transaction(readonly=True):
                    ms = timeout_ms(deadline, self.name)
                    await connection.execute(f"SET LOCAL statement_timeout = {ms}")
                    keys = self._tracking.enabled
                    shape = await learn(connection, sql, self.catalog, self.config, keys)
                    shape = replace(shape, version=version, catalog_version=self._version)
            except asyncpg.PostgresError as exc:
                raise translate(exc, database=self.name) from exc
        self._memo.put(sql, shape)
        return shape

    async def read(
        self,
        sql: str,
        params: Params,
        max_rows: int,
        max_bytes: int,
        deadline: float,
        freshness: Freshness = PRIMARY,
    ) -> Rows:
        """Run a read in a READ ONLY transaction and fetch up to ``max_rows`` rows."""
        shape = await self.read_shape(sql, params, deadline)
        assert isinstance(params, tuple)
        with self._tracer.start_as_current_span(
            "db.query", kind=trace.SpanKind.CLIENT, attributes=self._query_attributes(sql)
        ) as span:
            started = time.monotonic()
            async with self.routing.reader(freshness, deadline) as connection:
                columns, rows, more = await fetch_rows(
                    connection, self.name, sql, params, max_rows, max_bytes, deadline, shape.replan
                )
            span.set_attribute("db.response.returned_rows", len(rows))
        elapsed_ms = (time.monotonic() - started) * 1000
        return Rows(columns, rows, more, shape.reads, elapsed_ms)

    @asynccontextmanager
    async def stream(
        self,
        sql: str,
        params: Params,
        chunk_bytes: int,
        deadline: float,
        freshness: Freshness = PRIMARY,
    ) -> AsyncIterator[PgRowStream]:
        """Run a read through a server-side cursor, fetched chunk by chunk."""
        shape = await self.read_shape(sql, params, deadline)
        assert isinstance(params, tuple)
        span = self._tracer.start_span(
            "db.query", kind=trace.SpanKind.CLIENT, attributes=self._query_attributes(sql)
        )
        rows: PgRowStream | None = None
        try:
            async with self.routing.reader(freshness, deadline) as connection:
                rows = PgRowStream(connection, self.name, shape.reads, chunk_bytes, deadline)
                try:
                    await rows.open(sql, params, shape.replan)
                    yield rows
                finally:
                    await rows.close()
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
            raise
        finally:
            span.set_attribute("db.response.returned_rows", rows.sent if rows else 0)
            span.end()

    def _query_attributes(self, sql: str) -> dict[str, str]:
        return {
            "db.system.name": DB_SYSTEM,
            "db.namespace": self.name,
            "db.query.text": fingerprint(sql, self.catalog.names),
        }

    async def plan_of(self, sql: str, params: Params, deadline: float) -> QueryPlan:
        """PostgreSQL's generic plan of a read, and a large table it scans whole, if any."""
        shape = await self.read_shape(sql, params, deadline)
        async with self.readers.reader(deadline) as connection:
            async with connection.transaction(readonly=True):
                count = len(params) if isinstance(params, tuple) else 0
                facts = await explain(connection, sql, count)
        scanned = next((s.table for s in facts.scans if s.table in shape.reads), None)
        return QueryPlan([facts.top_node], scanned if facts.top_node == "Seq Scan" else None)

    def columns_of(self, table: str) -> set[str]:
        """The lower-cased columns of ``table`` (empty when unknown)."""
        info = self.catalog.table(table)
        return {c.lower() for c in info.columns} if info else set()

    # Writes

    def check_insert(self, request: InsertRequest) -> None:
        """Raise unless ``request`` fits the schema and may write its table."""
        plan_insert(request, self.catalog, self.config.allowed_tables)

    async def insert(
        self, request: InsertRequest, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        """COPY the rows in, in one transaction; the tags are bumped after the COMMIT."""
        plan = plan_insert(request, self.catalog, self.config.allowed_tables)
        return await self.writer.insert(plan, write, deadline, tags_of)

    async def update(
        self, statements: Statements, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        """Run DML statements in one transaction; the tags are bumped after the COMMIT."""
        return await self.writer.update(statements, write, deadline, tags_of)

    # Health and figures

    async def probe(self, deep: bool) -> list[Finding]:
        """Connectivity, role, replication lag, size and long transactions."""
        return await health.probe(self.readers, self._writers, self.name, deep, self._saw_lag)

    def _saw_lag(self, seconds: float) -> None:
        self._replication_lag = seconds

    def figures(self) -> DatabaseFigures:
        """The reader pool's and the writer's counters, and who answered the reads."""
        routing = self.routing
        pool = replace(
            self.readers.snapshot(),
            replica_reads=routing.replica_reads,
            primary_reads=routing.primary_reads,
        )
        return DatabaseFigures(pool, self.writer.snapshot(), 0, self._replication_lag)

    def reset_figures(self) -> None:
        """Start the counters again."""
        self.readers.reset_stats()
        self.routing.reset()
        self.writer.reset_counters()

    def undelivered(self) -> tuple[list[str], Callable[[], None]]:
        """Tags a previous run committed but may not have bumped, and their receipt."""
        tags, rows = self._undelivered
        writer = self._writer

        def delivered() -> None:
            if writer is not None:
                writer.delivered(rows)

        return tags, delivered

    def mover(self, rule: ArchiveRule, target: Database, tags_of: TagsOfWriteOn) -> SliceMover:
        """Archival moves rows between SQLite files only (the Config refuses it here)."""
        raise errors.FailedPrecondition(f"archive: {self.name} is not a SQLite database")

    # Opening and closing

    async def open(self) -> None:
        """Connect, set up the service's tables, triggers and reader role, and watch.

        PostgreSQL unreachable at start is not fatal: the database answers UNAVAILABLE
        and connects again every ``REOPEN_SECONDS`` until it serves.
        """
        try:
            await self._open()
        except errors.Unavailable as exc:
            await self._close_parts()
            log.error("%s unreachable, trying again: %s", self.name, exc.message)
            self._failure = exc
            self._reopening = asyncio.ensure_future(self._reopen())
        except BaseException:
            await self._close_parts()
            raise

    async def _reopen(self) -> None:
        while True:
            await asyncio.sleep(REOPEN_SECONDS)
            try:
                await self._open()
            except errors.Unavailable as exc:
                await self._close_parts()
                self._failure = exc
                continue
            except Exception:  # noqa: BLE001 - a setup error: keep answering it, keep trying
                log.exception("opening %s failed", self.name)
                await self._close_parts()
                continue
            log.info("%s reachable again: serving", self.name)
            self._failure = None
            return

    async def _open(self) -> None:
        config = self.config
        self._writers = await create_pool(config, config.pool_size)
        async with self._writers.acquire() as connection:
            try:
                await self._prepare_schema(connection)
            except asyncpg.PostgresError as exc:
                raise translate(exc, database=self.name) from exc
        size, wait = self._limits.readers_per_database, self._limits.acquire_timeout_seconds
        readers = await create_pool(config, size, config.reader)
        self._readers = ReaderPool(self.name, readers, size, wait)
        replicas = [
            ReaderPool(
                self.name,
                await create_pool(config, size, config.reader, url, eager=False),
                size,
                wait,
            )
            for url in config.replicas
        ]
        self._routing = ReadRouting(self._readers, replicas, config.replica_wait_seconds)
        self._writer = PgWriter(
            self.name,
            config.schema,
            self._writers,
            self._after_commit,
            self._use_outbox,
            self._tracer,
            self._limits.idempotency_window_seconds,
            self._tracking,
            lambda: self.catalog,
            self._checked_write,
            self._origin,
        )
        self._watch = Watch(
            self.name,
            config.url,
            config.schema,
            self._writers,
            self._after_commit,
            self._origin,
            lambda table: self.catalog.with_descendants(frozenset({table})),
            self._schema_changed,
            self._schema_check_seconds,
        )
        await self._watch.start(self.catalog.fingerprint)

    async def _prepare_schema(self, connection: Conn) -> None:
        self.catalog = await set_up(connection, self.config, self._tracking)
        if self._use_outbox:
            self._undelivered = await undelivered(connection, self.config.schema)

    async def _checked_write(self, connection: Conn, sql: str) -> frozenset[str]:
        """Refuse a BatchUpdate statement that is not DML on allowed tables; the tables it
        writes."""
        known = self._write_memo.get(sql)
        if known is not None:
            return known
        tables = await check_write(connection, sql, self.catalog, self.config)
        if len(self._write_memo) >= _WRITE_MEMO_SIZE:
            self._write_memo.clear()
        self._write_memo[sql] = tables
        return tables

    async def _schema_changed(self, connection: Conn, fingerprint: str) -> None:
        """Reinstall the triggers, reload the catalog, forget learnt shapes, drop cached reads."""
        self.catalog = await set_up(connection, self.config, self._tracking)
        self._version[0] += 1
        self._memo.clear()
        self._write_memo.clear()
        # Statements prepared on the old schema would fail inside a transaction.
        for pool in (self._writers, self.readers.pool):
            if pool is not None:
                await pool.expire_connections()
        if self._after_commit is not None:
            await self._after_commit([f"database:{self.name}"], None)

    async def close(self) -> None:
        """Stop watching (and connecting again), close the pools."""
        if self._reopening is not None:
            self._reopening.cancel()
            await asyncio.gather(self._reopening, return_exceptions=True)
            self._reopening = None
        await self._close_parts()

    async def _close_parts(self) -> None:
        if self._watch is not None:
            await self._watch.close()
            self._watch = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._routing is not None:
            await self._routing.close()
            self._routing = None
        if self._readers is not None:
            await self._readers.pool.close()
            self._readers = None
        if self._writers is not None:
            await self._writers.close()
            self._writers = None
