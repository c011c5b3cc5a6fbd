"""The DataAccessError tree and its one map to gRPC status codes.

Every failure the service reports is one of these; lower errors (sqlite3,
aiosqlite, redis, timeouts) are converted where they enter, with
``raise Mapped(...) from exc``, and only the servicer turns them into a
status, through ``STATUS_BY_ERROR``::

    DataAccessError
    ├── NotFound              unknown database, table or column
    ├── InvalidArgument       bad SQL, parameter count or Value (names a field)
    ├── PermissionDenied      refused by the authorizer or the caller's scopes
    ├── Unauthenticated       missing or wrong credentials
    ├── AlreadyExists         UNIQUE / PRIMARY KEY violation
    ├── FailedPrecondition    other constraint (FK, NOT NULL, CHECK)
    ├── DeadlineExceeded      deadline passed, query interrupted
    ├── Cancelled             the caller went away, query interrupted
    ├── ResourceExhausted     pool or queue full, result over the limits, disk full
    ├── Unavailable           database locked, storage unavailable, shutting down
    ├── DataLoss              corrupt database file
    └── Internal              a bug: anything else
"""

from __future__ import annotations

import grpc


class DataAccessError(Exception):
    """A failure with a message meant for the caller."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DataAccessError):
    """An unknown database, table or column."""


class InvalidArgument(DataAccessError):
    """A request the service cannot run as it stands; ``field`` names the culprit."""


class PermissionDenied(DataAccessError):
    """A statement or call this caller may not make."""


class Unauthenticated(DataAccessError):
    """Missing or wrong credentials."""


class AlreadyExists(DataAccessError):
    """A UNIQUE or PRIMARY KEY violation."""


class FailedPrecondition(DataAccessError):
    """A constraint other than uniqueness refused the write."""


class DeadlineExceeded(DataAccessError):
    """The call's deadline passed and its statement was interrupted."""


class Cancelled(DataAccessError):
    """The caller cancelled the call and its statement was interrupted."""


class ResourceExhausted(DataAccessError):
    """A pool, queue, size or storage limit was reached."""


class Unavailable(DataAccessError):
    """The database or the service cannot answer now; a retry may work."""


class DataLoss(DataAccessError):
    """A database file is corrupt."""


class Internal(DataAccessError):
    """An unexpected failure: a bug."""


STATUS_BY_ERROR: dict[type[DataAccessError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DataLoss: grpc.StatusCode.DATA_LOSS,
    Internal: grpc.StatusCode.INTERNAL,
}


def status_for(error: DataAccessError) -> grpc.StatusCode:
    """The gRPC status code that reports ``error``."""
    for kind in type(error).__mro__:
        code = STATUS_BY_ERROR.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
