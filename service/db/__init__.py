"""The storage tier: one ``Database`` door per configured database, whatever its engine.

``build_databases`` builds them from the config: SQLite files (``db/sqlite/``)
and PostgreSQL databases (``db/postgres/``). Nothing above this package names
an engine's module.
"""

from __future__ import annotations

import asyncio
import logging

from opentelemetry import trace

from service.config import Config, PostgresDatabaseConfig
from service.db.door import AfterCommit, Database, KeyTracking
from service.db.postgres.copy_from_sqlite import (
    CopyError,
    TableCount,
    check_counts,
    copy_database,
    counts_table,
)
from service.db.postgres.database import PostgresDatabase
from service.db.postgres.migrate import apply_migrations as apply_postgres_migrations
from service.db.sqlite.database import SqliteDatabase
from service.db.sqlite.migrate import CorruptDatabase, MigrationError, apply_migrations
from service.db.sqlite.replication import RestoreError, litestream_config, restore_missing

__all__ = [
    "AfterCommit",
    "CopyError",
    "Database",
    "MigrationError",
    "RestoreError",
    "TableCount",
    "build_databases",
    "check_counts",
    "copy_database",
    "counts_table",
    "litestream_config",
    "migrate",
    "restore_missing",
]
log = logging.getLogger(__name__)


def build_databases(
    config: Config,
    after_commit: AfterCommit | None = None,
    use_outbox: bool = False,
    tracer: trace.Tracer | None = None,
) -> dict[str, Database]:
    """Every configured database behind its door, by name (not opened yet)."""
    tracking = KeyTracking(config.cache.key_tags, config.cache.max_keys_per_write)
    databases: dict[str, Database] = {}
    for db in config.databases:
        if isinstance(db, PostgresDatabaseConfig):
            databases[db.name] = PostgresDatabase(
                db,
                config.limits,
                after_commit,
                use_outbox,
                tracer,
                tracking,
                config.sqlite.outside_writes_check_seconds or 1.0,
            )
            continue
        databases[db.name] = SqliteDatabase(
            db,
            config.sqlite,
            config.limits,
            after_commit,
            use_outbox,
            tracer,
            tracking,
            config.replication,
        )
    return databases


def migrate(config: Config) -> None:
    """Apply every database's pending migrations (a corrupt file is left to answer DATA_LOSS)."""
    for database in config.databases:
        if database.migrations is None:
            continue
        if isinstance(database, PostgresDatabaseConfig):
            # Its own event loop: this runs in a thread (or the migrate command).
            applied = asyncio.run(apply_postgres_migrations(database, database.migrations))
            for name in applied:
                log.info("migrated", extra={"database": database.name, "migration": name})
            continue
        try:
            applied = apply_migrations(
                database.name, database.path, database.migrations, config.sqlite.auto_vacuum
            )
        except CorruptDatabase as exc:
            log.error("database is corrupt, serving DATA_LOSS: %s", exc)
            continue
        for name in applied:
            log.info("migrated", extra={"database": database.name, "migration": name})
