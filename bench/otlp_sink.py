"""``python -m bench.otlp_sink PORT``: an OTLP/gRPC trace receiver that accepts and drops spans.

Stands in for Jaeger's collector on loopback, so tracing's cost in the
service includes real export over the network.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts the spans it is sent."""

    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans += len(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(port: int) -> None:
    """Receive on ``port`` until SIGTERM; print how many spans came."""
    server = grpc.aio.server()
    sink = Sink()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)
    print(sink.spans, file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
