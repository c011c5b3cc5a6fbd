"""OTEL_TRACES_EXPORTER: exporters found by entry point; console with no collector; none."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service.config import ConfigError
from service.observe.telemetry import Telemetry, trace_exporters

OTLP_GRPC = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter:OTLPSpanExporter"
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}


def _names(environ: dict[str, str]) -> list[str]:
    return [entry.name for entry in trace_exporters(environ)]


def test_the_default_otlp_exports_only_when_an_endpoint_is_set() -> None:
    assert _names({}) == []
    assert [e.value for e in trace_exporters(ENDPOINT)] == [OTLP_GRPC]
    assert _names({"OTEL_TRACES_EXPORTER": "otlp_proto_grpc", **ENDPOINT}) == ["otlp_proto_grpc"]


def test_named_exporters_are_found_by_entry_point_and_none_means_none() -> None:
    assert _names({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    both = trace_exporters({"OTEL_TRACES_EXPORTER": " console , otlp ,console", **ENDPOINT})
    assert [entry.name for entry in both][0] == "console" and both[1].value == OTLP_GRPC
    assert len(both) == 2
    assert _names({"OTEL_TRACES_EXPORTER": "none", **ENDPOINT}) == []
    assert _names({"OTEL_TRACES_EXPORTER": "console,none"}) == []
    assert _names({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) == []


def test_none_and_a_disabled_sdk_make_no_provider() -> None:
    for environ in (
        {"OTEL_TRACES_EXPORTER": "none", **ENDPOINT},
        {"OTEL_SDK_DISABLED": "true", **ENDPOINT},
        {},
    ):
        telemetry = Telemetry.from_env(environ)
        assert telemetry.provider is None and telemetry.exporters == ()


def test_the_console_exporter_is_batched_and_its_flush_bounded() -> None:
    telemetry = Telemetry.from_env({"OTEL_TRACES_EXPORTER": "console"})
    try:
        [exporter] = telemetry.exporters
        assert isinstance(exporter, ConsoleSpanExporter)
        assert telemetry.flush_seconds(30) == 3.0
    finally:
        telemetry.shutdown(1.0)
    assert telemetry.provider is None


def test_an_unknown_exporter_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"OTEL_TRACES_EXPORTER: unknown exporter 'jaegr'"):
        trace_exporters({"OTEL_TRACES_EXPORTER": "console,jaegr"})


def test_the_service_refuses_to_start_with_an_unknown_exporter_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "zipkin_json_typo"}
    env["DATAACCESS_LISTEN"] = "127.0.0.1:0"
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("dataaccess: OTEL_TRACES_EXPORTER: unknown exporter")
    assert "zipkin_json_typo" in lines[-1] and "console" in lines[-1]


async def test_the_console_exporter_prints_the_server_span_with_no_collector(
    document: dict[str, Any], service_process: Any
) -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        assert name not in os.environ
    server = await asyncio.to_thread(service_process, document, env)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        await stub.Query(pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items"))
    deadline = time.monotonic() + 15
    while '"name": "/dataaccess.v1.DataAccess/Query"' not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        await asyncio.sleep(0.05)
    assert '"name": "db.query"' in server.log.read_text()
