"""Stopping ``python -m service``: bounded with tracing and no collector; a second signal ends."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from tests.conftest import free_port

pytestmark = pytest.mark.integration

_ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def _logged(log: Path, message: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["msg"] == message]


async def _wait_logged(log: Path, message: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while not (found := _logged(log, message)):
        assert time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.05)
    return found[0]


async def test_sigterm_with_tracing_on_and_no_collector_stops_within_the_grace(
    document: dict[str, Any], service_process: Any
) -> None:
    document["shutdown_grace_seconds"] = 4
    closed = free_port()  # nothing listens there: every export fails and retries
    server = service_process(
        document, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed}"}
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        # More spans than one export batch (512), so exports are queued behind the first.
        for i in range(200):
            await stub.Query(pb.QueryRequest(database="live", sql=f"SELECT {i}"))
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(server.process.wait, 60)
    took = time.monotonic() - started
    assert code == 0
    assert took < 8, f"stopping took {took:.1f} s"
    stopping = _logged(server.log, "stopping")
    assert stopping and stopping[0]["cause"] == "SIGTERM"
    assert stopping[0]["calls_in_flight"] == 0
    assert stopping[0]["grace_seconds"] == 3.0  # 4 s less the span flush's quarter
    assert _logged(server.log, "stopped")


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
async def test_a_second_signal_exits_at_once(
    document: dict[str, Any], service_process: Any, second: signal.Signals
) -> None:
    document["shutdown_grace_seconds"] = 25
    document["limits"]["default_deadline_seconds"] = 60
    server = service_process(document)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        # A call that lasts: the first signal waits out the grace for it.
        endless = asyncio.ensure_future(
            stub.Query(pb.QueryRequest(database="live", sql=_ENDLESS), timeout=60)
        )
        await asyncio.sleep(0.5)
        server.process.send_signal(signal.SIGINT)
        stopping = await _wait_logged(server.log, "stopping")
        assert stopping["cause"] == "SIGINT"
        assert stopping["calls_in_flight"] == 1
        assert stopping["grace_seconds"] == 25
        assert server.process.poll() is None  # still draining
        started = time.monotonic()
        server.process.send_signal(second)
        code = await asyncio.to_thread(server.process.wait, 20)
        assert time.monotonic() - started < 3
        assert code == 128 + second
        endless.cancel()
        await asyncio.gather(endless, return_exceptions=True)
    assert f"second {second.name}: exiting now" in server.log.read_text()
