"""OpenTelemetry set up from its own ``OTEL_*`` variables, and the spans of each tier.

Spans go to the exporters ``OTEL_TRACES_EXPORTER`` names (a comma list,
``otlp`` by default, ``none`` for none), each found as the SDK finds it: an
``opentelemetry_traces_exporter`` entry point (``console`` ships with the
SDK, ``otlp``/``otlp_proto_grpc`` with the OTLP package: what Jaeger
ingests). Left at its default, ``otlp`` exports only when an endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
so a laptop without a collector logs no connection errors. Spans go in
batches, with the service name, resource attributes and sampler the
standard variables give.
The server span of every call comes from the service's own aio interceptor
(``service.api.tracing``, which decides sampling first) and continues the
caller's W3C ``traceparent``; inside an unsampled call no tier makes a span
(``TierTracer``); the health service and anything in
``OTEL_PYTHON_GRPC_EXCLUDED_SERVICES`` are left out. Redis calls are traced
by the redis instrumentation. SQLite has none that sees aiosqlite's threads,
so the database spans are made here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from service.config import ConfigError

log = logging.getLogger(__name__)
DEFAULT_EXCLUDED = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
DB_SYSTEM = "sqlite"
# At most this long (and a quarter of the grace) goes to exporting buffered spans
# at exit: with no collector, each export retries for OTEL_EXPORTER_OTLP_TIMEOUT
# (10 s) and the SDK's own flush is unbounded, past Kubernetes' 30 s grace.
FLUSH_SECONDS = 3.0
EXPORTERS_VARIABLE = "OTEL_TRACES_EXPORTER"
ENTRY_POINT_GROUP = "opentelemetry_traces_exporter"
# `otlp` is registered by the umbrella opentelemetry-exporter-otlp package as the gRPC
# exporter; with only the gRPC package installed (as here) the name means the same.
ALIASES = {"otlp": "otlp_proto_grpc"}


@dataclass
class Telemetry:
    """The tracer every tier uses, and the provider to flush at exit (None: not exporting)."""

    tracer: trace.Tracer
    provider: TracerProvider | None = None
    excluded_services: tuple[str, ...] = DEFAULT_EXCLUDED
    exporters: Sequence[SpanExporter] = ()

    @classmethod
    def off(cls) -> Telemetry:
        """No tracing: spans cost next to nothing and go nowhere."""
        return cls(SilentTracer())

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Telemetry:
        """Export to the exporters ``environ`` names, else ``off()``; ConfigError if unknown."""
        chosen = trace_exporters(environ)
        if not chosen:
            return cls.off()
        # The SDK reads its own variables (sampler, resource, exporter endpoint,
        # headers, timeouts, batch sizes) from the process environment.
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        resource = _HashedResource(
            Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "dataaccess")})
        )
        # Flushed by shutdown() within its bound, not by the SDK's unbounded atexit hook.
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        exporters = [entry.load()() for entry in chosen]
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        RedisInstrumentor().instrument(tracer_provider=provider)
        excluded = environ.get("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES")
        services = tuple(s.strip() for s in excluded.split(",") if s.strip()) if excluded else ()
        log.info("exporting traces", extra={"exporters": [entry.name for entry in chosen]})
        tracer = TierTracer(provider.get_tracer("dataaccess"))
        return cls(tracer, provider, DEFAULT_EXCLUDED + services, tuple(exporters))

    def flush_seconds(self, grace: float) -> float:
        """How much of a ``grace``-second shutdown goes to exporting buffered spans."""
        return 0.0 if self.provider is None else min(FLUSH_SECONDS, grace / 4)

    def shutdown(self, timeout: float = FLUSH_SECONDS) -> None:
        """Export what is buffered within ``timeout`` seconds, drop the rest, stop."""
        provider, self.provider = self.provider, None
        if provider is None:
            return
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().uninstrument()
        flush = threading.Thread(target=provider.shutdown, name="span-flush", daemon=True)
        flush.start()
        flush.join(timeout)
        if flush.is_alive() and self.exporters:
            log.warning("spans not exported within %.1f s (no collector?): dropped", timeout)
            # Ends the export's retry wait and its call in flight; the rest are refused.
            for exporter in self.exporters:
                exporter.shutdown()
            flush.join(1.0)


def trace_exporters(environ: Mapping[str, str]) -> list[EntryPoint]:
    """The exporters' entry points ``environ`` asks for; ConfigError naming an unknown one.

    None when ``OTEL_SDK_DISABLED=true``, when ``none`` is among the names, and
    for the default ``otlp`` when no OTLP endpoint is set.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    given = environ.get(EXPORTERS_VARIABLE, "").strip()
    names = [name.strip() for name in (given or "otlp").split(",") if name.strip()]
    if "none" in names:
        return []
    installed = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
    for alias, name in ALIASES.items():
        if alias not in installed and name in installed:
            installed[alias] = installed[name]
    unknown = [name for name in names if name not in installed]
    if unknown:
        raise ConfigError(
            f"{EXPORTERS_VARIABLE}: unknown exporter {unknown[0]!r} "
            f"(installed: {', '.join(sorted([*installed, 'none']))})"
        )
    if not given and not _otlp_endpoint(environ):
        return []  # the default, with nowhere to send to
    return [installed[name] for name in dict.fromkeys(names)]


def _otlp_endpoint(environ: Mapping[str, str]) -> str | None:
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


class TierTracer(trace.Tracer):
    """The tiers' tracer: inside a call whose server span was not sampled it makes no span.

    The SDK would ask the sampler again for each tier's span and hand back a
    non-recording one; with 5% sampling that was most of tracing's cost on a
    cached read. Outside any call (no current span) the sampler decides, as usual.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> trace.Span:
        current = _unsampled_call() if context is None else None
        if current is not None:
            return current
        return self._tracer.start_span(name, context, *args, **kwargs)

    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: Any = None, *args: Any, **kwargs: Any
    ) -> AbstractContextManager[trace.Span]:
        current = _unsampled_call() if context is None else None
        if current is not None:
            return nullcontext(current)
        return self._tracer.start_as_current_span(name, context, *args, **kwargs)


def _unsampled_call() -> trace.Span | None:
    """The current span when it belongs to a trace that is not being recorded."""
    span = trace.get_current_span()
    if span.is_recording() or not span.get_span_context().is_valid:
        return None
    return span


class _HashedResource(Resource):
    """A Resource that hashes once: the OTLP encoder groups spans by resource, and the SDK's
    hash is a JSON dump of every attribute, taken for each span exported."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return other is self or super().__eq__(other)


class SilentTracer(trace.NoOpTracer):
    """The tracer when not exporting: no span, and no context attached either.

    OpenTelemetry's no-op tracer still attaches and detaches a context around
    each span it does not make; on an uncached read that was three times.
    """

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return trace.INVALID_SPAN

    def start_as_current_span(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> AbstractContextManager[trace.Span]:
        return _SILENT


_SILENT = nullcontext(trace.INVALID_SPAN)
