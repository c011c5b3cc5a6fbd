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
from contextlib import asynccontextmanager
from typing import Any

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
        """A connection to a replica that has caught up, or to the primary."""
        if freshness.replica and self._turn is not None:
            pool = self.replicas[next(self._turn)]
            try:
                async with pool.reader(deadline) as connection:
                    if await self._caught_up(connection, freshness.after, deadline):
                        self.replica_reads += 1
                        yield connection
                        return
            except errors.Unavailable as exc:
                log.warning(
                    "replica of %s unreachable, reading the primary: %s", pool.database, exc.message
                )
        self.primary_reads += 1
        async with self.primary.reader(deadline) as connection:
            yield connection

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
