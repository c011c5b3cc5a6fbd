"""The dataaccess RPCs as client methods, each written once for both clients.

A row of the table names the method, says how its arguments become a request
(``call``: a function with the method's own signature and defaults), how a
response reads, whether the call is retried while the server is UNAVAILABLE,
and the method's docstring. ``AsyncClient`` and ``Client`` make each of their
methods from a row, so a method differs between the two only in how it waits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from google.protobuf.message import Message

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client import _columns, _convert
from dataaccess_client._models import (
    AggregateFunction,
    CacheMode,
    OnConflict,
    Params,
    SqlInput,
)

P = ParamSpec("P")
Out = TypeVar("Out")
Function = TypeVar("Function", bound=Callable[..., Any])


@dataclass(frozen=True)
class Call:
    """One call's request, and the seconds it may take (None: the client's timeout)."""

    request: Message
    timeout: float | None


@dataclass(frozen=True)
class Rpc(Generic[P]):
    """What every row has: the method's name and docstring, and its arguments' request."""

    name: str
    call: Callable[P, Call]
    doc: str

    @property
    def stub(self) -> str:
        """The stub's name for it: ``batch_insert`` is ``BatchInsert``."""
        return "".join(word.title() for word in self.name.split("_"))

    def method(self, function: Function, owner: str, returns: str) -> Function:
        """``function`` named, documented and signed as ``owner``'s method for this RPC."""
        function.__name__ = self.name
        function.__qualname__ = f"{owner}.{self.name}"
        function.__doc__ = self.doc
        signature = inspect.signature(self.call)
        this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        function.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[this, *signature.parameters.values()], return_annotation=returns
        )
        return function


@dataclass(frozen=True)
class Unary(Rpc[P], Generic[P, Out]):
    """A request and one response, read by ``read``; retried only when ``retry``.

    ``again``, given the request and its response, may return a request to send
    instead, once, when the response shows the server could not read the first
    (one older than a field the request relies on).
    """

    read: Callable[[Any], Out]
    retry: bool
    again: Callable[[Any, Any], Message | None] | None = None

    @property
    def returns(self) -> str:
        """What the method returns, as ``read`` annotates it."""
        return str(inspect.signature(self.read).return_annotation)


@dataclass(frozen=True)
class Stream(Rpc[P], Generic[P, Out]):
    """A request and a stream of responses, each read by ``read`` with the first one's result."""

    read: Callable[[Any, Out | None], Out]

    def reader(self) -> Callable[[Any], Out]:
        """Reads one stream's responses in turn, passing each the first one's result."""
        first: Out | None = None

        def read(response: Any) -> Out:
            nonlocal first
            result = self.read(response, first)
            first = result if first is None else first
            return result

        return read

    def returns(self, iterator: str) -> str:
        """What the method returns: an ``iterator`` of what ``read`` annotates."""
        return f"{iterator}[{inspect.signature(self.read).return_annotation}]"


def _query_request(
    database: str,
    sql: str,
    params: Params | None = None,
    *,
    max_rows: int = 0,
    cache_mode: CacheMode = "use",
    ttl: float | None = None,
    tags: Sequence[str] = (),
    route_key: SqlInput | None = None,
    consistency_token: str = "",
    order_by: str = "",
    limit: int = 0,
    group_by: Sequence[str] = (),
    aggregates: Mapping[str, AggregateFunction] | None = None,
    timeout: float | None = None,
) -> Call:
    """The QueryRequest of one read-only statement, for Query and QueryStream alike;
    ``consistency_token`` overrides the client's own (the newest write it saw).

    On a group, ``order_by`` (like ``"day DESC, line"``, each member's result
    already in that order) k-way merges the members' rows, ``limit`` cuts the
    merged result, and ``aggregates`` (result column -> ``"sum"``, ``"count"``,
    ``"min"`` or ``"max"``) re-aggregates partial results by the ``group_by``
    columns; with none of them the members' rows are concatenated.
    """
    cache = _convert.cache_options(cache_mode, ttl, tags)
    request = pb.QueryRequest(
        database=database,
        sql=sql,
        max_rows=max_rows,
        cache=cache,
        consistency_token=consistency_token,
    )
    _convert.set_params(request, params)
    merge = _convert.merge(order_by, limit, group_by, aggregates)
    if merge is not None:
        request.merge.CopyFrom(merge)
    if route_key is not None:
        request.route_key.CopyFrom(_convert.to_value(route_key))
    return Call(request, timeout)


def _insert_request(
    database: str,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Iterable[SqlInput]],
    *,
    on_conflict: OnConflict = "abort",
    conflict_columns: Sequence[str] = (),
    update_columns: Sequence[str] = (),
    invalidate_tags: Sequence[str] = (),
    idempotency_key: str = "",
    timeout: float | None = None,
) -> Call:
    """The BatchInsertRequest of rows given in the order of ``columns``: in the columnar
    form when every column holds one kind of value (and NULLs), else as rows."""
    request = pb.BatchInsertRequest(
        database=database, table=table, columns=columns,
        on_conflict=_convert.on_conflict(on_conflict),
        conflict_columns=conflict_columns, update_columns=update_columns,
        invalidate_tags=invalidate_tags, idempotency_key=idempotency_key,
    )  # fmt: skip
    _columns.set_rows(request, rows)
    return Call(request, timeout)


def _update_request(
    database: str,
    statements: Sequence[tuple[str, Sequence[Sequence[SqlInput]]]],
    *,
    invalidate_tags: Sequence[str] = (),
    idempotency_key: str = "",
    timeout: float | None = None,
) -> Call:
    """The BatchUpdateRequest of (sql, param_sets) statements run in one transaction."""
    request = pb.BatchUpdateRequest(
        database=database,
        statements=[
            pb.Statement(sql=sql, param_sets=[_convert.to_row(params) for params in param_sets])
            for sql, param_sets in statements
        ],
        invalidate_tags=invalidate_tags,
        idempotency_key=idempotency_key,
    )
    return Call(request, timeout)


def _invalidate_request(
    tags: Sequence[str] = (),
    databases: Sequence[str] = (),
    all: bool = False,
    *,
    timeout: float | None = None,
) -> Call:
    return Call(pb.InvalidateRequest(tags=tags, databases=databases, all=all), timeout)


def _health_request(deep: bool = False, *, timeout: float | None = None) -> Call:
    return Call(pb.HealthRequest(deep=deep), timeout)


def _stats_request(reset: bool = False, *, timeout: float | None = None) -> Call:
    return Call(pb.StatsRequest(reset=reset), timeout)


def _invalidated_tags(response: pb.InvalidateResponse) -> list[str]:
    return list(response.invalidated_tags)


def _stats_response(response: pb.StatsResponse) -> pb.StatsResponse:
    return response


# The table. Query, Health and Stats are retried; writes never are (see the client's docstring).
query = Unary(
    "query",
    _query_request,
    """Run one read-only statement on a database or group, through the cache.

    On a group, ``order_by``, ``limit``, ``group_by`` and ``aggregates`` say how
    the members' results are merged (see the proto's ``Merge``).
    """,
    read=_convert.query_result,
    retry=True,
)
query_stream = Stream(
    "query_stream",
    _query_request,
    """Run a large read and yield its chunks, each carrying the columns; never retried.

    ``timeout`` bounds the whole stream, so give a long read a larger one.
    """,
    read=_convert.chunk_result,
)
batch_insert = Unary(
    "batch_insert",
    _insert_request,
    "Insert rows into one table atomically; never retried (see the module docstring).",
    read=_convert.insert_result,
    retry=False,
    again=_columns.as_rows_if_unread,
)
batch_update = Unary(
    "batch_update",
    _update_request,
    "Run (sql, param_sets) statements in one transaction; never retried.",
    read=_convert.update_result,
    retry=False,
)
invalidate = Unary(
    "invalidate",
    _invalidate_request,
    "Drop cached results by tag, by database or all of them; returns the tags bumped.",
    read=_invalidated_tags,
    retry=False,
)
health = Unary(
    "health",
    _health_request,
    "The health of every database and of Redis; ``deep`` runs the slower checks.",
    read=_convert.health_result,
    retry=True,
)
stats = Unary(
    "stats",
    _stats_request,
    "Cache, pool, statement and write statistics; ``reset`` clears the counters.",
    read=_stats_response,
    retry=True,
)
