"""The service's side of Litestream: its generated config, and one owner of checkpoints."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataaccess.v1 import data_access_pb2 as pb
from service.config import ReplicationConfig
from service.db import litestream_config
from service.db.door import Severity
from service.db.sqlite.replication import replication_finding
from tests.conftest import build_config, row, sqlite_database, started


def test_the_litestream_config_replicates_every_configured_database(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    Path(document["data_dir"]).mkdir(parents=True)
    config = build_config(tmp_path, {**document, "replication": {"sync_interval_seconds": 2}})
    generated = yaml.safe_load(litestream_config(config))
    paths = [Path(db["path"]) for db in generated["dbs"]]
    assert paths == [database.path for database in config.sqlite_databases]
    assert all(path.is_absolute() for path in paths)
    replicas = [db["replica"] for db in generated["dbs"]]
    assert [r["path"] for r in replicas] == [
        f"${{LITESTREAM_PATH}}/{database.name}" for database in config.databases
    ]
    assert {r["sync-interval"] for r in replicas} == {"2s"}
    assert generated["socket"] == {
        "enabled": True,
        "path": str(config.replication.litestream_socket if config.replication else ""),
    }


def _wal_bytes(data_dir: Path) -> int:
    wal = data_dir / "kitchen.db-wal"
    return wal.stat().st_size if wal.exists() else 0


async def _write_and_stop(tmp_path: Path, document: dict[str, Any]) -> tuple[int, int]:
    """Write through the service and stop it: the writer's autocheckpoint, and the WAL's
    size left behind while another process (Litestream's place) still has the file open:
    the last connection to close a database checkpoints it whoever it is."""
    async with started(tmp_path, document) as running:
        other = sqlite3.connect(running.data_dir / "kitchen.db")
        other.execute("SELECT count(*) FROM items").fetchall()
        writer = sqlite_database(running.server, "kitchen")._writer_conn
        assert writer is not None
        autocheckpoint = await writer.run_trusted(
            lambda raw: int(raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        )
        for n in range(20):
            await running.stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen", table="items", columns=["qty"], rows=[row(n)]
                )
            )
        data_dir = running.data_dir
    try:
        return autocheckpoint, _wal_bytes(data_dir)
    finally:
        other.close()


async def test_with_replication_litestream_owns_checkpoints(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    replicated = {**document, "replication": {"litestream_socket": str(tmp_path / "ls.sock")}}
    autocheckpoint, wal_left = await _write_and_stop(tmp_path, replicated)
    assert autocheckpoint == 0
    assert wal_left > 0  # not truncated at shutdown: Litestream checkpoints after its sync


async def test_without_replication_the_service_checkpoints_itself(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    autocheckpoint, wal_left = await _write_and_stop(tmp_path, document)
    assert autocheckpoint == 1000
    assert wal_left == 0


def test_a_restored_database_records_that_everything_cached_from_it_goes(tmp_path: Path) -> None:
    from service.db.sqlite import outbox
    from service.db.sqlite.replication import _drop_cached_reads

    path = tmp_path / "live.db"
    with sqlite3.connect(path) as made:  # as Litestream leaves it: the replica's state
        made.execute("CREATE TABLE t (x)")
    _drop_cached_reads(path, "live")
    with sqlite3.connect(path) as restored:
        tags, rows = outbox.undelivered(restored)
    assert tags == ["database:live"] and len(rows) == 1


def test_restore_without_the_litestream_binary_says_so(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    from service.db import RestoreError, restore_missing

    Path(document["data_dir"]).mkdir(parents=True)
    config = build_config(tmp_path, document)
    with pytest.raises(RestoreError, match="litestream restore"):
        restore_missing(config, litestream=str(tmp_path / "no-litestream-here"))


async def _serve_list(socket: Path, listed: dict[str, Any]) -> asyncio.AbstractServer:
    """A stand-in for Litestream's control socket answering GET /list with ``listed``."""
    body = json.dumps(listed).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(answer, path=str(socket))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("age", "status", "severity", "says"),
    [
        (1, "replicating", Severity.HEALTHY, "last synced"),
        (30, "replicating", Severity.DEGRADED, "over 10 s"),
        (1, "stopped", Severity.DEGRADED, "Litestream says stopped"),
        (None, "replicating", Severity.DEGRADED, "not synced yet"),
    ],
)
async def test_the_replication_check_reads_the_age_and_status_of_the_last_sync(
    tmp_path: Path, age: float | None, status: str, severity: Severity, says: str
) -> None:
    database = tmp_path / "live.db"
    synced = None if age is None else datetime.now(UTC) - timedelta(seconds=age)
    stamp = synced.isoformat().replace("+00:00", "Z") if synced else None
    listed = {"databases": [{"path": str(database), "status": status, "last_sync_at": stamp}]}
    socket = tmp_path / "ls.sock"
    server = await _serve_list(socket, listed)
    try:
        found = await replication_finding(database, ReplicationConfig(litestream_socket=socket))
        other = await replication_finding(tmp_path / "other.db", ReplicationConfig(socket))
    finally:
        server.close()
        await server.wait_closed()
    assert (found.aspect, found.severity) == ("replication", severity)
    assert says in found.message
    assert other.severity is Severity.DEGRADED and "not replicated" in other.message
