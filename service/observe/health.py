"""Health: what every database and Redis look like now, and the standard health status.

Each database gets checks of its own, each with a status, a message and a
duration: its file (present, and readable by SQLite), a timed probe query
on a reader, ``foreign_keys`` on, WAL mode, the indexes its migrations
create, the free disk space beside it, the last run of each scheduled
maintenance task, and, when asked deeply, ``PRAGMA quick_check`` and ``PRAGMA
foreign_key_check`` (orphaned rows degrade). Redis, when configured:
reachability and latency. Each archive rule: its boundary, or why its last
pass stopped (DEGRADED).

A database is as healthy as its worst check. The service is CRITICAL when no
database can serve, DEGRADED when anything is short of healthy (a broken
database answers DATA_LOSS alone while the others serve), else HEALTHY; the
score is the share of healthy checks. A watcher repeats the shallow checks
and sets the standard ``grpc.health.v1`` status (NOT_SERVING when
CRITICAL), so Kubernetes probes see the truth. Deep checks are rate-limited:
a deep report is reused for ``deep_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from service.cache.tagged import TagCache
from service.db.door import Database, Finding
from service.routing.archival import Archiver
from service.routing.router import Router

log = logging.getLogger(__name__)
HEALTHY, DEGRADED, CRITICAL = "healthy", "degraded", "critical"
_RANK = {HEALTHY: 0, DEGRADED: 1, CRITICAL: 2}


@dataclass(frozen=True)
class Check:
    """One health check's outcome."""

    name: str
    status: str
    message: str
    duration_ms: float


@dataclass(frozen=True)
class HealthReport:
    """The service's health: its checks, the overall status and a score."""

    status: str
    score: float
    checks: Sequence[Check] = field(default_factory=list)


class HealthChecker:
    """Runs the checks, rate-limits the deep ones, and keeps the standard status in step."""

    def __init__(self, router: Router, cache: TagCache, deep_interval: float = 10.0) -> None:
        self._router = router
        self._cache = cache
        self._deep_interval = deep_interval
        self._deep: tuple[float, HealthReport] | None = None
        self._deep_lock = asyncio.Lock()
        self.archival: Archiver | None = None  # set once the server built it

    async def report(self, deep: bool = False) -> HealthReport:
        """Every check now (the deep report is reused within ``deep_interval``)."""
        if not deep:
            return await self._run(deep=False)
        async with self._deep_lock:
            now = time.monotonic()
            if self._deep is not None and now - self._deep[0] < self._deep_interval:
                return self._deep[1]
            report = await self._run(deep=True)
            self._deep = (time.monotonic(), report)
            return report

    async def watch(self, set_serving: Callable[[bool], Awaitable[None]], every: float) -> None:
        """Repeat the shallow checks and report whether to serve, until cancelled."""
        serving: bool | None = None
        while True:
            report = await self.report()
            now_serving = report.status != CRITICAL
            if now_serving != serving:
                if not now_serving:
                    log.error("health is critical: NOT_SERVING", extra={"checks": report.checks})
                await set_serving(now_serving)
                serving = now_serving
            await asyncio.sleep(every)

    async def _run(self, deep: bool) -> HealthReport:
        databases = list(self._router.databases.values())
        per_database = await asyncio.gather(*(self._database(db, deep) for db in databases))
        checks = [check for group in per_database for check in group]
        redis = await self._redis()
        if redis is not None:
            checks.append(redis)
        if self.archival is not None:
            checks += [Check(n, s.value, m, 0.0) for n, s, m in self.archival.findings()]
        worst = [max((_RANK[c.status] for c in group), default=0) for group in per_database]
        if worst and all(rank == _RANK[CRITICAL] for rank in worst):
            status = CRITICAL
        elif any(c.status != HEALTHY for c in checks):
            status = DEGRADED
        else:
            status = HEALTHY
        healthy = sum(c.status == HEALTHY for c in checks)
        return HealthReport(status, healthy / len(checks) if checks else 0.0, checks)

    async def _database(self, database: Database, deep: bool) -> list[Check]:
        name = f"database:{database.name}"
        if database.failure is not None:
            return [Check(name, CRITICAL, database.failure.message, 0.0)]
        return [_check(name, finding) for finding in await database.probe(deep)]

    async def _redis(self) -> Check | None:
        """Redis's check, or None when there is no Redis tier."""
        found = await self._cache.probe()
        if found is None:
            return None
        if not found.reachable:
            return Check("redis", DEGRADED, found.message, 0.0)
        status = HEALTHY if found.breaker == "closed" else DEGRADED
        return Check("redis", status, found.message, found.duration_ms)


def _check(name: str, finding: Finding) -> Check:
    """A database probe's finding as a health check named after its database."""
    check = f"{name}:{finding.aspect}" if finding.aspect else name
    return Check(check, finding.severity.value, finding.message, finding.duration_ms)
