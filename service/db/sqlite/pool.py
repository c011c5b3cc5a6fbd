"""A bounded pool of reader connections for one database that cannot leak.

``async with pool.reader(deadline) as conn`` waits for an idle connection
until its timeout, raises ResourceExhausted past it, and always gives the
connection back (a broken one is replaced). Each connection is a thread, so
the pool size is the database's reader thread budget.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from service import errors
from service.db.door import PoolSnapshot
from service.db.sqlite.connection import SqliteConnection

log = logging.getLogger(__name__)
Opener = Callable[[], Awaitable[SqliteConnection]]


@dataclass(frozen=True)
class PoolPolicy:
    """How many readers, how long to wait for one, and when to renew one."""

    size: int = 4
    acquire_timeout: float = 5.0
    idle_timeout: float = 300.0
    max_lifetime: float = 3600.0
    validate_after_idle: float = 30.0


class ReaderPool:
    """N reader connections to one database, lent one at a time."""

    def __init__(
        self,
        database: str,
        policy: PoolPolicy,
        open_reader: Opener,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.database = database
        self._tracer = tracer or trace.NoOpTracerProvider().get_tracer(__name__)
        self.size = policy.size
        self._policy = policy
        self._open_reader = open_reader
        self._acquire_timeout = policy.acquire_timeout
        self._idle: asyncio.Queue[SqliteConnection] = asyncio.Queue()
        self._all: set[SqliteConnection] = set()
        self._waiters = 0
        self._waits_ms: deque[float] = deque(maxlen=2048)
        self._timeouts = 0
        self._recycled = 0
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Open every reader connection."""
        try:
            for _ in range(self.size):
                conn = await self._open_reader()
                self._all.add(conn)
                self._idle.put_nowait(conn)
        except BaseException:
            await self.close()
            raise

    @asynccontextmanager
    async def reader(self, deadline: float | None = None) -> AsyncIterator[SqliteConnection]:
        """Lend an idle reader until the block ends, whatever way it ends."""
        with self._tracer.start_as_current_span("pool.acquire") as span:
            span.set_attribute("db.namespace", self.database)
            started = time.monotonic()
            conn = await self._acquire(deadline)
            span.set_attribute("dataaccess.pool.wait_ms", (time.monotonic() - started) * 1000)
        try:
            yield conn
        finally:
            self._release(conn)

    async def _acquire(self, deadline: float | None) -> SqliteConnection:
        started = time.monotonic()
        timeout = self._acquire_timeout
        deadline_first = deadline is not None and deadline - started < timeout
        if deadline is not None:
            timeout = min(timeout, max(deadline - started, 0.0))
        self._waiters += 1
        try:
            if self._waiters == 1 and not self._idle.empty():  # nobody queued: no timer, no task
                conn = self._idle.get_nowait()
            else:
                conn = await asyncio.wait_for(self._idle.get(), timeout)
        except TimeoutError:
            self._timeouts += 1
            if deadline_first:
                raise errors.DeadlineExceeded(
                    f"{self.database}: deadline passed waiting for a reader connection"
                ) from None
            raise errors.ResourceExhausted(
                f"{self.database}: no reader connection free within {timeout:.2f} s"
            ) from None
        finally:
            self._waiters -= 1
        self._waits_ms.append((time.monotonic() - started) * 1000)
        try:
            return await self._renewed_if_stale(conn)
        except BaseException:
            self._release(conn)
            raise

    async def _renewed_if_stale(self, conn: SqliteConnection) -> SqliteConnection:
        """``conn``, or a fresh one if it is too old, idle too long, or fails a probe."""
        now, policy = time.monotonic(), self._policy
        stale = (
            now - conn.opened_at > policy.max_lifetime or now - conn.last_used > policy.idle_timeout
        )
        if not stale and now - conn.last_used > policy.validate_after_idle:
            try:
                await conn.run(_probe, now + 1.0)
            except errors.DataAccessError:
                stale = True
        if not stale:
            return conn
        fresh = await self._open_reader()
        self._all.discard(conn)
        self._all.add(fresh)
        self._recycled += 1
        # Closed in the background: a caller cancelled here must not strand either one.
        self._background(_close_quietly(conn))
        return fresh

    def _release(self, conn: SqliteConnection) -> None:
        if conn not in self._all:
            return  # renewed meanwhile: its replacement is the one lent out
        conn.last_used = time.monotonic()
        if not conn.broken:
            self._idle.put_nowait(conn)
            return
        self._all.discard(conn)
        self._background(self._replace(conn))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, broken: SqliteConnection) -> None:
        """Swap a broken reader for a new one, retrying while the file is unavailable."""
        await _close_quietly(broken)
        delay = 0.1
        while not self._closed:
            try:
                conn = await self._open_reader()
            except errors.DataAccessError as exc:
                log.warning("reader for %s not reopened: %s", self.database, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._recycled += 1
            self._all.add(conn)
            self._idle.put_nowait(conn)
            return

    def snapshot(self) -> PoolSnapshot:
        """The pool's counters now."""
        waits = sorted(self._waits_ms)
        return PoolSnapshot(
            database=self.database,
            size=self.size,
            in_use=self.size - self._idle.qsize(),
            waiters=self._waiters,
            acquire_p50_ms=_percentile(waits, 0.50),
            acquire_p99_ms=_percentile(waits, 0.99),
            timeouts=self._timeouts,
            recycled=self._recycled,
        )

    def reset_stats(self) -> None:
        """Clear the counters."""
        self._waits_ms.clear()
        self._timeouts = 0
        self._recycled = 0

    async def close(self) -> None:
        """Close every connection, idle or not."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for conn in list(self._all):
            await _close_quietly(conn)
        self._all.clear()


async def _close_quietly(conn: SqliteConnection) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone either way
        log.debug("closing a reader failed", exc_info=True)


def _probe(raw: sqlite3.Connection) -> None:
    raw.execute("SELECT 1").fetchall()


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
