"""Requests off the wire: proto messages -> domain requests, checked field by field.

A bad field is an ``InvalidArgument`` naming it; tags are held to the
configured caps (each is kept in memory and in Redis).
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from dataaccess.v1 import data_access_pb2 as pb
from service import consistency, errors
from service.api.codec import from_proto, params_from_proto, rows_from_proto
from service.api.columns import rows_from_columns
from service.config import Limits
from service.domain import CacheMode, InsertRequest, MergeSpec, ReadRequest, WriteOptions
from service.values import SqlRow

_MAX_CACHE_SECONDS = 366 * 86_400  # a year: entries are a cache, not storage
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


def parse_query(request: bytes) -> pb.QueryRequest:
    try:
        return pb.QueryRequest.FromString(request)
    except DecodeError as exc:
        raise errors.InvalidArgument(f"the request is not a QueryRequest: {exc}") from exc


def read_request(request: pb.QueryRequest, peer: str, limits: Limits) -> ReadRequest:
    if request.max_rows < 0:
        raise errors.InvalidArgument("max_rows must not be negative", field="max_rows")
    routed = request.HasField("route_key")
    cache = request.cache
    return ReadRequest(
        database=request.database,
        sql=request.sql,
        params=params_from_proto(request.params, request.named_params),
        max_rows=request.max_rows,
        cache_tags=checked_tags(cache.tags, "cache.tags", limits),
        route_key=from_proto(request.route_key, "route_key") if routed else None,
        routed=routed,
        cache_mode=_CACHE_MODE.get(cache.mode, CacheMode.USE),
        ttl_seconds=_seconds(cache, "ttl"),
        stale_while_revalidate=_seconds(cache, "stale_while_revalidate"),
        merge=_merge_spec(request.merge) if request.HasField("merge") else MergeSpec(),
        peer=peer,
        consistency_token=_token(request.consistency_token),
    )


def _token(text: str) -> str:
    """The caller's consistency token, once it reads as one (INVALID_ARGUMENT if not)."""
    consistency.positions(text)
    return text


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


def write_options(
    request: pb.BatchInsertRequest | pb.BatchUpdateRequest, limits: Limits
) -> WriteOptions:
    tags = checked_tags(request.invalidate_tags, "invalidate_tags", limits)
    return WriteOptions(tags, request.idempotency_key)


def checked_tags(tags: Sequence[str], field: str, limits: Limits) -> list[str]:
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


def insert_request(request: pb.BatchInsertRequest, max_rows: int) -> InsertRequest:
    """A BatchInsert as the domain sees it, its rows sent as rows or as column_data (at
    most ``max_rows`` of those, checked before they are read)."""
    return InsertRequest(
        table=request.table,
        columns=list(request.columns),
        rows=_insert_rows(request, max_rows),
        on_conflict=_ON_CONFLICT.get(request.on_conflict, "abort"),
        conflict_columns=list(request.conflict_columns),
        update_columns=list(request.update_columns),
    )


def _insert_rows(request: pb.BatchInsertRequest, max_rows: int) -> list[SqlRow]:
    if not request.column_data:
        return rows_from_proto(request.rows, "rows")
    if request.rows:
        raise errors.InvalidArgument(
            "give the rows in rows or in column_data, not both", field="column_data"
        )
    return rows_from_columns(request.column_data, len(request.columns), max_rows)


def update_statements(request: pb.BatchUpdateRequest) -> list[tuple[str, list[SqlRow]]]:
    """A BatchUpdate's statements with their parameter sets."""
    return [
        (statement.sql, rows_from_proto(statement.param_sets, f"statements[{i}].param_sets"))
        for i, statement in enumerate(request.statements)
    ]
