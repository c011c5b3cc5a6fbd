"""Writes made outside the service: seen through ``PRAGMA data_version``, they drop the cache.

The service's own commits bump exactly the tags they change. A commit by
anything else (the sqlite3 shell, a job, `migrate`, a second service) is
known only to SQLite: PRAGMA data_version on the writer's connection
changes when, and only when, another connection committed. Such a write is
seen within ``every`` seconds and drops every entry of the database.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from service import errors
from service.db.door import AfterCommit
from service.db.sqlite.connection import SqliteConnection

log = logging.getLogger(__name__)


async def watch_data_version(
    name: str, writer: SqliteConnection, after_commit: AfterCommit, every: float
) -> None:
    """Bump ``database:<name>`` whenever another process committed, until cancelled."""
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
