"""The exceptions the client raises, one class per gRPC status, and the one place they are made.

::

    DataAccessClientError          .code, .message, .field_violations
    ├── Cancelled                  CANCELLED
    ├── Unknown                    UNKNOWN
    ├── InvalidArgument            INVALID_ARGUMENT (field_violations name the bad fields)
    ├── DeadlineExceeded           DEADLINE_EXCEEDED
    ├── NotFound                   NOT_FOUND
    ├── AlreadyExists              ALREADY_EXISTS
    ├── PermissionDenied           PERMISSION_DENIED
    ├── ResourceExhausted          RESOURCE_EXHAUSTED
    ├── FailedPrecondition         FAILED_PRECONDITION
    ├── Aborted                    ABORTED
    ├── OutOfRange                 OUT_OF_RANGE
    ├── Unimplemented              UNIMPLEMENTED
    ├── Internal                   INTERNAL
    ├── Unavailable                UNAVAILABLE
    ├── DataLoss                   DATA_LOSS
    └── Unauthenticated            UNAUTHENTICATED

``from_rpc_error`` turns a ``grpc.RpcError`` (sync or aio) into one of these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

# grpcio-status's own key for the serialized google.rpc.Status; read here by hand
# because rpc_status.from_call takes a sync Call and its aio twin must be awaited,
# while both kinds of RpcError already hold their trailing metadata.
_DETAILS_KEY = "grpc-status-details-bin"


class FieldViolation(NamedTuple):
    """One bad request field, from google.rpc.BadRequest details."""

    field: str
    description: str


class DataAccessClientError(Exception):
    """A call to the dataaccess service failed; ``code`` says how."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: Iterable[FieldViolation] = (),
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field_violations = list(field_violations)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Cancelled(DataAccessClientError):
    """The call was cancelled, usually by the caller."""


class Unknown(DataAccessClientError):
    """The server failed in a way it did not classify."""


class InvalidArgument(DataAccessClientError):
    """The request is wrong: SQL syntax, parameter count, a bad value."""


class DeadlineExceeded(DataAccessClientError):
    """The deadline passed before the server answered."""


class NotFound(DataAccessClientError):
    """An unknown database, table or column."""


class AlreadyExists(DataAccessClientError):
    """A UNIQUE or PRIMARY KEY constraint refused a write."""


class PermissionDenied(DataAccessClientError):
    """The authorizer or the caller's scopes refused the statement."""


class ResourceExhausted(DataAccessClientError):
    """A pool, queue or result limit was hit, or the disk is full."""


class FailedPrecondition(DataAccessClientError):
    """A constraint other than uniqueness refused a write (FK, NOT NULL, CHECK)."""


class Aborted(DataAccessClientError):
    """The server aborted the call, typically on a concurrency conflict."""


class OutOfRange(DataAccessClientError):
    """A value was past the valid range."""


class Unimplemented(DataAccessClientError):
    """The server does not implement this call."""


class Internal(DataAccessClientError):
    """The server broke an invariant of its own."""


class Unavailable(DataAccessClientError):
    """The server or its storage cannot answer now; a retry may succeed."""


class DataLoss(DataAccessClientError):
    """A database file is corrupt."""


class Unauthenticated(DataAccessClientError):
    """The credentials are missing or wrong."""


_BY_CODE: dict[grpc.StatusCode, type[DataAccessClientError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNKNOWN: Unknown,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def error_class(code: grpc.StatusCode) -> type[DataAccessClientError]:
    """The exception class raised for ``code``."""
    return _BY_CODE.get(code, DataAccessClientError)


def status_code(err: grpc.RpcError) -> grpc.StatusCode:
    """The status of a failed call; UNKNOWN for an RpcError that carries none."""
    code = getattr(err, "code", None)
    # A bare grpc.RpcError (raised by some interceptors) has no code() at all.
    return code() if callable(code) else grpc.StatusCode.UNKNOWN


def from_rpc_error(err: grpc.RpcError) -> DataAccessClientError:
    """The typed exception for a failed call, with any BadRequest field violations."""
    code = status_code(err)
    details = getattr(err, "details", None)
    message = (details() if callable(details) else None) or str(err)
    return error_class(code)(code, message, _field_violations(err))


def _field_violations(err: grpc.RpcError) -> list[FieldViolation]:
    status = _rich_status(err)
    if status is None:
        return []
    violations: list[FieldViolation] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
    return violations


def _rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    trailing = getattr(err, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    for key, value in metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                # Undecodable details must not hide the status the server sent.
                return None
    return None
