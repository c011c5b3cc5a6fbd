"""Abuse limits: concurrent calls server-wide and per caller, and rows per batch."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import grpc

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import failure_of, row, started

SLOW = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
    "SELECT count(*) FROM c"
)
BYPASS = pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)


async def _codes(calls: list[Any]) -> list[grpc.StatusCode]:
    codes = []
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(outcome, grpc.aio.AioRpcError):
            codes.append(outcome.code())
        else:
            assert not isinstance(outcome, BaseException), outcome
            codes.append(grpc.StatusCode.OK)
    return codes


async def test_calls_past_the_server_wide_limit_are_refused_at_once(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["limits"] = {**document["limits"], "max_concurrent_rpcs": 2}
    async with started(tmp_path, document) as running:
        request = pb.QueryRequest(database="kitchen", sql=SLOW, cache=BYPASS)
        codes = await _codes([running.stub.Query(request) for _ in range(5)])
    assert codes.count(grpc.StatusCode.OK) >= 1
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 2
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_one_caller_cannot_hold_more_than_its_share(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["limits"] = {**document["limits"], "max_concurrent_per_caller": 1}
    document["auth"] = {
        "tokens": [
            {
                "name": name,
                "sha256": hashlib.sha256(name.encode()).hexdigest(),
                "scopes": ["read:*"],
            }
            for name in ("busy", "other")
        ]
    }
    async with started(tmp_path, document) as running:
        request = pb.QueryRequest(database="kitchen", sql=SLOW, cache=BYPASS)
        busy = [("authorization", "Bearer busy")]
        first = asyncio.ensure_future(running.stub.Query(request, metadata=busy))
        await asyncio.sleep(0.1)
        again = await failure_of(running.stub.Query(request, metadata=busy))
        assert again.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = pb.QueryRequest(database="kitchen", sql="SELECT 1")
        await running.stub.Query(other, metadata=[("authorization", "Bearer other")])
        await first


async def test_a_batch_over_the_row_limit_is_refused_naming_the_field(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["limits"] = {**document["limits"], "max_batch_rows": 10}
    async with started(tmp_path, document) as running:
        failure = await failure_of(
            running.stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen",
                    table="items",
                    columns=["qty"],
                    rows=[row(i) for i in range(11)],
                )
            )
        )
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and failure.fields == ["rows"]
        # In the columnar form the count is checked before any value is read.
        column = pb.ColumnData(kind=pb.COLUMN_KIND_INTEGER, integers=range(11))
        columnar = await failure_of(
            running.stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen", table="items", columns=["qty"], column_data=[column]
                )
            )
        )
        assert columnar.code == grpc.StatusCode.INVALID_ARGUMENT
        assert columnar.fields == ["column_data"] and "max_batch_rows" in columnar.details
        assert running.sqlite("kitchen").execute("SELECT count(*) FROM items").fetchone() == (0,)


async def test_open_health_streams_do_not_use_up_the_room_for_calls(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    document["limits"] = {**document["limits"], "max_concurrent_rpcs": 2}
    async with started(tmp_path, document) as running:
        health = health_pb2_grpc.HealthStub(running.channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(4)]
        for watch in watches:
            await watch.read()
        answer = await running.stub.Query(pb.QueryRequest(database="kitchen", sql="SELECT 1"))
        assert answer.rows[0].values[0].integer == 1
        for watch in watches:
            watch.cancel()
