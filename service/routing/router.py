"""Databases and groups by name: which database(s) a call goes to.

A group's query fans out to every member; a ``route_key`` picks one member
by the group's range or hash rule, and BatchInsert into a group routes each
row by the rule's column.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from service import errors
from service.config import Config, GroupConfig, RouteConfig
from service.db.door import ArchiveMark, Database
from service.routing.barrier import GroupBarrier
from service.values import SqlValue

log = logging.getLogger(__name__)


class Router:
    """Finds the database or the group members a call names."""

    def __init__(self, config: Config, databases: Mapping[str, Database]) -> None:
        self.databases = dict(databases)
        self.groups = {group.name: group for group in config.groups}
        # Groups whose rows archival moves: their reads share a barrier with its swaps.
        self.barriers = {g.name: GroupBarrier(g.name) for g in config.groups if g.archive}
        # Routed groups' stored archive bounds (service.routing.archival keeps them).
        self._marks: dict[str, ArchiveMark] = {}
        # With auth on, a caller is not told the names of databases it may not know of.
        self._list_known = not config.auth_tokens

    def database(self, name: str) -> Database:
        """The database called ``name``."""
        database = self.databases.get(name)
        if database is None:
            message = f"unknown database {name!r}"
            if self._list_known:
                message += f" (known: {', '.join(sorted([*self.databases, *self.groups]))})"
            raise errors.NotFound(message, field="database")
        if database.failure is not None:
            raise database.failure
        return database

    def is_group(self, name: str) -> bool:
        """Whether ``name`` is a group."""
        return name in self.groups

    def members(
        self, name: str, route_key: SqlValue | None = None, routed: bool = False
    ) -> list[Database]:
        """The databases a read on ``name`` runs on: one, every member, or the routed one."""
        group = self.groups.get(name)
        if group is None:
            return [self.database(name)]
        if not routed:
            return [self.database(member) for member in group.members]
        if group.archive and _in_both(group, self._marks.get(name, ArchiveMark()), route_key):
            rule = group.archive[0]  # a routed group has one rule (the Config says so)
            both = (rule.source, rule.target)
            return [self.database(member) for member in group.members if member in both]
        return [self.database(self.pick(name, route_key))]

    def pick(self, name: str, key: SqlValue) -> str:
        """The one member of group ``name`` that takes a row keyed ``key``."""
        group = self.groups[name]
        mark = self._marks.get(name)
        if mark is not None and mark.boundary is not None and group.route is not None:
            group = replace(group, route=_moved(group.route, group.archive[0].target, mark))
        return pick_member(group, key)

    def set_mark(self, name: str, mark: ArchiveMark) -> None:
        """Group ``name``'s archive bounds, as its source file now stores them."""
        if self.groups[name].route is not None:
            self._marks[name] = mark

    def route_column(self, name: str) -> str:
        """The column whose value routes a row inserted into group ``name``."""
        route = self.groups[name].route
        if route is None or route.column is None:
            raise errors.InvalidArgument(
                f"group {name!r} has no route column, so rows cannot be routed", field="database"
            )
        return route.column

    async def open(self) -> None:
        """Open every database; one that cannot open answers its failure alone."""
        for database in self.databases.values():
            try:
                await database.open()
            except (errors.DataLoss, errors.Unavailable) as exc:
                log.error("database %s cannot be served: %s", database.name, exc.message)
                database.fail(exc)

    async def close(self) -> None:
        """Close every database, checkpointing its WAL."""
        for database in self.databases.values():
            await database.close()


def _in_both(group: GroupConfig, mark: ArchiveMark, key: SqlValue) -> bool:
    """Whether rows keyed ``key`` may be in the archive rule's source and its target.

    Below the stored boundary every row that was there is in the target, but a
    row dated so old may still be written to the source afterwards (late data,
    a backfill), and only the next pass moves it; below ``moving_below`` a
    pass is moving them. Above both, and above the route's own bound for the
    target, rows are only in the source.
    """
    assert group.route is not None
    target = group.archive[0].target
    bounds = group.route.bounds
    at = next(i for i, b in enumerate(bounds) if b.member == target)
    before = _bound(bounds[at - 1].below) if at else None
    if before is not None and _below(key, before):
        return False  # an older member's range: the route's own pick
    static = bounds[at].below
    for bound in (mark.moving_below, mark.boundary, static):
        below = _bound(bound)
        if below is not None and _below(key, below):
            return True
    return False


def _moved(route: RouteConfig, target: str, mark: ArchiveMark) -> RouteConfig:
    """``route`` with ``target``'s bound at the stored boundary."""
    bounds = tuple(
        replace(bound, below=_bound(mark.boundary)) if bound.member == target else bound
        for bound in route.bounds
    )
    return replace(route, bounds=bounds)


def _bound(value: SqlValue) -> str | int | float | None:
    return None if isinstance(value, bytes) else value


def pick_member(group: GroupConfig, key: SqlValue) -> str:
    """The member of ``group`` that holds ``key``."""
    route = group.route
    if route is None:
        raise errors.InvalidArgument(
            f"group {group.name!r} has no route rule for route_key", field="route_key"
        )
    if route.kind == "hash":
        return _hash_member(route, group.members, key)
    return _range_member(route, key)


def _range_member(route: RouteConfig, key: SqlValue) -> str:
    for bound in route.bounds:
        if bound.below is None or _below(key, bound.below):
            return bound.member
    raise errors.InvalidArgument(f"route_key {key!r} is past every range bound", field="route_key")


def _below(key: SqlValue, bound: str | int | float) -> bool:
    if isinstance(key, int | float) and isinstance(bound, int | float):
        return key < bound
    if isinstance(key, str) and isinstance(bound, str):
        return key < bound
    if isinstance(key, str):
        return key < str(bound)
    raise errors.InvalidArgument(
        f"route_key {key!r} cannot be compared with bound {bound!r}", field="route_key"
    )


def _hash_member(route: RouteConfig, members: Sequence[str], key: SqlValue) -> str:
    # A stable hash (not Python's salted hash()) so every replica routes alike.
    digest = hashlib.sha256(f"{type(key).__name__}:{key!r}".encode()).digest()
    ordered = [bound.member for bound in route.bounds] or list(members)
    return ordered[int.from_bytes(digest[:8], "big") % len(ordered)]
