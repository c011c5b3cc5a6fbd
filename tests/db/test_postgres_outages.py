"""PostgreSQL going away and coming back: the service keeps answering (UNAVAILABLE for that
database, the others serving), serves again once PostgreSQL is back, and its cache is
not stale after an outage during which another client wrote."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import (
    KITCHEN_MIGRATIONS,
    MIGRATIONS,
    PostgresProcess,
    failure_of,
    free_port,
    plain_rows,
    row,
    started,
    value,
)


def _document(tmp_path: Path, url: str, migrations: bool = True) -> dict[str, Any]:
    kitchen: dict[str, Any] = {"name": "kitchen", "url": url}
    if migrations:
        kitchen["migrations"] = str(KITCHEN_MIGRATIONS.parent / "kitchen_pg")
    return {
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "databases": [
            kitchen,
            {"name": "live", "path": "live.db", "migrations": str(MIGRATIONS / "live")},
        ],
        "shutdown_grace_seconds": 2,
    }


async def _serves(stub: Any, sql: str = "SELECT 1", rounds: int = 150) -> pb.QueryResponse:
    """The first answer of kitchen within ``rounds`` x 0.1 s (the call's status otherwise)."""
    request = pb.QueryRequest(
        database="kitchen", sql=sql, cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)
    )
    for _ in range(rounds):
        try:
            answer: pb.QueryResponse = await stub.Query(request, timeout=2)
            return answer
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            await asyncio.sleep(0.1)
    raise AssertionError("kitchen never served again")


async def test_unreachable_at_start_it_answers_unavailable_then_serves(tmp_path: Path) -> None:
    server = PostgresProcess()  # its port is chosen; nothing listens on it yet
    try:
        document = _document(tmp_path, server.url, migrations=False)
        async with started(tmp_path, document) as running:
            refused = await failure_of(
                running.stub.Query(pb.QueryRequest(database="kitchen", sql="SELECT 1"))
            )
            assert refused.code == grpc.StatusCode.UNAVAILABLE
            live = await running.stub.Query(
                pb.QueryRequest(database="live", sql="SELECT count(*) FROM products")
            )
            assert plain_rows(live)[0][0] > 0  # the other databases serve meanwhile
            await asyncio.to_thread(server.start)
            assert plain_rows(await _serves(running.stub)) == [(1,)]
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_restart_of_postgresql_loses_no_write_and_leaves_nothing_stale(
    tmp_path: Path,
) -> None:
    server = PostgresProcess()
    await asyncio.to_thread(server.start)
    try:
        async with started(tmp_path, _document(tmp_path, server.url)) as running:
            stub = running.stub
            await stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen", table="items", columns=["id", "t"], rows=[row(1, "before")]
                )
            )
            read = pb.QueryRequest(
                database="kitchen", sql="SELECT t FROM items WHERE id = $1", params=[value(1)]
            )
            assert plain_rows(await stub.Query(read)) == [("before",)]
            assert (await stub.Query(read)).cache_status == pb.CACHE_STATUS_HIT_LOCAL

            await asyncio.to_thread(server.halt)
            down = await failure_of(
                stub.BatchInsert(
                    pb.BatchInsertRequest(
                        database="kitchen", table="items", columns=["id"], rows=[row(2)]
                    )
                )
            )
            assert down.code == grpc.StatusCode.UNAVAILABLE
            await asyncio.to_thread(server.launch)
            # Another client writes while the service's listening connection is still down.
            other = await asyncpg.connect(server.url)
            try:
                await other.execute("UPDATE items SET t = 'during' WHERE id = 1")
            finally:
                await other.close()

            await _serves(stub)
            for _ in range(50):  # the listener reconnects and drops the database's reads
                if plain_rows(await stub.Query(read)) == [("during",)]:
                    break
                await asyncio.sleep(0.1)
            assert plain_rows(await stub.Query(read)) == [("during",)]
            done = await stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen", table="items", columns=["id"], rows=[row(3)]
                )
            )
            assert done.rows_affected == 1
            ids = plain_rows(
                await stub.Query(
                    pb.QueryRequest(database="kitchen", sql="SELECT id FROM items ORDER BY id")
                )
            )
            assert ids == [(1,), (3,)]  # the refused write did not land; the others did
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_replica_down_at_start_stops_nothing_and_the_primary_answers(
    tmp_path: Path, postgres_url: str
) -> None:
    document = _document(tmp_path, postgres_url)
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens
    document["databases"][0]["replicas"] = [nobody]
    async with started(tmp_path, document) as running:
        request = pb.QueryRequest(
            database="kitchen",
            sql="SELECT count(*) FROM parents",
            cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS),
        )
        assert plain_rows(await running.stub.Query(request)) == [(2,)]
        stats = await running.stub.Stats(pb.StatsRequest())
        kitchen = next(p for p in stats.pools if p.database == "kitchen")
        assert (kitchen.replica_reads, kitchen.primary_reads) == (0, 1)
