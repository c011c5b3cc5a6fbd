"""Databases and groups by name: which database(s) a call goes to."""

from __future__ import annotations

import logging

from service import errors
from service.config import Config
from service.db.database import Database

log = logging.getLogger(__name__)


class Router:
    """Finds the database a call names; groups arrive with the router issue."""

    def __init__(self, config: Config) -> None:
        self.databases = {
            db.name: Database(db, config.sqlite, config.limits) for db in config.databases
        }

    def database(self, name: str) -> Database:
        """The database called ``name``."""
        database = self.databases.get(name)
        if database is None:
            known = ", ".join(sorted(self.databases))
            raise errors.NotFound(f"unknown database {name!r} (known: {known})", field="database")
        if database.failure is not None:
            raise database.failure
        return database

    async def open(self) -> None:
        """Open every database."""
        for database in self.databases.values():
            try:
                await database.open()
            except (errors.DataLoss, errors.Unavailable) as exc:
                log.error("database %s cannot be served: %s", database.name, exc.message)
                database.failure = exc

    async def close(self) -> None:
        """Close every database, checkpointing its WAL."""
        for database in self.databases.values():
            await database.close()
