"""The aio server interceptor that makes each gRPC call's server span, from ``Telemetry``."""

from __future__ import annotations

from typing import Any

import grpc

from service.observe.telemetry import Telemetry


def server_interceptors(telemetry: Telemetry) -> list[Any]:
    """The interceptor that makes each call's server span (none when not exporting)."""
    if telemetry.provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    excluded = frozenset(telemetry.excluded_services)

    def traced(details: grpc.HandlerCallDetails) -> bool:
        # The instrumentation's own filters re-parse the method name several
        # times per call; this is one slice and a set lookup.
        method: str = details.method
        return method[1 : method.rfind("/")] not in excluded

    return [aio_server_interceptor(tracer_provider=telemetry.provider, filter_=traced)]  # type: ignore[no-untyped-call]
