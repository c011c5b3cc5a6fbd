"""Traces: a real OTLP/gRPC receiver on loopback gets every tier's spans in the caller's trace."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from dataaccess_client import AsyncClient
from tests.conftest import RedisProcess, row


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """What a collector (Jaeger's OTLP port) is sent."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: bytes) -> list[trace_pb2.Span]:
        return [span for span in self.spans if span.trace_id == trace_id]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    """An OTLP/gRPC trace receiver on a free loopback port."""
    server = grpc.aio.server()
    found = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(found, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield found, port
    finally:
        await server.stop(0)


async def _traced_service(
    start: Any, document: dict[str, Any], receiver_port: int, **otel: str
) -> Any:
    """``python -m service`` exporting its spans to the receiver, quickly (``otel``: more
    ``OTEL_*`` variables)."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "dataaccess-test",
        **otel,
    }
    return await asyncio.to_thread(start, document, env)


def _traceparent() -> tuple[str, bytes, bytes]:
    trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    return f"00-{trace_id.hex()}-{span_id.hex()}-01", trace_id, span_id


async def _spans_until(
    found: Receiver, trace_id: bytes, done: Callable[[list[trace_pb2.Span]], bool]
) -> list[trace_pb2.Span]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        spans = found.of_trace(trace_id)
        if done(spans):
            return spans
        await asyncio.sleep(0.05)
    raise AssertionError(f"spans never arrived: {[s.name for s in found.of_trace(trace_id)]}")


def _attributes(span: trace_pb2.Span) -> dict[str, Any]:
    values = {}
    for attribute in span.attributes:
        kind = attribute.value.WhichOneof("value")
        values[attribute.key] = getattr(attribute.value, kind) if kind else None
    return values


def _has_server_span(spans: list[trace_pb2.Span]) -> bool:
    # Children may be exported in an earlier batch than the server span, which ends last.
    return any(span.kind == trace_pb2.Span.SPAN_KIND_SERVER for span in spans)


def _names(spans: list[trace_pb2.Span]) -> set[str]:
    return {span.name for span in spans}


async def test_a_query_is_traced_through_every_tier_in_the_callers_trace(
    tmp_path: Path, document: dict[str, Any], receiver: tuple[Receiver, int], service_process: Any
) -> None:
    found, port = receiver
    document["groups"] = [{"name": "history", "members": ["archive", "live"]}]
    server = await _traced_service(service_process, document, port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        header, trace_id, caller = _traceparent()
        await stub.Query(
            pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items WHERE qty > 3"),
            metadata=[("traceparent", header)],
        )
        wanted = {"cache.l1", "router", "pool.acquire", "db.query"}
        spans = await _spans_until(
            found, trace_id, lambda s: wanted <= _names(s) and _has_server_span(s)
        )
        [rpc] = [s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
        assert rpc.name == "/dataaccess.v1.DataAccess/Query" and rpc.parent_span_id == caller
        below = {s.name: s for s in spans if s is not rpc}
        assert below["cache.l1"].parent_span_id == rpc.span_id
        assert _attributes(below["cache.l1"])["cache.result"] == "miss"
        assert below["db.query"].parent_span_id == below["router"].span_id
        db = _attributes(below["db.query"])
        assert db["db.system.name"] == "sqlite" and db["db.namespace"] == "kitchen"
        assert db["db.query.text"] == "SELECT count(*) FROM items WHERE qty > ?"
        assert db["db.response.returned_rows"] == 1

        header, trace_id, _ = _traceparent()
        await stub.Query(
            pb.QueryRequest(database="history", sql="SELECT count(*) AS n FROM production_runs"),
            metadata=[("traceparent", header)],
        )
        spans = await _spans_until(
            found,
            trace_id,
            lambda s: sum(x.name == "db.query" for x in s) == 2 and "router" in _names(s),
        )
        [router] = [s for s in spans if s.name == "router"]
        members = [s for s in spans if s.name == "db.query"]
        assert {_attributes(s)["db.namespace"] for s in members} == {"archive", "live"}
        assert all(s.parent_span_id == router.span_id for s in members)
        # the members ran side by side: each started before the other ended
        first, second = sorted(members, key=lambda s: s.start_time_unix_nano)
        assert second.start_time_unix_nano < first.end_time_unix_nano


async def test_writes_errors_and_health_checks_in_traces(
    tmp_path: Path, document: dict[str, Any], receiver: tuple[Receiver, int], service_process: Any
) -> None:
    found, port = receiver
    server = await _traced_service(service_process, document, port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        header, trace_id, _ = _traceparent()
        await stub.BatchInsert(
            pb.BatchInsertRequest(
                database="kitchen", table="items", columns=["qty"], rows=[row(4)]
            ),
            metadata=[("traceparent", header)],
        )
        spans = await _spans_until(found, trace_id, lambda s: "db.write_batch" in _names(s))
        [batch] = [s for s in spans if s.name == "db.write_batch"]
        assert _attributes(batch)["db.system.name"] == "sqlite"

        header, trace_id, _ = _traceparent()
        stream = stub.QueryStream(
            pb.QueryRequest(database="kitchen", sql="SELECT id FROM parents"),
            metadata=[("traceparent", header)],
        )
        assert sum([len(chunk.rows) async for chunk in stream]) == 2
        spans = await _spans_until(
            found, trace_id, lambda s: "db.query" in _names(s) and _has_server_span(s)
        )
        [query] = [s for s in spans if s.name == "db.query"]
        assert _attributes(query)["db.response.returned_rows"] == 2

        header, trace_id, _ = _traceparent()
        stream = stub.QueryStream(  # cut by max_rows: the row fetched to tell is not returned
            pb.QueryRequest(database="kitchen", sql="SELECT id FROM parents", max_rows=1),
            metadata=[("traceparent", header)],
        )
        assert sum([len(chunk.rows) async for chunk in stream]) == 1
        spans = await _spans_until(
            found, trace_id, lambda s: "db.query" in _names(s) and _has_server_span(s)
        )
        [query] = [s for s in spans if s.name == "db.query"]
        assert _attributes(query)["db.response.returned_rows"] == 1

        header, trace_id, _ = _traceparent()
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Query(
                pb.QueryRequest(database="nowhere", sql="SELECT 1"),
                metadata=[("traceparent", header)],
            )
        spans = await _spans_until(found, trace_id, _has_server_span)
        [rpc] = spans
        # The status code is on the span; by the RPC conventions a server span is
        # marked ERROR only for server faults (UNAVAILABLE, INTERNAL, DATA_LOSS, ...).
        assert _attributes(rpc)["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]

        header, trace_id, _ = _traceparent()
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), metadata=[("traceparent", header)])
        await stub.Query(pb.QueryRequest(database="kitchen", sql="SELECT 2"))  # flushes after it
        await asyncio.sleep(0.5)
        assert found.of_trace(trace_id) == []


async def test_redis_calls_are_traced_under_the_cache(
    tmp_path: Path,
    document: dict[str, Any],
    receiver: tuple[Receiver, int],
    service_process: Any,
    redis_server: RedisProcess,
) -> None:
    found, port = receiver
    document = {**document, "redis_url": redis_server.url, "l1_max_entries": 0}
    server = await _traced_service(service_process, document, port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        await stub.Query(pb.QueryRequest(database="kitchen", sql="SELECT 3"))
        header, trace_id, _ = _traceparent()
        answer = await stub.Query(
            pb.QueryRequest(database="kitchen", sql="SELECT 3"), metadata=[("traceparent", header)]
        )
        assert answer.cache_status == pb.CACHE_STATUS_HIT_REDIS
        spans = await _spans_until(found, trace_id, lambda s: "cache.l2" in _names(s))
        [l2] = [s for s in spans if s.name == "cache.l2"]
        assert _attributes(l2)["cache.result"] == "hit"
        redis_spans = [
            s
            for s in spans
            if "redis"
            in (_attributes(s).get("db.system") or _attributes(s).get("db.system.name") or "")
        ]
        assert redis_spans and all(s.parent_span_id == l2.span_id for s in redis_spans)


async def test_the_client_package_carries_the_callers_trace_into_the_service(
    tmp_path: Path, document: dict[str, Any], receiver: tuple[Receiver, int], service_process: Any
) -> None:
    found, port = receiver
    server = await _traced_service(service_process, document, port)
    trace_id, span_id = secrets.randbits(128), secrets.randbits(64)
    caller = otel_trace.NonRecordingSpan(
        otel_trace.SpanContext(
            trace_id,
            span_id,
            is_remote=False,
            trace_flags=otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
        )
    )
    token = otel_context.attach(otel_trace.set_span_in_context(caller))
    try:
        async with AsyncClient(f"127.0.0.1:{server.port}") as client:
            await client.query("kitchen", "SELECT 4")
    finally:
        otel_context.detach(token)
    wanted = trace_id.to_bytes(16, "big")
    spans = await _spans_until(found, wanted, _has_server_span)
    [rpc] = [s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
    assert rpc.parent_span_id == span_id.to_bytes(8, "big")


async def test_the_server_span_follows_the_rpc_conventions_and_a_memory_hit_is_its_attribute(
    tmp_path: Path, document: dict[str, Any], receiver: tuple[Receiver, int], service_process: Any
) -> None:
    found, port = receiver
    server = await _traced_service(service_process, document, port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        query = pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items")
        await stub.Query(query)
        header, trace_id, _ = _traceparent()
        answer = await stub.Query(query, metadata=[("traceparent", header)])
        assert answer.cache_status == pb.CACHE_STATUS_HIT_LOCAL
        [rpc] = await _spans_until(found, trace_id, _has_server_span)
    attributes = _attributes(rpc)
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "dataaccess.v1.DataAccess"
    assert attributes["rpc.method"] == "Query"
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(attributes["network.peer.port"], int)
    # An answer from memory has no span of its own: it is the server span's cache status.
    assert attributes["dataaccess.cache.status"] == "HIT_LOCAL"
    assert rpc.status.code != trace_pb2.Status.STATUS_CODE_ERROR


async def test_a_call_whose_caller_did_not_sample_it_exports_nothing_from_any_tier(
    tmp_path: Path, document: dict[str, Any], receiver: tuple[Receiver, int], service_process: Any
) -> None:
    found, port = receiver
    server = await _traced_service(service_process, document, port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
        unsampled = f"00-{trace_id.hex()}-{span_id.hex()}-00"
        await stub.Query(  # a miss: every tier would have a span
            pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items WHERE qty > 1"),
            metadata=[("traceparent", unsampled)],
        )
        header, sampled, _ = _traceparent()
        await stub.Query(
            pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items WHERE qty > 2"),
            metadata=[("traceparent", header)],
        )
        # The sampled call came second: once its spans are in, the first's would be too.
        await _spans_until(found, sampled, lambda s: "db.query" in _names(s))
    assert found.of_trace(trace_id) == []


async def test_with_ratio_sampling_calls_without_a_caller_are_dropped_and_sampled_callers_kept(
    tmp_path: Path, document: dict[str, Any], receiver: tuple[Receiver, int], service_process: Any
) -> None:
    found, port = receiver
    server = await _traced_service(
        service_process,
        document,
        port,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        for n in range(20):
            await stub.Query(pb.QueryRequest(database="kitchen", sql=f"SELECT {n}"))
        header, trace_id, caller = _traceparent()
        await stub.Query(
            pb.QueryRequest(database="kitchen", sql="SELECT 99"), metadata=[("traceparent", header)]
        )
        spans = await _spans_until(
            found, trace_id, lambda s: _has_server_span(s) and "db.query" in _names(s)
        )
    [rpc] = [s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
    assert rpc.parent_span_id == caller
    assert {s.trace_id for s in found.spans} == {trace_id}
