"""The Stats RPC's report: figures asked of every tier (cache, databases, statements).

Before reading, the plans of statements seen since the last report are
asked of their databases (bounded in count and time), so full-scan advice
is current.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from service import errors
from service.cache.tagged import TagCache, TierSnapshot
from service.db.door import Database, PoolSnapshot, QueryPlan
from service.domain import WriteSnapshot
from service.observe.statements import (
    Advisory,
    SlowStatement,
    StatementFigures,
    StatementTimings,
)

if TYPE_CHECKING:
    from service.routing.archival import ArchiveFigures
    from service.warming import WarmFigures

_EXPLAIN_SECONDS = 2.0
_EXPLAIN_AT_MOST = 64


@dataclass
class KeyFigures:
    """How cached reads were tagged and how many key tags writes bumped, since a reset."""

    keyed_loads: int = 0
    table_tagged_loads: int = 0
    keys_bumped: Counter[str] = field(default_factory=Counter)  # by database
    generations_bumped: Counter[str] = field(default_factory=Counter)

    def loaded(self, keyed: bool) -> None:
        """A load ran whose result is cached under key tags (``keyed``) or table tags only."""
        if keyed:
            self.keyed_loads += 1
        else:
            self.table_tagged_loads += 1

    def written(self, database: str, keys: int, generations: int) -> None:
        """A committed write on ``database`` bumped ``keys`` key tags and ``generations``
        key generations."""
        self.keys_bumped[database] += keys
        self.generations_bumped[database] += generations

    def reset(self) -> None:
        """Start counting from zero."""
        self.keyed_loads = self.table_tagged_loads = 0
        self.keys_bumped.clear()
        self.generations_bumped.clear()

    def of_writes(self, snapshot: WriteSnapshot) -> WriteSnapshot:
        """``snapshot`` with its database's key figures."""
        name = snapshot.database
        return replace(
            snapshot,
            keys_bumped=self.keys_bumped[name],
            key_generations_bumped=self.generations_bumped[name],
        )


@dataclass(frozen=True)
class StatsReport:
    """Cache, pool, statement and write figures of the whole service."""

    pools: Sequence[PoolSnapshot]
    writes: Sequence[WriteSnapshot]
    cache: Sequence[TierSnapshot] = ()
    loads: int = 0
    keyed_loads: int = 0
    table_tagged_loads: int = 0
    statements: Sequence[StatementFigures] = ()
    slowest: Sequence[SlowStatement] = ()
    advisories: Sequence[Advisory] = ()
    warm: Sequence[WarmFigures] = ()
    archive: Sequence[ArchiveFigures] = ()


async def stats_report(
    databases: Sequence[Database],
    cache: TagCache,
    statements: StatementTimings,
    keys: KeyFigures,
    reset: bool,
) -> StatsReport:
    """Every tier's figures now; ``reset`` clears them after reading."""
    serving = [db for db in databases if db.failure is None]
    await _explain_new_statements(serving, statements, time.monotonic() + _EXPLAIN_SECONDS)
    figures = [db.figures() for db in serving]
    report = StatsReport(
        pools=[figure.pool for figure in figures],
        writes=[keys.of_writes(figure.writes) for figure in figures],
        cache=cache.tiers(),
        loads=cache.loads,
        keyed_loads=keys.keyed_loads,
        table_tagged_loads=keys.table_tagged_loads,
        statements=statements.figures(),
        slowest=statements.slowest(),
        advisories=statements.advisories(),
    )
    if reset:
        statements.reset()
        keys.reset()
        cache.reset_counters()
        for db in serving:
            db.reset_figures()
    return report


async def _explain_new_statements(
    databases: Sequence[Database], statements: StatementTimings, deadline: float
) -> None:
    """Ask for the plan of statements seen since the last report, for full scans."""
    by_name = {db.name: db for db in databases}
    for name, shape, sql, params in statements.unexplained()[:_EXPLAIN_AT_MOST]:
        database = by_name.get(name)
        if database is None or time.monotonic() > deadline:
            continue
        try:
            plan = await database.plan_of(sql, params, deadline)
        except errors.DataAccessError:
            plan = QueryPlan([])
        statements.explained(name, shape, plan, database.columns_of)
