"""The gRPC server's lifecycle: migrations, databases, services, graceful stop.

``DataAccessServer.start`` applies migrations (unless it is one worker of
several, whose supervisor applied them), opens every database and
serves DataAccess, the standard ``grpc.health.v1`` service and reflection;
``stop`` marks every service NOT_SERVING at once, lets in-flight calls
finish within the grace period, then commits queued writes and closes and
checkpoints the databases.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dataaccess.v1 import data_access_pb2 as pb
from service.access import DataAccess
from service.api.auth import Authenticator
from service.api.metrics_interceptor import GrpcMetrics
from service.api.registration import add_to_server
from service.api.responses import encode_read
from service.api.servicer import DataAccessServicer
from service.api.tls import CertificateError, CertificateFiles, Certificates
from service.api.tracing import server_interceptors
from service.cache.redis_tier import RedisSettings
from service.cache.tagged import CacheSettings, TagCache
from service.config import Config, TlsConfig
from service.db import build_databases, migrate
from service.observe.health import HealthChecker
from service.observe.metrics import Metrics
from service.observe.telemetry import Telemetry
from service.processes.seat import WorkerSeat
from service.routing.router import Router
from service.tasks import stop_task

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DataAccess"].full_name


class StartError(Exception):
    """The server cannot start; the message is one line."""


class DataAccessServer:
    """One running dataaccess server."""

    def __init__(
        self, config: Config, telemetry: Telemetry | None = None, seat: WorkerSeat | None = None
    ) -> None:
        self.config = config
        self.telemetry = telemetry or Telemetry.off()
        self.seat = seat  # set: one worker of several (service.processes)
        self.metrics = Metrics() if config.metrics_listen else None
        self.metrics_port = 0
        tracer = self.telemetry.tracer
        self.cache = TagCache(cache_settings(config), tracer, seat.marks if seat else None)
        databases = build_databases(
            config,
            self.cache.invalidate_committed,
            use_outbox=config.redis_url is not None,
            tracer=tracer,
        )
        self.router = Router(config, databases)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._server: grpc.aio.Server | None = None
        self._servicer: DataAccessServicer | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._warming: asyncio.Future[None] | None = None
        self.port = 0

    async def start(self) -> int:
        """Migrate, open the databases and start serving; the port bound."""
        if self.seat is None:  # a worker's supervisor migrated once, before forking
            await asyncio.to_thread(migrate, self.config)
        await self.router.open()
        self._hold_undelivered()
        await self.cache.start()
        config = self.config
        checker = HealthChecker(self.router, self.cache, config.health_deep_interval_seconds)
        server = self._grpc_server(checker)
        checker.archival = self.access.archiver
        try:
            self.port = self._bind(server)
        except (RuntimeError, OSError, CertificateError) as exc:
            await self.router.close()
            await self.cache.close()
            if isinstance(exc, CertificateError):
                raise StartError(str(exc)) from exc
            raise StartError(bind_failure(self.config.listen)) from exc
        # Before the first caller: a slice a stop left half-moved is finished, and warm
        # reads are hits.
        try:
            await self.access.archiver.recover()
            await self.access.warmer.load_all()
            await server.start()
        except Exception:
            # Nothing keeps the files or the archive claims: a start in this process again
            # (or another process) must be able to take them.
            await server.stop(0)
            await self.router.close()
            self.access.archiver.release()
            await self.cache.close()
            raise
        self._server = server
        self._warming = asyncio.ensure_future(self.access.warmer.run())
        self.access.archiver.start()
        if self.metrics is not None and config.metrics_listen:
            self.metrics.watch(self.router, self.cache, self.access.archiver)
            self.metrics_port = self._serve_metrics(self.metrics, config.metrics_listen)
        await self._set_serving(True)
        self._watcher = asyncio.ensure_future(
            checker.watch(self._set_serving, config.health_interval_seconds)
        )
        log.info("serving", extra=self._serving_fields())
        return self.port

    def _serve_metrics(self, metrics: Metrics, listen: str) -> int:
        """Serve ``/metrics``; the port, or 0 when ``listen`` is busy: the metrics are lost,
        never the server."""
        try:
            return metrics.serve(listen)
        except OSError as exc:
            log.warning("metrics: cannot bind %s (%s): serving without them", listen, exc)
            return 0

    def _grpc_server(self, checker: HealthChecker) -> grpc.aio.Server:
        """The gRPC server with DataAccess, the standard health service and reflection."""
        config = self.config
        interceptors = server_interceptors(self.telemetry)
        if self.metrics is not None:
            interceptors.insert(0, GrpcMetrics(self.metrics))
        server = grpc.aio.server(
            options=self._options(),
            interceptors=interceptors,
            # A backstop for every service; DataAccess calls are admitted by the servicer.
            maximum_concurrent_rpcs=4 * config.limits.max_concurrent_rpcs,
        )
        access = DataAccess(
            self.router,
            config.limits,
            self.cache,
            config.cache_ttl_seconds,
            encode_read,
            self.telemetry.tracer,
            self.metrics.observe_query if self.metrics is not None else None,
            config.cache.warm,
            config.archive_pause_after,
        )
        self.access = access
        auth = Authenticator(config.auth_tokens)
        self._servicer = DataAccessServicer(access, config.limits, checker, auth)
        add_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if not config.auth_tokens:  # with auth on, the API is not described to strangers
            reflection.enable_server_reflection(
                [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
            )
        return server

    def _serving_fields(self) -> dict[str, object]:
        """What the "serving" line says: where, what, and which cache tiers are on."""
        config = self.config
        metrics = None
        if config.metrics_listen and self.metrics_port:
            metrics = f"{config.metrics_listen.rpartition(':')[0]}:{self.metrics_port}"
        seat = {} if self.seat is None else {"worker": self.seat.index, "workers": self.seat.count}
        return {
            "listen": config.listen,
            "port": self.port,
            "pid": os.getpid(),
            **seat,
            "tls": config.tls is not None,
            "databases": [db.name for db in config.databases],
            "groups": {group.name: list(group.members) for group in config.groups},
            "l1": "on" if config.l1_max_entries > 0 and config.l1_max_bytes > 0 else "off",
            "redis": redis_target(config.redis_url) if config.redis_url else "off",
            "metrics": metrics or "off",
        }

    def _hold_undelivered(self) -> None:
        """Invalidations a previous run committed but may not have delivered: deliver first."""
        for database in self.router.databases.values():
            tags, delivered = database.undelivered()
            if tags:
                log.info("holding undelivered invalidations", extra={"database": database.name})
                self.cache.hold(tags, delivered)

    def _bind(self, server: grpc.aio.Server) -> int:
        """Listen in plaintext, or over TLS (mutual when a client CA is configured)."""
        tls = self.config.tls
        if tls is None:
            return server.add_insecure_port(self.config.listen)
        return server.add_secure_port(self.config.listen, reloading_credentials(tls))

    async def _set_serving(self, serving: bool) -> None:
        """The standard health status of the server and of DataAccess."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    def _options(self) -> list[tuple[str, int]]:
        size = self.config.limits.max_message_bytes
        age = self.config.max_connection_age_seconds
        # Clients connect again after this (calls in flight get the grace to finish), so a
        # long-lived client spreads over replicas started since it connected.
        aged = (
            []
            if age is None
            else [
                ("grpc.max_connection_age_ms", int(age * 1000)),
                (
                    "grpc.max_connection_age_grace_ms",
                    int(self.config.shutdown_grace_seconds * 1000),
                ),
            ]
        )
        return aged + [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            # grpc turns SO_REUSEPORT on by default: a second server (or a stale
            # one) would bind the same address and silently take half the calls.
            ("grpc.so_reuseport", int(self.config.listen_reuse_port)),
            # Keepalive enforcement: ping connections every 60 s and drop those
            # that do not answer in 20 s; a client pinging more often than every
            # 10 s during calls is cut off after two strikes.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 2),
        ]

    async def stop(self, grace: float | None = None, cause: str = "stop") -> None:
        """Refuse new calls, let in-flight ones finish, then close the databases."""
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        in_flight = self._servicer.calls_in_flight if self._servicer is not None else 0
        log.info(
            "stopping",
            extra={"cause": cause, "calls_in_flight": in_flight, "grace_seconds": grace},
        )
        if self._watcher is not None:
            await stop_task(self._watcher)  # its Redis PING may swallow one cancel
            self._watcher = None
        if self._warming is not None:
            await stop_task(self._warming)
            self._warming = None
        if self._servicer is not None:
            await self.access.archiver.stop()
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.router.close()
        if self._servicer is not None:
            self.access.archiver.release()
        await self.cache.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)  # waits out the HTTP server's poll
        log.info("stopped")


def reloading_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS (mutual with a client CA) whose certificates follow their files on each handshake."""
    files = CertificateFiles(tls)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # On gRPC's own threads, once per handshake: see service/api/tls.py.
        fresh = files.changed()
        return None if fresh is None else _certificate_configuration(fresh)

    return grpc.dynamic_ssl_server_credentials(
        _certificate_configuration(files.current),
        fetch,  # type: ignore[arg-type]  # None is "unchanged" (grpc's docs; not its stubs)
        require_client_authentication=tls.client_ca_file is not None,
    )


def _certificate_configuration(c: Certificates) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(c.key, c.chain)], c.client_ca)


def redis_target(url: str) -> str:
    """``url`` without its user name and password, fit for a log line."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.netloc.rpartition("@")[2]  # what follows user:password@
    return f"{parts.scheme}://{host}{parts.path}"


def bind_failure(listen: str) -> str:
    """Why ``listen`` could not be bound, in one line (grpc says only "Failed to bind")."""
    host, _, port = listen.rpartition(":")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (
                f"listen: cannot bind {listen}: address already in use (is another server "
                "running there? several servers share it only with listen_reuse_port: true)"
            )
        return f"listen: cannot bind {listen}: {exc.strerror or exc}"
    except ValueError as exc:
        return f"listen: cannot bind {listen}: {exc}"
    return f"listen: cannot bind {listen}"


def cache_settings(config: Config) -> CacheSettings:
    """The cache's settings drawn from the Config."""
    c = config.cache
    redis = None
    if config.redis_url is not None:
        redis = RedisSettings(
            url=config.redis_url,
            key_prefix=c.redis_key_prefix,
            socket_timeout=c.redis_socket_timeout_seconds,
            connect_timeout=c.redis_connect_timeout_seconds,
            health_check_interval=c.redis_health_check_interval_seconds,
            token_ttl=c.token_ttl_seconds,
            lease_ttl=c.lease_seconds,
            max_connections=c.redis_max_connections,
        )
    return CacheSettings(
        l1_max_entries=config.l1_max_entries,
        l1_max_bytes=config.l1_max_bytes,
        l1_validation_window=c.l1_validation_window_seconds,
        redis=redis,
        breaker_failures=c.breaker_failures,
        breaker_reset=c.breaker_reset_seconds,
    )


async def serve(
    config: Config,
    stop: asyncio.Future[str],
    telemetry: Telemetry | None = None,
    seat: WorkerSeat | None = None,
) -> None:
    """Serve until ``stop`` resolves (to why, e.g. "SIGTERM"), then stop gracefully.

    The grace left for calls in flight is what the span flush does not take.
    """
    server = DataAccessServer(config, telemetry, seat)
    await server.start()
    # Everything built so far lives as long as the process: keep it out of the
    # collector's way, so a full collection walks only what requests made
    # (measured: BatchInsert +30% once the imports had grown the heap).
    gc.freeze()
    grace = config.shutdown_grace_seconds
    cause = "cancelled"
    try:
        cause = await stop
    finally:
        await server.stop(grace - server.telemetry.flush_seconds(grace), cause)
