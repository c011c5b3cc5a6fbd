"""Query plans: ``EXPLAIN QUERY PLAN`` lines, and the whole-table scan they show, if any.

A scan worth advice is one of a table over ``TINY_TABLE_ROWS`` rows (a scan of
fewer costs less than a seek would save), not a scan in rowid order that the
statement's ``LIMIT`` stops early (``SELECT ... ORDER BY id LIMIT 20``, no
WHERE, no aggregate, no sort).
"""

from __future__ import annotations

import re
import sqlite3

from service.db.sqlite.guard import Guard
from service.fingerprint import tokens
from service.values import Params

TINY_TABLE_ROWS = 1000
_SCAN = re.compile(r"SCAN (\w+)$")
# Words after which LIMIT no longer bounds how many rows the scan reads.
_READS_ALL = frozenset(
    """
    WHERE GROUP HAVING DISTINCT OVER JOIN UNION EXCEPT INTERSECT OFFSET
    COUNT SUM TOTAL AVG MIN MAX GROUP_CONCAT STRING_AGG JSON_GROUP_ARRAY JSON_GROUP_OBJECT
    """.split()
)


def query_plan(raw: sqlite3.Connection, guard: Guard, sql: str, params: Params) -> list[str]:
    """The ``EXPLAIN QUERY PLAN`` lines of ``sql``, which is prepared but not run."""
    guard.begin(sql)
    return [str(row[3]) for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()]


def scanned_table(plan: list[str]) -> str | None:
    """The first table (or alias) a plan scans whole, if any."""
    scanned = [m.group(1) for line in plan if (m := _SCAN.match(line.strip()))]
    return scanned[0] if scanned else None


def limit_stops_the_scan(sql: str, plan: list[str]) -> bool:
    """Whether the plan is one scan in rowid order that the statement's LIMIT cuts short."""
    words = {text.upper() for kind, text in tokens(sql) if kind == "other"}
    one_scan = len(plan) == 1 and _SCAN.match(plan[0].strip()) is not None
    return one_scan and "LIMIT" in words and not words & _READS_ALL
