"""Prometheus metrics: scraped over HTTP from their own loopback port."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import free_port, row, started


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {sample}")


async def test_calls_cache_pools_and_queries_are_exported(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["metrics_listen"] = f"127.0.0.1:{free_port()}"
    async with started(tmp_path, document) as running:
        port = running.server.metrics_port
        query = pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items")
        await running.stub.Query(query)
        await running.stub.Query(query)
        with pytest.raises(grpc.aio.AioRpcError):
            await running.stub.Query(pb.QueryRequest(database="nowhere", sql="SELECT 1"))
        await running.stub.BatchInsert(
            pb.BatchInsertRequest(database="kitchen", table="items", columns=["qty"], rows=[row(1)])
        )
        text = await asyncio.to_thread(_scrape, port)
    labels = 'grpc_method="Query",grpc_service="dataaccess.v1.DataAccess",grpc_type="unary"'
    assert _value(text, f"grpc_server_started_total{{{labels}}}") == 3
    assert _value(text, f'grpc_server_handled_total{{grpc_code="OK",{labels}}}') == 2
    assert _value(text, f'grpc_server_handled_total{{grpc_code="NOT_FOUND",{labels}}}') == 1
    assert _value(text, f"grpc_server_handling_seconds_count{{{labels}}}") == 3
    assert _value(text, 'dataaccess_query_duration_seconds_count{database="kitchen"}') == 1
    assert _value(text, 'dataaccess_cache_hits_total{tier="l1"}') == 1
    assert _value(text, 'dataaccess_cache_misses_total{tier="l1"}') == 1
    assert _value(text, 'dataaccess_pool_connections{database="kitchen"}') == 2
    assert _value(text, 'dataaccess_write_transactions_total{database="kitchen"}') == 1
    assert _value(text, 'dataaccess_write_queue_depth{database="kitchen"}') == 0


async def test_the_redis_breaker_and_replication_lag_are_exported(
    tmp_path: Path, document: dict[str, Any], redis_server: Any, postgres_url: str
) -> None:
    document["metrics_listen"] = f"127.0.0.1:{free_port()}"
    document["redis_url"] = redis_server.url
    document["databases"].append({"name": "ledger", "url": postgres_url})
    async with started(tmp_path, document) as running:
        port = running.server.metrics_port
        await running.stub.Health(pb.HealthRequest())
        text = await asyncio.to_thread(_scrape, port)
        assert _value(text, "dataaccess_redis_breaker_open") == 0
        # a primary with no standbys lags by nothing; SQLite reports no lag at all
        assert _value(text, 'dataaccess_replication_lag_seconds{database="ledger"}') == 0
        assert 'dataaccess_replication_lag_seconds{database="kitchen"}' not in text
        redis_server.kill()
        for qty in range(10):  # misses, each failing on Redis until the breaker opens
            await running.stub.Query(
                pb.QueryRequest(
                    database="kitchen", sql=f"SELECT count(*) FROM items WHERE qty > {qty}"
                )
            )
        text = await asyncio.to_thread(_scrape, port)
        assert _value(text, "dataaccess_redis_breaker_open") == 1


async def test_without_redis_there_is_no_breaker_gauge(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    document["metrics_listen"] = f"127.0.0.1:{free_port()}"
    async with started(tmp_path, document) as running:
        text = await asyncio.to_thread(_scrape, running.server.metrics_port)
    assert "dataaccess_redis_breaker_open" not in text
