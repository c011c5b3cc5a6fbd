"""The database's commit counter behind consistency tokens, kept in the database itself.

Every write transaction of the service adds one to a one-row table before it
commits and answers with the new value, so positions only grow across every
process that writes the file (the workers of one service, a second service),
and a restart goes on from where the file is. The UPDATE runs under the
writer's lock, inside the transaction it counts.
"""

from __future__ import annotations

import sqlite3

TABLE = "_dataaccess_commits"
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER NOT NULL)"
)
_SEED = f"INSERT OR IGNORE INTO {TABLE} (id, position) VALUES (1, 0)"
_ADVANCE = f"UPDATE {TABLE} SET position = position + 1 WHERE id = 1 RETURNING position"


def create(raw: sqlite3.Connection) -> None:
    """Create the counter (at 0) if it is missing."""
    raw.execute(CREATE_TABLE)
    raw.execute(_SEED)


def advance(raw: sqlite3.Connection) -> int:
    """Count the open transaction's commit; its position."""
    return int(raw.execute(_ADVANCE).fetchone()[0])
