"""Answers onto the wire: domain results -> proto messages.

A Query's answer is kept by the cache already encoded and without its cache
status; the status is appended as a second encoded message, whose fields
merge into the first.
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from dataaccess.v1 import data_access_pb2 as pb
from service.api.codec import add_rows, to_value
from service.domain import CacheStatus, ReadResult
from service.observe.health import HealthReport
from service.observe.statements import SlowStatement
from service.observe.stats_report import StatsReport

_CACHE_STATUS = {
    CacheStatus.MISS: pb.CACHE_STATUS_MISS,
    CacheStatus.HIT_LOCAL: pb.CACHE_STATUS_HIT_LOCAL,
    CacheStatus.HIT_REDIS: pb.CACHE_STATUS_HIT_REDIS,
    CacheStatus.STALE: pb.CACHE_STATUS_STALE,
    CacheStatus.BYPASS: pb.CACHE_STATUS_BYPASS,
}
STATUS_SUFFIX = {
    name: pb.QueryResponse(cache_status=status).SerializeToString()
    for name, status in _CACHE_STATUS.items()
}
_ADVISORY = {
    "n_plus_one": pb.ADVISORY_KIND_N_PLUS_ONE,
    "full_scan": pb.ADVISORY_KIND_FULL_SCAN,
}
_HEALTH = {
    "healthy": pb.HEALTH_STATUS_HEALTHY,
    "degraded": pb.HEALTH_STATUS_DEGRADED,
    "critical": pb.HEALTH_STATUS_CRITICAL,
}


def encode_read(result: ReadResult) -> bytes:
    """A Query's answer without its cache status, as the cache keeps it."""
    return query_response(result, with_status=False).SerializeToString()


def query_response(result: ReadResult, with_status: bool = True) -> pb.QueryResponse:
    response = pb.QueryResponse(
        columns=[pb.Column(name=name, decl_type=decl) for name, decl in result.columns],
        cache_status=(
            _CACHE_STATUS[result.cache_status] if with_status else pb.CACHE_STATUS_UNSPECIFIED
        ),
        databases=result.databases,
        tags=result.tags,
        truncated=result.truncated,
    )
    add_rows(response.rows, result.rows)
    return response


def health_response(report: HealthReport) -> pb.HealthResponse:
    """A Health answer."""
    return pb.HealthResponse(
        status=_HEALTH[report.status],
        score=report.score,
        checks=[
            pb.HealthCheck(
                name=c.name,
                status=_HEALTH[c.status],
                message=c.message,
                duration_ms=c.duration_ms,
            )
            for c in report.checks
        ],
    )


def stats_response(report: StatsReport) -> pb.StatsResponse:
    """A Stats answer."""
    return pb.StatsResponse(
        cache=[
            pb.CacheTierStats(
                tier=t.tier,
                hits=t.hits,
                misses=t.misses,
                evictions=t.evictions,
                entries=t.entries,
                bytes=t.bytes,
                bypasses=t.bypasses,
                state=t.state,
                loads=report.loads,
                keyed_loads=report.keyed_loads,
                table_tagged_loads=report.table_tagged_loads,
                hit_rate=t.hits / (t.hits + t.misses) if t.hits + t.misses else 0.0,
            )
            for t in report.cache
        ],
        pools=[pb.PoolStats(**vars(pool)) for pool in report.pools],
        writes=[pb.WriteStats(**vars(write)) for write in report.writes],
        warm=[
            pb.WarmStats(
                name=w.name,
                database=w.database,
                loads=w.loads,
                last_refresh_unix_seconds=w.last_refresh,
                last_error=w.last_error,
            )
            for w in report.warm
        ],
        archive=[
            pb.ArchiveStats(
                group=a.group,
                table=a.table,
                source=a.source,
                target=a.target,
                boundary=to_value(a.boundary),
                moving_below=to_value(a.moving_below),
                cutoff=to_value(a.cutoff),
                passes=a.passes,
                slices=a.slices,
                rows_moved=a.rows_moved,
                rows_kept=a.rows_kept,
                last_pass_unix_seconds=a.last_pass,
                last_error=a.last_error,
                date_column=a.date_column,
                age_days=a.age_days,
            )
            for a in report.archive
        ],
        statements=[pb.StatementStats(**vars(s)) for s in report.statements],
        slow_queries=[_slow_query(s) for s in report.slowest],
        advisories=[
            pb.Advisory(
                kind=_ADVISORY[a.kind],
                database=a.database,
                fingerprint=a.fingerprint,
                message=a.message,
                suggested_index=a.suggested_index,
            )
            for a in report.advisories
        ],
    )


def _slow_query(slow: SlowStatement) -> pb.SlowQuery:
    finished = timestamp_pb2.Timestamp()
    finished.FromNanoseconds(int(slow.finished_at * 1e9))
    return pb.SlowQuery(
        database=slow.database,
        fingerprint=slow.fingerprint,
        duration_ms=slow.duration_ms,
        rows=slow.rows,
        finished_at=finished,
    )
