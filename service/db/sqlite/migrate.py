"""Ordered, checksummed schema migrations: migrations/<database>/NNNN_name.sql.

Each migration runs in its own transaction together with its row in
``schema_migrations``; an applied migration whose file changed stops the
start, because the database no longer matches what the files say. Another
process may be migrating the same file (``migrate`` beside a starting
service): each migration is looked up again under the write lock, so it is
applied once.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from service.db.migration_files import Migration, MigrationError, load_migrations
from service.db.sqlite import outbox
from service.db.sqlite.connection import set_auto_vacuum

log = logging.getLogger(__name__)
__all__ = ["CorruptDatabase", "MigrationError", "apply_migrations"]


class CorruptDatabase(MigrationError):
    """The file is not a readable SQLite database; it is served as DATA_LOSS, not fatal."""


def apply_migrations(
    database: str, path: Path, folder: Path, auto_vacuum: str = "NONE"
) -> list[str]:
    """Apply the pending migrations of ``folder`` to the file at ``path``; their names.
    A file made now gets ``auto_vacuum`` (``sqlite.auto_vacuum``)."""
    migrations = load_migrations(folder)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        set_auto_vacuum(conn, auto_vacuum)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, checksum TEXT NOT NULL,"
            " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ')))"
        )
        applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        done = []
        for migration in migrations:
            if migration.version in applied:
                _check_unchanged(database, migration, applied[migration.version])
                continue
            if _apply(conn, database, migration):
                done.append(f"{migration.version:04d}_{migration.name}")
        return done
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            raise CorruptDatabase(f"{database}: {path}: {exc}") from exc
        raise MigrationError(f"{database}: {path}: {exc}") from exc
    finally:
        conn.close()


def _check_unchanged(database: str, migration: Migration, checksum: str) -> None:
    if checksum != migration.checksum:
        raise MigrationError(
            f"{database}: migration {migration.version:04d}_{migration.name} changed after it "
            "was applied; add a new migration instead"
        )


def _apply(conn: sqlite3.Connection, database: str, migration: Migration) -> bool:
    """Apply ``migration`` in its transaction; False when another process just had."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        found = conn.execute(
            "SELECT checksum FROM schema_migrations WHERE version = ?", (migration.version,)
        ).fetchone()
        if found is not None:
            conn.execute("ROLLBACK")
            _check_unchanged(database, migration, found[0])
            return False
        log.info("applying migration %s %04d_%s", database, migration.version, migration.name)
        for statement in _statements(migration.sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
            (migration.version, migration.name, migration.checksum),
        )
        # Entries other replicas (or an earlier run) cached in Redis may predate the
        # migration's rows or keys: the service delivers this before it serves.
        conn.execute(outbox.CREATE_TABLE)
        outbox.record(conn, [f"database:{database}"])
        conn.execute("COMMIT")
        return True
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise MigrationError(
            f"{database}: migration {migration.version:04d}_{migration.name} failed: {exc}"
        ) from exc


def _statements(script: str) -> list[str]:
    """Split a script into complete statements, as SQLite's own tokenizer sees them."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip() and not current.strip().startswith("--"):
        statements.append(current.strip())
    return [s for s in statements if s.strip(" \n;")]
