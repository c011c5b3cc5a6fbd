"""The DataAccessError tree, drawn below; it imports no gRPC.

Every failure the service reports is one of these; lower errors (sqlite3,
aiosqlite, redis, timeouts) are converted where they enter, with
``raise Mapped(...) from exc``, and only the servicer turns them into a
status, through ``service.api.status.STATUS_BY_ERROR``, which maps each branch to
the gRPC status code of the same name::

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
