"""Trace propagation for the client's channels, when OpenTelemetry's gRPC instrumentation is there.

With ``pip install 'dataaccess-client[otel]'`` every call carries the
caller's current span as a W3C ``traceparent``, so the service's spans
continue the caller's trace; without it the channels are left as they are.
"""

from __future__ import annotations

from typing import Any

import grpc


def aio_interceptors() -> list[Any]:
    """Client interceptors for a grpc.aio channel (none without the instrumentation)."""
    try:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors
    except ImportError:
        return []
    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


def traced(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with a tracing interceptor (itself without the instrumentation)."""
    try:
        from opentelemetry.instrumentation.grpc import client_interceptor
        from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
    except ImportError:
        return channel
    interceptor = client_interceptor()  # type: ignore[no-untyped-call]
    traced_channel: grpc.Channel = intercept_channel(channel, interceptor)  # type: ignore[no-untyped-call]
    return traced_channel
