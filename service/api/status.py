"""DataAccessError -> gRPC status, in one place: the code table, and how a call aborts.

Failures leave through ``abort``, which attaches ``google.rpc.BadRequest``
details to INVALID_ARGUMENT so the caller learns which field was wrong;
``answers_errors`` wraps each unary RPC: authenticate and admit the caller,
run it, and turn its failures into statuses.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import errors
from service.scopes import Principal

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]

STATUS_BY_ERROR: dict[type[errors.DataAccessError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def status_for(error: errors.DataAccessError) -> grpc.StatusCode:
    """The gRPC status code that reports ``error``."""
    for kind in type(error).__mro__:
        code = STATUS_BY_ERROR.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def answers_errors(
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
            await abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("unexpected failure in %s", method.__name__)
            await abort(context, errors.Internal(f"internal error: {type(exc).__name__}"))

    return wrapper


async def abort(context: Context, error: errors.DataAccessError) -> NoReturn:
    """End the call with the status that reports ``error``."""
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
