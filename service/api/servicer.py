"""The gRPC servicer: proto <-> domain, and DataAccessError -> gRPC status, in one place.

No I/O logic lives here: every method converts its request, awaits one
DataAccess coroutine and converts the answer. Failures leave through
``_abort``, which attaches ``google.rpc.BadRequest`` details to
INVALID_ARGUMENT so the caller learns which field was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from dataaccess_client.v1 import data_access_pb2 as pb
from dataaccess_client.v1 import data_access_pb2_grpc as pb_grpc
from service import errors
from service.access import DataAccess
from service.admission import CallerSlots
from service.api.codec import from_proto, params_from_proto, row_from_proto, rows_to_proto
from service.api.status import status_for
from service.auth import Authenticator, Principal
from service.config import Limits
from service.domain import (
    CacheMode,
    CacheStatus,
    InsertRequest,
    MergeSpec,
    ReadRequest,
    ReadResult,
    WriteOptions,
    WriteResult,
)
from service.observe.health import HealthChecker
from service.observe.statements import SlowStatement

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]

_CACHE_STATUS = {
    CacheStatus.MISS: pb.CACHE_STATUS_MISS,
    CacheStatus.HIT_LOCAL: pb.CACHE_STATUS_HIT_LOCAL,
    CacheStatus.HIT_REDIS: pb.CACHE_STATUS_HIT_REDIS,
    CacheStatus.STALE: pb.CACHE_STATUS_STALE,
    CacheStatus.BYPASS: pb.CACHE_STATUS_BYPASS,
}
_STATUS_SUFFIX = {
    name: pb.QueryResponse(cache_status=status).SerializeToString()
    for name, status in _CACHE_STATUS.items()
}
_MAX_CACHE_SECONDS = 366 * 86_400  # a year: entries are a cache, not storage
_ADVISORY = {
    "n_plus_one": pb.ADVISORY_KIND_N_PLUS_ONE,
    "full_scan": pb.ADVISORY_KIND_FULL_SCAN,
}
_ON_CONFLICT = {
    pb.ON_CONFLICT_UNSPECIFIED: "abort",
    pb.ON_CONFLICT_ABORT: "abort",
    pb.ON_CONFLICT_IGNORE: "ignore",
    pb.ON_CONFLICT_REPLACE: "replace",
    pb.ON_CONFLICT_UPSERT: "upsert",
}
_CACHE_MODE = {
    pb.CACHE_MODE_USE: CacheMode.USE,
    pb.CACHE_MODE_BYPASS: CacheMode.BYPASS,
    pb.CACHE_MODE_REFRESH: CacheMode.REFRESH,
}
_AGGREGATE = {
    pb.AGGREGATE_FUNCTION_SUM: "sum",
    pb.AGGREGATE_FUNCTION_COUNT: "count",
    pb.AGGREGATE_FUNCTION_MIN: "min",
    pb.AGGREGATE_FUNCTION_MAX: "max",
}
_HEALTH = {
    "healthy": pb.HEALTH_STATUS_HEALTHY,
    "degraded": pb.HEALTH_STATUS_DEGRADED,
    "critical": pb.HEALTH_STATUS_CRITICAL,
}


def _answers_errors(
    method: Callable[[Any, Req, Context, Principal], Awaitable[Resp]],
) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
    """Authenticate and admit the caller, run the method, and turn its failures into statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Context) -> Resp:
        try:
            caller = self._caller(context)
            with self._slots.admit(caller.name):
                return await method(self, request, context, caller)
        except errors.DataAccessError as exc:
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("unexpected failure in %s", method.__name__)
            await _abort(context, errors.Internal(f"internal error: {type(exc).__name__}"))

    return wrapper


async def _abort(context: Context, error: errors.DataAccessError) -> NoReturn:
    code = status_for(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    if isinstance(error, errors.InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field or "", description=error.message
        )
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status.details.append(detail)
    assert status.code != code_pb2.OK
    # abort (not abort_with_status): the tracing interceptor's context records it on the span.
    aborting = rpc_status.to_status(status)
    await context.abort(aborting.code, aborting.details, aborting.trailing_metadata)
    raise AssertionError("abort_with_status returned")  # pragma: no cover


class DataAccessServicer(pb_grpc.DataAccessServicer):
    """Serves dataaccess.v1.DataAccess over a DataAccess instance."""

    def __init__(
        self,
        access: DataAccess,
        limits: Limits,
        health: HealthChecker,
        auth: Authenticator | None = None,
    ) -> None:
        self._access = access
        self._health = health
        self._auth = auth or Authenticator(())
        self._limits = limits
        self._slots = CallerSlots(
            limits.max_concurrent_rpcs, limits.max_concurrent_per_caller, self._auth.enabled
        )

    @property
    def calls_in_flight(self) -> int:
        """DataAccess calls running now (logged when the server stops)."""
        return self._slots.running

    def _caller(self, context: Context) -> Principal:
        """Who is calling (Unauthenticated first, before anything about the request)."""
        return self._auth.principal(context.invocation_metadata())

    def _deadline(self, context: Context) -> float:
        remaining = context.time_remaining()
        default = self._limits.default_deadline_seconds
        budget = default if remaining is None else min(remaining, default)
        return time.monotonic() + budget

    @_answers_errors
    async def Query(  # type: ignore[override]  # bytes in and out: see add_to_server
        self, request: bytes, context: Context, caller: Principal
    ) -> bytes:
        answer = await self._access.cached(request, caller)
        if answer is None:
            parsed = _parse_query(request)
            deadline = self._deadline(context)
            read = _read_request(parsed, context.peer(), self._limits)
            answer = await self._access.query(read, deadline, request, caller)
        # Fields of concatenated messages merge: the cached bytes plus the status.
        return answer.payload + _STATUS_SUFFIX[answer.cache_status]

    async def QueryStream(
        self, request: pb.QueryRequest, context: Context
    ) -> AsyncIterator[pb.QueryResponse]:
        try:
            caller = self._caller(context)
            with self._slots.admit(caller.name):
                deadline = self._deadline(context)
                chunks = self._access.query_stream(
                    _read_request(request, context.peer(), self._limits),
                    deadline,
                    caller,
                )
                expiry = _expire_at(deadline, context)
                try:
                    async with contextlib.aclosing(chunks):
                        async for chunk in chunks:
                            yield _query_response(chunk)
                finally:
                    expiry.cancel()
        except errors.DataAccessError as exc:
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("unexpected failure in QueryStream")
            await _abort(context, errors.Internal(f"internal error: {type(exc).__name__}"))

    @_answers_errors
    async def BatchInsert(
        self, request: pb.BatchInsertRequest, context: Context, caller: Principal
    ) -> pb.BatchInsertResponse:
        self._access.check_write(request.database, caller)  # before any row is looked at
        insert = InsertRequest(
            table=request.table,
            columns=list(request.columns),
            rows=[row_from_proto(row, f"rows[{i}]") for i, row in enumerate(request.rows)],
            on_conflict=_ON_CONFLICT.get(request.on_conflict, "abort"),
            conflict_columns=list(request.conflict_columns),
            update_columns=list(request.update_columns),
        )
        result = await self._access.batch_insert(
            request.database,
            insert,
            _write_options(request, self._limits),
            self._deadline(context),
            caller,
        )
        return pb.BatchInsertResponse(
            rows_affected=sum(result.rows_affected),
            last_insert_rowid=result.last_insert_rowid,
            invalidated_tags=result.invalidated_tags,
        )

    @_answers_errors
    async def BatchUpdate(
        self, request: pb.BatchUpdateRequest, context: Context, caller: Principal
    ) -> pb.BatchUpdateResponse:
        self._access.check_write(request.database, caller)  # before any row is looked at
        statements = [
            (
                statement.sql,
                [
                    row_from_proto(row, f"statements[{i}].param_sets[{j}]")
                    for j, row in enumerate(statement.param_sets)
                ],
            )
            for i, statement in enumerate(request.statements)
        ]
        result: WriteResult = await self._access.batch_update(
            request.database,
            statements,
            _write_options(request, self._limits),
            self._deadline(context),
            caller,
        )
        return pb.BatchUpdateResponse(
            rows_affected=result.rows_affected, invalidated_tags=result.invalidated_tags
        )

    @_answers_errors
    async def Invalidate(
        self, request: pb.InvalidateRequest, context: Context, caller: Principal
    ) -> pb.InvalidateResponse:
        caller.require_admin("invalidate")
        tags = await self._access.invalidate(
            _tags(request.tags, "tags", self._limits), list(request.databases), request.all
        )
        return pb.InvalidateResponse(invalidated_tags=tags)

    @_answers_errors
    async def Health(
        self, request: pb.HealthRequest, context: Context, caller: Principal
    ) -> pb.HealthResponse:
        if request.deep:
            caller.require_admin("ask for a deep health check")
        # Only what the caller may know of: names it holds no scope on stay unlisted.
        report = self._access.visible_health(await self._health.report(request.deep), caller)
        return pb.HealthResponse(
            status=_HEALTH[report.status],
            score=report.score,
            checks=[
                pb.HealthCheck(
                    name=c.name,
                    status=_HEALTH[c.status],
                    message=c.message,
                    duration_ms=c.duration_ms,
                )
                for c in report.checks
            ],
        )

    @_answers_errors
    async def Stats(
        self, request: pb.StatsRequest, context: Context, caller: Principal
    ) -> pb.StatsResponse:
        caller.require_admin("read stats")
        report = await self._access.stats(reset=request.reset)
        return pb.StatsResponse(
            cache=[
                pb.CacheTierStats(
                    tier=t.tier,
                    hits=t.hits,
                    misses=t.misses,
                    evictions=t.evictions,
                    entries=t.entries,
                    bytes=t.bytes,
                    bypasses=t.bypasses,
                    state=t.state,
                    loads=report.loads,
                    hit_rate=t.hits / (t.hits + t.misses) if t.hits + t.misses else 0.0,
                )
                for t in report.cache
            ],
            pools=[pb.PoolStats(**vars(pool)) for pool in report.pools],
            writes=[pb.WriteStats(**vars(write)) for write in report.writes],
            statements=[pb.StatementStats(**vars(s)) for s in report.statements],
            slow_queries=[_slow_query(s) for s in report.slowest],
            advisories=[
                pb.Advisory(
                    kind=_ADVISORY[a.kind],
                    database=a.database,
                    fingerprint=a.fingerprint,
                    message=a.message,
                    suggested_index=a.suggested_index,
                )
                for a in report.advisories
            ],
        )


def add_to_server(servicer: DataAccessServicer, server: grpc.aio.Server) -> None:
    """Register the servicer; Query's answers are bytes, passed through unencoded.

    The generated registration would encode a QueryResponse; a cache hit
    already holds the encoded answer, so Query's serializer passes bytes.
    Query's request arrives as bytes too: a repeat is answered by identity.
    Every other request is decoded here, so bytes that are not the method's
    message get INVALID_ARGUMENT (grpc's own decoding failure says UNKNOWN).
    """
    service = pb.DESCRIPTOR.services_by_name["DataAccess"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        behavior = getattr(servicer, method.name)
        if method.name != "Query":
            behavior = _decoding(behavior, request_type, method.server_streaming, servicer)
        serialize = (
            _pass_bytes
            if method.name == "Query"
            else getattr(pb, method.output_type.name).SerializeToString
        )
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            behavior, request_deserializer=_keep_bytes, response_serializer=serialize
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


def _slow_query(slow: SlowStatement) -> pb.SlowQuery:
    finished = timestamp_pb2.Timestamp()
    finished.FromNanoseconds(int(slow.finished_at * 1e9))
    return pb.SlowQuery(
        database=slow.database,
        fingerprint=slow.fingerprint,
        duration_ms=slow.duration_ms,
        rows=slow.rows,
        finished_at=finished,
    )


def _expire_at(deadline: float, context: Context) -> asyncio.TimerHandle:
    """End a stream DEADLINE_EXCEEDED at ``deadline``, even while it waits for the client
    to read (gRPC's pending write is outside the handler's code): its reader goes back."""
    handler = asyncio.current_task()
    assert handler is not None
    loop = asyncio.get_running_loop()

    def expire() -> None:
        late = errors.DeadlineExceeded("the stream's deadline passed before it was read to its end")
        abort = loop.create_task(_abort(context, late))
        abort.add_done_callback(_drop_abort_error)
        # After the abort's first step has queued the status in gRPC, not before: the
        # cancelled handler closes its generators, so the reader and call slot are let go.
        loop.call_soon(handler.cancel)

    return loop.call_later(max(deadline - time.monotonic(), 0.0), expire)


def _drop_abort_error(abort: asyncio.Task[NoReturn]) -> None:
    # AbortError is how abort ends; UsageError if the handler aborted first. Either is fine.
    if not abort.cancelled():
        abort.exception()


def _keep_bytes(request: bytes) -> bytes:
    return request


def _decoding(behavior: Any, request_type: Any, streaming: bool, servicer: Any) -> Any:
    """``behavior`` taking the request's bytes: the caller is authenticated, then they are
    decoded into ``request_type`` (nothing is parsed for a caller without credentials)."""
    if streaming:

        async def stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            request = await _decode(raw, request_type, context, servicer)
            async for answer in behavior(request, context):
                yield answer

        return stream

    async def unary(raw: bytes, context: Context) -> Any:
        return await behavior(await _decode(raw, request_type, context, servicer), context)

    return unary


async def _decode(raw: bytes, request_type: Any, context: Context, servicer: Any) -> Any:
    try:
        servicer._caller(context)
    except errors.DataAccessError as exc:
        await _abort(context, exc)
    try:
        return request_type.FromString(raw)
    except DecodeError as exc:
        error = errors.InvalidArgument(f"the request is not a {request_type.__name__}: {exc}")
        await _abort(context, error)


def _parse_query(request: bytes) -> pb.QueryRequest:
    try:
        return pb.QueryRequest.FromString(request)
    except DecodeError as exc:
        raise errors.InvalidArgument(f"the request is not a QueryRequest: {exc}") from exc


def _pass_bytes(answer: bytes | pb.QueryResponse) -> bytes:
    return answer if isinstance(answer, bytes) else answer.SerializeToString()


def encode_read(result: ReadResult) -> bytes:
    """A Query's answer without its cache status, as the cache keeps it."""
    return _query_response(result, with_status=False).SerializeToString()


def _read_request(request: pb.QueryRequest, caller: str, limits: Limits) -> ReadRequest:
    if request.max_rows < 0:
        raise errors.InvalidArgument("max_rows must not be negative", field="max_rows")
    routed = request.HasField("route_key")
    cache = request.cache
    return ReadRequest(
        database=request.database,
        sql=request.sql,
        params=params_from_proto(request.params, request.named_params),
        max_rows=request.max_rows,
        cache_tags=_tags(cache.tags, "cache.tags", limits),
        route_key=from_proto(request.route_key, "route_key") if routed else None,
        routed=routed,
        cache_mode=_CACHE_MODE.get(cache.mode, CacheMode.USE),
        ttl_seconds=_seconds(cache, "ttl"),
        stale_while_revalidate=_seconds(cache, "stale_while_revalidate"),
        merge=_merge_spec(request.merge) if request.HasField("merge") else MergeSpec(),
        caller=caller,
    )


def _seconds(cache: pb.CacheOptions, name: str) -> float:
    """A CacheOptions duration in seconds: 0 when unset, never negative."""
    if not cache.HasField(name):  # type: ignore[arg-type]
        return 0.0
    duration = getattr(cache, name)
    seconds = duration.seconds + duration.nanos / 1e9
    if not 0 <= seconds <= _MAX_CACHE_SECONDS or not -(10**9) < duration.nanos < 10**9:
        raise errors.InvalidArgument(
            f"cache.{name} must be between 0 and {_MAX_CACHE_SECONDS} s", field=f"cache.{name}"
        )
    return float(seconds)


def _merge_spec(merge: pb.Merge) -> MergeSpec:
    return MergeSpec(
        order_by=merge.order_by,
        limit=merge.limit,
        group_by=list(merge.group_by),
        aggregates=[
            (a.column, _AGGREGATE.get(a.function, "unspecified")) for a in merge.aggregates
        ],
    )


def _write_options(
    request: pb.BatchInsertRequest | pb.BatchUpdateRequest, limits: Limits
) -> WriteOptions:
    tags = _tags(request.invalidate_tags, "invalidate_tags", limits)
    return WriteOptions(tags, request.idempotency_key)


def _tags(tags: Sequence[str], field: str, limits: Limits) -> list[str]:
    """Tags a caller named, within the caps: each one is held in memory and in Redis."""
    if len(tags) > limits.max_tags_per_request:
        raise errors.InvalidArgument(
            f"{field}: at most {limits.max_tags_per_request} tags, got {len(tags)}", field=field
        )
    for tag in tags:
        if len(tag.encode()) > limits.max_tag_bytes:
            raise errors.InvalidArgument(
                f"{field}: a tag of {len(tag.encode())} bytes; at most {limits.max_tag_bytes}",
                field=field,
            )
    return list(tags)


def _query_response(result: ReadResult, with_status: bool = True) -> pb.QueryResponse:
    return pb.QueryResponse(
        columns=[pb.Column(name=name, decl_type=decl) for name, decl in result.columns],
        rows=rows_to_proto(result.rows),
        cache_status=(
            _CACHE_STATUS[result.cache_status] if with_status else pb.CACHE_STATUS_UNSPECIFIED
        ),
        databases=result.databases,
        tags=result.tags,
        truncated=result.truncated,
    )
