"""The Stats RPC's report: figures asked of every tier (cache, databases, statements).

Before reading, the plans of statements seen since the last report are
asked of their databases (bounded in count and time), so full-scan advice
is current.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

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

_EXPLAIN_SECONDS = 2.0
_EXPLAIN_AT_MOST = 64


@dataclass(frozen=True)
class StatsReport:
    """Cache, pool, statement and write figures of the whole service."""

    pools: Sequence[PoolSnapshot]
    writes: Sequence[WriteSnapshot]
    cache: Sequence[TierSnapshot] = ()
    loads: int = 0
    statements: Sequence[StatementFigures] = ()
    slowest: Sequence[SlowStatement] = ()
    advisories: Sequence[Advisory] = ()


async def stats_report(
    databases: Sequence[Database], cache: TagCache, statements: StatementTimings, reset: bool
) -> StatsReport:
    """Every tier's figures now; ``reset`` clears them after reading."""
    serving = [db for db in databases if db.failure is None]
    await _explain_new_statements(serving, statements, time.monotonic() + _EXPLAIN_SECONDS)
    figures = [db.figures() for db in serving]
    report = StatsReport(
        pools=[figure.pool for figure in figures],
        writes=[figure.writes for figure in figures],
        cache=cache.tiers(),
        loads=cache.loads,
        statements=statements.figures(),
        slowest=statements.slowest(),
        advisories=statements.advisories(),
    )
    if reset:
        statements.reset()
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
