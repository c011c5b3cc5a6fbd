"""The invalidation outbox: the tags a transaction changed, written in that transaction.

When Redis is shared by replicas, a commit whose tags never reach Redis
(Redis down, or the process killed between COMMIT and the bump) would leave
other replicas serving stale entries. So every transaction also records its
tags here; a row is deleted (lazily, by id, in a later transaction of the
process that wrote it) once its tags were delivered, and rows still here at
start are delivered before the cache is used. Ids are AUTOINCREMENT, so a
row id is never reused while another process may still hold it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

TABLE = "_dataaccess_outbox"
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, tags TEXT NOT NULL)"
)


def record(raw: sqlite3.Connection, tags: Iterable[str]) -> int:
    """Write one row of tags inside the open transaction; its id."""
    cursor = raw.execute(f"INSERT INTO {TABLE} (tags) VALUES (?)", (json.dumps(sorted(tags)),))
    return int(cursor.lastrowid or 0)


def forget_delivered(raw: sqlite3.Connection, row_ids: Sequence[int]) -> None:
    """Delete the rows whose tags were delivered."""
    raw.executemany(f"DELETE FROM {TABLE} WHERE id = ?", [(row_id,) for row_id in row_ids])


def undelivered(raw: sqlite3.Connection) -> tuple[list[str], list[int]]:
    """The tags of every row still here, and the rows' ids."""
    tags: dict[str, None] = {}
    rows = []
    for row_id, text in raw.execute(f"SELECT id, tags FROM {TABLE} ORDER BY id"):
        tags.update(dict.fromkeys(json.loads(text)))
        rows.append(row_id)
    return list(tags), rows
