"""The Python client of the dataaccess service: its public surface, re-exported in one place.

The generated stubs live apart in ``dataaccess.v1``, at the proto package's
path (``dataaccess_client.v1`` only re-exports them for older callers); the
``dataaccess`` command is ``dataaccess_client.cli``, with the ``cli`` extra.
"""

from __future__ import annotations

from dataaccess_client._models import (
    AggregateFunction,
    CacheMode,
    HealthCheck,
    HealthResult,
    InsertResult,
    OnConflict,
    Params,
    QueryResult,
    Row,
    SqlInput,
    SqlValue,
    UpdateResult,
)
from dataaccess_client._policy import TlsFiles
from dataaccess_client.client import AsyncClient, Client
from dataaccess_client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataAccessClientError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_rpc_error,
)

__all__ = [
    "TlsFiles",
    "Aborted",
    "AggregateFunction",
    "AlreadyExists",
    "AsyncClient",
    "CacheMode",
    "Cancelled",
    "Client",
    "DataAccessClientError",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "HealthCheck",
    "HealthResult",
    "InsertResult",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OnConflict",
    "OutOfRange",
    "Params",
    "PermissionDenied",
    "QueryResult",
    "ResourceExhausted",
    "Row",
    "SqlInput",
    "SqlValue",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "UpdateResult",
    "from_rpc_error",
]
