"""The hand-written clients and the dataaccess CLI against a real server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client import (
    AlreadyExists,
    AsyncClient,
    Client,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from service.api import requests
from service.api.codec import rows_from_proto
from service.api.columns import rows_from_columns
from tests.conftest import Running, free_port

CLI = [str(Path(sys.executable).parent / "dataaccess")]  # the installed console script


async def test_async_client_takes_and_returns_plain_values(running: Running) -> None:
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        inserted = await client.batch_insert(
            "kitchen", "items", ["id", "t", "b", "r", "n"], [(1, "ü", b"\x00\x01", 2.5, None)]
        )
        assert inserted.rows_affected == 1
        result = await client.query("kitchen", "SELECT id, t, b, r, n FROM items WHERE id = ?", [1])
        assert result.rows == [(1, "ü", b"\x00\x01", 2.5, None)]
        assert result.columns == ["id", "t", "b", "r", "n"]
        assert result.cache_status == "miss"
        chunks = [c async for c in client.query_stream("live", "SELECT id FROM production_runs")]
        assert sum(len(c.rows) for c in chunks) == 60 * 12
        updated = await client.batch_update(
            "kitchen", [("UPDATE items SET r = ? WHERE id = ?", [(3.5, 1)])]
        )
        assert updated.rows_affected == [1]
        assert (await client.health()).status == "healthy"


async def test_the_client_sends_single_kind_columns_as_columns_and_a_mixed_one_as_rows(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    forms: list[str] = []

    def columns(*args: Any) -> Any:
        forms.append("columns")
        return rows_from_columns(*args)

    def rows(*args: Any) -> Any:
        forms.append("rows")
        return rows_from_proto(*args)

    monkeypatch.setattr(requests, "rows_from_columns", columns)  # as the servicer calls them
    monkeypatch.setattr(requests, "rows_from_proto", rows)
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        single = [(1, "ü", 1.5, b"\x00", None), (2, None, None, None, None)]
        await client.batch_insert("kitchen", "items", ["id", "t", "r", "b", "n"], single)
        mixed: list[tuple[int, int | str]] = [
            (3, 7),
            (4, "seven"),
        ]  # n has no type: SQLite keeps each value's own
        await client.batch_insert("kitchen", "items", ["id", "n"], mixed)
        result = await client.query("kitchen", "SELECT id, t, r, b, n FROM items ORDER BY id")
    assert forms == ["columns", "rows"]
    assert result.rows == [
        (1, "ü", 1.5, b"\x00", None),
        (2, None, None, None, None),
        (3, None, None, None, 7),
        (4, None, None, None, "seven"),
    ]


async def test_a_server_older_than_the_columnar_form_gets_the_rows_again_as_rows(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a server without column_data in its proto: it reads rows alone, so none here.
    monkeypatch.setattr(requests, "_insert_rows", lambda r, _: rows_from_proto(r.rows, "rows"))
    columnar = pb.BatchInsertRequest(
        database="kitchen",
        table="items",
        columns=["id"],
        column_data=[pb.ColumnData(kind=pb.COLUMN_KIND_INTEGER, integers=[9])],
    )
    unread = await running.stub.BatchInsert(columnar)
    assert (unread.rows_affected, unread.rows_received) == (0, 0)  # and nothing written
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        inserted = await client.batch_insert("kitchen", "items", ["id", "t"], [(1, "a"), (2, None)])
        assert inserted.rows_affected == 2
        result = await client.query("kitchen", "SELECT id, t FROM items ORDER BY id")
    assert result.rows == [(1, "a"), (2, None)]


async def test_async_client_raises_one_typed_error_per_status(running: Running) -> None:
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        with pytest.raises(NotFound):
            await client.query("nope", "SELECT 1")
        with pytest.raises(PermissionDenied):
            await client.query("kitchen", "DELETE FROM items")
        with pytest.raises(InvalidArgument) as caught:
            await client.query("kitchen", "SELECT ?", [float("nan")])
        assert caught.value.field_violations[0][0] == "params[0]"
        await client.batch_insert("kitchen", "items", ["code"], [("x",)])
        with pytest.raises(AlreadyExists):
            await client.batch_insert("kitchen", "items", ["code"], [("x",)])


@pytest.mark.integration  # a real channel to a loopback port nothing listens on
def test_sync_client_retries_reads_on_unavailable_then_gives_up() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with Client(f"127.0.0.1:{port}", timeout=2.0, retries=2, backoff=0.05) as client:
        with pytest.raises(Unavailable):
            client.query("live", "SELECT 1")
    assert time.monotonic() - started < 3.0


def _cli(port: int, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--target", f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        check=False,
    )


@pytest.mark.slow
def test_make_run_then_cli_query_prints_a_table(tmp_path: Path, service_process: Any) -> None:
    """The embedded default, as `make run` starts it, answers the README's first command."""
    data_dir = tmp_path / "data"
    server = service_process(
        {"data_dir": str(data_dir)},
        {"DATAACCESS_CONFIG": "", "DATAACCESS_DATA_DIR": str(data_dir)},
    )
    result = _cli(server.port, "query", "live", "SELECT 1")
    assert result.returncode == 0, result.stderr
    assert "1" in result.stdout
    assert any(ch in result.stdout for ch in "┃│|")  # a table, not a bare value
    products = _cli(server.port, "--json", "query", "live", "SELECT sku FROM products ORDER BY sku")
    assert products.returncode == 0, products.stderr
    assert "BRK-100" in products.stdout


def test_cli_insert_health_stats_invalidate_and_errors(
    tmp_path: Path, document: dict[str, Any], service_process: Any
) -> None:
    server = service_process(document)
    csv_file = tmp_path / "items.csv"
    csv_file.write_text("id,code,qty\n" + "".join(f"{i},c{i},{i}\n" for i in range(1, 2501)))
    inserted = _cli(
        server.port, "insert", "kitchen", "items", str(csv_file), "--batch-size", "1000"
    )
    assert inserted.returncode == 0, inserted.stderr
    counted = _cli(server.port, "--json", "query", "kitchen", "SELECT count(*) AS n FROM items")
    assert counted.returncode == 0, counted.stderr
    assert "2500" in counted.stdout
    for args in (["health"], ["stats"], ["invalidate", "--tag", "x"]):
        result = _cli(server.port, *args)
        assert result.returncode == 0, (args, result.stderr)
    failed = _cli(server.port, "query", "kitchen", "DELETE FROM items")
    assert failed.returncode == 1
    assert "PERMISSION_DENIED" in failed.stderr
    json.loads(_cli(server.port, "--json", "health").stdout.strip().splitlines()[-1])


def test_cli_takes_global_options_after_the_command(
    document: dict[str, Any], service_process: Any
) -> None:
    server = service_process(document)
    target = f"127.0.0.1:{server.port}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)

    answered = cli("query", "kitchen", "SELECT 41 + 1 AS n", "--json", "--target", target)
    assert answered.returncode == 0, answered.stderr
    assert "42" in json.dumps(json.loads(answered.stdout.strip().splitlines()[-1]))
    # Given on both sides, the one after the command wins; given before only, it stays.
    health = cli(
        "--target", "127.0.0.1:1", "--json", "health", "--target", target, "--timeout", "5"
    )
    assert health.returncode == 0, health.stderr
    json.loads(health.stdout.strip().splitlines()[-1])
