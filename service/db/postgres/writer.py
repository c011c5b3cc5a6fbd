"""The writer of one PostgreSQL database: each write RPC is one transaction on a pooled
connection, and its cache tags are bumped after the COMMIT, before the caller hears.

Inside the transaction, ``dataaccess.writer`` is on, so the capture triggers
report every changed table and key (cascades and triggers included) through
``dataaccess.changed``. The tags they make are recorded in the outbox (with
Redis) or sent with ``pg_notify`` (without Redis, for other replicas' L1) in
the same transaction, with the idempotency record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
from opentelemetry import trace

from service import errors
from service.db.door import AfterCommit, KeyTracking, Statements, TagsOfWrite, WriteOutcome
from service.db.postgres import writes
from service.db.postgres.catalog import (
    CHANGED_SETTING,
    CHANNEL,
    WRITER_SETTING,
    Catalog,
    parse_changed,
    quote,
)
from service.db.postgres.connections import discard, timeout_ms
from service.db.postgres.error_map import translate
from service.db.postgres.session import Conn
from service.db.postgres.shapes import digest
from service.domain import WriteOptions, WriteSnapshot

log = logging.getLogger(__name__)
CheckWrite = Callable[[Conn, str], Awaitable[frozenset[str]]]
_NOTIFY_LIMIT = 7000  # bytes; PostgreSQL's payload limit is 8000
# Past every record this session inserted, its commit's too (pg_current_wal_lsn() is only
# how far WAL was written: with synchronous_commit off, it may end before the commit).
_POSITION = "SELECT pg_current_wal_insert_lsn()"
# No replica reaches it: a read carrying it is answered by the primary.
UNKNOWN_POSITION = 2**62


@dataclass
class _Counters:
    transactions: int = 0
    batches: int = 0
    rows: int = 0
    keys_bumped: int = 0
    key_generations_bumped: int = 0


class PgWriter:
    """Runs write RPCs, one transaction each, and bumps their tags after COMMIT."""

    def __init__(
        self,
        database: str,
        schema: str,
        pool: asyncpg.Pool,
        after_commit: AfterCommit | None,
        use_outbox: bool,
        tracer: trace.Tracer,
        window_seconds: float,
        tracking: KeyTracking,
        catalog: Callable[[], Catalog],
        check_write: CheckWrite,
        origin: str,
    ) -> None:
        self.database = database
        self._schema = schema
        self._pool = pool
        self._after_commit = after_commit
        self._use_outbox = use_outbox
        self._tracer = tracer
        self._window = window_seconds
        self._tracking = tracking
        self._catalog = catalog
        self._check_write = check_write
        self.counters = _Counters()
        self._origin = origin
        self._delivered: list[int] = []
        self._tasks: set[asyncio.Future[Any]] = set()

    def keep(self, task: asyncio.Future[Any]) -> None:
        """Hold a background task until it is done."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def delivered(self, row_ids: Sequence[int]) -> None:
        """The tags of these outbox rows reached Redis: a later transaction deletes them."""
        self._delivered.extend(row_ids)

    async def insert(
        self, plan: writes.InsertPlan, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        """COPY a BatchInsert in, in one transaction."""

        async def run(connection: Conn) -> WriteOutcome:
            count = await writes.run_insert(connection, self._schema, plan)
            return WriteOutcome((count,), 0, frozenset({plan.table} if count else ()))

        return await self._transaction(run, plan, write, deadline, tags_of)

    async def update(
        self, statements: Statements, write: WriteOptions, deadline: float, tags_of: TagsOfWrite
    ) -> WriteOutcome:
        """Run a BatchUpdate's statements in one transaction."""

        async def run(connection: Conn) -> WriteOutcome:
            written: list[frozenset[str]] = []
            for index, (sql, _sets) in enumerate(statements):
                field = f"statements[{index}].sql"
                try:
                    written.append(await self._check_write(connection, sql))
                except errors.DataAccessError as exc:
                    exc.field = field
                    raise
                except asyncpg.PostgresError as exc:
                    raise translate(exc, database=self.database, field=field, writer=True) from exc
            counts = await writes.run_statements(connection, statements)
            # The tables statements that changed rows wrote, as their plans name them.
            changed = [t for t, n in zip(written, counts, strict=True) if n]
            return WriteOutcome(counts, 0, frozenset().union(*changed))

        request = [(sql, [tuple(p) for p in sets]) for sql, sets in statements]
        return await self._transaction(run, request, write, deadline, tags_of)

    async def _transaction(
        self,
        run: Callable[[Conn], Awaitable[WriteOutcome]],
        request: object,
        write: WriteOptions,
        deadline: float,
        tags_of: TagsOfWrite,
    ) -> WriteOutcome:
        attributes = {
            "db.system.name": "postgresql",
            "db.namespace": self.database,
            "db.operation.name": "write",
        }
        with self._tracer.start_as_current_span(
            "db.write_batch", kind=trace.SpanKind.CLIENT, attributes=attributes
        ):
            outcome, tags, outbox_id = await self._commit(run, request, write, deadline, tags_of)
        if not outcome.replayed:
            self.counters.transactions += 1
            self.counters.batches += 1
            self.counters.rows += outcome.rows_written
            self.counters.keys_bumped += len(outcome.keys)
            self.counters.key_generations_bumped += len(outcome.key_generations)
        if tags and self._after_commit is not None:
            receipt = (lambda: self.delivered([outbox_id])) if outbox_id else None
            try:
                await self._after_commit(tags, receipt)
            except Exception:  # the write is committed: its caller must hear so
                log.exception("invalidating after a commit on %s failed", self.database)
        return outcome

    async def _commit(
        self,
        run: Callable[[Conn], Awaitable[WriteOutcome]],
        request: object,
        write: WriteOptions,
        deadline: float,
        tags_of: TagsOfWrite,
    ) -> tuple[WriteOutcome, list[str], int]:
        try:
            connection = await self._pool.acquire(
                timeout=max(0.001, min(5.0, deadline_left(deadline)))
            )
        except TimeoutError as exc:
            raise errors.ResourceExhausted(f"{self.database}: no writer free in time") from exc
        except (OSError, asyncpg.PostgresError) as exc:
            raise translate(exc, database=self.database, writer=True) from exc
        broken = True  # unless the transaction ends as PostgreSQL answered it
        try:
            found = await self._in_transaction(connection, run, request, write, deadline, tags_of)
            broken = False
            return found
        except errors.DataAccessError as exc:
            broken = isinstance(exc, errors.Unavailable)
            raise
        except asyncpg.PostgresError as exc:
            failure = translate(exc, database=self.database, writer=True)
            broken = isinstance(failure, errors.Unavailable)
            raise failure from exc
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            raise errors.Unavailable(
                f"{self.database}: the write's connection failed: {exc}"
            ) from exc
        finally:
            if broken:
                discard(connection)
            try:
                await self._pool.release(connection)
            except asyncpg.InterfaceError:
                pass  # asyncpg took it back when it broke

    async def _in_transaction(
        self,
        connection: Conn,
        run: Callable[[Conn], Awaitable[WriteOutcome]],
        request: object,
        write: WriteOptions,
        deadline: float,
        tags_of: TagsOfWrite,
    ) -> tuple[WriteOutcome, list[str], int]:
        ms = timeout_ms(deadline, self.database)
        await connection.execute(
            f"BEGIN; SET LOCAL statement_timeout = {ms}; SET LOCAL {WRITER_SETTING} = 'on'"
        )
        try:
            print_ = writes.fingerprint(request)
            if write.idempotency_key:
                found = await writes.replayed(
                    connection, self._schema, write.idempotency_key, print_, self._window
                )
                if found is not None:
                    await connection.execute("ROLLBACK")
                    # The first attempt committed before its record was found: now is past it.
                    position = await self._position(connection)
                    return replace(found[0], position=position), found[1], 0
            ran = await run(connection)
            # Deferred constraint triggers would write at COMMIT, after the changes are read.
            await connection.execute("SET CONSTRAINTS ALL IMMEDIATE")
            changes = await connection.fetchval(
                f"SELECT current_setting('{CHANGED_SETTING}', true)"
            )
            outcome = self._with_changes(ran, changes)
            tags = list(tags_of(outcome))
            outbox_id = await self._record(connection, tags)
            if write.idempotency_key:
                await writes.remember(
                    connection, self._schema, write.idempotency_key, print_, outcome, tags
                )
            await connection.execute("COMMIT")
            # Committed: from here on nothing may fail the call, or its tags would not
            # be bumped for a write that is there.
            return replace(outcome, position=await self._position(connection)), tags, outbox_id
        except BaseException:
            if not connection.is_closed() and connection.is_in_transaction():
                await asyncio.shield(connection.execute("ROLLBACK"))
            raise

    async def _position(self, connection: Conn) -> int:
        """Where the primary's WAL is now, at or past this connection's last commit: asked
        on the connection, else on another one (same primary, or the one promoted with the
        commit), else a position no replica reaches."""
        for asking in (connection, None):
            try:
                if asking is not None:
                    return int(await asking.fetchval(_POSITION))
                async with self._pool.acquire(timeout=1.0) as other:
                    return int(await other.fetchval(_POSITION))
            except (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
                OSError,
                TimeoutError,
            ):
                continue
        return UNKNOWN_POSITION

    def _with_changes(self, outcome: WriteOutcome, text: str | None) -> WriteOutcome:
        """``outcome`` with the tables and keys the triggers reported."""
        changed = parse_changed(text)
        catalog = self._catalog()
        reported = outcome.tables | changed.tables
        # A write through a parent changes its children's rows; only the parent reports.
        tables = catalog.with_descendants(reported)
        if not self._tracking.enabled:
            return replace(outcome, tables=tables, key_generations=tables)
        # Every keyed read goes where the keys are not known: a table with no (enabled)
        # capture triggers, one whose rows changed but whose triggers said nothing,
        # children written through their parent, too many keys.
        whole = (
            changed.untracked_keys
            | (tables - catalog.tracked)
            | (outcome.tables - changed.tables)
            | (tables - reported)
        )
        keys = frozenset(
            (table, spec, digest(values))
            for table, spec, values in changed.keys
            if table not in whole
        )
        return replace(outcome, tables=tables, keys=keys, key_generations=frozenset(whole))

    async def _record(self, connection: Conn, tags: list[str]) -> int:
        """Write the tags where other replicas find them, in this transaction."""
        if not tags:
            return 0
        if not self._use_outbox:
            payload = json.dumps({"tags": tags, "origin": self._origin})
            if len(payload) > _NOTIFY_LIMIT:
                everything = [f"database:{self.database}"]
                payload = json.dumps({"tags": everything, "origin": self._origin})
            await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
            return 0
        table = f"{quote(self._schema)}.{writes.OUTBOX_TABLE}"
        if self._delivered:
            done, self._delivered = self._delivered, []
            await connection.execute(f"DELETE FROM {table} WHERE id = ANY($1::bigint[])", done)
        return int(
            await connection.fetchval(
                f"INSERT INTO {table} (tags) VALUES ($1::jsonb) RETURNING id", json.dumps(tags)
            )
        )

    def snapshot(self) -> WriteSnapshot:
        """The commit counters."""
        return WriteSnapshot(self.database, **vars(self.counters))

    def reset_counters(self) -> None:
        """Start counting again."""
        self.counters = _Counters()

    async def close(self) -> None:
        """Wait for background deliveries."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def deadline_left(deadline: float) -> float:
    """Seconds until ``deadline``."""
    return deadline - time.monotonic()
