"""Checksummed migrations on PostgreSQL: the same files layout and runner rules as SQLite's
(``migrations/<database>/NNNN_name.sql``, in PostgreSQL's dialect), applied under an
advisory lock so several replicas starting together apply each one once.

Each migration runs as one transaction with its ``schema_migrations`` row and an
outbox row naming ``database:<name>`` (cached reads from before it must go).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import asyncpg

from service.config import PostgresDatabaseConfig
from service.db.migration_files import Migration, MigrationError, load_migrations
from service.db.postgres.catalog import quote
from service.db.postgres.writes import OUTBOX_TABLE, create_tables

log = logging.getLogger(__name__)


async def apply_migrations(config: PostgresDatabaseConfig, folder: Path) -> list[str]:
    """Apply the pending migrations of ``folder``; their names."""
    migrations = load_migrations(folder)
    try:
        connection = await asyncpg.connect(config.url, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise MigrationError(f"{config.name}: cannot connect to PostgreSQL: {exc}") from exc
    schema = quote(config.schema)
    try:
        # Held for the whole run: a second replica waits, then finds them applied.
        await connection.execute(
            "SELECT pg_advisory_lock(hashtextextended($1, 7))", f"dataaccess-migrate:{schema}"
        )
        await connection.execute(
            f"CREATE SCHEMA IF NOT EXISTS {schema};"
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now());" + create_tables(config.schema)
        )
        rows = await connection.fetch(f"SELECT version, checksum FROM {schema}.schema_migrations")
        applied = {row["version"]: row["checksum"] for row in rows}
        done = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"{config.name}: migration {migration.version:04d}_{migration.name}"
                        " changed after it was applied; add a new migration instead"
                    )
                continue
            await _apply(connection, config, migration)
            done.append(f"{migration.version:04d}_{migration.name}")
        return done
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"{config.name}: {exc}") from exc
    finally:
        await connection.close()


async def _apply(
    connection: asyncpg.Connection, config: PostgresDatabaseConfig, migration: Migration
) -> None:
    log.info("applying migration %s %04d_%s", config.name, migration.version, migration.name)
    schema = quote(config.schema)
    try:
        async with connection.transaction():
            await connection.execute(f"SET LOCAL search_path = {schema}")
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO {schema}.schema_migrations (version, name, checksum)"
                " VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            await connection.execute(
                f"INSERT INTO {schema}.{OUTBOX_TABLE} (tags) VALUES ($1::jsonb)",
                json.dumps([f"database:{config.name}"]),
            )
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"{config.name}: migration {migration.version:04d}_{migration.name} failed: {exc}"
        ) from exc
