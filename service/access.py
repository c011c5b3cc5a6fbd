"""One coroutine per RPC, each reading top-down: scopes -> cache -> routing -> db -> answer.

This tier speaks domain values (``service.domain``) and reaches the other
tiers through their doors only: the cache (``TagCache``), the router and
fan-out (``service.routing``), each database's ``Database`` door, and the
observe tier's statement timings and Stats report. It imports no gRPC and
no generated code; deadlines are absolute ``time.monotonic()`` values.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace

from opentelemetry import trace

from service import consistency, errors
from service.cache.keys import cache_key
from service.cache.tagged import CacheUnavailable, EntryPolicy, TagCache
from service.config import Limits, WarmQuery
from service.consistency import freshness_of
from service.db.door import (
    Database,
    ReadShape,
    Rows,
    Statements,
    WriteOutcome,
)
from service.domain import (
    CacheMode,
    CacheStatus,
    EncodedRead,
    InsertRequest,
    MergeSpec,
    ReadRequest,
    ReadResult,
    ResultEncoder,
    WriteOptions,
    WriteResult,
)
from service.hot_reads import HotRead, HotReads
from service.observe.health import HealthReport
from service.observe.statements import StatementTimings
from service.observe.stats_report import KeyFigures, StatsReport, stats_report
from service.routing.archival import Archiver
from service.routing.fan_out import combine, fetch_all, same_columns
from service.routing.router import Router
from service.scopes import ANYONE, Principal, Scopes
from service.tags import ALL_TAG, database_tag, invalidated, read_tags, table_tags, write_tags
from service.values import SqlRow
from service.warming import Warmer

_ATTEMPTS = 3  # reads keyed anew after a schema change, before one goes uncached
MIN_HOT_READS = 10_000


class _Rekeyed(Exception):
    """A load's key lookups were learnt under a schema another process has changed."""


@dataclass
class _Tagged:
    """A read's cache tags, whether a table is keyed, and the shapes they came from."""

    tags: list[str]
    keyed: bool
    shapes: list[ReadShape]


class DataAccess:
    """The service's behaviour, one coroutine per RPC."""

    def __init__(
        self,
        router: Router,
        limits: Limits,
        cache: TagCache,
        cache_ttl: float,
        encode: ResultEncoder,
        tracer: trace.Tracer | None = None,
        on_query: Callable[[str, float], None] | None = None,
        warm: Sequence[WarmQuery] = (),
        archive_pause_after: str | None = None,
    ) -> None:
        self._router = router
        self._scopes = Scopes(router)
        self._limits = limits
        self._cache = cache
        self._cache_ttl = cache_ttl
        self._encode = encode  # the api's, given at start-up: see ResultEncoder
        self._tracer = tracer or trace.NoOpTracerProvider().get_tracer(__name__)
        self._on_query = on_query  # (database, seconds) of every read a database ran
        self.statements = StatementTimings()
        self.keys = KeyFigures()
        # As many as L1 holds, and no fewer than MIN_HOT_READS: with L1 off, Redis hits too
        # are answered from the request bytes without decoding and keying them again.
        self._hot = HotReads(max(cache.local.max_entries, MIN_HOT_READS))
        self.archiver = Archiver(router, write_tags, archive_pause_after)
        self.warmer = Warmer(
            warm, self.cached, self.query, cache_ttl, limits.default_deadline_seconds
        )

    # Reads

    async def cached(self, identity: bytes, caller: Principal = ANYONE) -> EncodedRead | None:
        """The cached answer to a read seen before under ``identity``, if there is one now."""
        hot = self._hot.get(identity)
        if hot is None or not caller.may("read", hot.target, hot.members):
            return None  # the full path says why the caller may not
        answer = await self._cache.find(hot.key, list(hot.tags), hot.policy)
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
        members = self._readable(request, caller)
        for _ in range(_ATTEMPTS):
            tagged = await self._read_tags(members, request, deadline)
            if tagged is None:
                break
            try:
                return await self._through_cache(members, request, deadline, identity, tagged)
            except _Rekeyed:
                # Another process changed the schema (learn the lookups again), or archival
                # moved the routed member's rows (pick the members again).
                members = self._readable(request, caller)
        result = await self._read(members, request, deadline, replica=True)
        return EncodedRead(self._encode(result), CacheStatus.BYPASS)

    async def _through_cache(
        self,
        members: Sequence[Database],
        request: ReadRequest,
        deadline: float,
        identity: bytes,
        tagged: _Tagged,
    ) -> EncodedRead:
        tags = tagged.tags

        async def load() -> bytes:
            # After the tokens were read: a schema change past this point bumps them.
            if not all(shape.current() for shape in tagged.shapes):
                raise _Rekeyed
            self.keys.loaded(tagged.keyed)
            result = await self._read(members, request, deadline, exact=True)
            return self._encode(replace(result, tags=tags))

        policy = EntryPolicy(
            ttl=request.ttl_seconds or self._cache_ttl,
            stale_while_revalidate=request.stale_while_revalidate,
            refresh=request.cache_mode is CacheMode.REFRESH,
        )
        names = [db.name for db in members]
        key = cache_key(names, request, (request.merge, sorted(request.cache_tags)))
        try:
            payload, status = await self._cache.get_or_load(key, tags, load, policy)
        except errors.DeadlineExceeded:
            if time.monotonic() >= deadline:
                raise
            # This caller joined a load bound by another caller's shorter deadline.
            retry = replace(policy, refresh=True)
            payload, status = await self._cache.get_or_load(key, tags, load, retry)
        if request.cache_mode is CacheMode.USE:
            self._hot.remember(identity, HotRead(key, tags, policy, request.database, names))
        return EncodedRead(payload, status)

    def _readable(self, request: ReadRequest, caller: Principal) -> list[Database]:
        """The databases a read runs on, once the caller may read them and the SQL is sane."""
        self._scopes.visible(request.database, caller)
        members = self._router.members(request.database, request.route_key, request.routed)
        caller.require("read", request.database, [db.name for db in members])
        self._check_sql(request.sql)
        return members

    async def _read_tags(
        self, members: Sequence[Database], request: ReadRequest, deadline: float
    ) -> _Tagged | None:
        """What a result is cached under, learnt from the engine, not from the SQL; None
        when it must not be cached."""
        if request.cache_mode is CacheMode.BYPASS:
            return None
        tagged = _Tagged([], False, [])
        for database in members:
            shape = await database.read_shape(request.sql, request.params, deadline)
            if shape is None or not shape.cacheable(request.params):
                return None  # random(), CURRENT_TIMESTAMP, datetime('now'), ...: never cached
            lookups = shape.keyed(request.params)
            tagged.keyed = tagged.keyed or bool(lookups)
            tagged.tags += read_tags(database.name, shape.reads, lookups)
            tagged.tags.append(database_tag(database.name))
            tagged.shapes.append(shape)
        tagged.tags += [*request.cache_tags, ALL_TAG]
        return tagged

    async def _read(
        self,
        members: Sequence[Database],
        request: ReadRequest,
        deadline: float,
        replica: bool = False,
        exact: bool = False,
    ) -> ReadResult:
        """Run a read on its databases, within the row and byte limits; on read replicas
        that caught up with the caller's token when ``replica`` (never for the cache).

        A group whose rows archival moves is read under its barrier, on the members its
        stored bounds name now; ``exact`` (the members are in the cache's key and tags):
        other members than ``members`` raise _Rekeyed instead.
        """
        barrier = self._router.barriers.get(request.database)
        if barrier is None:
            return await self._read_members(members, request, deadline, replica)
        async with barrier.reading(deadline):
            now = self._router.members(request.database, request.route_key, request.routed)
            if [db.name for db in now] != [db.name for db in members]:
                if exact:
                    raise _Rekeyed
                members = now
            return await self._read_members(members, request, deadline, replica)

    async def _read_members(
        self, members: Sequence[Database], request: ReadRequest, deadline: float, replica: bool
    ) -> ReadResult:
        limit = self._limits.max_rows
        cap = min(request.max_rows or limit, limit)
        max_bytes = self._limits.max_result_bytes

        def record(database: Database, rows: Rows) -> None:
            self._record(database, request, rows)

        freshness = freshness_of(request, replica)
        parts = await fetch_all(
            members, request, cap, max_bytes, deadline, self._tracer, record, freshness
        )
        combined = combine(members, parts, request, cap)
        if combined.truncated and not 0 < request.max_rows <= limit:
            raise errors.ResourceExhausted(
                f"the result is over {limit} rows: set max_rows or use QueryStream"
            )
        tags = [tag for db, p in zip(members, parts, strict=True) for tag in _tags_read(db, p)]
        return ReadResult(
            columns=combined.columns,
            rows=combined.rows,
            databases=[db.name for db in members],
            tags=tags + list(request.cache_tags),
            truncated=combined.truncated,
        )

    def _record(self, database: Database, request: ReadRequest, rows: Rows) -> None:
        if self._on_query is not None:
            self._on_query(database.name, rows.elapsed_ms / 1000)
        self.statements.record(
            database.name,
            request.sql,
            request.params,
            rows.elapsed_ms,
            len(rows.rows),
            request.peer,
            database.declared_names,
        )

    async def query_stream(
        self, request: ReadRequest, deadline: float, caller: Principal = ANYONE
    ) -> AsyncGenerator[ReadResult, None]:
        """Run a read and yield its rows in bounded chunks; the first carries the columns.

        A group's members (or the one its ``route_key`` picks) are streamed one after
        the other, concatenated: merging needs every member's rows at once, which is
        Query's. A group whose rows archival moves is streamed under its barrier.
        """
        members = self._readable(request, caller)
        if self._router.is_group(request.database) and request.merge != MergeSpec():
            raise errors.InvalidArgument(
                "QueryStream concatenates a group's members; merging them is Query's",
                field="merge",
            )
        barrier = self._router.barriers.get(request.database)
        if barrier is None:
            async for chunk in self._stream_members(members, request, deadline):
                yield chunk
            return
        async with barrier.streaming(deadline):
            members = self._router.members(request.database, request.route_key, request.routed)
            caller.require("read", request.database, [db.name for db in members])
            async for chunk in self._stream_members(members, request, deadline):
                yield chunk

    async def _stream_members(
        self, members: Sequence[Database], request: ReadRequest, deadline: float
    ) -> AsyncGenerator[ReadResult, None]:
        """Each member's rows in turn, in chunks, cut at ``max_rows`` over them all."""
        chunk_rows, chunk_bytes = self._limits.stream_chunk_rows, self._limits.stream_chunk_bytes
        sent, cap = 0, request.max_rows
        names: tuple[str, ...] | None = None  # the first member's columns: every member's
        for database in members:
            fresh = freshness_of(request, replica=True)(database)
            async with database.stream(
                request.sql, request.params, chunk_bytes, deadline, fresh
            ) as stream:
                these = tuple(name for name, _ in stream.columns)
                if names is not None:
                    same_columns([members[0], database], [names, these])
                first = names is None
                tags = table_tags(database.name, stream.reads)
                tags += list(request.cache_tags) if first else []
                head = ReadResult(stream.columns if first else [], [], [database.name], tags)
                names = these
                while True:
                    want = min(chunk_rows, cap - sent + 1) if cap else chunk_rows
                    rows, exhausted = await stream.next_chunk(want)
                    truncated = bool(cap) and sent + len(rows) > cap
                    if truncated:
                        stream.unsent(sent + len(rows) - cap)
                        rows = rows[: cap - sent]
                    sent += len(rows)
                    if rows or head.columns or head.tags or truncated:
                        yield replace(head, rows=rows, truncated=truncated)
                        head = ReadResult([], [], [database.name], [])
                    if truncated:
                        return
                    if exhausted:
                        break

    # Writes

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
            self._scopes.check_invalidate_tags(write.invalidate_tags, members, caller)
            return await self._insert_routed(database_name, request, write, deadline)
        database = self._router.database(database_name)
        self._scopes.check_invalidate_tags(write.invalidate_tags, [database.name], caller)
        if not request.rows:
            database.check_insert(request)  # refused as a write with rows would be
            return WriteResult((0,), 0, [])
        tags_of = self._tags_written(database, write)
        outcome = await database.insert(request, write, deadline, tags_of)
        return self._answer([(database, outcome)], write.invalidate_tags)

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
            by_member.setdefault(self._router.pick(group, row[at]), []).append(row)
        if not by_member:
            return WriteResult((0,), 0, [])
        databases, parts = [], []
        for member, rows in by_member.items():  # every member's rows before any is written
            databases.append(self._router.database(member))
            parts.append(replace(request, rows=rows))
            databases[-1].check_insert(parts[-1])
        work = []
        for database, part in zip(databases, parts, strict=True):
            key = f"{write.idempotency_key}@{database.name}" if write.idempotency_key else ""
            member_write = replace(write, idempotency_key=key)
            tags_of = self._tags_written(database, write)
            work.append(database.insert(part, member_write, deadline, tags_of))
        outcomes = await asyncio.gather(*work)
        result = self._answer(list(zip(databases, outcomes, strict=True)), write.invalidate_tags)
        return replace(result, rows_affected=(sum(sum(o.rows_affected) for o in outcomes),))

    async def batch_update(
        self,
        database_name: str,
        statements: Statements,
        write: WriteOptions,
        deadline: float,
        caller: Principal = ANYONE,
    ) -> WriteResult:
        """Run DML statements in one transaction, answered after the commit."""
        self.check_write(database_name, caller)
        database = self._router.database(database_name)
        self._scopes.check_invalidate_tags(write.invalidate_tags, [database.name], caller)
        if not statements:
            raise errors.InvalidArgument("at least one statement is needed", field="statements")
        self._check_batch(sum(max(len(sets), 1) for _, sets in statements), "statements")
        for index, (sql, _) in enumerate(statements):
            self._check_sql(sql, f"statements[{index}].sql")
        tags_of = self._tags_written(database, write)
        outcome = await database.update(statements, write, deadline, tags_of)
        return self._answer([(database, outcome)], write.invalidate_tags)

    def _answer(
        self, outcomes: Sequence[tuple[Database, WriteOutcome]], extra_tags: Sequence[str]
    ) -> WriteResult:
        """The answer to committed writes, counted in the key figures."""
        for database, outcome in outcomes:
            self.keys.written(database.name, len(outcome.keys), len(outcome.key_generations))
        return _written(outcomes, extra_tags)

    def _tags_written(
        self, database: Database, write: WriteOptions
    ) -> Callable[[WriteOutcome], list[str]]:
        """What a committed write bumps: the tables and keys it changed, and the caller's tags."""
        return lambda outcome: write_tags(database.name, outcome) + list(write.invalidate_tags)

    def check_write(self, database_name: str, caller: Principal) -> None:
        """Raise NotFound or PermissionDenied unless ``caller`` may write ``database_name``."""
        self._scopes.check_write(database_name, caller)

    async def invalidate(
        self, tags: Sequence[str], databases: Sequence[str], everything: bool
    ) -> list[str]:
        """Bump tags, so nothing cached under them is served again: O(1) per tag."""
        for name in databases:
            self._router.database(name)
        bumped = invalidated(tags, databases, everything)
        try:
            await self._cache.invalidate(bumped)
        except CacheUnavailable as exc:
            raise errors.Unavailable(str(exc)) from exc
        return bumped

    # Health and Stats

    def visible_health(self, report: HealthReport, caller: Principal) -> HealthReport:
        """``report`` with only the checks of databases ``caller`` may know of."""
        return self._scopes.visible_health(report, caller)

    async def stats(self, reset: bool) -> StatsReport:
        """Cache, pool, statement and write figures; ``reset`` clears them after reading."""
        databases = list(self._router.databases.values())
        report = await stats_report(databases, self._cache, self.statements, self.keys, reset)
        return replace(report, warm=self.warmer.figures(), archive=self.archiver.figures())

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


def _tags_read(database: Database, rows: Rows) -> list[str]:
    return table_tags(database.name, rows.reads)


def _written(
    outcomes: Sequence[tuple[Database, WriteOutcome]], extra_tags: Sequence[str]
) -> WriteResult:
    """The answer to a committed write; its tags were invalidated at the commit."""
    tags = [tag for db, outcome in outcomes for tag in write_tags(db.name, outcome)]
    first = outcomes[0][1]
    written = consistency.token((db.name, outcome.position) for db, outcome in outcomes)
    return WriteResult(
        first.rows_affected, first.last_insert_rowid, tags + list(extra_tags), written
    )
