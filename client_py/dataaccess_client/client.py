"""AsyncClient and Client: the dataaccess RPCs as methods taking and returning plain values.

Both clients build requests and read responses through ``_convert`` and make
each call under one ``CallPolicy``, so a method here is only the call itself.
Every call has a deadline (the client's ``timeout`` unless the method is given
one). Query, Health and Stats are retried with exponential backoff and jitter
while the server is UNAVAILABLE, within that same deadline. Writes are never
retried, as a write that reached the server may have committed; a caller who
passes an ``idempotency_key`` can safely retry a write themselves, since the
server answers a repeated key with the first outcome and writes nothing.
Failures are raised as the ``dataaccess_client.errors`` classes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
from grpc import aio

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from dataaccess_client import _convert, _policy, _tracing
from dataaccess_client._models import (
    CacheMode,
    HealthResult,
    InsertResult,
    OnConflict,
    Params,
    QueryResult,
    SqlInput,
    UpdateResult,
)
from dataaccess_client._policy import CallPolicy, ChannelOptions, TlsFiles
from dataaccess_client.errors import from_rpc_error

DEFAULT_TARGET = "127.0.0.1:50051"

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AsyncClient:
    """The dataaccess service over a grpc.aio channel; use ``async with`` or ``await close()``."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        channel_options: ChannelOptions | None = None,
        token: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._policy = CallPolicy.build(
            timeout=timeout, retries=retries, backoff=backoff, token=token
        )
        options = _policy.channel_options(channel_options)
        interceptors = _tracing.aio_interceptors()
        if tls is None:
            self._channel = aio.insecure_channel(target, options=options, interceptors=interceptors)
        else:
            credentials = tls.credentials()
            self._channel = aio.secure_channel(
                target, credentials, options=options, interceptors=interceptors
            )
        self._stub = pb_grpc.DataAccessStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel, cancelling calls still running."""
        await self._channel.close(None)

    async def _unary(
        self,
        method: aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None,
        *,
        retry: bool,
    ) -> Resp:
        attempts = self._policy.attempts(timeout, retry=retry)
        while True:
            try:
                return await method(
                    request, timeout=attempts.remaining(), metadata=self._policy.metadata
                )
            except grpc.RpcError as exc:
                pause = attempts.pause_after(exc)
                if pause is None:
                    raise from_rpc_error(exc) from exc
            await asyncio.sleep(pause)

    async def query(
        self,
        database: str,
        sql: str,
        params: Params | None = None,
        *,
        max_rows: int = 0,
        cache_mode: CacheMode = "use",
        ttl: float | None = None,
        tags: Sequence[str] = (),
        route_key: SqlInput | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run one read-only statement on a database or group, through the cache."""
        request = _convert.query_request(
            database, sql, params, max_rows=max_rows, cache_mode=cache_mode,
            ttl=ttl, tags=tags, route_key=route_key,
        )  # fmt: skip
        return _convert.query_result(
            await self._unary(self._stub.Query, request, timeout, retry=True)
        )

    async def query_stream(
        self,
        database: str,
        sql: str,
        params: Params | None = None,
        *,
        max_rows: int = 0,
        cache_mode: CacheMode = "use",
        ttl: float | None = None,
        tags: Sequence[str] = (),
        route_key: SqlInput | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[QueryResult]:
        """Run a large read and yield its chunks, each carrying the columns; never retried.

        ``timeout`` bounds the whole stream, so give a long read a larger one.
        """
        request = _convert.query_request(
            database, sql, params, max_rows=max_rows, cache_mode=cache_mode,
            ttl=ttl, tags=tags, route_key=route_key,
        )  # fmt: skip
        budget = self._policy.budget(timeout)
        call = self._stub.QueryStream(request, timeout=budget, metadata=self._policy.metadata)
        first: QueryResult | None = None
        try:
            async for response in call:
                chunk = _convert.chunk_result(response, first)
                first = first or chunk
                yield chunk
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            # Stops the server sending the rest when the caller leaves the loop early.
            call.cancel()

    async def batch_insert(
        self,
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
    ) -> InsertResult:
        """Insert rows into one table atomically; never retried (see the module docstring)."""
        request = _convert.insert_request(
            database, table, columns, rows, on_conflict=on_conflict,
            conflict_columns=conflict_columns, update_columns=update_columns,
            invalidate_tags=invalidate_tags, idempotency_key=idempotency_key,
        )  # fmt: skip
        response = await self._unary(self._stub.BatchInsert, request, timeout, retry=False)
        return _convert.insert_result(response)

    async def batch_update(
        self,
        database: str,
        statements: Sequence[tuple[str, Sequence[Sequence[SqlInput]]]],
        *,
        invalidate_tags: Sequence[str] = (),
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> UpdateResult:
        """Run (sql, param_sets) statements in one transaction; never retried."""
        request = _convert.update_request(
            database, statements, invalidate_tags=invalidate_tags, idempotency_key=idempotency_key
        )
        response = await self._unary(self._stub.BatchUpdate, request, timeout, retry=False)
        return _convert.update_result(response)

    async def invalidate(
        self,
        tags: Sequence[str] = (),
        databases: Sequence[str] = (),
        all: bool = False,
        *,
        timeout: float | None = None,
    ) -> list[str]:
        """Drop cached results by tag, by database or all of them; returns the tags bumped."""
        request = pb.InvalidateRequest(tags=tags, databases=databases, all=all)
        response = await self._unary(self._stub.Invalidate, request, timeout, retry=False)
        return list(response.invalidated_tags)

    async def health(self, deep: bool = False, *, timeout: float | None = None) -> HealthResult:
        """The health of every database and of Redis; ``deep`` runs the slower checks."""
        request = pb.HealthRequest(deep=deep)
        return _convert.health_result(
            await self._unary(self._stub.Health, request, timeout, retry=True)
        )

    async def stats(self, reset: bool = False, *, timeout: float | None = None) -> pb.StatsResponse:
        """Cache, pool, statement and write statistics; ``reset`` clears the counters."""
        request = pb.StatsRequest(reset=reset)
        return await self._unary(self._stub.Stats, request, timeout, retry=True)


class Client:
    """The dataaccess service over a blocking grpc channel; use ``with`` or ``close()``."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        channel_options: ChannelOptions | None = None,
        token: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._policy = CallPolicy.build(
            timeout=timeout, retries=retries, backoff=backoff, token=token
        )
        options = _policy.channel_options(channel_options)
        self._channel = (
            grpc.insecure_channel(target, options=options)
            if tls is None
            else grpc.secure_channel(target, tls.credentials(), options=options)
        )
        self._stub = pb_grpc.DataAccessStub(_tracing.traced(self._channel))

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, cancelling calls still running."""
        self._channel.close()

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None,
        *,
        retry: bool,
    ) -> Resp:
        attempts = self._policy.attempts(timeout, retry=retry)
        while True:
            try:
                return method(request, timeout=attempts.remaining(), metadata=self._policy.metadata)
            except grpc.RpcError as exc:
                pause = attempts.pause_after(exc)
                if pause is None:
                    raise from_rpc_error(exc) from exc
            time.sleep(pause)

    def query(
        self,
        database: str,
        sql: str,
        params: Params | None = None,
        *,
        max_rows: int = 0,
        cache_mode: CacheMode = "use",
        ttl: float | None = None,
        tags: Sequence[str] = (),
        route_key: SqlInput | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run one read-only statement on a database or group, through the cache."""
        request = _convert.query_request(
            database, sql, params, max_rows=max_rows, cache_mode=cache_mode,
            ttl=ttl, tags=tags, route_key=route_key,
        )  # fmt: skip
        return _convert.query_result(self._unary(self._stub.Query, request, timeout, retry=True))

    def query_stream(
        self,
        database: str,
        sql: str,
        params: Params | None = None,
        *,
        max_rows: int = 0,
        cache_mode: CacheMode = "use",
        ttl: float | None = None,
        tags: Sequence[str] = (),
        route_key: SqlInput | None = None,
        timeout: float | None = None,
    ) -> Iterator[QueryResult]:
        """Run a large read and yield its chunks, each carrying the columns; never retried.

        ``timeout`` bounds the whole stream, so give a long read a larger one.
        """
        request = _convert.query_request(
            database, sql, params, max_rows=max_rows, cache_mode=cache_mode,
            ttl=ttl, tags=tags, route_key=route_key,
        )  # fmt: skip
        budget = self._policy.budget(timeout)
        call = self._stub.QueryStream(request, timeout=budget, metadata=self._policy.metadata)
        first: QueryResult | None = None
        try:
            for response in call:
                chunk = _convert.chunk_result(response, first)
                first = first or chunk
                yield chunk
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            # Stops the server sending the rest when the caller leaves the loop early.
            call.cancel()  # type: ignore[no-untyped-call]

    def batch_insert(
        self,
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
    ) -> InsertResult:
        """Insert rows into one table atomically; never retried (see the module docstring)."""
        request = _convert.insert_request(
            database, table, columns, rows, on_conflict=on_conflict,
            conflict_columns=conflict_columns, update_columns=update_columns,
            invalidate_tags=invalidate_tags, idempotency_key=idempotency_key,
        )  # fmt: skip
        response = self._unary(self._stub.BatchInsert, request, timeout, retry=False)
        return _convert.insert_result(response)

    def batch_update(
        self,
        database: str,
        statements: Sequence[tuple[str, Sequence[Sequence[SqlInput]]]],
        *,
        invalidate_tags: Sequence[str] = (),
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> UpdateResult:
        """Run (sql, param_sets) statements in one transaction; never retried."""
        request = _convert.update_request(
            database, statements, invalidate_tags=invalidate_tags, idempotency_key=idempotency_key
        )
        response = self._unary(self._stub.BatchUpdate, request, timeout, retry=False)
        return _convert.update_result(response)

    def invalidate(
        self,
        tags: Sequence[str] = (),
        databases: Sequence[str] = (),
        all: bool = False,
        *,
        timeout: float | None = None,
    ) -> list[str]:
        """Drop cached results by tag, by database or all of them; returns the tags bumped."""
        request = pb.InvalidateRequest(tags=tags, databases=databases, all=all)
        response = self._unary(self._stub.Invalidate, request, timeout, retry=False)
        return list(response.invalidated_tags)

    def health(self, deep: bool = False, *, timeout: float | None = None) -> HealthResult:
        """The health of every database and of Redis; ``deep`` runs the slower checks."""
        request = pb.HealthRequest(deep=deep)
        return _convert.health_result(self._unary(self._stub.Health, request, timeout, retry=True))

    def stats(self, reset: bool = False, *, timeout: float | None = None) -> pb.StatsResponse:
        """Cache, pool, statement and write statistics; ``reset`` clears the counters."""
        request = pb.StatsRequest(reset=reset)
        return self._unary(self._stub.Stats, request, timeout, retry=True)
