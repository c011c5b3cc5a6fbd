"""The aio server interceptor that counts and times every gRPC call into ``Metrics``.

It records ``grpc_server_started_total``, ``grpc_server_handled_total`` (by
``grpc_code``), the message counters and the ``grpc_server_handling_seconds``
histogram under go-grpc-prometheus' names and labels (py-grpc-prometheus has
no grpc.aio support, hence this interceptor).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service.observe.metrics import Metrics


class GrpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times every unary and server-streaming call into ``metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, _, method = details.method[1:].rpartition("/")
        if handler.unary_unary is not None:
            labels = ("unary", service, method)
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, labels),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            labels = ("server_stream", service, method)
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, labels),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming methods are served

    def _unary(self, behavior: Any, labels: tuple[str, str, str]) -> Any:
        async def counted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = self._start(labels)
            try:
                response = await behavior(request, context)
            except BaseException:
                self._finish(labels, started, context, failed=True)
                raise
            self._m.sent.labels(*labels).inc()
            self._finish(labels, started, context, failed=False)
            return response

        return counted

    def _stream(self, behavior: Any, labels: tuple[str, str, str]) -> Any:
        async def counted(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = self._start(labels)
            sent = self._m.sent.labels(*labels)
            try:
                async for response in behavior(request, context):
                    sent.inc()
                    yield response
            except BaseException:
                self._finish(labels, started, context, failed=True)
                raise
            self._finish(labels, started, context, failed=False)

        return counted

    def _start(self, labels: tuple[str, str, str]) -> float:
        self._m.started.labels(*labels).inc()
        self._m.received.labels(*labels).inc()
        return time.perf_counter()

    def _finish(
        self,
        labels: tuple[str, str, str],
        started: float,
        context: grpc.aio.ServicerContext[Any, Any],
        failed: bool,
    ) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code is None:
            name = "UNKNOWN" if failed else "OK"
        else:
            name = code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code).name
        self._m.handled.labels(*labels, name).inc()
        self._m.handling.labels(*labels).observe(time.perf_counter() - started)
