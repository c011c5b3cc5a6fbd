"""The storage tier: one ``Database`` door per configured database, whatever its engine.

``open_databases`` builds them from the config; SQLite (``db/sqlite/``) is the
engine today. Nothing above this package names an engine's module.
"""

from __future__ import annotations

from opentelemetry import trace

from service.config import Config
from service.db.door import AfterCommit, Database
from service.db.sqlite.database import SqliteDatabase


def build_databases(
    config: Config,
    after_commit: AfterCommit | None = None,
    use_outbox: bool = False,
    tracer: trace.Tracer | None = None,
) -> dict[str, Database]:
    """Every configured database behind its door, by name (not opened yet)."""
    return {
        db.name: SqliteDatabase(db, config.sqlite, config.limits, after_commit, use_outbox, tracer)
        for db in config.databases
    }
