"""Reads on a reader connection: a READ ONLY transaction whose ``statement_timeout`` is the
call's remaining deadline, rows fetched through a portal so memory stays bounded
(``Query`` up to its row cap, ``QueryStream`` chunk by chunk from a server-side cursor)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from service import errors
from service.db.door import Column
from service.db.postgres.connections import timeout_ms
from service.db.postgres.error_map import translate
from service.db.postgres.session import Conn
from service.db.postgres.values import plain_row
from service.values import SqlRow, SqlValue, row_bytes

_CHUNK = 256  # rows per round trip: few enough that wide rows meet the byte cap early


async def prepared(connection: Conn, sql: str, replan: bool = False) -> Any:
    """``sql`` prepared on ``connection``, from the connection's statement cache.

    ``Connection.prepare`` bypasses that cache (a Parse round trip per read, and one more
    to close the statement later); ``_prepare(use_cache=True)`` is what asyncpg's own
    ``fetch`` uses, and it drops a statement the schema made stale. ``replan``: a new
    statement, planned now.
    """
    if replan:
        return await connection.prepare(sql)
    cached_prepare = getattr(connection, "_prepare")  # noqa: B009 - not in the stubs
    return await cached_prepare(sql, use_cache=True)


def _columns(statement: Any) -> list[Column]:
    return [(a.name, a.type.name) for a in statement.get_attributes()]


async def _begin(connection: Conn, database: str, deadline: float) -> None:
    ms = timeout_ms(deadline, database)
    await connection.execute(f"BEGIN READ ONLY; SET LOCAL statement_timeout = {ms}")


async def _end(connection: Conn) -> None:
    try:
        if not connection.is_closed() and connection.is_in_transaction():
            await asyncio.shield(connection.execute("ROLLBACK"))
    except asyncpg.InterfaceError:
        pass  # the connection broke and went back to its pool: no transaction is left


async def fetch_rows(
    connection: Conn,
    database: str,
    sql: str,
    params: tuple[SqlValue, ...],
    max_rows: int,
    max_bytes: int,
    deadline: float,
    replan: bool = False,
) -> tuple[list[Column], list[SqlRow], bool]:
    """Up to ``max_rows`` rows within ``max_bytes``, and whether more follow."""
    fetching = (connection, database, sql, params, max_rows, max_bytes, deadline, replan)
    for attempt in (1, 2):
        try:
            return await _fetch(*fetching)
        except asyncpg.InvalidCachedStatementError as exc:
            # The schema changed under a cached statement (asyncpg has dropped it now):
            # inside a transaction asyncpg cannot prepare it again by itself.
            if attempt == 2:
                raise translate(exc, database=database) from exc
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
            ValueError,
        ) as exc:
            field = "params" if _is_value(exc) else None
            raise translate(exc, database=database, field=field) from exc
    raise AssertionError("unreachable")


async def _fetch(
    connection: Conn,
    database: str,
    sql: str,
    params: tuple[SqlValue, ...],
    max_rows: int,
    max_bytes: int,
    deadline: float,
    replan: bool,
) -> tuple[list[Column], list[SqlRow], bool]:
    await _begin(connection, database, deadline)
    try:
        statement = await prepared(connection, sql, replan)
        columns = _columns(statement)
        rows: list[SqlRow] = []
        size = 0
        # Bind and the first fetch in one round trip; a portal, so memory stays bounded.
        async for record in statement.cursor(*params, prefetch=min(max_rows + 1, _CHUNK)):
            row = plain_row(record)
            size += row_bytes(row)
            if size > max_bytes:
                raise errors.ResourceExhausted(
                    f"the result is over {max_bytes} bytes: cut it with max_rows or use QueryStream"
                )
            rows.append(row)
            if len(rows) > max_rows:
                break
        return columns, rows[:max_rows], len(rows) > max_rows
    finally:
        await _end(connection)


def _is_value(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.DataError | ValueError | TypeError)


class PgRowStream:
    """A read streamed from a server-side cursor while its transaction is open."""

    def __init__(
        self,
        connection: Conn,
        database: str,
        reads: frozenset[str],
        chunk_bytes: int,
        deadline: float,
    ) -> None:
        self._connection = connection
        self._database = database
        self.reads = reads
        self._chunk_bytes = chunk_bytes
        self._deadline = deadline
        self.columns: Sequence[Column] = []
        self._cursor: Any = None
        self.sent = 0

    async def open(self, sql: str, params: tuple[SqlValue, ...], replan: bool = False) -> None:
        """Begin the transaction and open the cursor."""
        try:
            await _begin(self._connection, self._database, self._deadline)
            statement = await prepared(self._connection, sql, replan)
            self.columns = _columns(statement)
            self._cursor = await statement.cursor(*params)
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
            ValueError,
        ) as exc:
            raise translate(exc, database=self._database) from exc

    async def next_chunk(self, max_rows: int) -> tuple[list[SqlRow], bool]:
        """Up to ``max_rows`` more rows (fewer once the chunk's bytes run out)."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise errors.DeadlineExceeded(f"{self._database}: the stream passed its deadline")
        rows: list[SqlRow] = []
        size = 0
        try:
            while len(rows) < max_rows and size < self._chunk_bytes:
                want = min(_CHUNK, max_rows - len(rows))
                records = await asyncio.wait_for(self._cursor.fetch(want), left)
                for record in records:
                    row = plain_row(record)
                    size += row_bytes(row)
                    rows.append(row)
                if len(records) < want:
                    self.sent += len(rows)
                    return rows, True
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ) as exc:
            raise translate(exc, database=self._database) from exc
        except TimeoutError as exc:
            raise errors.DeadlineExceeded(
                f"{self._database}: the stream passed its deadline"
            ) from exc
        self.sent += len(rows)
        return rows, False

    def unsent(self, rows: int) -> None:
        """Rows fetched but not sent."""
        self.sent -= rows

    async def close(self) -> None:
        """End the read's transaction."""
        await _end(self._connection)
