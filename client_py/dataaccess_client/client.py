"""AsyncClient and Client: the dataaccess RPCs as methods taking and returning plain values.

Both clients make their RPC methods from the one table in ``_rpcs`` (each
method's arguments, request, retry rule, result and docstring) and make each
call under one ``CallPolicy``, so a client here is only its channel and how
it waits. Every call has a deadline (the client's ``timeout`` unless the
method is given one). Query, Health and Stats are retried with exponential
backoff and jitter while the server is UNAVAILABLE, within that same
deadline. Writes are never retried, as a write that reached the server may
have committed; a caller who passes an ``idempotency_key`` can safely retry a
write themselves, since the server answers a repeated key with the first
outcome and writes nothing. A BatchInsert goes in the columnar form when its
columns allow it; a server older than that form reads none of its rows and
writes nothing, and the same rows are then sent once more as rows. Failures
are raised as the ``dataaccess_client.errors`` classes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc
from grpc import aio

from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from dataaccess_client import _policy, _rpcs, _tracing
from dataaccess_client._bookmarks import Bookmarks
from dataaccess_client._policy import CallPolicy, ChannelOptions, TlsFiles
from dataaccess_client.errors import from_rpc_error

DEFAULT_TARGET = "127.0.0.1:50051"

P = ParamSpec("P")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Out = TypeVar("Out")

# A client's method for an RPC: the client, then the RPC's arguments (P).
AsyncMethod = Callable[Concatenate["AsyncClient", P], Out]
SyncMethod = Callable[Concatenate["Client", P], Out]


def _start_stream(client: AsyncClient | Client, rpc: _rpcs.Rpc[P], call: _rpcs.Call) -> Any:
    """Start a streaming call, with one deadline for the whole stream; never retried."""
    budget = client._policy.budget(call.timeout)
    client._bookmarks.stamp(call.request)
    start = getattr(client._stub, rpc.stub)
    return start(call.request, timeout=budget, metadata=client._policy.metadata)


def _async_unary(rpc: _rpcs.Unary[P, Out]) -> AsyncMethod[P, Coroutine[Any, Any, Out]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> Out:
        call = rpc.call(*args, **kwargs)
        stub_method = getattr(self._stub, rpc.stub)
        response = await self._unary(stub_method, call.request, call.timeout, retry=rpc.retry)
        again = rpc.again(call.request, response) if rpc.again is not None else None
        if again is not None:
            response = await self._unary(stub_method, again, call.timeout, retry=rpc.retry)
        return rpc.read(response)

    return rpc.method(method, "AsyncClient", rpc.returns)


def _async_stream(rpc: _rpcs.Stream[P, Out]) -> AsyncMethod[P, AsyncIterator[Out]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Out]:
        call, read = rpc.call(*args, **kwargs), rpc.reader()
        responses = _start_stream(self, rpc, call)
        try:
            async for response in responses:
                yield read(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            # Stops the server sending the rest when the caller leaves the loop early.
            responses.cancel()

    return rpc.method(method, "AsyncClient", rpc.returns("AsyncIterator"))


def _sync_unary(rpc: _rpcs.Unary[P, Out]) -> SyncMethod[P, Out]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Out:
        call = rpc.call(*args, **kwargs)
        stub_method = getattr(self._stub, rpc.stub)
        response = self._unary(stub_method, call.request, call.timeout, retry=rpc.retry)
        again = rpc.again(call.request, response) if rpc.again is not None else None
        if again is not None:
            response = self._unary(stub_method, again, call.timeout, retry=rpc.retry)
        return rpc.read(response)

    return rpc.method(method, "Client", rpc.returns)


def _sync_stream(rpc: _rpcs.Stream[P, Out]) -> SyncMethod[P, Iterator[Out]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[Out]:
        call, read = rpc.call(*args, **kwargs), rpc.reader()
        responses = _start_stream(self, rpc, call)
        try:
            for response in responses:
                yield read(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            _stop_sync_stream(responses)

    return rpc.method(method, "Client", rpc.returns("Iterator"))


def _stop_sync_stream(responses: Any) -> None:
    """Stop the server sending the rest when the caller leaves the loop early.

    Through OpenTelemetry's interceptor the stream is a generator over the call,
    with no ``cancel``: closing it drops the call, which cancels it.
    """
    stop = getattr(responses, "cancel", None) or responses.close
    stop()


class _ClientBase:
    """What both clients are made of: a call policy, a channel and a stub over it."""

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
        consistency: bool = True,
    ) -> None:
        self._policy = CallPolicy.build(
            timeout=timeout, retries=retries, backoff=backoff, token=token
        )
        self._bookmarks = Bookmarks(consistency)
        self._stub = self._connect(target, _policy.channel_options(channel_options), tls)

    @property
    def consistency_token(self) -> str:
        """The newest write position per database this client has seen: hand it to another
        process's client (``remember``) so its reads see these writes too."""
        return self._bookmarks.token

    def remember(self, consistency_token: str) -> None:
        """Make this client's reads wait for the writes ``consistency_token`` names."""
        self._bookmarks.remember(consistency_token)

    def _connect(
        self, target: str, options: list[tuple[str, Any]], tls: TlsFiles | None
    ) -> pb_grpc.DataAccessStub:
        """Open the channel; the stub over it."""
        raise NotImplementedError


class AsyncClient(_ClientBase):
    """The dataaccess service over a grpc.aio channel; use ``async with`` or ``await close()``."""

    def _connect(
        self, target: str, options: list[tuple[str, Any]], tls: TlsFiles | None
    ) -> pb_grpc.DataAccessStub:
        interceptors = _tracing.aio_interceptors()
        if tls is None:
            self._channel = aio.insecure_channel(target, options=options, interceptors=interceptors)
        else:
            credentials = tls.credentials()
            self._channel = aio.secure_channel(
                target, credentials, options=options, interceptors=interceptors
            )
        return pb_grpc.DataAccessStub(self._channel)

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
        self._bookmarks.stamp(request)
        while True:
            try:
                response = await method(
                    request, timeout=attempts.remaining(), metadata=self._policy.metadata
                )
            except grpc.RpcError as exc:
                pause = attempts.pause_or_raise(exc)
                await asyncio.sleep(pause)
                continue
            self._bookmarks.note(response)
            return response

    # The RPCs, each made from its row of the table in _rpcs.
    query = _async_unary(_rpcs.query)
    query_stream = _async_stream(_rpcs.query_stream)
    batch_insert = _async_unary(_rpcs.batch_insert)
    batch_update = _async_unary(_rpcs.batch_update)
    invalidate = _async_unary(_rpcs.invalidate)
    health = _async_unary(_rpcs.health)
    stats = _async_unary(_rpcs.stats)


class Client(_ClientBase):
    """The dataaccess service over a blocking grpc channel; use ``with`` or ``close()``."""

    def _connect(
        self, target: str, options: list[tuple[str, Any]], tls: TlsFiles | None
    ) -> pb_grpc.DataAccessStub:
        self._channel = (
            grpc.insecure_channel(target, options=options)
            if tls is None
            else grpc.secure_channel(target, tls.credentials(), options=options)
        )
        return pb_grpc.DataAccessStub(_tracing.traced(self._channel))

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
        self._bookmarks.stamp(request)
        while True:
            try:
                response = method(
                    request, timeout=attempts.remaining(), metadata=self._policy.metadata
                )
            except grpc.RpcError as exc:
                time.sleep(attempts.pause_or_raise(exc))
                continue
            self._bookmarks.note(response)
            return response

    # The RPCs, each made from its row of the table in _rpcs.
    query = _sync_unary(_rpcs.query)
    query_stream = _sync_stream(_rpcs.query_stream)
    batch_insert = _sync_unary(_rpcs.batch_insert)
    batch_update = _sync_unary(_rpcs.batch_update)
    invalidate = _sync_unary(_rpcs.invalidate)
    health = _sync_unary(_rpcs.health)
    stats = _sync_unary(_rpcs.stats)
