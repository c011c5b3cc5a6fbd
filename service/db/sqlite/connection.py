"""One SQLite connection: how it opens, and one-hop, deadline-bounded work on its thread.

aiosqlite gives every connection a worker thread. Each call here runs one
function there (execute and fetch together), because every extra await is a
thread hop that costs about a third of a point query's throughput.
Cancelling the await does not stop SQLite, so past the deadline, or when
the caller goes away, the statement is interrupted and the hop awaited to
its end: the connection comes back idle and usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import aiosqlite

from service import errors
from service.config import Limits, SqliteSettings
from service.db.sqlite.error_map import translate
from service.db.sqlite.guard import Guard, ShapeMemo, read_catalog

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]


class SqliteConnection:
    """An aiosqlite connection with its guard, running one function per hop."""

    def __init__(self, conn: aiosqlite.Connection, guard: Guard, database: str) -> None:
        self._conn = conn
        self.guard = guard
        self.database = database
        self.broken = False
        self.opened_at = time.monotonic()
        self.last_used = self.opened_at

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection; touch it only from work run on its thread."""
        return self._conn._conn

    async def run(
        self, work: Work[T], deadline: float | None = None, field: str | None = None
    ) -> T:
        """Run ``work(raw)`` on the connection's thread, interrupted at ``deadline`` (monotonic)."""
        # aiosqlite's public calls are one statement each; _execute is its one-hop primitive.
        hop: asyncio.Future[T] = asyncio.ensure_future(
            self._conn._execute(work, self.raw)  # type: ignore[no-untyped-call]
        )
        try:
            return await self._await_hop(hop, deadline)
        except (sqlite3.Error, ValueError, OverflowError, MemoryError) as exc:
            raise self._translate(exc, field) from exc

    async def run_trusted(self, work: Work[T], deadline: float | None = None) -> T:
        """Run the service's own statements (schema, checkpoint, checks) past the guard."""

        def trusted(raw: sqlite3.Connection) -> T:
            self.guard.trusted = True
            try:
                return work(raw)
            finally:
                self.guard.trusted = False

        return await self.run(trusted, deadline)

    async def _await_hop(self, hop: asyncio.Future[T], deadline: float | None) -> T:
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if timeout == 0.0 and not hop.done():
            # Interrupting before the thread starts the statement is a no-op in SQLite.
            await self._interrupt(hop)
            raise errors.DeadlineExceeded(f"{self.database}: deadline passed before the statement")
        try:
            done, _ = await asyncio.wait({hop}, timeout=timeout)
        except asyncio.CancelledError:
            await self._interrupt(hop)
            raise
        if not done:
            await self._interrupt(hop)
            raise errors.DeadlineExceeded(
                f"{self.database}: deadline passed, statement interrupted"
            )
        return hop.result()

    async def _interrupt(self, hop: asyncio.Future[T]) -> None:
        """Stop the running statement and wait for the thread to let go of it."""
        # An interrupt that lands before the thread started the statement is lost,
        # so it is repeated until the hop ends. A further cancel (gRPC may cancel a
        # handler twice at its deadline) must not end this wait: the statement would run on
        # in a reader back in the pool, and its error would be logged as never retrieved.
        cancelled = False
        while not hop.done():
            self.raw.interrupt()
            try:
                await asyncio.wait({hop}, timeout=0.01)
            except asyncio.CancelledError:
                cancelled = True
        if not hop.cancelled():
            hop.exception()  # the interrupted statement's error is expected and dropped
        self.guard.trusted = False
        if cancelled:
            raise asyncio.CancelledError

    def _translate(self, exc: Exception, field: str | None) -> errors.DataAccessError:
        assert isinstance(exc, sqlite3.Error | ValueError | OverflowError | MemoryError)
        mapped = translate(
            exc,
            database=self.database,
            writer=self.guard.writer,
            refusal=self.guard.refusal,
            field=field,
        )
        if isinstance(mapped, errors.DataLoss | errors.Unavailable):
            self.broken = True
        return mapped

    async def close(self) -> None:
        """Close the connection and stop its thread."""
        await self._conn.close()


async def open_connection(
    name: str,
    path: Path,
    allowed: frozenset[str] | None,
    memo: ShapeMemo,
    settings: SqliteSettings,
    limits: Limits,
    *,
    writer: bool,
) -> SqliteConnection:
    """The database's one read-write connection (in WAL mode, behind the writer's guard),
    or a read-only one (mode=ro, query_only, behind a default-deny guard)."""
    use_temp_dir(settings)
    conn = await _connect(f"file:{quote(str(path))}?mode={'rwc' if writer else 'ro'}", name)
    guard = Guard(frozenset(), memo, writer=writer)
    wrapped = SqliteConnection(conn, guard, name)
    await _prepared(
        wrapped, lambda raw: _prepare(raw, guard, allowed, settings, limits, writer=writer)
    )
    return wrapped


async def _prepared(conn: SqliteConnection, prepare: Work[None]) -> None:
    """Run ``prepare`` on a new connection; close it (and its thread) if that fails."""
    try:
        await conn.run(prepare)
    except BaseException:
        await conn.close()
        raise


def heap_limit_bytes(limits: Limits) -> int:
    """SQLite's hard heap limit: 3/8 of the memory budget, the rest being Python's."""
    # A row SQLite holds is copied into Python objects before it is counted, so the
    # Python side needs about as much again as SQLite's heap, plus the process itself.
    return limits.memory_budget_mib * 1024 * 1024 * 3 // 8


def use_temp_dir(settings: SqliteSettings) -> None:
    """Point SQLite's temporary files at ``settings.temp_dir``, once per process."""
    # SQLite 3.40 reads SQLITE_TMPDIR when the sqlite3 module initialises it, before
    # any config is read, so setting the variable now does nothing; the (deprecated,
    # process-wide) pragma does. It is set only while unset: changing it while other
    # connections may be making temporary files is unsafe.
    if settings.temp_dir is None:
        return
    settings.temp_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(":memory:")) as probe:
        if probe.execute("PRAGMA temp_store_directory").fetchone():
            return
        quoted = str(settings.temp_dir).replace("'", "''")
        try:
            probe.execute(f"PRAGMA temp_store_directory = '{quoted}'")
        except sqlite3.Error as exc:
            raise errors.Unavailable(f"sqlite.temp_dir {settings.temp_dir}: {exc}") from exc


async def _connect(uri: str, name: str) -> aiosqlite.Connection:
    try:
        return await aiosqlite.connect(
            uri, uri=True, isolation_level=None, cached_statements=256, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise translate(exc, database=name, writer=False) from exc


def _prepare(
    raw: sqlite3.Connection,
    guard: Guard,
    allowed: frozenset[str] | None,
    settings: SqliteSettings,
    limits: Limits,
    *,
    writer: bool,
) -> None:
    if writer:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute(f"PRAGMA synchronous={settings.synchronous}")
    raw.execute(f"PRAGMA busy_timeout={int(settings.busy_timeout_ms)}")
    # Process-wide, so every connection sets the same figures: readers and writer share them.
    raw.execute(f"PRAGMA hard_heap_limit={heap_limit_bytes(limits)}")
    raw.execute(f"PRAGMA soft_heap_limit={heap_limit_bytes(limits) * 2 // 3}")
    raw.execute(f"PRAGMA cache_size=-{int(settings.cache_size_kib)}")
    raw.execute(f"PRAGMA mmap_size={int(settings.mmap_size_bytes)}")
    raw.execute(f"PRAGMA temp_store={settings.temp_store}")
    raw.execute("PRAGMA foreign_keys=ON")
    if writer and settings.max_page_count:
        raw.execute(f"PRAGMA max_page_count={int(settings.max_page_count)}")
    if not writer:
        raw.execute("PRAGMA query_only=ON")
    raw.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # fails fast on a non-database
    raw.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    raw.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, limits.max_sql_length)
    raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limits.max_params)
    raw.setlimit(sqlite3.SQLITE_LIMIT_EXPR_DEPTH, 200)
    raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.max_result_bytes)
    guard.learn(read_catalog(raw), allowed)  # declared names, default tables, shadow tables
    raw.set_authorizer(guard)
