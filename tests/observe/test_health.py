"""Health: checks per database and for Redis, CRITICAL and NOT_SERVING when nothing can serve."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import RedisProcess, Running, started

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _standard(running: Running) -> int:
    stub = health_pb2_grpc.HealthStub(running.channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service="dataaccess.v1.DataAccess"))
    return int(answer.status)


async def _until_standard(running: Running, status: int) -> None:
    deadline = time.monotonic() + 10
    while await _standard(running) != status:
        assert time.monotonic() < deadline, "the standard health status did not follow"
        await asyncio.sleep(0.05)


def _checks(report: pb.HealthResponse) -> dict[str, pb.HealthCheck]:
    return {check.name: check for check in report.checks}


async def test_an_unreadable_database_file_is_critical_and_not_serving_until_restored(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["databases"] = [d for d in document["databases"] if d["name"] == "kitchen"]
    document["health_interval_seconds"] = 0.1
    async with started(tmp_path, document) as running:
        assert (await running.stub.Health(pb.HealthRequest())).status == pb.HEALTH_STATUS_HEALTHY
        assert await _standard(running) == SERVING
        path = running.data_dir / "kitchen.db"
        path.rename(path.with_suffix(".moved"))
        path.write_bytes(b"\x00" * 4096)  # unreadable as a database, even for root
        report = await running.stub.Health(pb.HealthRequest())
        assert report.status == pb.HEALTH_STATUS_CRITICAL and report.score < 1
        check = _checks(report)["database:kitchen"]
        assert check.status == pb.HEALTH_STATUS_CRITICAL and "replaced or moved" in check.message
        await _until_standard(running, NOT_SERVING)

        path.unlink()
        path.with_suffix(".moved").rename(path)
        report = await running.stub.Health(pb.HealthRequest())
        assert report.status == pb.HEALTH_STATUS_HEALTHY and report.score == 1.0
        await _until_standard(running, SERVING)


async def test_a_missing_expected_index_degrades_and_deep_checks_are_rate_limited(
    running: Running,
) -> None:
    with sqlite3.connect(running.data_dir / "live.db") as conn:
        conn.execute("DROP INDEX production_runs_open")
    report = await running.stub.Health(pb.HealthRequest())
    assert report.status == pb.HEALTH_STATUS_DEGRADED
    indexes = _checks(report)["database:live:indexes"]
    assert indexes.status == pb.HEALTH_STATUS_DEGRADED
    assert "production_runs_open" in indexes.message
    assert _checks(report)["database:archive:indexes"].status == pb.HEALTH_STATUS_HEALTHY

    deep = await running.stub.Health(pb.HealthRequest(deep=True))
    quick = _checks(deep)["database:kitchen:quick_check"]
    assert quick.status == pb.HEALTH_STATUS_HEALTHY and quick.message == "ok"
    again = await running.stub.Health(pb.HealthRequest(deep=True))
    assert again == deep  # within the deep interval: the same report, no new quick_check


async def test_redis_is_checked_and_its_loss_only_degrades(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    document["redis_url"] = redis_server.url
    async with started(tmp_path, document) as running:
        report = await running.stub.Health(pb.HealthRequest())
        assert _checks(report)["redis"].status == pb.HEALTH_STATUS_HEALTHY
        redis_server.kill()
        report = await running.stub.Health(pb.HealthRequest())
        assert _checks(report)["redis"].status == pb.HEALTH_STATUS_DEGRADED
        assert report.status == pb.HEALTH_STATUS_DEGRADED
        assert await _standard(running) == SERVING
