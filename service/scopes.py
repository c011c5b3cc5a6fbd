"""Scopes: what a caller may do, and which databases it may know of, read and write.

A token's scopes are ``read:<database|group|*>``, ``write:<database|group|*>``
and ``admin`` (Invalidate, Stats, deep Health). A group is allowed when its
own name or every one of its members is.

A caller is told a database or group exists only when it holds a scope on it
(read or write, on it, on one of a group's members or on a group it is in)
or is admin: any other name answers NOT_FOUND exactly as an unknown one does,
on every RPC, so names cannot be probed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from service import errors
from service.observe.health import HealthReport
from service.routing.router import Router
from service.tags import is_reserved

ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and what it may do."""

    name: str
    scopes: frozenset[str]

    def may(self, action: str, target: str, members: Sequence[str] = ()) -> bool:
        """Whether ``action`` (read or write) on ``target`` (or on all its members) is allowed."""
        granted = self.scopes
        if f"{action}:*" in granted or f"{action}:{target}" in granted:
            return True
        return bool(members) and all(f"{action}:{m}" in granted for m in members)

    def require(self, action: str, target: str, members: Sequence[str] = ()) -> None:
        """Raise PermissionDenied unless ``may``."""
        if not self.may(action, target, members):
            raise errors.PermissionDenied(f"{self.name} may not {action} {target}")

    def sees(self, target: str, members: Sequence[str] = ()) -> bool:
        """Whether the caller may learn that ``target`` exists (any scope on it, or admin)."""
        if ADMIN in self.scopes:
            return True
        names = (target, *members)
        return any(self.may(action, name) for action in ("read", "write") for name in names)

    def require_admin(self, what: str) -> None:
        """Raise PermissionDenied unless the caller has the admin scope."""
        if ADMIN not in self.scopes:
            raise errors.PermissionDenied(f"{self.name} may not {what} (needs admin)")


def unknown_database(name: str) -> errors.NotFound:
    """The one answer for a name that is not there or not the caller's to know of."""
    return errors.NotFound(f"unknown database {name!r}", field="database")


def tag_database(tag: str, names: Sequence[str]) -> str | None:
    """The database a reserved tag names: ``database:NAME`` exactly, or ``table:NAME.TABLE``
    (and ``key:``/``keys:`` tags of a table likewise).

    ``names`` go longest first, so with databases ``a`` and ``a.b``, ``table:a.b.t`` is a.b's.
    """
    for name in names:
        if tag == f"database:{name}" or tag.startswith(
            (f"table:{name}.", f"key:{name}.", f"keys:{name}.")
        ):
            return name
    return None


def check_database(check: str, names: Sequence[str]) -> str | None:
    """The database a health check is about (``database:NAME`` or ``database:NAME:what``)."""
    for name in names:
        if check == f"database:{name}" or check.startswith(f"database:{name}:"):
            return name
    return None


ANYONE = Principal("anyone", frozenset({"read:*", "write:*", ADMIN}))


class Scopes:
    """The scope checks of every RPC, over the router's databases and groups."""

    def __init__(self, router: Router) -> None:
        self._router = router
        # Longest name first, so "main2" is not taken for "main".
        self._names = sorted(router.databases, key=len, reverse=True)

    def visible(self, name: str, caller: Principal) -> Sequence[str]:
        """The members of group ``name`` (none for a database), once the caller may know of it.

        Checked before anything else looks the name up.
        """
        group = self._router.groups.get(name)
        members = group.members if group is not None else ()
        if not self._sees(caller, name, members):
            raise unknown_database(name)
        return members

    def check_write(self, database_name: str, caller: Principal) -> None:
        """Raise NotFound (also for a name the caller may not know of) or PermissionDenied
        unless ``caller`` may write ``database_name``."""
        members = self.visible(database_name, caller)
        if not members:  # a database (a group always has members)
            database_name = self._router.database(database_name).name
        caller.require("write", database_name, members)

    def check_invalidate_tags(
        self, tags: Sequence[str], databases: Sequence[str], caller: Principal
    ) -> None:
        """A writer may bump its own tags and its databases'; ``all`` and others' need admin."""
        for tag in tags:
            if is_reserved(tag) and tag_database(tag, self._names) not in databases:
                caller.require_admin(f"invalidate {tag!r} with a write")

    def visible_health(self, report: HealthReport, caller: Principal) -> HealthReport:
        """``report`` with only the checks of databases ``caller`` may know of (and Redis's).

        The overall status stays the service's (the standard health service tells anyone);
        the score is recomputed over the checks shown.
        """
        shown = [
            check
            for check in report.checks
            if (database := check_database(check.name, self._names)) is None
            or self._sees(caller, database)
        ]
        if len(shown) == len(report.checks):
            return report
        healthy = sum(check.status == "healthy" for check in shown)
        return replace(report, score=healthy / len(shown) if shown else 0.0, checks=shown)

    def _sees(self, caller: Principal, name: str, members: Sequence[str] = ()) -> bool:
        """A scope on the name, on a member, or on a group the database is in lets the
        caller know of it."""
        if caller.sees(name, members):
            return True
        groups = self._router.groups.values()
        return any(caller.sees(group.name) for group in groups if name in group.members)
