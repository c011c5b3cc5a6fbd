"""Idempotent writes: a retried write with the same key returns the first outcome.

The key, a fingerprint of the request and the outcome are stored in the
database in the same savepoint as the write itself, so either both land or
neither does; a retry after a lost answer finds the key and writes nothing.

A key is honoured for ``window_seconds``. Expired keys are deleted in small
slices through an index on ``created_at``: each idempotent write removes at
most ``EXPIRE_SLICE`` of them, so its cost never grows with the number of
live keys (a full scan took 69 ms per write at a million keys), and since
each write adds one key and may remove several, a backlog still drains.
A lookup ignores an expired key that is still stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass

from service import errors
from service.db.door import WriteOutcome
from service.db.sqlite.guard import Guard
from service.db.sqlite.write_plans import WritePlan

TABLE = "_dataaccess_idempotency"
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,"
    " outcome TEXT NOT NULL, created_at REAL NOT NULL)"
)
# IF NOT EXISTS: a file made before the index existed gets it at the next open.
CREATE_INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_created_at ON {TABLE} (created_at)"
EXPIRE_SLICE = 8
# rowids from the covering index, oldest first: a SEARCH, never a SCAN of the table.
EXPIRE = (
    f"DELETE FROM {TABLE} WHERE rowid IN"
    f" (SELECT rowid FROM {TABLE} WHERE created_at < ? ORDER BY created_at LIMIT ?)"
)
_LOOKUP = f"SELECT fingerprint, outcome FROM {TABLE} WHERE key = ? AND created_at >= ?"
# REPLACE: an expired key not yet deleted is taken over by the new write.
_STORE = (
    f"INSERT OR REPLACE INTO {TABLE} (key, fingerprint, outcome, created_at) VALUES (?, ?, ?, ?)"
)


def create(raw: sqlite3.Connection) -> None:
    """Create the key table and its expiry index if they are missing."""
    raw.execute(CREATE_TABLE)
    raw.execute(CREATE_INDEX)


@dataclass(frozen=True)
class IdempotentPlan:
    """``plan`` run at most once per ``key`` within ``window_seconds``."""

    plan: WritePlan
    key: str
    window_seconds: float

    def fingerprint(self) -> str:
        """What the request was, so a key reused for another request is refused."""
        return hashlib.sha256(repr(self.plan).encode()).hexdigest()

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        """Replay the stored outcome, or write and store it in the same savepoint."""
        fingerprint = self.fingerprint()
        guard.trusted = True
        try:
            now = time.time()
            oldest_live = now - self.window_seconds
            raw.execute(EXPIRE, (oldest_live, EXPIRE_SLICE))
            found = raw.execute(_LOOKUP, (self.key, oldest_live)).fetchone()
        finally:
            guard.trusted = False
        if found is not None:
            return _replay(found, fingerprint)
        outcome = self.plan.run(raw, guard)
        guard.trusted = True
        try:
            raw.execute(_STORE, (self.key, fingerprint, _dump(outcome), now))
        finally:
            guard.trusted = False
        return outcome


def _replay(found: tuple[str, str], fingerprint: str) -> WriteOutcome:
    if found[0] != fingerprint:
        raise errors.InvalidArgument(
            "idempotency_key was used before for a different request", field="idempotency_key"
        )
    stored = json.loads(found[1])
    return WriteOutcome(
        tuple(stored["rows_affected"]),
        stored["last_insert_rowid"],
        frozenset(stored["tables"]),
        replayed=True,
    )


def _dump(outcome: WriteOutcome) -> str:
    return json.dumps(
        {
            "rows_affected": list(outcome.rows_affected),
            "last_insert_rowid": outcome.last_insert_rowid,
            "tables": sorted(outcome.tables),
        }
    )
