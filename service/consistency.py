"""Consistency tokens: where a write committed, so a later read can ask for at least that.

A token names a commit position per database, ``"live@1834,orders@23803720"``:
PostgreSQL's commit LSN (as the integer asyncpg returns for ``pg_lsn``), or for
SQLite the database's commit counter. Positions of one database compare as
integers; a reader keeps the newest per database (``newest``) and passes it with
its reads, and a read replica serves the read only once it has replayed that far.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from service import errors
from service.db.door import PRIMARY, Database, Freshness
from service.domain import ReadRequest

_POSITION = re.compile(r"[0-9]{1,40}")


def token(positions: Iterable[tuple[str, int]]) -> str:
    """The token of ``(database, position)`` pairs (the newest of each database)."""
    newest: dict[str, int] = {}
    for database, position in positions:
        newest[database] = max(position, newest.get(database, 0))
    return ",".join(f"{database}@{position}" for database, position in sorted(newest.items()))


def positions(text: str) -> dict[str, int]:
    """A token's position per database; INVALID_ARGUMENT when it is not one."""
    found: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        database, at, position = part.rpartition("@")
        # ASCII digits only ("²".isdigit()), and short enough to read and to echo.
        if not at or not database or not _POSITION.fullmatch(position):
            raise errors.InvalidArgument(
                f"consistency_token: {part[:60]!r} is not database@position",
                field="consistency_token",
            )
        found[database] = max(int(position), found.get(database, 0))
    return found


def newest(*tokens: str) -> str:
    """One token holding the newest position of every database in ``tokens``."""
    return token(pair for text in tokens for pair in positions(text).items())


def freshness_of(request: ReadRequest, replica: bool) -> Callable[[Database], Freshness]:
    """Where each database may answer ``request``: a replica at or past the caller's
    token there, when ``replica``; else the primary."""
    if not replica:
        return lambda _database: PRIMARY
    after = positions(request.consistency_token)
    return lambda database: Freshness(replica=True, after=after.get(database.name, 0))
