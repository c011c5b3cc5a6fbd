"""The server as users run it: standard health, reflection, SIGTERM drains, bounded memory."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service.observe.logs import JsonFormatter
from tests.conftest import Running, free_port, row, started

pytestmark = pytest.mark.integration


async def test_standard_health_service_answers_serving_and_then_not_serving(
    running: Running,
) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    for service in ("", "dataaccess.v1.DataAccess"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    await running.server.health.enter_graceful_shutdown()
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_the_services(running: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"dataaccess.v1.DataAccess", "grpc.health.v1.Health"} <= names


async def test_health_rpc_reports_every_database(running: Running) -> None:
    report = await running.stub.Health(pb.HealthRequest())
    assert report.status == pb.HEALTH_STATUS_HEALTHY
    assert report.score == 1.0
    names = {c.name for c in report.checks}
    for database in ("live", "archive", "kitchen"):
        assert {
            f"database:{database}",
            f"database:{database}:foreign_keys",
            f"database:{database}:wal",
            f"database:{database}:indexes",
            f"database:{database}:disk",
        } <= names
    assert all(c.duration_ms >= 0 and c.status == pb.HEALTH_STATUS_HEALTHY for c in report.checks)


def _kitchen_doc(tmp_path: Path, document: dict[str, Any]) -> dict[str, Any]:
    document["shutdown_grace_seconds"] = 10
    return document


@pytest.mark.slow
async def test_sigterm_during_writes_loses_no_acknowledged_write(
    tmp_path: Path, document: dict[str, Any], service_process: Any
) -> None:
    server = service_process(_kitchen_doc(tmp_path, document))
    acknowledged: list[int] = []
    refused = 0

    async def writer(worker: int) -> None:
        nonlocal refused
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DataAccessStub(channel)
            for i in range(400):
                key = worker * 10_000 + i
                try:
                    await stub.BatchInsert(
                        pb.BatchInsertRequest(
                            database="kitchen",
                            table="items",
                            columns=["id", "qty"],
                            rows=[row(key, i)],
                        ),
                        timeout=5,
                    )
                except grpc.aio.AioRpcError:
                    refused += 1
                    return
                acknowledged.append(key)

    tasks = [asyncio.ensure_future(writer(w)) for w in range(8)]
    while len(acknowledged) < 200:
        await asyncio.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    await asyncio.gather(*tasks)
    assert await asyncio.to_thread(server.process.wait, 20) == 0
    with sqlite3.connect(Path(document["data_dir"]) / "kitchen.db") as conn:
        stored = {key for (key,) in conn.execute("SELECT id FROM items")}
    assert set(acknowledged) <= stored
    assert len(acknowledged) >= 200
    assert refused > 0 or len(acknowledged) == 8 * 400
    log = server.log.read_text()
    assert '"msg": "stopped"' in log


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
async def test_query_stream_keeps_server_memory_bounded(
    tmp_path: Path, document: dict[str, Any], service_process: Any
) -> None:
    server = service_process(document)
    sql = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) "
        "SELECT x, printf('%.1000d', x) FROM c"
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        await stub.Query(pb.QueryRequest(database="live", sql="SELECT 1"))
        baseline = _peak_rss_kib(server.process.pid)
        messages = rows = 0
        started = time.monotonic()
        async for message in stub.QueryStream(
            pb.QueryRequest(database="live", sql=sql), timeout=120
        ):
            messages += 1
            rows += len(message.rows)
            if messages % 20 == 0:
                await asyncio.sleep(0.01)  # a slow reader: the server must wait, not buffer
    assert rows == 100_000
    assert messages >= 50
    growth_mib = (_peak_rss_kib(server.process.pid) - baseline) / 1024
    # About 100 MiB of rows went through; a buffering server would grow by at least that.
    assert growth_mib < 40, growth_mib
    assert time.monotonic() - started < 120


_ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.mark.parametrize("database", ["live", "both"])
async def test_a_query_interrupted_at_its_deadline_leaves_no_unretrieved_task_error(
    tmp_path: Path, document: dict[str, Any], database: str, caplog: pytest.LogCaptureFixture
) -> None:
    document["groups"] = [{"name": "both", "members": ["live", "archive"]}]
    async with started(tmp_path, document) as running:
        for sql in (_ENDLESS, _ENDLESS + " -- uncached"):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await running.stub.Query(pb.QueryRequest(database=database, sql=sql), timeout=0.3)
            assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The readers are free again: the interrupted statements have let go of them.
        for i in range(4):
            sql = f"SELECT {i}"
            reply = await running.stub.Query(pb.QueryRequest(database=database, sql=sql), timeout=5)
            assert reply.rows
        await asyncio.sleep(0.1)
        gc.collect()  # a task's unretrieved error is logged when the task is collected
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert unretrieved == []


async def test_the_serving_line_names_databases_groups_cache_tiers_and_metrics(
    tmp_path: Path, document: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    document["groups"] = [{"name": "both", "members": ["live", "archive"]}]
    document["redis_url"] = f"redis://cache:s3cret@127.0.0.1:{free_port()}/2"
    document["metrics_listen"] = "127.0.0.1:0"
    caplog.set_level(logging.INFO, logger="service.server")
    async with started(tmp_path, document) as running:
        serving = next(r for r in caplog.records if r.getMessage() == "serving")
        fields = vars(serving)
        assert fields["databases"] == ["live", "archive", "kitchen"]
        assert fields["groups"] == {"both": ["live", "archive"]}
        assert fields["l1"] == "on"
        assert fields["redis"] == f"redis://127.0.0.1:{document['redis_url'].rsplit(':', 1)[1]}"
        assert fields["metrics"] == f"127.0.0.1:{running.server.metrics_port}"
        assert fields["port"] == running.port
        assert "s3cret" not in JsonFormatter().format(serving)
