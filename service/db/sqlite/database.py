"""One configured SQLite database: its reader pool, its group-commit writer and its schema."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from opentelemetry import trace

from service import errors
from service.config import DatabaseConfig, Limits, SqliteSettings
from service.db.sqlite import idempotency, outbox
from service.db.sqlite.connection import SqliteConnection, open_reader, open_writer
from service.db.sqlite.group_commit import AfterCommit, WriteBatcher
from service.db.sqlite.guard import Guard, ShapeMemo, StatementShape
from service.db.sqlite.pool import PoolPolicy, ReaderPool
from service.db.sqlite.schema import Schema, read_schema
from service.values import Params

log = logging.getLogger(__name__)


class Database:
    """Opens, serves and closes one database file."""

    def __init__(
        self,
        config: DatabaseConfig,
        settings: SqliteSettings,
        limits: Limits,
        after_commit: AfterCommit | None = None,
        use_outbox: bool = False,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.name = config.name
        self._tracer = tracer
        self._after_commit = after_commit
        self._use_outbox = use_outbox
        self.undelivered: tuple[list[str], list[int]] = ([], [])
        self.config = config
        self._settings = settings
        self._limits = limits
        self._read_memo = ShapeMemo()
        self._write_memo = ShapeMemo()
        self.schema = Schema({})
        self.allowed: frozenset[str] = frozenset()
        self._writer_conn: SqliteConnection | None = None
        self._writer: WriteBatcher | None = None
        self.failure: errors.DataAccessError | None = None
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

    def read_shape(self, sql: str) -> StatementShape | None:
        """The tables ``sql`` reads, if a reader of this database prepared it before."""
        return self._read_memo.get(sql)

    async def learn_shape(self, sql: str, params: Params, deadline: float) -> StatementShape | None:
        """Prepare ``sql`` under EXPLAIN, without running it, to learn which tables it reads."""

        def explain(raw: sqlite3.Connection, guard: Guard) -> StatementShape | None:
            guard.begin(sql)
            raw.execute(f"EXPLAIN {sql}", params).close()
            return guard.shape_of(sql)

        async with self.pool.reader(deadline) as conn:
            return await conn.run(lambda raw: explain(raw, conn.guard), deadline, field="sql")

    @property
    def writer(self) -> WriteBatcher:
        """The database's group-commit writer."""
        assert self._writer is not None, "Database.open() first"
        return self._writer

    async def open(self) -> None:
        """Open the writer (creating the file, in WAL mode), read the schema, open the readers."""
        conn = await open_writer(
            self.name,
            self.config.path,
            self.config.allowed_tables,
            self._write_memo,
            self._settings,
            self._limits,
        )
        self._writer_conn = conn
        # stat() opens no descriptor, so it cannot drop SQLite's POSIX locks.
        stat = self.config.path.stat()
        self.file_identity = (stat.st_dev, stat.st_ino)
        try:
            await conn.run_trusted(idempotency.create)
            if self._use_outbox:
                await conn.run_trusted(lambda raw: raw.execute(outbox.CREATE_TABLE))
                self.undelivered = await conn.run_trusted(outbox.undelivered)
            self.schema = await conn.run_trusted(read_schema)
            self.allowed = conn.guard.allowed_tables
            self._writer = WriteBatcher(
                conn,
                self._limits.write_queue_size,
                256 if self._limits.group_commit else 1,
                self._after_commit,
                self._use_outbox,
                self._tracer,
            )
            await self._writer.start()
            await self.pool.open()
            self._watch_outside_writes()
        except BaseException:
            await self.close()
            raise

    async def _open_reader(self) -> SqliteConnection:
        return await open_reader(
            self.name,
            self.config.path,
            self.config.allowed_tables,
            self._read_memo,
            self._settings,
            self._limits,
        )

    def _watch_outside_writes(self) -> None:
        every = self._settings.outside_writes_check_seconds
        if every > 0 and self._after_commit is not None and self._writer_conn is not None:
            watch = _watch_data_version(self.name, self._writer_conn, self._after_commit, every)
            self._outside_writes = asyncio.ensure_future(watch)

    async def close(self) -> None:
        """Commit queued writes, close the readers, checkpoint the WAL and close the writer."""
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
            await conn.run_trusted(_checkpoint)
        except errors.DataAccessError as exc:
            log.warning("checkpoint of %s failed: %s", self.name, exc.message)
        finally:
            await conn.close()
            self._writer_conn = None


async def _watch_data_version(
    name: str, writer: SqliteConnection, after_commit: AfterCommit, every: float
) -> None:
    """Invalidate all that is cached from a database when another process commits to it.

    The service's own commits bump exactly the tags they change. A commit by
    anything else (the sqlite3 shell, a job, `migrate`, a second service) is
    known only to SQLite: PRAGMA data_version on the writer's connection
    changes when, and only when, another connection committed. Such a write
    is seen within ``every`` seconds and drops every entry of the database.
    """
    seen: int | None = None
    while True:
        try:
            # Shielded: a cancelled hop is interrupted, and on this shared connection
            # the interrupt would land on whatever the writer runs at that moment.
            hop = asyncio.ensure_future(writer.run_trusted(_data_version))
            hop.add_done_callback(_observed)
            version = await asyncio.shield(hop)
        except errors.DataAccessError as exc:
            log.warning("data_version of %s unreadable: %s", name, exc.message)
        else:
            if seen is not None and version != seen:
                log.info("another process wrote to %s: its cached reads are dropped", name)
                try:
                    await after_commit([f"database:{name}"], None)
                except Exception:  # the next change is still to be seen
                    log.exception("dropping the cached reads of %s failed", name)
            seen = version
        await asyncio.sleep(every)


def _observed(hop: asyncio.Future[int]) -> None:
    # A hop left running by a cancelled watcher has nobody to read its error.
    if not hop.cancelled():
        hop.exception()


def _data_version(raw: sqlite3.Connection) -> int:
    return int(raw.execute("PRAGMA data_version").fetchone()[0])


def _checkpoint(raw: sqlite3.Connection) -> None:
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
