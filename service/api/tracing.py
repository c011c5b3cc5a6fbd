"""The aio server interceptor that makes each gRPC call's server span, and nothing more.

OpenTelemetry's own aio interceptor cost about a third of a cached call's CPU
even for calls it did not sample: it rebuilt the method handler, wrapped the
servicer context, and parsed the metadata and the peer on every call. This
one wraps each method's handler once and keeps it; per call it reads the
caller's trace context (only when the metadata carries one of the
propagator's fields), lets the sampler decide, and only for a sampled call
fills in the attributes. The span follows the RPC semantic conventions:
named ``/package.Service/Method``, kind SERVER, ``rpc.system``,
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``, the peer's
``network.peer.address``/``network.peer.port``, and status ERROR only for the
codes that are server faults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import unquote

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context as TraceContext
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from service.observe.telemetry import Telemetry

Metadata = Sequence[tuple[str, str | bytes]]
if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
ServicerContext = grpc.aio.ServicerContext[Any, Any]
# By the RPC conventions a server span is an error only for these: the others are the caller's.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_OK = grpc.StatusCode.OK.value[0]


class _MetadataGetter(Getter[Metadata]):
    """Reads a propagator's fields from gRPC invocation metadata."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [v if isinstance(v, str) else v.decode() for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


def server_interceptors(telemetry: Telemetry) -> list[Any]:
    """The interceptor that makes each call's server span (none when not exporting)."""
    if telemetry.provider is None:
        return []
    tracer = telemetry.provider.get_tracer("dataaccess.grpc")
    return [ServerSpans(tracer, frozenset(telemetry.excluded_services))]


class ServerSpans(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps each traced method's handler once; each call through it gets a server span."""

    def __init__(self, tracer: trace.Tracer, excluded_services: frozenset[str]) -> None:
        self._tracer = tracer
        self._excluded = excluded_services
        # method -> (the handler as registered, the same handler traced)
        self._traced: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(  # type: ignore[override]
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return None
        method: str = details.method
        known = self._traced.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        traced = self._wrap(method, handler)
        self._traced[method] = (handler, traced)
        return traced

    def _wrap(self, method: str, handler: Handler) -> Handler:
        service, _, name = method[1:].rpartition("/")
        if service in self._excluded:
            return handler
        span = _SpanStarter(self._tracer, method, service, name)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(span, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _stream(span, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming methods are served


class _SpanStarter:
    """Starts one method's server spans: sampling first, attributes only when sampled."""

    def __init__(self, tracer: trace.Tracer, method: str, service: str, name: str) -> None:
        self._tracer = tracer
        self._name = method
        self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        self._fields = frozenset(propagate.get_global_textmap().fields)

    def start(self, context: ServicerContext) -> Span:
        span = self._tracer.start_span(
            self._name,
            self._parent(context.invocation_metadata()),
            kind=SpanKind.SERVER,
            attributes=self._attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        if span.is_recording():
            _set_peer(span, context.peer())
        return span

    def _parent(self, metadata: Any) -> TraceContext | None:
        for key, _ in metadata or ():
            if key in self._fields:
                return propagate.extract(metadata, getter=_GETTER)
        return None


def _unary(span_of: _SpanStarter, behavior: Any) -> Any:
    async def traced(request: Any, context: ServicerContext) -> Any:
        span = span_of.start(context)
        # Attached by hand: trace.use_span is a generator context manager, a few
        # microseconds a call that unsampled calls (most of them) would pay too.
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await behavior(request, context)
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            _set_code(span, context)
            otel_context.detach(token)
            span.end()

    return traced


def _stream(span_of: _SpanStarter, behavior: Any) -> Any:
    async def traced(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
        span = span_of.start(context)
        with trace.use_span(span, end_on_exit=True, record_exception=False):
            try:
                async for answer in behavior(request, context):
                    yield answer
            except BaseException as exc:
                _failed(span, exc)
                raise
            finally:
                _set_code(span, context)

    return traced


def _failed(span: Span, exc: BaseException) -> None:
    """An abort is a status (set by ``_set_code``); anything else escaping is recorded."""
    if span.is_recording() and not isinstance(exc, grpc.aio.AbortError):
        span.record_exception(exc)


def _set_code(span: Span, context: ServicerContext) -> None:
    if not span.is_recording():
        return
    code = context.code()
    if code is None:
        span.set_attribute("rpc.grpc.status_code", _OK)
        return
    status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code)
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    if status in SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, f"{status.name}: {context.details() or ''}"))


def _set_peer(span: Span, peer: str) -> None:
    """``ipv4:10.0.0.1:5000`` / ``ipv6:[::1]:5000`` -> network.peer.address and .port."""
    if not peer.startswith(("ipv4:", "ipv6:")):
        return
    address, _, port = peer.split(",", 1)[0].split(":", 1)[1].rpartition(":")
    span.set_attribute("network.peer.address", unquote(address).strip("[]"))
    if port.isdigit():
        span.set_attribute("network.peer.port", int(port))


def note_on_span(name: str, value: str) -> None:
    """Set an attribute on the call's server span, if it is being recorded."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(name, value)
