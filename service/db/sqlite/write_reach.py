"""Which tables a write to each table may change beyond the rows key capture's triggers
report, read from the schema.

A write may reach other tables through foreign-key actions and user triggers,
and may delete rows by REPLACE, which fires no DELETE trigger while
``recursive_triggers`` is off. ``key_capture`` bumps the key generation of
every table a REPLACE may have touched, as this reach names them. A trigger
body is not parsed: every table whose name it mentions counts as written,
which can only bump more.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from service.db.sqlite.write_plans import says_replace

_FK_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})


@dataclass(frozen=True)
class Reach:
    """What a write to each table (lower-cased) may change beyond what the triggers see.

    ``touches``: every table it may write (itself, foreign-key actions, user
    triggers), transitively. ``replacing``: the tables whose key generation
    goes whenever it is written, because rows may go by REPLACE.
    """

    touches: dict[str, frozenset[str]]
    replacing: dict[str, frozenset[str]]

    def of(self, tables: Iterable[str]) -> frozenset[str]:
        """``tables`` (declared names) and every table a write to them may change."""
        found: set[str] = set()
        for table in tables:
            found |= self.touches.get(table.lower(), frozenset({table}))
        return frozenset(found)

    def replaced(self, tables: Iterable[str]) -> frozenset[str]:
        """The tables whose rows may go by REPLACE when ``tables`` are written."""
        found: set[str] = set()
        for name in {*tables, *self.of(tables)}:  # a view written names its own reach
            found |= self.replacing.get(name.lower(), frozenset())
        return frozenset(found)


def read_reach(raw: sqlite3.Connection) -> Reach:
    """Which tables a write to each table may change, and which may lose rows to REPLACE."""
    objects = raw.execute(
        "SELECT type, tbl_name, sql FROM sqlite_schema WHERE type IN ('table', 'view', 'trigger')"
    ).fetchall()
    tables = {str(name).lower(): str(name) for kind, name, _ in objects if kind == "table"}
    # Views are steps too: a trigger writing a view runs the view's INSTEAD OF triggers,
    # and an outer REPLACE carries into them.
    nodes = tables | {str(name).lower(): str(name) for kind, name, _ in objects if kind == "view"}
    edges = _cascades(raw, tables)
    replacing: dict[str, set[str]] = {}
    for kind, on, sql in objects:
        text, table = str(sql or ""), str(on).lower()
        if kind == "table" and says_replace(text):
            replacing.setdefault(table, set()).add(table)
        elif kind == "trigger":
            named = _tables_named(text, nodes)
            edges.setdefault(table, set()).update(named)
            if says_replace(text):
                replacing.setdefault(table, set()).update(named | {table})
    steps = {name: _steps(name, edges) for name in edges.keys() | nodes.keys()}
    touches = {name: _declared(reached, tables) for name, reached in steps.items()}
    bumps: dict[str, frozenset[str]] = {}
    for name, reached in steps.items():
        # A write to ``name`` runs every trigger on what it reaches, views included.
        risky = {r for step in reached for r in replacing.get(step, ())}
        if risky:
            bumps[name] = frozenset(t for r in risky for t in touches.get(r, ()))
    return Reach(touches, bumps)


def _cascades(raw: sqlite3.Connection, tables: dict[str, str]) -> dict[str, set[str]]:
    """Parent -> the children its deletes or updates write through foreign-key actions."""
    edges: dict[str, set[str]] = {}
    for child, declared in tables.items():
        keys = raw.execute(
            'SELECT "table", on_update, on_delete FROM pragma_foreign_key_list(?)', (declared,)
        ).fetchall()
        for parent, on_update, on_delete in keys:
            if {on_update, on_delete} & _FK_ACTIONS:
                edges.setdefault(str(parent).lower(), set()).add(child)
    return edges


def _tables_named(sql: str, tables: dict[str, str]) -> set[str]:
    """The tables whose names ``sql`` mentions anywhere (in a literal too: more is safe)."""
    lowered = sql.lower()
    found = set()
    for name in tables:
        spellings = {name, name.replace('"', '""')}
        if any(re.search(rf"(?<![\w$]){re.escape(n)}(?![\w$])", lowered) for n in spellings):
            found.add(name)
    return found


def _steps(start: str, edges: dict[str, set[str]]) -> set[str]:
    """``start`` and every table or view reachable from it (lower-cased)."""
    seen, pending = {start}, [start]
    while pending:
        for step in edges.get(pending.pop(), set()):
            if step not in seen:
                seen.add(step)
                pending.append(step)
    return seen


def _declared(names: set[str], tables: dict[str, str]) -> frozenset[str]:
    """The declared names of the tables among ``names`` (views are left out)."""
    return frozenset(tables[name] for name in names if name in tables)
