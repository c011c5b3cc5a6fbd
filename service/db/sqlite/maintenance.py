"""Scheduled maintenance of one SQLite database, run through its writer.

``PRAGMA optimize`` once when the database opens (migrations are applied
before that) and every ``sqlite.optimize_interval_seconds``; ``PRAGMA
incremental_vacuum`` of at most ``sqlite.incremental_vacuum_pages`` pages every
``sqlite.incremental_vacuum_interval_seconds``, on a file whose auto_vacuum is
INCREMENTAL. Both may write (the ``sqlite_stat`` tables, the freed pages), so
each run is a job on the writer's queue: it takes its turn between callers'
transactions, never races them, and is stopped at
``sqlite.maintenance_deadline_seconds`` as a caller's write is at its deadline.
A file whose auto_vacuum is NONE takes INCREMENTAL only from a full ``VACUUM``,
which rewrites it under the write lock: the service never runs one by itself,
it says once that incremental vacuum is inactive. Each run's result is kept
for Health and the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from service import errors
from service.config import SqliteSettings
from service.db.door import Finding, MaintenanceRuns, Severity, WriteOutcome
from service.db.sqlite.group_commit import WriteBatcher
from service.db.sqlite.guard import Guard
from service.tasks import stop_task

log = logging.getLogger(__name__)
OPTIMIZE, INCREMENTAL_VACUUM = "optimize", "incremental_vacuum"
AUTO_VACUUM_NAMES = {0: "NONE", 1: "FULL", 2: "INCREMENTAL"}
_ANALYSIS_LIMIT = 1000  # rows ANALYZE looks at per index: optimize stays short on big tables
_NOTHING_WRITTEN = WriteOutcome((), 0, frozenset())


@contextmanager
def _trusted(guard: Guard) -> Iterator[None]:
    guard.trusted = True
    try:
        yield
    finally:
        guard.trusted = False


class OptimizePlan:
    """``PRAGMA optimize`` as a job of the writer."""

    message = ""

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        with _trusted(guard):
            raw.execute(f"PRAGMA analysis_limit={_ANALYSIS_LIMIT}")
            raw.execute("PRAGMA optimize").fetchall()
        self.message = "PRAGMA optimize done"
        return _NOTHING_WRITTEN


@dataclass
class IncrementalVacuumPlan:
    """``PRAGMA incremental_vacuum`` of at most ``pages`` pages as a job of the writer,
    ending early at ``deadline`` (monotonic) with the pages freed so far."""

    pages: int
    deadline: float
    message: str = field(default="", init=False)

    def run(self, raw: sqlite3.Connection, guard: Guard) -> WriteOutcome:
        with _trusted(guard):
            before = _free_pages(raw)
            # One page per statement: Python's sqlite3 steps a PRAGMA that returns no
            # rows once, and each step of incremental_vacuum frees one page. Each is too
            # short for the progress handler, so the deadline is looked at here.
            stopped = ""
            for _ in range(min(self.pages, before)):
                if time.monotonic() > self.deadline:
                    stopped = ", stopped at its deadline"
                    break
                raw.execute("PRAGMA incremental_vacuum(1)")
            after = _free_pages(raw)
        self.message = f"freed {before - after} of {before} free pages ({after} left{stopped})"
        return _NOTHING_WRITTEN


def _free_pages(raw: sqlite3.Connection) -> int:
    return int(raw.execute("PRAGMA freelist_count").fetchone()[0])


@dataclass
class _Record:
    runs: dict[str, int] = field(default_factory=dict)
    last_run: float = 0.0
    last_result: str = ""
    last_message: str = ""


class Maintenance:
    """Runs one database's maintenance tasks on their schedules and keeps their results."""

    def __init__(
        self, database: str, settings: SqliteSettings, writer: WriteBatcher, auto_vacuum: int
    ) -> None:
        self.database = database
        self._settings = settings
        self._writer = writer
        self._auto_vacuum = AUTO_VACUUM_NAMES.get(auto_vacuum, str(auto_vacuum))
        self._records: dict[str, _Record] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Optimize once, before the database serves, then start the configured schedules."""
        settings = self._settings
        if settings.optimize_interval_seconds > 0:
            # Awaited: a run left for later would take a turn of the writer (and a place
            # in its queue) just as the first callers arrive.
            await self.run(OPTIMIZE, OptimizePlan())
            self._schedule(OPTIMIZE, OptimizePlan, settings.optimize_interval_seconds)
        if settings.incremental_vacuum_pages <= 0:
            return
        if self._auto_vacuum == "FULL":
            message = "inactive: the file's auto_vacuum is FULL: every commit frees its pages"
            self._note(INCREMENTAL_VACUUM, "inactive", message)
            return
        if self._auto_vacuum != "INCREMENTAL":
            message = (
                f"inactive: the file's auto_vacuum is {self._auto_vacuum}; it becomes "
                "INCREMENTAL only after one full VACUUM (run it once with the service stopped: "
                "sqlite3 FILE 'PRAGMA auto_vacuum=INCREMENTAL' 'VACUUM')"
            )
            log.warning("incremental vacuum of %s is %s", self.database, message)
            self._note(INCREMENTAL_VACUUM, "inactive", message)
            return
        pages = settings.incremental_vacuum_pages
        self._schedule(
            INCREMENTAL_VACUUM,
            lambda: IncrementalVacuumPlan(pages, self.deadline()),
            settings.incremental_vacuum_interval_seconds,
        )

    def _schedule(
        self, task: str, plan: Callable[[], OptimizePlan | IncrementalVacuumPlan], every: float
    ) -> None:
        self._records.setdefault(task, _Record())  # keeps the run at start
        self._tasks.append(asyncio.ensure_future(self._repeat(task, plan, every)))

    async def _repeat(
        self, task: str, plan: Callable[[], OptimizePlan | IncrementalVacuumPlan], every: float
    ) -> None:
        while True:
            await asyncio.sleep(every)
            await self.run(task, plan())

    async def run(self, task: str, plan: OptimizePlan | IncrementalVacuumPlan) -> None:
        """Run ``plan`` once through the writer, within the deadline, and record how it went."""
        deadline = self.deadline()
        if isinstance(plan, IncrementalVacuumPlan):
            plan.deadline = deadline
        started = time.monotonic()
        try:
            await self._writer.submit(plan, deadline, own=True)
        except errors.DeadlineExceeded as exc:
            self._note(task, "timeout", exc.message)
        except errors.DataAccessError as exc:
            log.warning("maintenance %s of %s failed: %s", task, self.database, exc.message)
            self._note(task, "error", exc.message)
        else:
            elapsed = (time.monotonic() - started) * 1000
            self._note(task, "ok", f"{plan.message} in {elapsed:.0f} ms")

    def deadline(self) -> float:
        """When a run starting now must end (monotonic)."""
        return time.monotonic() + self._settings.maintenance_deadline_seconds

    def _note(self, task: str, result: str, message: str) -> None:
        record = self._records.setdefault(task, _Record())
        record.runs[result] = record.runs.get(result, 0) + 1
        record.last_run, record.last_result, record.last_message = time.time(), result, message

    def runs(self) -> tuple[MaintenanceRuns, ...]:
        """Every configured task's runs by result, and its last run."""
        return tuple(
            MaintenanceRuns(task, dict(r.runs), r.last_run, r.last_result, r.last_message)
            for task, r in self._records.items()
        )

    def findings(self) -> list[Finding]:
        """One Health finding per configured task: its last run, when and how it went."""
        return [_finding(runs) for runs in self.runs()]

    async def close(self) -> None:
        """Stop the schedules (a run in the writer's queue is left to finish)."""
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []


def _finding(runs: MaintenanceRuns) -> Finding:
    if not runs.last_run:
        return Finding(runs.task, Severity.HEALTHY, "not run yet")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(runs.last_run))
    severity = Severity.HEALTHY if runs.last_result == "ok" else Severity.DEGRADED
    return Finding(runs.task, severity, f"last run {when}: {runs.last_result}: {runs.last_message}")
