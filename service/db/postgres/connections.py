"""asyncpg pools for one PostgreSQL database: writers as the configured role, readers as
a restricted role the service keeps (SELECT on the allowed tables, nothing else).

Readers connect with the configured URL and ``SET ROLE`` to the reader role at
once, so the URL's role may be powerful: a read runs with the reader role's
privileges, and the functions that could change the role back (``set_config``)
are refused before a read runs. Every read is a ``READ ONLY`` transaction that
ends in ROLLBACK, which also undoes any setting it changed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service import errors
from service.config import PostgresDatabaseConfig
from service.db.door import PoolSnapshot
from service.db.postgres.catalog import INTERNAL_PREFIX, quote
from service.db.postgres.error_map import translate
from service.db.postgres.session import Conn
from service.db.postgres.values import SESSION_SETTINGS, set_codecs

_WAITS_KEPT = 1024


async def _rollback_if_open(connection: Conn) -> None:
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def create_pool(
    config: PostgresDatabaseConfig,
    size: int,
    role: str | None = None,
    url: str | None = None,
    eager: bool = True,
) -> asyncpg.Pool:
    """A pool of ``size`` connections to ``url`` (default: the database's) with the
    service's codecs (and ``role``, if given). Not ``eager``: it connects at the first
    use, so a server down (or a standby not yet holding the role) cannot stop a start."""

    async def init(connection: Conn) -> None:
        await set_codecs(connection)
        if role is not None:
            await connection.execute(f"SET ROLE {quote(role)}")

    try:
        pool = await asyncpg.create_pool(
            url or config.url,
            min_size=1 if eager else 0,
            max_size=size,
            init=init,
            reset=_rollback_if_open,
            server_settings=SESSION_SETTINGS,
            statement_cache_size=256,
            max_inactive_connection_lifetime=300.0,
            timeout=10,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise translate(exc, database=config.name) from exc
    assert pool is not None
    return pool


# Roles belong to the whole server: replicas (or services of other databases with the
# same name) may create or grant the same role at the same moment.
_RACING_STATES = ("42710", "XX000", "40001", "40P01", "23505")
_ATTEMPTS = 5


async def ensure_reader_role(
    connection: Conn, config: PostgresDatabaseConfig, tables: list[str]
) -> None:
    """Create the reader role if missing, let the URL's role act as it, and leave it able
    to SELECT exactly ``tables`` of the schema."""
    for attempt in range(_ATTEMPTS):
        try:
            await _reader_role(connection, config, tables)
            return
        except asyncpg.InsufficientPrivilegeError as exc:
            raise errors.Unavailable(
                f"{config.name}: cannot set up the reader role {config.reader!r} ({exc}): give"
                f" the url's role CREATEROLE, or create {config.reader} NOLOGIN, GRANT it to"
                " that role and GRANT it SELECT on the allowed tables"
            ) from exc
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", "") not in _RACING_STATES or attempt == _ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


async def _reader_role(connection: Conn, config: PostgresDatabaseConfig, tables: list[str]) -> None:
    role, schema = quote(config.reader), quote(config.schema)
    exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", config.reader)
    if not exists:
        await connection.execute(f"CREATE ROLE {role} NOLOGIN NOINHERIT")
    member = await connection.fetchval(
        "SELECT pg_has_role(current_user, $1, 'MEMBER')", config.reader
    )
    if not member:
        await connection.execute(f"GRANT {role} TO CURRENT_USER")
    granted = await connection.fetch(
        "SELECT table_name FROM information_schema.role_table_grants"
        " WHERE grantee = $1 AND table_schema = $2",
        config.reader,
        config.schema,
    )
    async with connection.transaction():
        for row in granted:
            if row["table_name"] not in tables:
                await connection.execute(
                    f"REVOKE ALL ON {schema}.{quote(row['table_name'])} FROM {role}"
                )
        await connection.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        for table in tables:
            if not table.startswith(INTERNAL_PREFIX):
                await connection.execute(f"GRANT SELECT ON {schema}.{quote(table)} TO {role}")


class ReaderPool:
    """Reader connections lent one at a time, with the wait counters Stats reports."""

    def __init__(self, database: str, pool: asyncpg.Pool, size: int, timeout: float) -> None:
        self.database = database
        self.pool = pool
        self.size = size
        self._timeout = timeout
        self._waiters = 0
        self._in_use = 0
        self._timeouts = 0
        self._waits_ms: deque[float] = deque(maxlen=_WAITS_KEPT)

    @asynccontextmanager
    async def reader(self, deadline: float) -> AsyncIterator[PoolConnectionProxy[Any]]:
        """An idle connection, waited for until the deadline or the acquire timeout."""
        wait = min(self._timeout, deadline - time.monotonic())
        if wait <= 0:
            raise errors.DeadlineExceeded(f"{self.database}: the deadline passed before the read")
        started = time.monotonic()
        self._waiters += 1
        try:
            connection = await self.pool.acquire(timeout=wait)
        except TimeoutError as exc:
            self._timeouts += 1
            if time.monotonic() >= deadline:
                message = f"{self.database}: no reader before the deadline"
                raise errors.DeadlineExceeded(message) from exc
            raise errors.ResourceExhausted(
                f"{self.database}: no reader free within {self._timeout:g} s"
            ) from exc
        except (OSError, asyncpg.PostgresError) as exc:
            raise translate(exc, database=self.database) from exc
        finally:
            self._waiters -= 1
        self._waits_ms.append((time.monotonic() - started) * 1000)
        self._in_use += 1
        try:
            yield connection
        except (errors.Unavailable, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
            discard(connection)
            raise
        finally:
            self._in_use -= 1
            await self._give_back(connection)

    async def _give_back(self, connection: PoolConnectionProxy[Any]) -> None:
        try:
            await asyncio.shield(self.pool.release(connection, timeout=5))
        except Exception:  # a broken connection: the pool replaces it
            discard(connection)

    def snapshot(self) -> PoolSnapshot:
        """The pool's counters now."""
        waits = sorted(self._waits_ms)
        return PoolSnapshot(
            database=self.database,
            size=self.size,
            in_use=self._in_use,
            waiters=self._waiters,
            acquire_p50_ms=_percentile(waits, 0.50),
            acquire_p99_ms=_percentile(waits, 0.99),
            timeouts=self._timeouts,
            recycled=0,
        )

    def reset_stats(self) -> None:
        """Clear the counters."""
        self._waits_ms.clear()
        self._timeouts = 0


def discard(connection: PoolConnectionProxy[Any]) -> None:
    """Make sure ``connection`` is never lent again: the pool opens a new one in its place.
    (asyncpg may have taken a connection it saw break back already.)"""
    try:
        connection.terminate()
    except asyncpg.InterfaceError:
        pass


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def timeout_ms(deadline: float, database: str) -> int:
    """The time left until ``deadline`` as a statement_timeout, at least 1 ms."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise errors.DeadlineExceeded(f"{database}: the deadline passed")
    return max(1, int(left * 1000))
