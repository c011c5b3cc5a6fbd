"""asyncpg and PostgreSQL errors -> the DataAccessError tree, by SQLSTATE class.

Called where a statement's exception leaves asyncpg, so nothing above the db
layer sees an asyncpg error. The classes are PostgreSQL's (Appendix A of its
manual): 23 integrity, 42 syntax or access, 57 operator intervention, ...
"""

from __future__ import annotations

import asyncio

import asyncpg

from service import errors

_BY_STATE: dict[str, type[errors.DataAccessError]] = {
    "23505": errors.AlreadyExists,  # unique_violation
    "42P01": errors.NotFound,  # undefined_table
    "42703": errors.NotFound,  # undefined_column
    "42883": errors.NotFound,  # undefined_function
    "3F000": errors.NotFound,  # invalid_schema_name
    "42501": errors.PermissionDenied,  # insufficient_privilege
    "25006": errors.PermissionDenied,  # read_only_sql_transaction
    "57014": errors.DeadlineExceeded,  # query_canceled (statement_timeout, or our cancel)
    "53100": errors.ResourceExhausted,  # disk_full
    "XX001": errors.DataLoss,  # data_corrupted
    "XX002": errors.DataLoss,  # index_corrupted
    "40001": errors.Unavailable,  # serialization_failure: a retry may work
    "40P01": errors.Unavailable,  # deadlock_detected
    "55P03": errors.Unavailable,  # lock_not_available
    "25P03": errors.DeadlineExceeded,  # idle_in_transaction_session_timeout
}
_BY_CLASS: dict[str, type[errors.DataAccessError]] = {
    "23": errors.FailedPrecondition,  # FK, NOT NULL, CHECK, exclusion
    "22": errors.InvalidArgument,  # data exception: bad value for the type
    "42": errors.InvalidArgument,  # syntax error or access rule violation
    "08": errors.Unavailable,  # connection exception
    "53": errors.ResourceExhausted,  # insufficient resources
    "54": errors.ResourceExhausted,  # program limit exceeded
    "57": errors.Unavailable,  # operator intervention: shutdown, cannot connect now
    "58": errors.Unavailable,  # system error (I/O)
    "XX": errors.Internal,
}


def translate(
    exc: BaseException, *, database: str, field: str | None = None, writer: bool = False
) -> errors.DataAccessError:
    """The DataAccessError that reports ``exc`` to the caller. On a writer, a read-only
    transaction means the server it reached is a standby now (a failover): a retry
    reaches the new primary."""
    if isinstance(exc, errors.DataAccessError):
        return exc
    if writer and getattr(exc, "sqlstate", "") in ("25006", "57P01", "57P02", "57P03"):
        return errors.Unavailable(f"{database}: the primary is not reachable as one now: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return _from_server(exc, database, field)
    if isinstance(exc, asyncpg.DataError | ValueError | TypeError | OverflowError):
        # A value asyncpg cannot encode for the parameter's type: the caller's to fix.
        return errors.InvalidArgument(f"{database}: {exc}", field=field or "params")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return errors.DeadlineExceeded(f"{database}: the statement was cancelled at its deadline")
    if isinstance(exc, asyncpg.InterfaceError) and "argument" in str(exc):
        # Misuse asyncpg refuses before sending: a wrong number of parameters, mostly.
        return errors.InvalidArgument(f"{database}: {exc}", field=field or "params")
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return errors.Unavailable(f"{database}: PostgreSQL is unreachable: {exc}")
    return errors.Internal(f"{database}: {type(exc).__name__}: {exc}")


def _from_server(
    exc: asyncpg.PostgresError, database: str, field: str | None
) -> errors.DataAccessError:
    state = str(getattr(exc, "sqlstate", "") or "")
    # The server's message and detail; not str(exc), which adds asyncpg's own hints.
    message = f"{database}: {getattr(exc, 'message', None) or exc}"
    detail = getattr(exc, "detail", None)
    if detail:
        message += f" ({detail})"
    kind = _BY_STATE.get(state) or _BY_CLASS.get(state[:2], errors.Internal)
    if kind is errors.DeadlineExceeded:
        return errors.DeadlineExceeded(f"{database}: the statement was cancelled at its deadline")
    if kind is errors.InvalidArgument:
        return errors.InvalidArgument(message, field=field or "sql")
    if kind is errors.NotFound:
        return errors.NotFound(message, field=field)
    return kind(message)
