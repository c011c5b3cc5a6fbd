"""Who may know of, read and write which database: scopes checked against the router.

A name the caller holds no scope on answers exactly as an unknown one, on
every RPC, so existence cannot be probed. A scope on a group lets the caller
know of its members (the group's answers name them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from service.auth import Principal, check_database, tag_database, unknown_database
from service.observe.health import HealthReport
from service.routing.router import Router
from service.tags import is_reserved


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
