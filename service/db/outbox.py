"""The invalidation outbox: the tags a transaction changed, written in that transaction.

When Redis is shared by replicas, a commit whose tags never reach Redis
(Redis down, or the process killed between COMMIT and the bump) would leave
other replicas serving stale entries. So every transaction also records its
tags here; a row is deleted (lazily, in a later transaction) once its tags
were delivered, and rows still here at start are delivered before the cache
is used.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

TABLE = "_dataaccess_outbox"
CREATE_TABLE = f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, tags TEXT NOT NULL)"


def record(raw: sqlite3.Connection, tags: Iterable[str]) -> int:
    """Write one row of tags inside the open transaction; its id."""
    cursor = raw.execute(f"INSERT INTO {TABLE} (tags) VALUES (?)", (json.dumps(sorted(tags)),))
    return int(cursor.lastrowid or 0)


def forget_delivered(raw: sqlite3.Connection, upto: int) -> None:
    """Delete the rows whose tags were delivered."""
    raw.execute(f"DELETE FROM {TABLE} WHERE id <= ?", (upto,))


def undelivered(raw: sqlite3.Connection) -> tuple[list[str], int]:
    """The tags of every row still held, and the last row's id (0 when none)."""
    tags: dict[str, None] = {}
    last = 0
    for row_id, text in raw.execute(f"SELECT id, tags FROM {TABLE} ORDER BY id"):
        tags.update(dict.fromkeys(json.loads(text)))
        last = row_id
    return list(tags), last
