"""sqlite3 exceptions -> the DataAccessError tree, by SQLite's own error names.

Called where a statement's exception leaves the connection's thread, so
nothing above the db layer sees a sqlite3 error.
"""

from __future__ import annotations

import sqlite3

from service import errors

_BY_PRIMARY_NAME: dict[str, type[errors.DataAccessError]] = {
    "SQLITE_AUTH": errors.PermissionDenied,
    "SQLITE_BUSY": errors.Unavailable,
    "SQLITE_LOCKED": errors.Unavailable,
    "SQLITE_CANTOPEN": errors.Unavailable,
    "SQLITE_IOERR": errors.Unavailable,
    "SQLITE_PERM": errors.Unavailable,
    "SQLITE_NOLFS": errors.Unavailable,
    "SQLITE_PROTOCOL": errors.Unavailable,
    "SQLITE_FULL": errors.ResourceExhausted,
    "SQLITE_NOMEM": errors.ResourceExhausted,
    "SQLITE_TOOBIG": errors.ResourceExhausted,
    "SQLITE_CORRUPT": errors.DataLoss,
    "SQLITE_NOTADB": errors.DataLoss,
    "SQLITE_RANGE": errors.InvalidArgument,
    "SQLITE_MISMATCH": errors.InvalidArgument,
}
_UNIQUE_NAMES = ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")
_NOT_FOUND_PREFIXES = ("no such table", "no such column", "no such function", "no such view")


def translate(
    exc: sqlite3.Error | ValueError | OverflowError | MemoryError,
    *,
    database: str,
    writer: bool,
    refusal: str | None = None,
    field: str | None = None,
) -> errors.DataAccessError:
    """The DataAccessError that reports ``exc`` to the caller."""
    if isinstance(exc, MemoryError):
        # sqlite3 raises MemoryError for SQLITE_NOMEM: the heap limit, or the process's own.
        return errors.ResourceExhausted(
            f"{database}: the statement needs more memory than the server's budget allows"
        )
    if isinstance(exc, ValueError | OverflowError) or not isinstance(exc, sqlite3.DatabaseError):
        return errors.InvalidArgument(_clean(exc), field=field)
    name = getattr(exc, "sqlite_errorname", "") or ""
    message = _clean(exc)
    if name == "SQLITE_AUTH" or (refusal is not None and "not authorized" in message):
        return errors.PermissionDenied(f"{database}: {refusal or message}", field=field)
    if name.startswith("SQLITE_CONSTRAINT"):
        if name in _UNIQUE_NAMES:
            return errors.AlreadyExists(f"{database}: {message}")
        return errors.FailedPrecondition(f"{database}: {message}")
    if name == "SQLITE_READONLY" and not writer:
        return errors.PermissionDenied(f"{database}: {message}")
    if name == "SQLITE_READONLY":
        return errors.Unavailable(f"{database}: the database file is read-only: {message}")
    if name == "SQLITE_INTERRUPT":
        return errors.DeadlineExceeded(f"{database}: the statement was interrupted at its deadline")
    primary = _BY_PRIMARY_NAME.get("_".join(name.split("_")[:2]))
    if primary is not None:
        return primary(f"{database}: {message}", field=field)
    if message.startswith(_NOT_FOUND_PREFIXES):
        return errors.NotFound(f"{database}: {message}", field=field)
    return errors.InvalidArgument(f"{database}: {message}", field=field)


def _clean(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
