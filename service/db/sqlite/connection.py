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
import functools
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
        if deadline is not None and deadline <= time.monotonic():
            raise errors.DeadlineExceeded(f"{self.database}: deadline passed before the statement")
        hop = self._queue(functools.partial(work, self.raw))
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

    def _queue(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Hand ``call`` to the connection's thread; the future it settles.

        aiosqlite's one-hop primitive (``_execute``) is a coroutine: run as a
        task, awaited with a timeout, it cost a task, two more futures and a
        loop turn per statement. Its queue is taken directly instead.
        """
        if not self._conn._running:
            raise ValueError("Connection closed")
        hop: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._conn._tx.put_nowait((hop, call))
        return hop

    async def _await_hop(self, hop: asyncio.Future[T], deadline: float | None) -> T:
        expiry = None if deadline is None else _Expiry(self.raw, hop, deadline)
        try:
            return await hop
        except asyncio.CancelledError:
            # The statement may still be running on the thread: stop it and wait.
            await self._let_go()
            raise
        except sqlite3.OperationalError:
            if expiry is not None and expiry.fired:
                raise errors.DeadlineExceeded(
                    f"{self.database}: deadline passed, statement interrupted"
                ) from None
            raise
        finally:
            if expiry is not None:
                expiry.cancel()

    async def _let_go(self) -> None:
        """Interrupt whatever runs on the thread until it has let go of the connection."""
        # The thread takes its queue in order: once a no-op queued now has run, so
        # has everything before it. An interrupt that lands before the thread started
        # the statement is lost, so it is repeated until then. A further cancel (gRPC
        # may cancel a handler twice at its deadline) must not end this wait: the
        # statement would run on in a reader back in the pool.
        barrier = self._queue(_nothing)
        cancelled = False
        while not barrier.done():
            self.raw.interrupt()
            try:
                await asyncio.wait({barrier}, timeout=0.01)
            except asyncio.CancelledError:
                cancelled = True
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
        set_auto_vacuum(raw, settings.auto_vacuum)  # a new file's; before WAL mode
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


def set_auto_vacuum(raw: sqlite3.Connection, mode: str) -> None:
    """Give a file that holds no page yet ``mode`` (before WAL mode: after it, it is kept);
    an existing file keeps its own (see ``maintenance``)."""
    if mode != "NONE" and raw.execute("PRAGMA page_count").fetchone()[0] == 0:
        raw.execute(f"PRAGMA auto_vacuum={mode}")


def _nothing() -> None:
    return None


class _Expiry:
    """A statement's deadline: from then on its connection is interrupted every 10 ms
    (an interrupt landing before the statement starts is lost) until the hop ends."""

    def __init__(self, raw: sqlite3.Connection, hop: asyncio.Future[T], deadline: float) -> None:
        self._raw = raw
        self._hop = hop
        self.fired = False
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(deadline - time.monotonic(), 0.0), self._fire)

    def _fire(self) -> None:
        if self._hop.done():
            return
        self.fired = True
        self._raw.interrupt()
        self._timer = asyncio.get_running_loop().call_later(0.01, self._fire)

    def cancel(self) -> None:
        self._timer.cancel()
