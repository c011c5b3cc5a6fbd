"""Health: what every database and Redis look like now, and the standard health status.

Each database gets checks of its own, each with a status, a message and a
duration: its file (present, and readable by SQLite), a timed probe query
on a reader, ``foreign_keys`` on, WAL mode, the indexes its migrations
create, the free disk space beside it, and, when asked deeply, ``PRAGMA
quick_check``. Redis, when configured: reachability and latency.

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
import re
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from service import errors
from service.cache.redis_tier import RedisUnavailable
from service.cache.tagged import TagCache
from service.db.sqlite.database import Database
from service.routing.router import Router

log = logging.getLogger(__name__)
HEALTHY, DEGRADED, CRITICAL = "healthy", "degraded", "critical"
_RANK = {HEALTHY: 0, DEGRADED: 1, CRITICAL: 2}
_INDEX = re.compile(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?[\"`\[]?(\w+)", re.I)
_PROBE_SECONDS = 1.0
_LOW_DISK_BYTES = 256 * 1024 * 1024


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
        self._expected = {
            name: _expected_indexes(db.config.migrations) for name, db in router.databases.items()
        }

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
        if self._cache.redis is not None:
            checks.append(await self._redis())
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
        started = time.monotonic()
        unreadable = await asyncio.to_thread(
            _unreadable, database.config.path, database.file_identity
        )
        if unreadable:
            return [Check(name, CRITICAL, unreadable, _ms_since(started))]
        try:
            found = await self._probe(database, deep)
        except errors.DataAccessError as exc:
            return [Check(name, CRITICAL, exc.message, _ms_since(started))]
        checks = [Check(name, HEALTHY, "probe query answered", _ms_since(started))]
        checks += self._settings(name, found)
        checks.append(self._indexes(name, database.name, found.indexes))
        checks.append(await asyncio.to_thread(_disk, name, database.config.path))
        if deep:
            ok = found.quick_check == "ok"
            status = HEALTHY if ok else CRITICAL
            checks.append(Check(f"{name}:quick_check", status, found.quick_check, found.check_ms))
        return checks

    async def _probe(self, database: Database, deep: bool) -> _Found:
        deadline = time.monotonic() + _PROBE_SECONDS * (10 if deep else 1)
        async with database.pool.reader(deadline) as conn:
            return await conn.run_trusted(lambda raw: _look(raw, deep), deadline)

    def _settings(self, name: str, found: _Found) -> list[Check]:
        foreign = HEALTHY if found.foreign_keys else DEGRADED
        wal = HEALTHY if found.journal_mode == "wal" else DEGRADED
        return [
            Check(f"{name}:foreign_keys", foreign, f"foreign_keys={int(found.foreign_keys)}", 0.0),
            Check(f"{name}:wal", wal, f"journal_mode={found.journal_mode}", 0.0),
        ]

    def _indexes(self, name: str, database: str, present: set[str]) -> Check:
        missing = sorted(self._expected.get(database, set()) - present)
        if missing:
            return Check(f"{name}:indexes", DEGRADED, f"missing: {', '.join(missing)}", 0.0)
        expected = len(self._expected.get(database, ()))
        return Check(f"{name}:indexes", HEALTHY, f"all {expected} expected indexes present", 0.0)

    async def _redis(self) -> Check:
        started = time.monotonic()
        tier = self._cache.redis
        assert tier is not None
        try:
            await tier.ping()
        except RedisUnavailable as exc:
            return Check("redis", DEGRADED, f"unreachable, reads bypass the cache: {exc}", 0.0)
        state = self._cache.gate.state if self._cache.gate is not None else ""
        status = HEALTHY if state == "closed" else DEGRADED
        return Check("redis", status, f"PING answered; breaker {state}", _ms_since(started))


@dataclass(frozen=True)
class _Found:
    foreign_keys: bool
    journal_mode: str
    indexes: set[str]
    quick_check: str = ""
    check_ms: float = 0.0


def _look(raw: sqlite3.Connection, deep: bool) -> _Found:
    raw.execute("SELECT 1").fetchall()
    foreign = bool(raw.execute("PRAGMA foreign_keys").fetchone()[0])
    mode = str(raw.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    rows = raw.execute("SELECT name FROM sqlite_schema WHERE type = 'index'").fetchall()
    indexes = {str(row[0]) for row in rows}
    if not deep:
        return _Found(foreign, mode, indexes)
    started = time.monotonic()
    verdict = "; ".join(str(row[0]) for row in raw.execute("PRAGMA quick_check").fetchall())
    return _Found(foreign, mode, indexes, verdict, _ms_since(started))


def _unreadable(path: Path, identity: tuple[int, int] | None) -> str:
    """Why ``path`` cannot serve as a database file, or '' when it can.

    The file is opened through SQLite only: closing a descriptor that anything
    else opened on it would drop every POSIX lock this process holds there, and
    another process could then delete the live WAL under our connections.
    SQLite keeps such descriptors open until its last connection to the file goes.
    A file swapped in under the open one would read its first page from the live
    WAL and look sound, so the path must still name the file that was opened.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if identity is not None and (stat.st_dev, stat.st_ino) != identity:
        return f"{path} is not the SQLite database the service opened: it was replaced or moved"
    try:
        probe = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"cannot read {path}: {exc}"
    try:
        probe.execute("SELECT count(*) FROM sqlite_schema").fetchall()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            return f"{path} is not a SQLite database: {exc}"
        return f"cannot read {path}: {exc}"
    finally:
        probe.close()
    return ""


def _disk(name: str, path: Path) -> Check:
    started = time.monotonic()
    usage = shutil.disk_usage(path.parent)
    share = usage.free / usage.total if usage.total else 0.0
    message = f"{usage.free / 2**30:.1f} GiB free ({share:.0%})"
    if share < 0.01:
        status = CRITICAL
    elif share < 0.05 or usage.free < _LOW_DISK_BYTES:
        status = DEGRADED
    else:
        status = HEALTHY
    return Check(f"{name}:disk", status, message, _ms_since(started))


def _expected_indexes(migrations: Path | None) -> set[str]:
    if migrations is None or not migrations.is_dir():
        return set()
    names: set[str] = set()
    for script in sorted(migrations.glob("*.sql")):
        names.update(_INDEX.findall(script.read_text(encoding="utf-8")))
    return names


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000
