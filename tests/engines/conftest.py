"""One suite, both engines: every test here runs once on SQLite and once on PostgreSQL.

The ``kitchen`` database is a SQLite file or a fresh PostgreSQL database (the
same schema in each dialect, ``tests/fixtures/migrations/kitchen`` and
``kitchen_pg``); ``live`` stays a SQLite file, so a group can mix engines. SQL in
these tests is written once, with ``engine.p(n)`` for the n-th parameter (``?``
on SQLite, ``$n`` on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import KITCHEN_MIGRATIONS, MIGRATIONS, Running, started

KITCHEN_PG_MIGRATIONS = KITCHEN_MIGRATIONS.parent / "kitchen_pg"
ENGINES = ["sqlite", "postgresql"]


@dataclass
class Engine:
    """Which engine serves ``kitchen``, and how a test reaches it directly."""

    name: str
    data_dir: Path
    url: str = ""

    @property
    def postgres(self) -> bool:
        """Whether ``kitchen`` is on PostgreSQL."""
        return self.name == "postgresql"

    def p(self, n: int) -> str:
        """The n-th parameter's placeholder (from 1)."""
        return f"${n}" if self.postgres else "?"

    def kitchen(self, **extra: Any) -> dict[str, Any]:
        """The ``kitchen`` entry of a config."""
        entry: dict[str, Any] = {
            "name": "kitchen",
            "allowed_tables": ["parents", "items", "notes"],
        }
        if self.postgres:
            entry |= {"url": self.url, "migrations": str(KITCHEN_PG_MIGRATIONS)}
        else:
            entry |= {"path": "kitchen.db", "migrations": str(KITCHEN_MIGRATIONS)}
        return entry | extra

    def document(self) -> dict[str, Any]:
        """A config with ``kitchen`` on this engine and ``live`` on SQLite."""
        return {
            "listen": "127.0.0.1:0",
            "data_dir": str(self.data_dir),
            "databases": [
                self.kitchen(),
                {"name": "live", "path": "live.db", "migrations": str(MIGRATIONS / "live")},
            ],
            "limits": {"readers_per_database": 2, "acquire_timeout_seconds": 2.0},
            "shutdown_grace_seconds": 2,
        }

    async def direct(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` on ``kitchen`` from another connection, as another process would
        (SQL in this engine's dialect); its rows."""
        if self.postgres:
            connection = await asyncpg.connect(self.url, timeout=10)
            try:
                return [tuple(r) for r in await connection.fetch(sql, *params)]
            finally:
                await connection.close()
        return await asyncio.to_thread(self._sqlite, sql, params)

    def _sqlite(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.data_dir / "kitchen.db", timeout=10)
        try:
            with connection:
                return connection.execute(sql, params).fetchall()
        finally:
            connection.close()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """``kitchen`` on SQLite, then on PostgreSQL (a fresh database of the session's server)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if request.param == "postgresql":
        return Engine("postgresql", data_dir, request.getfixturevalue("postgres_url"))
    return Engine("sqlite", data_dir)


@pytest.fixture
def engine_document(engine: Engine) -> dict[str, Any]:
    """The engine's config, to adjust before starting a server."""
    return engine.document()


@pytest.fixture
async def served(tmp_path: Path, engine_document: dict[str, Any]) -> AsyncIterator[Running]:
    """A server on the engine's config."""
    async with started(tmp_path, engine_document) as server:
        yield server
