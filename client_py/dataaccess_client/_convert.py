"""Plain Python values <-> dataaccess.v1 messages, shared by the async and the sync client."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from google.protobuf import duration_pb2, struct_pb2

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client._models import (
    AggregateFunction,
    HealthCheck,
    HealthResult,
    InsertResult,
    Params,
    QueryResult,
    Row,
    SqlInput,
    SqlValue,
    UpdateResult,
)

EnumValue = TypeVar("EnumValue")

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_CACHE_MODES = {
    "use": pb.CACHE_MODE_USE,
    "bypass": pb.CACHE_MODE_BYPASS,
    "refresh": pb.CACHE_MODE_REFRESH,
}
_AGGREGATES = {
    "sum": pb.AGGREGATE_FUNCTION_SUM,
    "count": pb.AGGREGATE_FUNCTION_COUNT,
    "min": pb.AGGREGATE_FUNCTION_MIN,
    "max": pb.AGGREGATE_FUNCTION_MAX,
}
_ON_CONFLICT = {
    "abort": pb.ON_CONFLICT_ABORT,
    "ignore": pb.ON_CONFLICT_IGNORE,
    "replace": pb.ON_CONFLICT_REPLACE,
    "upsert": pb.ON_CONFLICT_UPSERT,
}


def to_value(value: SqlInput) -> pb.Value:
    """The proto Value of a Python value; bool and other types raise TypeError."""
    # bool is an int subclass, so it must be refused before the int branch: SQLite
    # has no boolean, and silently sending 1/0 hides a likely mistake.
    if isinstance(value, bool):
        raise TypeError("bool is ambiguous as a SQL value: pass int(flag) instead")
    if value is None:
        return pb.Value(null=struct_pb2.NULL_VALUE)
    if isinstance(value, int):
        return pb.Value(integer=_int64(value))
    if isinstance(value, float):
        return pb.Value(real=value)
    if isinstance(value, str):
        return pb.Value(text=value)
    if isinstance(value, bytes | bytearray | memoryview):
        return pb.Value(blob=bytes(value))
    raise TypeError(
        f"{type(value).__name__} is not a SQL value: use None, int, float, str or bytes"
    )


def _int64(value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{value} does not fit in a 64-bit signed integer")
    return value


def from_value(value: pb.Value) -> SqlValue:
    """The Python value of a proto Value."""
    kind = value.WhichOneof("kind")
    if kind is None:
        raise ValueError("a Value with no kind set")
    if kind == "null":
        return None
    result: SqlValue = getattr(value, kind)
    return result


def to_row(values: Iterable[SqlInput]) -> pb.Row:
    """A proto Row of Python values."""
    return pb.Row(values=[to_value(v) for v in values])


def from_row(row: pb.Row) -> Row:
    """A proto Row as a tuple of Python values."""
    return tuple(from_value(v) for v in row.values)


def set_params(request: pb.QueryRequest, params: Params | None) -> None:
    """Set ``params`` on ``request``: a mapping as named parameters, a sequence as positional."""
    if params is None:
        return
    if isinstance(params, Mapping):
        for name, value in params.items():
            request.named_params[name].CopyFrom(to_value(value))
        return
    # A str is a Sequence too, and would silently become one parameter per character.
    if isinstance(params, str | bytes | bytearray | memoryview):
        raise TypeError("params must be a list, a tuple or a dict, not a single value")
    request.params.extend(to_value(v) for v in params)


def cache_options(mode: str, ttl: float | None, tags: Sequence[str]) -> pb.CacheOptions:
    """The CacheOptions of a read: its cache mode by name, its TTL in seconds and its tags."""
    options = pb.CacheOptions(mode=_choice("cache_mode", mode, _CACHE_MODES), tags=tags)
    if ttl is not None:
        options.ttl.CopyFrom(seconds_to_duration(ttl))
    return options


def merge(
    order_by: str,
    limit: int,
    group_by: Sequence[str],
    aggregates: Mapping[str, AggregateFunction] | None,
) -> pb.Merge | None:
    """How a group's member results combine; None when nothing is asked (concatenated)."""
    if not (order_by or limit or group_by or aggregates):
        return None
    if limit < 0:
        raise ValueError(f"limit must be zero (no cut) or positive, not {limit}")
    return pb.Merge(
        order_by=order_by,
        limit=limit,
        group_by=group_by,
        aggregates=[
            pb.Aggregate(column=column, function=_choice("aggregate", function, _AGGREGATES))
            for column, function in (aggregates or {}).items()
        ],
    )


def seconds_to_duration(seconds: float) -> duration_pb2.Duration:
    """A non-negative number of seconds as a proto Duration."""
    if not seconds >= 0:
        raise ValueError(f"a duration must be zero or positive, not {seconds}")
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1_000_000_000))
    return duration


def on_conflict(name: str) -> pb.OnConflict.ValueType:
    """The OnConflict of a BatchInsert, by name."""
    return _choice("on_conflict", name, _ON_CONFLICT)


def _choice(name: str, value: str, choices: Mapping[str, EnumValue]) -> EnumValue:
    try:
        return choices[value]
    except KeyError:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}") from None


def query_result(response: pb.QueryResponse) -> QueryResult:
    """A QueryResponse as a QueryResult."""
    return QueryResult(
        columns=[c.name for c in response.columns],
        decl_types=[c.decl_type for c in response.columns],
        rows=[from_row(row) for row in response.rows],
        cache_status=_enum_name(pb.CacheStatus.Name(response.cache_status), "CACHE_STATUS_"),
        databases=list(response.databases),
        tags=list(response.tags),
        truncated=response.truncated,
    )


def chunk_result(response: pb.QueryResponse, first: QueryResult | None) -> QueryResult:
    """A QueryStream chunk as a QueryResult carrying the columns of the ``first`` chunk.

    The server sends the columns in the first chunk only; repeating them lets
    each chunk be read on its own.
    """
    chunk = query_result(response)
    if first is None:
        return chunk
    return dataclasses.replace(chunk, columns=first.columns, decl_types=first.decl_types)


def insert_result(response: pb.BatchInsertResponse) -> InsertResult:
    """A BatchInsertResponse as an InsertResult."""
    return InsertResult(
        rows_affected=response.rows_affected,
        last_insert_rowid=response.last_insert_rowid,
        invalidated_tags=list(response.invalidated_tags),
        consistency_token=response.consistency_token,
    )


def update_result(response: pb.BatchUpdateResponse) -> UpdateResult:
    """A BatchUpdateResponse as an UpdateResult."""
    return UpdateResult(
        rows_affected=list(response.rows_affected),
        invalidated_tags=list(response.invalidated_tags),
        consistency_token=response.consistency_token,
    )


def health_result(response: pb.HealthResponse) -> HealthResult:
    """A HealthResponse as a HealthResult with lower-case status names."""
    return HealthResult(
        status=_health_status(response.status),
        score=response.score,
        checks=[
            HealthCheck(
                name=check.name,
                status=_health_status(check.status),
                message=check.message,
                duration_ms=check.duration_ms,
            )
            for check in response.checks
        ],
    )


def _health_status(status: pb.HealthStatus.ValueType) -> str:
    return _enum_name(pb.HealthStatus.Name(status), "HEALTH_STATUS_")


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()
