"""Databases and groups by name: which database(s) a call goes to.

A group's query fans out to every member; a ``route_key`` picks one member
by the group's range or hash rule, and BatchInsert into a group routes each
row by the rule's column.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence

from service import errors
from service.config import Config, GroupConfig, RouteConfig
from service.db.door import Database
from service.values import SqlValue

log = logging.getLogger(__name__)


class Router:
    """Finds the database or the group members a call names."""

    def __init__(self, config: Config, databases: Mapping[str, Database]) -> None:
        self.databases = dict(databases)
        self.groups = {group.name: group for group in config.groups}
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
        if routed:
            return [self.database(pick_member(group, route_key))]
        return [self.database(member) for member in group.members]

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
