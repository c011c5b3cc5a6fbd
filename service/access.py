"""One method per RPC, each reading top-down: router -> pool/writer -> SQLite -> result.

This layer speaks domain values (service.values, service.domain), never protobuf
or gRPC. Deadlines are absolute ``time.monotonic()`` values.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from opentelemetry import trace

from service import errors
from service.auth import (
    ANYONE,
    Principal,
    check_database,
    tag_database,
    unknown_database,
)
from service.cache.keys import cache_key
from service.cache.tagged import CacheUnavailable, EntryPolicy, TagCache, TierSnapshot
from service.config import Limits
from service.db.sqlite.database import Database
from service.db.sqlite.idempotency import IdempotentPlan
from service.db.sqlite.pool import PoolSnapshot
from service.db.sqlite.reads import (
    Fetched,
    OpenStream,
    close_stream,
    fetch_chunk,
    fetch_rows,
    open_stream,
    query_plan,
)
from service.db.sqlite.schema import rows_up_to
from service.db.sqlite.write_plans import (
    InsertRequest,
    StatementPlan,
    WriteOutcome,
    WritePlan,
    plan_insert,
)
from service.domain import (
    CacheMode,
    CacheStatus,
    EncodedRead,
    ReadRequest,
    ReadResult,
    WriteOptions,
    WriteResult,
    WriteSnapshot,
)
from service.fingerprint import fingerprint
from service.observe.health import HealthReport
from service.observe.stats import (
    TINY_TABLE_ROWS,
    Advisory,
    SlowStatement,
    StatementFigures,
    StatementStats,
    scanned_table,
)
from service.routing.merge import merge_rows
from service.routing.router import Router, pick_member
from service.values import Params, SqlRow

DB_SYSTEM = "sqlite"
T = TypeVar("T")
ALL_TAG = "all"  # every entry carries it, so Invalidate(all) is one bump
_HOT_MAX_REQUEST = 4096  # requests larger than this are not remembered by identity
_HOT_MAX_BYTES = 8 * 1024 * 1024  # all remembered requests together


@dataclass(frozen=True)
class _HotRead:
    """A read remembered by its request bytes: where its answer is, and whose it is."""

    key: str
    tags: list[str]
    policy: EntryPolicy
    target: str
    members: list[str]


@dataclass(frozen=True)
class StatsReport:
    """Pool and write counters of every database."""

    pools: Sequence[PoolSnapshot]
    writes: Sequence[WriteSnapshot]
    cache: Sequence[TierSnapshot] = ()
    loads: int = 0
    statements: Sequence[StatementFigures] = ()
    slowest: Sequence[SlowStatement] = ()
    advisories: Sequence[Advisory] = ()


class DataAccess:
    """The service's behaviour, one coroutine per RPC."""

    def __init__(
        self,
        router: Router,
        limits: Limits,
        cache: TagCache,
        cache_ttl: float,
        encode: Callable[[ReadResult], bytes],
        tracer: trace.Tracer | None = None,
        on_query: Callable[[str, float], None] | None = None,
    ) -> None:
        self._on_query = on_query  # (database, seconds) of every read SQLite ran
        self._tracer = tracer or trace.NoOpTracerProvider().get_tracer(__name__)
        self.statements = StatementStats()
        self._router = router
        self._limits = limits
        self._cache = cache
        self._cache_ttl = cache_ttl
        self._encode = encode
        # Reads seen before, by the caller's own bytes: a repeat is answered from
        # L1 without decoding the request, routing, tagging or keying it again.
        self._hot: OrderedDict[bytes, _HotRead] = OrderedDict()
        self._hot_max = max(cache.local.max_entries, 1)
        self._hot_bytes = 0

    async def cached(self, identity: bytes, caller: Principal = ANYONE) -> EncodedRead | None:
        """The cached answer to a read seen before under ``identity``, if there is one now."""
        hot = self._hot.get(identity)
        if hot is None or not caller.may("read", hot.target, hot.members):
            return None  # the full path says why the caller may not
        answer = await self._cache.find(hot.key, hot.tags, hot.policy)
        return EncodedRead(*answer) if answer is not None else None

    async def query(
        self,
        request: ReadRequest,
        deadline: float,
        identity: bytes = b"",
        caller: Principal = ANYONE,
    ) -> EncodedRead:
        """Answer a read from the cache, or run it and cache it under its tags.

        ``identity`` (the request's bytes) lets ``cached`` answer its repeats.
        """
        self._visible(request.database, caller)
        members = self._router.members(request.database, request.route_key, request.routed)
        names = [db.name for db in members]
        caller.require("read", request.database, names)
        self._check_sql(request.sql)
        tags = await self._cache_tags(members, request, deadline)
        if tags is None:
            result = await self._run_query(members, request, deadline)
            return EncodedRead(self._encode(result), CacheStatus.BYPASS)

        async def load() -> bytes:
            result = await self._run_query(members, request, deadline)
            return self._encode(replace(result, tags=tags))

        policy = EntryPolicy(
            ttl=request.ttl_seconds or self._cache_ttl,
            stale_while_revalidate=request.stale_while_revalidate,
            refresh=request.cache_mode is CacheMode.REFRESH,
        )
        key = cache_key(
            [db.name for db in members], request, (request.merge, sorted(request.cache_tags))
        )
        try:
            payload, status = await self._cache.get_or_load(key, tags, load, policy)
        except errors.DeadlineExceeded:
            if time.monotonic() >= deadline:
                raise
            # This caller joined a load bound by another caller's shorter deadline.
            retry = replace(policy, refresh=True)
            payload, status = await self._cache.get_or_load(key, tags, load, retry)
        if identity and request.cache_mode is CacheMode.USE and len(identity) <= _HOT_MAX_REQUEST:
            self._remember(identity, _HotRead(key, tags, policy, request.database, names))
        return EncodedRead(payload, status)

    def _remember(self, identity: bytes, hot: _HotRead) -> None:
        if identity not in self._hot:
            self._hot_bytes += len(identity)
        self._hot[identity] = hot
        self._hot.move_to_end(identity)
        while len(self._hot) > self._hot_max or self._hot_bytes > _HOT_MAX_BYTES:
            forgotten, _ = self._hot.popitem(last=False)
            self._hot_bytes -= len(forgotten)

    async def _cache_tags(
        self, members: Sequence[Database], request: ReadRequest, deadline: float
    ) -> list[str] | None:
        """What a result is cached under, learnt from SQLite's authorizer, not from the SQL."""
        if request.cache_mode is CacheMode.BYPASS:
            return None
        tags: list[str] = []
        for database in members:
            shape = database.read_shape(request.sql) or await database.learn_shape(
                request.sql, request.params, deadline
            )
            if shape is None or not shape.cacheable(request.params):
                return None  # random(), CURRENT_TIMESTAMP, datetime('now'), ...: never cached
            tags += self._read_tags(database, shape.reads, ())
            tags.append(f"database:{database.name}")
        return tags + list(request.cache_tags) + [ALL_TAG]

    async def _run_query(
        self, members: Sequence[Database], request: ReadRequest, deadline: float
    ) -> ReadResult:
        """Run a read on its databases, within the row and byte limits."""
        cap = min(request.max_rows or self._limits.max_rows, self._limits.max_rows)
        names = [db.name for db in members]
        with self._tracer.start_as_current_span(
            "router", attributes={"dataaccess.target": request.database, "db.namespace": names}
        ):
            parts = await _first_error_cancels_all(
                [self._fetch(db, request, cap, deadline) for db in members]
            )
        columns = _same_columns(members, [part.columns for part in parts])
        rows = merge_rows(columns, [part.rows for part in parts], request.merge)
        more = any(part.more for part in parts) or len(rows) > cap
        if more and not 0 < request.max_rows <= self._limits.max_rows:
            raise errors.ResourceExhausted(
                f"the result is over {self._limits.max_rows} rows: set max_rows or use QueryStream"
            )
        first = members[0]
        reads = parts[0].shape.reads if parts[0].shape is not None else frozenset()
        return ReadResult(
            columns=[(name, first.schema.decl_type(name, reads)) for name in columns],
            rows=rows[:cap],
            databases=[db.name for db in members],
            tags=self._group_tags(members, parts, request.cache_tags),
            truncated=more,
        )

    async def _fetch(
        self, database: Database, request: ReadRequest, cap: int, deadline: float
    ) -> Fetched:
        async with database.pool.reader(deadline) as conn:
            with self._tracer.start_as_current_span(
                "db.query", kind=trace.SpanKind.CLIENT, attributes=_db_query(database, request)
            ) as span:
                started = time.monotonic()
                fetched = await conn.run(
                    lambda raw: fetch_rows(
                        raw,
                        conn.guard,
                        request.sql,
                        request.params,
                        cap,
                        self._limits.max_result_bytes,
                    ),
                    deadline,
                )
                span.set_attribute("db.response.returned_rows", len(fetched.rows))
        ms = (time.monotonic() - started) * 1000
        if self._on_query is not None:
            self._on_query(database.name, ms / 1000)
        self.statements.record(
            database.name,
            request.sql,
            request.params,
            ms,
            len(fetched.rows),
            request.caller,
            database.schema.names,
        )
        return fetched

    def _group_tags(
        self, members: Sequence[Database], parts: Sequence[Fetched], extra: Sequence[str]
    ) -> list[str]:
        tags: list[str] = []
        for database, part in zip(members, parts, strict=True):
            reads = part.shape.reads if part.shape is not None else frozenset()
            tags += self._read_tags(database, reads, ())
        return tags + list(extra)

    async def query_stream(
        self, request: ReadRequest, deadline: float, caller: Principal = ANYONE
    ) -> AsyncGenerator[ReadResult, None]:
        """Run a read and yield its rows in bounded chunks; the first carries the columns."""
        self._visible(request.database, caller)
        database = self._router.database(request.database)
        caller.require("read", database.name)
        self._check_sql(request.sql)
        limits = self._limits
        # Not the current span: a context entered here would be left across yields.
        span = self._tracer.start_span(
            "db.query", kind=trace.SpanKind.CLIENT, attributes=_db_query(database, request)
        )
        rows_sent = 0
        try:
            async with database.pool.reader(deadline) as conn:
                stream = await conn.run(
                    lambda raw: open_stream(raw, conn.guard, request.sql, request.params), deadline
                )
                try:
                    reads = stream.shape.reads if stream.shape is not None else frozenset()
                    columns = [(n, database.schema.decl_type(n, reads)) for n in stream.columns]
                    tags = self._read_tags(database, reads, request.cache_tags)
                    sent, first = 0, True
                    while True:
                        want = limits.stream_chunk_rows
                        if request.max_rows:
                            want = min(want, request.max_rows - sent + 1)
                        rows, exhausted = await conn.run(
                            functools.partial(_next_chunk, stream, want, limits.stream_chunk_bytes),
                            deadline,
                        )
                        truncated = bool(request.max_rows) and sent + len(rows) > request.max_rows
                        rows = rows[: request.max_rows - sent] if truncated else rows
                        sent += len(rows)
                        rows_sent = sent
                        if rows or first or truncated:
                            yield ReadResult(
                                columns if first else [],
                                rows,
                                [database.name],
                                tags if first else [],
                                truncated=truncated,
                            )
                        first = False
                        if truncated or exhausted:
                            return
                finally:
                    await conn.run(lambda raw: close_stream(stream))
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
            raise
        finally:
            span.set_attribute("db.response.returned_rows", rows_sent)
            span.end()

    async def batch_insert(
        self,
        database_name: str,
        request: InsertRequest,
        write: WriteOptions,
        deadline: float,
        caller: Principal = ANYONE,
    ) -> WriteResult:
        """Insert rows atomically per database (a group routes each row), after the commit."""
        self.check_write(database_name, caller)
        self._check_batch(len(request.rows), "rows")
        if self._router.is_group(database_name):
            members = self._router.groups[database_name].members
            self._check_invalidate_tags(write, members, caller)
            return await self._insert_routed(database_name, request, write, deadline)
        database = self._router.database(database_name)
        self._check_invalidate_tags(write, [database.name], caller)
        plan = plan_insert(request, database.schema, database.allowed)
        if not request.rows:
            return WriteResult((0,), 0, [])
        outcome = await self._submit(database, plan, write, deadline)
        return self._written([(database, outcome)], write.invalidate_tags)

    async def _insert_routed(
        self, group: str, request: InsertRequest, write: WriteOptions, deadline: float
    ) -> WriteResult:
        column = self._router.route_column(group)
        lowered = [name.lower() for name in request.columns]
        if column.lower() not in lowered:
            raise errors.InvalidArgument(f"rows need the route column {column!r}", field="columns")
        at = lowered.index(column.lower())
        by_member: dict[str, list[SqlRow]] = {}
        for row in request.rows:
            by_member.setdefault(pick_member(self._router.groups[group], row[at]), []).append(row)
        work = []
        for member, rows in by_member.items():
            database = self._router.database(member)
            plan = plan_insert(replace(request, rows=rows), database.schema, database.allowed)
            key = f"{write.idempotency_key}@{member}" if write.idempotency_key else ""
            work.append(self._submit(database, plan, replace(write, idempotency_key=key), deadline))
        outcomes = await asyncio.gather(*work)
        databases = [self._router.database(member) for member in by_member]
        result = self._written(list(zip(databases, outcomes, strict=True)), write.invalidate_tags)
        return replace(result, rows_affected=(sum(sum(o.rows_affected) for o in outcomes),))

    async def batch_update(
        self,
        database_name: str,
        statements: Sequence[tuple[str, Sequence[SqlRow]]],
        write: WriteOptions,
        deadline: float,
        caller: Principal = ANYONE,
    ) -> WriteResult:
        """Run DML statements in one transaction, answered after the commit."""
        self.check_write(database_name, caller)
        database = self._router.database(database_name)
        self._check_invalidate_tags(write, [database.name], caller)
        if not statements:
            raise errors.InvalidArgument("at least one statement is needed", field="statements")
        self._check_batch(sum(max(len(sets), 1) for _, sets in statements), "statements")
        for index, (sql, _) in enumerate(statements):
            self._check_sql(sql, f"statements[{index}].sql")
        plan = StatementPlan(statements)
        outcome = await self._submit(database, plan, write, deadline)
        return self._written([(database, outcome)], write.invalidate_tags)

    async def _submit(
        self, database: Database, plan: WritePlan, write: WriteOptions, deadline: float
    ) -> WriteOutcome:
        if write.idempotency_key:
            window = self._limits.idempotency_window_seconds
            plan = IdempotentPlan(plan, write.idempotency_key, window)

        def tags_of(outcome: WriteOutcome) -> list[str]:
            return self._changed_tags(database, outcome) + list(write.invalidate_tags)

        # The writer hands these tags to the cache after the COMMIT, before answering.
        return await database.writer.submit(plan, deadline, tags_of)

    def _changed_tags(self, database: Database, outcome: WriteOutcome) -> list[str]:
        changed = database.schema.changed_with(outcome.tables)
        return [f"table:{database.name}.{table}" for table in sorted(changed)]

    async def invalidate(
        self, tags: Sequence[str], databases: Sequence[str], everything: bool
    ) -> list[str]:
        """Bump tags, so nothing cached under them is served again: O(1) per tag."""
        for name in databases:
            self._router.database(name)
        bumped = list(tags) + [f"database:{name}" for name in databases]
        bumped += [ALL_TAG] if everything else []
        try:
            await self._cache.invalidate(bumped)
        except CacheUnavailable as exc:
            raise errors.Unavailable(str(exc)) from exc
        return bumped

    async def stats(self, reset: bool) -> StatsReport:
        """Cache, pool, statement and write figures; ``reset`` clears them after reading."""
        databases = [db for db in self._router.databases.values() if db.failure is None]
        await self._explain_new_statements(time.monotonic() + 2.0)
        report = StatsReport(
            pools=[db.pool.snapshot() for db in databases],
            writes=[WriteSnapshot(db.name, **vars(db.writer.counters)) for db in databases],
            cache=self._cache.tiers(),
            loads=self._cache.loads,
            statements=self.statements.figures(),
            slowest=self.statements.slowest(),
            advisories=self.statements.advisories(),
        )
        if reset:
            self.statements.reset()
            self._cache.reset_counters()
            for db in databases:
                db.pool.reset_stats()
                db.writer.reset_counters()
        return report

    async def _explain_new_statements(self, deadline: float) -> None:
        """Look at the query plan of statements seen since the last Stats, for full scans."""
        for name, shape, sql, params in self.statements.unexplained()[:64]:
            database = self._router.databases.get(name)
            if database is None or database.failure is not None or time.monotonic() > deadline:
                continue
            try:
                plan, rows = await self._query_plan(database, sql, params, deadline)
            except errors.DataAccessError:
                plan, rows = [], None
            self.statements.explained(name, shape, plan, database.schema.columns_of, rows)

    async def _query_plan(
        self, database: Database, sql: str, params: Params, deadline: float
    ) -> tuple[list[str], int | None]:
        """A statement's plan, and how many rows the table it scans holds (up to a bound)."""
        async with database.pool.reader(deadline) as conn:
            plan = await conn.run(lambda raw: query_plan(raw, conn.guard, sql, params), deadline)
            table = database.schema.table(scanned_table(plan) or "")
            if table is None:
                return plan, None
            count = functools.partial(rows_up_to, table=table.name, bound=TINY_TABLE_ROWS + 1)
            return plan, await conn.run_trusted(count, deadline)

    def _written(
        self, outcomes: Sequence[tuple[Database, WriteOutcome]], extra_tags: Sequence[str]
    ) -> WriteResult:
        """The answer to a committed write; its tags were invalidated at the commit."""
        tags = [
            tag for database, outcome in outcomes for tag in self._changed_tags(database, outcome)
        ]
        tags += list(extra_tags)
        first = outcomes[0][1]
        return WriteResult(first.rows_affected, first.last_insert_rowid, tags)

    def _read_tags(
        self, database: Database, reads: frozenset[str], extra: Sequence[str]
    ) -> list[str]:
        return [f"table:{database.name}.{table}" for table in sorted(reads)] + list(extra)

    def check_write(self, database_name: str, caller: Principal) -> None:
        """Raise NotFound (also for a name the caller may not know of) or PermissionDenied
        unless ``caller`` may write ``database_name``."""
        members = self._visible(database_name, caller)
        if not members:  # a database (a group always has members)
            database_name = self._router.database(database_name).name
        caller.require("write", database_name, members)

    def _visible(self, name: str, caller: Principal) -> Sequence[str]:
        """The members of group ``name`` (none for a database), once the caller may know of it.

        Checked before anything else looks the name up, so a name the caller holds no
        scope on answers exactly as an unknown one: existence cannot be probed.
        """
        group = self._router.groups.get(name)
        members = group.members if group is not None else ()
        if not self._sees(caller, name, members):
            raise unknown_database(name)
        return members

    def _sees(self, caller: Principal, name: str, members: Sequence[str] = ()) -> bool:
        """A scope on the name, on a member, or on a group the database is in (whose
        answers name their members) lets the caller know of it."""
        if caller.sees(name, members):
            return True
        groups = self._router.groups.values()
        return any(caller.sees(group.name) for group in groups if name in group.members)

    def visible_health(self, report: HealthReport, caller: Principal) -> HealthReport:
        """``report`` with only the checks of databases ``caller`` may know of (and Redis's).

        The overall status stays the service's (the standard health service tells anyone);
        the score is recomputed over the checks shown.
        """
        names = sorted(self._router.databases, key=len, reverse=True)  # longest name first
        shown = [
            check
            for check in report.checks
            if (database := check_database(check.name, names)) is None
            or self._sees(caller, database)
        ]
        if len(shown) == len(report.checks):
            return report
        healthy = sum(check.status == "healthy" for check in shown)
        return replace(report, score=healthy / len(shown) if shown else 0.0, checks=shown)

    def _check_invalidate_tags(
        self, write: WriteOptions, databases: Sequence[str], caller: Principal
    ) -> None:
        """A writer may bump its own tags and its databases'; ``all`` and others' need admin."""
        names = sorted(self._router.databases, key=len, reverse=True)
        for tag in write.invalidate_tags:
            reserved = tag == ALL_TAG or tag.startswith(("table:", "database:"))
            if reserved and tag_database(tag, names) not in databases:
                caller.require_admin(f"invalidate {tag!r} with a write")

    def _check_batch(self, rows: int, field_name: str) -> None:
        if rows > self._limits.max_batch_rows:
            raise errors.InvalidArgument(
                f"{rows} rows in one call is over limits.max_batch_rows "
                f"({self._limits.max_batch_rows}): split it",
                field=field_name,
            )

    def _check_sql(self, sql: str, field_name: str = "sql") -> None:
        if not sql.strip():
            raise errors.InvalidArgument("the SQL is empty", field=field_name)
        if len(sql) > self._limits.max_sql_length:
            raise errors.InvalidArgument(
                f"the SQL is over {self._limits.max_sql_length} characters", field=field_name
            )


def _db_query(database: Database, request: ReadRequest) -> dict[str, str]:
    """A db.query span's attributes: the SQL as a fingerprint, never its values."""
    return {
        "db.system.name": DB_SYSTEM,
        "db.namespace": database.name,
        "db.query.text": fingerprint(request.sql, database.schema.names),
    }


async def _first_error_cancels_all(work: Sequence[Awaitable[T]]) -> list[T]:
    """Await ``work`` in parallel; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(item) for item in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _same_columns(
    members: Sequence[Database], columns: Sequence[tuple[str, ...]]
) -> tuple[str, ...]:
    for database, names in zip(members[1:], columns[1:], strict=True):
        if names != columns[0]:
            raise errors.InvalidArgument(
                f"{database.name} answers columns {list(names)}, "
                f"{members[0].name} answers {list(columns[0])}",
                field="sql",
            )
    return columns[0]


def _next_chunk(
    stream: OpenStream, rows: int, max_bytes: int, _raw: sqlite3.Connection
) -> tuple[list[SqlRow], bool]:
    return fetch_chunk(stream, rows, max_bytes)
