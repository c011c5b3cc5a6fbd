"""What changes a PostgreSQL database without passing through this process, watched:

- writes by other processes (the capture triggers ``pg_notify`` them) and, with no
  Redis between replicas, the tags other replicas' writes bumped: their cached
  reads are dropped as the notification arrives. While the listening connection
  is down, notifications are lost, so on reconnecting every cached read of the
  database is dropped;
- the schema (a fingerprint of its tables, columns and triggers, polled): on a
  change the database reloads its catalog;
- outbox rows older than ``OUTBOX_GRACE_SECONDS`` (a replica committed and died
  before bumping their tags): any replica delivers them, then deletes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from service.db.door import AfterCommit
from service.db.postgres.catalog import CHANNEL, FINGERPRINT, quote
from service.db.postgres.session import Conn
from service.db.postgres.writes import OUTBOX_TABLE

log = logging.getLogger(__name__)
OUTBOX_GRACE_SECONDS = 5.0
_SWEEP_EVERY = 4  # schema checks per outbox sweep (and check of the listening connection)
_PING_SECONDS = 2.0


class Watch:
    """Listens for notifications and polls the schema and the outbox of one database."""

    def __init__(
        self,
        database: str,
        url: str,
        schema: str,
        pool: asyncpg.Pool,
        after_commit: AfterCommit | None,
        origin: str,
        family: Callable[[str], frozenset[str]],
        schema_changed: Callable[[Conn, str], Awaitable[None]],
        every: float,
    ) -> None:
        self._database = database
        self._url = url
        self._schema = schema
        self._pool = pool
        self._after_commit = after_commit
        self._origin = origin  # this process's writes carry it: their tags were bumped here
        self._family = family  # a table and the tables that inherit from it
        self._schema_changed = schema_changed
        self._every = every
        self.fingerprint = ""
        self._listener: Conn | None = None
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Future[Any]] = set()

    async def start(self, fingerprint: str) -> None:
        """Listen now (so no write after the open is missed), and poll from now on."""
        self.fingerprint = fingerprint
        await self._listen()
        self._task = asyncio.ensure_future(self._run())

    async def _listen(self) -> None:
        listener = await asyncpg.connect(self._url, timeout=10)
        await listener.add_listener(CHANNEL, self._on_notification)
        self._listener = listener

    def _on_notification(
        self, _connection: Conn, _pid: int, _channel: str, payload: object
    ) -> None:
        if self._after_commit is None:
            return
        try:
            news = json.loads(str(payload))
            if "tags" in news:
                if news.get("origin") == self._origin:
                    return
                tags = [str(tag) for tag in news["tags"]]
            else:
                # Named as service.tags names them; the writer's keys are not known.
                tags = [
                    f"{kind}:{self._database}.{table}"
                    for table in sorted(self._family(str(news["t"])))
                    for kind in ("table", "keys")
                ]
        except (ValueError, KeyError, TypeError):
            return
        self._deliver(tags)

    def _deliver(self, tags: list[str], receipt: Callable[[], None] | None = None) -> None:
        if self._after_commit is None:
            return
        task = asyncio.ensure_future(self._after_commit(tags, receipt))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _run(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self._every)
            rounds += 1
            try:
                await self._round(sweep=rounds % _SWEEP_EVERY == 0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("watching %s failed: %s", self._database, exc)

    async def _round(self, *, sweep: bool) -> None:
        if sweep and self._listener is not None and not self._listener.is_closed():
            # A server that vanished without closing the socket is noticed only by asking.
            try:
                await self._listener.fetchval("SELECT 1", timeout=_PING_SECONDS)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                self._listener.terminate()
        if self._listener is None or self._listener.is_closed():
            await self._listen()
            log.warning("listening to %s again: its cached reads are dropped", self._database)
            self._deliver([f"database:{self._database}"])
        async with self._pool.acquire() as connection:
            now = str(await connection.fetchval(FINGERPRINT, self._schema))
            if now != self.fingerprint:
                log.info("schema of %s changed: reloading", self._database)
                await self._schema_changed(connection, now)
                self.fingerprint = now
            if sweep and self._after_commit is not None:
                await self._sweep(connection)

    async def _sweep(self, connection: Conn) -> None:
        table = f"{quote(self._schema)}.{OUTBOX_TABLE}"
        rows = await connection.fetch(
            f"SELECT id, tags FROM {table} WHERE created_at < now() - make_interval(secs => $1)"
            " ORDER BY id LIMIT 100",
            OUTBOX_GRACE_SECONDS,
        )
        if not rows:
            return
        tags: dict[str, None] = {}
        for row in rows:
            tags.update(dict.fromkeys(json.loads(row["tags"])))
        assert self._after_commit is not None
        await self._after_commit(list(tags), None)
        await connection.execute(
            f"DELETE FROM {table} WHERE id = ANY($1::bigint[])", [row["id"] for row in rows]
        )

    async def close(self) -> None:
        """Stop polling and listening."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                await listener.close(timeout=2)
            except (OSError, asyncpg.InterfaceError, TimeoutError):
                listener.terminate()
