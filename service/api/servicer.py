"""The gRPC servicer: each RPC converts its request, awaits one DataAccess coroutine and
converts the answer.

Conversions live in ``requests`` and ``responses``, the status mapping in
``status``, the registration (Query as bytes) in ``registration``. No I/O
logic lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service import errors
from service.access import DataAccess
from service.api import requests, responses
from service.api.admission import CallerSlots
from service.api.auth import Authenticator
from service.api.status import Context, abort, answers_errors
from service.api.tracing import note_on_span
from service.config import Limits
from service.domain import WriteOptions, WriteResult
from service.observe.health import HealthChecker
from service.scopes import Principal

log = logging.getLogger(__name__)
# Stats are one process's figures: its answer names the process (one worker of several).
PID_METADATA = "dataaccess-pid"
WriteReq = TypeVar("WriteReq", pb.BatchInsertRequest, pb.BatchUpdateRequest)
Work = TypeVar("Work")


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

    @answers_errors
    async def Query(  # type: ignore[override]  # bytes in and out: see api/registration.py
        self, request: bytes, context: Context, caller: Principal
    ) -> bytes:
        answer = await self._access.cached(request, caller)
        if answer is None:
            parsed = requests.parse_query(request)
            deadline = self._deadline(context)
            read = requests.read_request(parsed, context.peer(), self._limits)
            answer = await self._access.query(read, deadline, request, caller)
        note_on_span("dataaccess.cache.status", answer.cache_status.name)
        # Fields of concatenated messages merge: the cached bytes plus the status.
        return answer.payload + responses.STATUS_SUFFIX[answer.cache_status]

    async def QueryStream(
        self, request: pb.QueryRequest, context: Context
    ) -> AsyncIterator[pb.QueryResponse]:
        expiry: _StreamExpiry | None = None
        try:
            caller = self._caller(context)
            with self._slots.admit(caller.name):
                deadline = self._deadline(context)
                chunks = self._access.query_stream(
                    requests.read_request(request, context.peer(), self._limits),
                    deadline,
                    caller,
                )
                expiry = _StreamExpiry(deadline, context)
                try:
                    async with contextlib.aclosing(chunks):
                        async for chunk in chunks:
                            yield responses.query_response(chunk)
                finally:
                    expiry.cancel()
        except errors.DataAccessError as exc:
            if expiry is not None and expiry.aborting is not None:
                await expiry.aborting  # the timer's abort is the stream's status: end with it
            await abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("unexpected failure in QueryStream")
            await abort(context, errors.Internal(f"internal error: {type(exc).__name__}"))

    @answers_errors
    async def BatchInsert(
        self, request: pb.BatchInsertRequest, context: Context, caller: Principal
    ) -> pb.BatchInsertResponse:
        insert = self._access.batch_insert
        max_rows = self._limits.max_batch_rows
        decode = functools.partial(requests.insert_request, max_rows=max_rows)
        work, result = await self._write(request, context, caller, decode, insert)
        return pb.BatchInsertResponse(
            rows_affected=sum(result.rows_affected),
            last_insert_rowid=result.last_insert_rowid,
            invalidated_tags=result.invalidated_tags,
            consistency_token=result.consistency_token,
            rows_received=len(work.rows),
        )

    @answers_errors
    async def BatchUpdate(
        self, request: pb.BatchUpdateRequest, context: Context, caller: Principal
    ) -> pb.BatchUpdateResponse:
        update = self._access.batch_update
        _, result = await self._write(request, context, caller, requests.update_statements, update)
        return pb.BatchUpdateResponse(
            rows_affected=result.rows_affected,
            invalidated_tags=result.invalidated_tags,
            consistency_token=result.consistency_token,
        )

    async def _write(
        self,
        request: WriteReq,
        context: Context,
        caller: Principal,
        decode: Callable[[WriteReq], Work],
        run: Callable[[str, Work, WriteOptions, float, Principal], Awaitable[WriteResult]],
    ) -> tuple[Work, WriteResult]:
        """Check the write scope before any row is looked at, decode, and run the write;
        the decoded work and its result."""
        self._access.check_write(request.database, caller)
        work = decode(request)  # a bad row is named before a bad tag, as it always was
        options = requests.write_options(request, self._limits)
        return work, await run(request.database, work, options, self._deadline(context), caller)

    @answers_errors
    async def Invalidate(
        self, request: pb.InvalidateRequest, context: Context, caller: Principal
    ) -> pb.InvalidateResponse:
        caller.require_admin("invalidate")
        tags = await self._access.invalidate(
            requests.checked_tags(request.tags, "tags", self._limits),
            list(request.databases),
            request.all,
        )
        return pb.InvalidateResponse(invalidated_tags=tags)

    @answers_errors
    async def Health(
        self, request: pb.HealthRequest, context: Context, caller: Principal
    ) -> pb.HealthResponse:
        if request.deep:
            caller.require_admin("ask for a deep health check")
        # Only what the caller may know of: names it holds no scope on stay unlisted.
        report = self._access.visible_health(await self._health.report(request.deep), caller)
        return responses.health_response(report)

    @answers_errors
    async def Stats(
        self, request: pb.StatsRequest, context: Context, caller: Principal
    ) -> pb.StatsResponse:
        caller.require_admin("read stats")
        report = await self._access.stats(reset=request.reset)
        context.set_trailing_metadata(((PID_METADATA, str(os.getpid())),))
        return responses.stats_response(report)


class _StreamExpiry:
    """Ends a stream DEADLINE_EXCEEDED at ``deadline``, even while it waits for the client
    to read (gRPC's pending write is outside the handler's code): its reader goes back."""

    def __init__(self, deadline: float, context: Context) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handler = handler
        self._context = context
        self.aborting: asyncio.Task[NoReturn] | None = None  # the timer fired: its abort
        delay = max(deadline - time.monotonic(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def cancel(self) -> None:
        """The stream ended first."""
        self._timer.cancel()

    def _expire(self) -> None:
        late = errors.DeadlineExceeded("the stream's deadline passed before it was read to its end")
        aborting = asyncio.get_running_loop().create_task(abort(self._context, late))
        aborting.add_done_callback(_drop_abort_error)
        self.aborting = aborting
        # After the abort's first step has queued the status in gRPC, not before: the
        # cancelled handler closes its generators, so the reader and call slot are let go.
        asyncio.get_running_loop().call_soon(self._handler.cancel)


def _drop_abort_error(abort: asyncio.Task[NoReturn]) -> None:
    # AbortError is how abort ends; UsageError if the handler aborted first. Either is fine.
    if not abort.cancelled():
        abort.exception()
