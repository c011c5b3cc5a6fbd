"""Setting a PostgreSQL schema up for the service, at start and after every schema change:
its own tables, the capture triggers on every table it owns, and the reader role's
grants; one replica at a time (an advisory lock), since replicas start together."""

from __future__ import annotations

import logging

from service.config import PostgresDatabaseConfig
from service.db.door import KeyTracking
from service.db.postgres import catalog as catalogs
from service.db.postgres.catalog import Catalog
from service.db.postgres.connections import ensure_reader_role
from service.db.postgres.session import Conn
from service.db.postgres.writes import create_tables

log = logging.getLogger(__name__)
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))"


async def set_up(
    connection: Conn, config: PostgresDatabaseConfig, tracking: KeyTracking
) -> Catalog:
    """Make the service's tables, (re)install the capture triggers, grant the reader role
    the allowed tables; the catalog as it is now."""
    schema = config.schema
    async with connection.transaction():
        await connection.execute(_LOCK, f"dataaccess-setup:{schema}")
        await connection.execute(create_tables(schema))
        skipped = await catalogs.install_triggers(
            connection, schema, tracking.max_keys_per_write, tracking.enabled
        )
    for table in skipped:
        log.warning("not the owner of %s.%s: its reads are not cached", config.name, table)
    catalog = await catalogs.load(connection, schema)
    tables = sorted(t for t in catalog.names if allowed(config, t))
    await ensure_reader_role(connection, config, tables)
    return catalog


def allowed(config: PostgresDatabaseConfig, table: str) -> bool:
    """Whether ``config`` lets callers reach ``table``."""
    tables = config.allowed_tables
    return tables is None or table in tables or table.lower() in tables
