"""The PostgreSQL test server (issue 16's groundwork): a real server on loopback, reached
with asyncpg, the driver the backend will use."""

from __future__ import annotations

import asyncpg

from tests.conftest import PostgresProcess


async def test_a_real_postgresql_answers_on_loopback(postgres_server: PostgresProcess) -> None:
    connection = await asyncpg.connect(postgres_server.url, timeout=10)
    try:
        version = await connection.fetchval("SHOW server_version_num")
        assert int(version) >= 150000
        assert await connection.fetchval("SELECT inet_server_addr()::text") == "127.0.0.1/32"
    finally:
        await connection.close()
