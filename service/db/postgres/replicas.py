"""Which PostgreSQL server answers a read: a read replica (streaming standby) when the read
may use one and the replica has replayed past the caller's newest write, else the primary.

A replica is tried in turn (round robin). With ``after`` set, the replica's
``pg_last_wal_replay_lsn()`` must reach it within ``wait`` seconds, or the primary
answers; a replica that cannot be reached is skipped for the primary too. Reads
that fill the cache never come here with ``replica`` set: they run on the primary.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service import errors
from service.db.door import Freshness
from service.db.postgres.connections import ReaderPool

log = logging.getLogger(__name__)
_POLL_SECONDS = 0.01


class ReadRouting:
    """The primary's readers and the replicas', and how many reads each answered."""

    def __init__(self, primary: ReaderPool, replicas: list[ReaderPool], wait: float) -> None:
        self.primary = primary
        self.replicas = replicas
        self._wait = wait
        self._turn = itertools.cycle(range(len(replicas))) if replicas else None
        self.replica_reads = 0
        self.primary_reads = 0

    @asynccontextmanager
    async def reader(
        self, freshness: Freshness, deadline: float
    ) -> AsyncIterator[PoolConnectionProxy[Any]]:
        """A connection to a replica that has caught up, or to the primary. Only choosing
        falls back to the primary: a read failing on the replica fails as it is."""
        async with AsyncExitStack() as held:
            connection = None
            if freshness.replica and self._turn is not None:
                pool = self.replicas[next(self._turn)]
                connection = await self._replica(pool, freshness.after, deadline, held)
            if connection is None:
                self.primary_reads += 1
                connection = await held.enter_async_context(self.primary.reader(deadline))
            else:
                self.replica_reads += 1
            yield connection

    async def _replica(
        self, pool: ReaderPool, after: int, deadline: float, held: AsyncExitStack
    ) -> PoolConnectionProxy[Any] | None:
        """A connection to ``pool``'s replica once it replays ``after`` (then ``held`` gives
        it back), or None when it lags past the bound or cannot be reached."""
        trying = AsyncExitStack()
        try:
            connection = await trying.enter_async_context(pool.reader(deadline))
            if await self._caught_up(connection, after, deadline):
                held.push_async_exit(trying)
                return connection
        except (
            errors.DataAccessError,  # unreachable, busy, or not yet holding the reader role
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        ) as exc:
            log.warning("replica of %s not usable, reading the primary: %s", pool.database, exc)
        await trying.aclose()
        return None

    async def _caught_up(
        self, connection: PoolConnectionProxy[Any], after: int, deadline: float
    ) -> bool:
        """Whether the replica replays ``after`` (wait up to the bound, not the deadline)."""
        if after <= 0:
            return True
        until = min(deadline, time.monotonic() + self._wait)
        while True:
            replayed = await connection.fetchval("SELECT pg_last_wal_replay_lsn()")
            # None: not in recovery (a primary behind the -ro name): it has every commit.
            if replayed is None or int(replayed) >= after:
                return True
            if time.monotonic() >= until:
                return False
            await asyncio.sleep(_POLL_SECONDS)

    def reset(self) -> None:
        """Start the counters again."""
        self.replica_reads = 0
        self.primary_reads = 0

    async def close(self) -> None:
        """Close the replicas' pools (the primary's readers are the database's)."""
        for pool in self.replicas:
            await pool.pool.close()
