"""A read on its databases: every member of a group in parallel, combined into one answer.

It owns the ``router`` span. The first member to fail cancels the others;
members must answer the same columns; rows are concatenated or merged by
``merge`` and cut at the row cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from opentelemetry import trace

from service import errors
from service.db.door import PRIMARY, Column, Database, Freshness, Rows
from service.domain import ReadRequest
from service.routing.merge import merge_rows
from service.values import SqlRow

T = TypeVar("T")


@dataclass(frozen=True)
class Combined:
    """The rows of every member as one answer."""

    columns: Sequence[Column]
    rows: Sequence[SqlRow]
    truncated: bool


async def fetch_all(
    members: Sequence[Database],
    request: ReadRequest,
    cap: int,
    max_bytes: int,
    deadline: float,
    tracer: trace.Tracer,
    on_read: Callable[[Database, Rows], None],
    freshness: Callable[[Database], Freshness] = lambda _database: PRIMARY,
) -> list[Rows]:
    """Run ``request`` on every member in parallel, each fetching up to ``cap`` rows;
    ``on_read`` hears of each member's rows as they come (also when another fails)."""

    async def read(database: Database) -> Rows:
        rows = await database.read(
            request.sql, request.params, cap, max_bytes, deadline, freshness(database)
        )
        on_read(database, rows)
        return rows

    names = [db.name for db in members]
    attributes = {"dataaccess.target": request.database, "db.namespace": names}
    with tracer.start_as_current_span("router", attributes=attributes):
        return await _first_error_cancels_all([read(db) for db in members])


def combine(
    members: Sequence[Database], parts: Sequence[Rows], request: ReadRequest, cap: int
) -> Combined:
    """The members' rows as one answer (columns and types as the first member has them)."""
    names = same_columns(members, [tuple(name for name, _ in part.columns) for part in parts])
    rows = merge_rows(names, [part.rows for part in parts], request.merge)
    more = any(part.more for part in parts) or len(rows) > cap
    return Combined(parts[0].columns, rows[:cap], more)


async def _first_error_cancels_all(work: Sequence[Awaitable[T]]) -> list[T]:
    """Await ``work`` in parallel; the first failure cancels the rest and is raised."""
    if len(work) == 1:  # one database: no task to run it in
        return [await work[0]]
    tasks = [asyncio.ensure_future(item) for item in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def same_columns(
    members: Sequence[Database], columns: Sequence[tuple[str, ...]]
) -> tuple[str, ...]:
    """The members' column names, the same for each (InvalidArgument names the first
    member whose differ)."""
    for database, names in zip(members[1:], columns[1:], strict=True):
        if names != columns[0]:
            raise errors.InvalidArgument(
                f"{database.name} answers columns {list(names)}, "
                f"{members[0].name} answers {list(columns[0])}",
                field="sql",
            )
    return columns[0]
