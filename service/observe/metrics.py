"""Prometheus metrics on their own port: gRPC calls under go-grpc-prometheus' names,
query latency, and the cache, pool and write-queue figures at scrape time.

- ``grpc_server_started_total``, ``grpc_server_handled_total`` (with
  ``grpc_code``), ``grpc_server_msg_received_total``,
  ``grpc_server_msg_sent_total`` and the ``grpc_server_handling_seconds``
  histogram, labelled ``grpc_type``, ``grpc_service``, ``grpc_method`` as
  go-grpc-prometheus labels them, recorded by the api tier's interceptor
  (``service.api.metrics_interceptor``);
- ``dataaccess_query_duration_seconds`` by database;
- read at scrape time, so the hot path pays nothing:
  ``dataaccess_cache_hits_total``, ``..._misses_total``,
  ``..._bypasses_total``, ``..._evictions_total``, ``dataaccess_cache_entries``,
  ``dataaccess_cache_bytes`` by tier; ``dataaccess_pool_connections``,
  ``..._in_use``, ``..._waiters``, ``dataaccess_pool_timeouts_total`` by
  database; ``dataaccess_write_queue_depth`` and
  ``dataaccess_write_transactions_total`` by database;
  ``dataaccess_maintenance_runs_total`` by database, task and result, and
  ``dataaccess_maintenance_last_run_timestamp_seconds`` by database and task;
  ``dataaccess_redis_breaker_open`` (1 while the Redis breaker is open or
  invalidations are held, so reads bypass Redis; only with Redis); and
  ``dataaccess_replication_lag_seconds`` by PostgreSQL database, as its
  last health probe found it; with archive rules,
  ``dataaccess_archive_rows_moved_total``, ``dataaccess_archive_pass_failing``
  and ``dataaccess_archive_last_pass_timestamp_seconds`` by group and table.

Counters follow Stats: a Stats ``reset`` restarts them, which Prometheus
reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.cache.tagged import TagCache
from service.routing.archival import ArchiveFigures, Archiver
from service.routing.router import Router

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The service's registry and the instruments the data path records into."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        counter = _counter(self.registry)
        self.started = counter("grpc_server_started_total", "RPCs started.", labels)
        self.handled = counter(
            "grpc_server_handled_total", "RPCs completed, by code.", [*labels, "grpc_code"]
        )
        self.received = counter("grpc_server_msg_received_total", "Messages received.", labels)
        self.sent = counter("grpc_server_msg_sent_total", "Messages sent.", labels)
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "dataaccess_query_duration_seconds",
            "Time SQLite took to run a read, by database.",
            ["database"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._server: Any = None

    def observe_query(self, database: str, seconds: float) -> None:
        """Count one read a database ran, and how long it took."""
        self.query_seconds.labels(database).observe(seconds)

    def watch(self, router: Router, cache: TagCache, archiver: Archiver | None = None) -> None:
        """Report the cache, pool, write-queue and archival figures."""
        self.registry.register(_StateCollector(router, cache, archiver))

    def serve(self, listen: str) -> int:
        """Serve ``/metrics`` over HTTP on ``listen`` (host:port); the port bound."""
        host, _, port = listen.rpartition(":")
        self._server, _thread = start_http_server(int(port), host or "0.0.0.0", self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _counter(registry: CollectorRegistry) -> Callable[[str, str, list[str]], Any]:
    from prometheus_client import Counter

    def make(name: str, doc: str, labels: list[str]) -> Any:
        return Counter(name.removesuffix("_total"), doc, labels, registry=registry)

    return make


class _StateCollector(Collector):
    """The cache, pool and write figures, read when Prometheus scrapes."""

    def __init__(self, router: Router, cache: TagCache, archiver: Archiver | None) -> None:
        self._router = router
        self._cache = cache
        self._archiver = archiver

    def collect(self) -> Iterator[Any]:
        yield from self._cache_families()
        yield from self._pool_families()
        yield from self._maintenance_families()
        yield from self._redis_families()
        rules = self._archiver.figures() if self._archiver is not None else []
        if rules:
            yield from _archive_families(rules)

    def _redis_families(self) -> Iterator[Any]:
        for tier in self._cache.tiers():
            if tier.tier == "l2":
                open_ = GaugeMetricFamily(
                    "dataaccess_redis_breaker_open",
                    "1 while reads bypass Redis: its breaker is open or invalidations are held.",
                    value=0 if tier.state == "closed" else 1,
                )
                yield open_

    def _cache_families(self) -> Iterator[Any]:
        tiers = {tier.tier: tier for tier in self._cache.tiers()}
        for kind, name, doc in (
            (CounterMetricFamily, "hits", "Cache lookups answered."),
            (CounterMetricFamily, "misses", "Cache lookups not answered."),
            (CounterMetricFamily, "bypasses", "Reads that skipped the tier."),
            (CounterMetricFamily, "evictions", "Entries dropped for space."),
            (GaugeMetricFamily, "entries", "Entries held."),
            (GaugeMetricFamily, "bytes", "Bytes held."),
        ):
            yield _family(kind, f"dataaccess_cache_{name}", doc, "tier", tiers, name)

    def _pool_families(self) -> Iterator[Any]:
        databases = [d for d in self._router.databases.values() if d.failure is None]
        figures = {d.name: d.figures() for d in databases}
        snapshots = {name: f.pool for name, f in figures.items()}
        for name, doc, attr in (
            ("connections", "Reader connections.", "size"),
            ("in_use", "Reader connections lent out.", "in_use"),
            ("waiters", "Calls waiting for a reader.", "waiters"),
        ):
            yield _family(
                GaugeMetricFamily, f"dataaccess_pool_{name}", doc, "database", snapshots, attr
            )
        timeouts = CounterMetricFamily(
            "dataaccess_pool_timeouts", "Reader acquires that timed out.", labels=["database"]
        )
        depth = GaugeMetricFamily(
            "dataaccess_write_queue_depth", "Write calls queued.", labels=["database"]
        )
        transactions = CounterMetricFamily(
            "dataaccess_write_transactions", "Write transactions committed.", labels=["database"]
        )
        lag = GaugeMetricFamily(
            "dataaccess_replication_lag_seconds",
            "Replay lag of the database's standbys at its last health probe (PostgreSQL).",
            labels=["database"],
        )
        for name, figure in figures.items():
            timeouts.add_metric([name], figure.pool.timeouts)
            depth.add_metric([name], figure.write_queue)
            transactions.add_metric([name], figure.writes.transactions)
            if figure.replication_lag_seconds is not None:
                lag.add_metric([name], figure.replication_lag_seconds)
        yield from (timeouts, depth, transactions, lag)

    def _maintenance_families(self) -> Iterator[Any]:
        runs = CounterMetricFamily(
            "dataaccess_maintenance_runs",
            "Scheduled maintenance runs, by task and result.",
            labels=["database", "task", "result"],
        )
        last = GaugeMetricFamily(
            "dataaccess_maintenance_last_run_timestamp_seconds",
            "When a maintenance task last ran (Unix time).",
            labels=["database", "task"],
        )
        for database in self._router.databases.values():
            if database.failure is not None:
                continue
            for task in database.figures().maintenance:
                for result, count in sorted(task.runs.items()):
                    runs.add_metric([database.name, task.task, result], count)
                if task.last_run:
                    last.add_metric([database.name, task.task], task.last_run)
        yield from (runs, last)


def _archive_families(rules: list[ArchiveFigures]) -> Iterator[Any]:
    labels = ["group", "table"]
    moved = CounterMetricFamily(
        "dataaccess_archive_rows_moved", "Rows archival moved to the archive member.", labels=labels
    )
    failing = GaugeMetricFamily(
        "dataaccess_archive_pass_failing",
        "1 while the archive rule's last pass stopped on an error.",
        labels=labels,
    )
    last = GaugeMetricFamily(
        "dataaccess_archive_last_pass_timestamp_seconds",
        "When the archive rule's last pass ended without error (Unix time).",
        labels=labels,
    )
    for figures in rules:
        names = [figures.group, figures.table]
        moved.add_metric(names, figures.rows_moved)
        failing.add_metric(names, 1 if figures.last_error else 0)
        if figures.last_pass:
            last.add_metric(names, figures.last_pass)
    yield from (moved, failing, last)


def _family(kind: Any, name: str, doc: str, label: str, sources: dict[str, Any], attr: str) -> Any:
    """A metric family with one sample per source, its ``attr`` labelled by the source's name."""
    family = kind(name, doc, labels=[label])
    for source_name, source in sources.items():
        family.add_metric([source_name], getattr(source, attr))
    return family
