"""Statement statistics: timings by fingerprint over a sliding window, the slowest
recent statements, and advisories drawn from them.

Every statement a database runs for a read is recorded with its database,
fingerprint (literals replaced), duration, rows and caller. Advisories:

- N+1: one caller running the same fingerprint at least ``n_plus_one_count``
  times within ``n_plus_one_window`` seconds (a loop of point reads that one
  query with IN or a join would replace);
- full scan: a fingerprint whose plan scans a whole table worth an index (the
  database says which: see ``QueryPlan``), with a CREATE INDEX on the columns
  its WHERE clause compares.
"""

from __future__ import annotations

import heapq
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from service.db.door import QueryPlan
from service.fingerprint import fingerprint
from service.values import Params

_WINDOW_SECONDS = 300.0
_SAMPLES_PER_STATEMENT = 2048
_MAX_STATEMENTS = 512
_SLOWEST = 10
_COMPARED = re.compile(
    r"""["`\[]?([A-Za-z_][\w$]*)["`\]]?\s*(?:=|==|<|>|<=|>=|\bIN\b|\bIS\b|\bLIKE\b|\bBETWEEN\b)""",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class StatementFigures:
    """One fingerprint's figures over the window."""

    database: str
    fingerprint: str
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rows: int


@dataclass(frozen=True)
class SlowStatement:
    """One of the slowest recent statements."""

    database: str
    fingerprint: str
    duration_ms: float
    rows: int
    finished_at: float  # wall clock


@dataclass(frozen=True)
class Advisory:
    """A suggestion drawn from the statements seen."""

    kind: str  # "n_plus_one" or "full_scan"
    database: str
    fingerprint: str
    message: str
    suggested_index: str = ""


@dataclass
class _Statement:
    sql: str  # one statement as sent, and its parameters, to explain
    params: Params
    samples: deque[tuple[float, float, int]] = field(
        default_factory=lambda: deque(maxlen=_SAMPLES_PER_STATEMENT)
    )  # (finished at, ms, rows)
    scan: Advisory | None = None
    explained: bool = False


class StatementTimings:
    """What the databases ran for reads, by (database, fingerprint)."""

    def __init__(self, n_plus_one_count: int = 20, n_plus_one_window: float = 1.0) -> None:
        self.n_plus_one_count = n_plus_one_count
        self.n_plus_one_window = n_plus_one_window
        self._statements: OrderedDict[tuple[str, str], _Statement] = OrderedDict()
        self._slowest: list[tuple[float, int, SlowStatement]] = []
        self._by_peer: OrderedDict[tuple[str, str, str], deque[float]] = OrderedDict()
        self._n_plus_one: dict[tuple[str, str], Advisory] = {}
        self._seq = 0

    def record(
        self,
        database: str,
        sql: str,
        params: Params,
        ms: float,
        rows: int,
        peer: str,
        names: frozenset[str] = frozenset(),
    ) -> None:
        """One statement ran (``names``: its database's declared names, for the fingerprint)."""
        shape = fingerprint(sql, names)
        key = (database, shape)
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = _Statement(sql, params)
            if len(self._statements) > _MAX_STATEMENTS:
                self._statements.popitem(last=False)
        self._statements.move_to_end(key)
        now = time.monotonic()
        statement.samples.append((now, ms, rows))
        self._note_slow(SlowStatement(database, shape, ms, rows, time.time()))
        if peer:
            self._note_peer(database, shape, peer, now)

    def unexplained(self) -> list[tuple[str, str, str, Params]]:
        """(database, fingerprint, sql, params) of statements whose plan is not known yet."""
        return [
            (db, fp, s.sql, s.params) for (db, fp), s in self._statements.items() if not s.explained
        ]

    def explained(
        self, database: str, shape: str, plan: QueryPlan, columns_of: Callable[[str], set[str]]
    ) -> None:
        """Take a statement's plan (``columns_of``: a table's columns)."""
        statement = self._statements.get((database, shape))
        if statement is None:
            return
        statement.explained = True
        table = plan.scanned_table
        if table is None:
            return
        upper = statement.sql.upper()
        where = statement.sql[upper.index("WHERE") :] if "WHERE" in upper else ""
        columns = columns_of(table)
        compared = [c for c in dict.fromkeys(_COMPARED.findall(where)) if c.lower() in columns]
        index = (
            f"CREATE INDEX idx_{table}_{'_'.join(compared)} ON {table} ({', '.join(compared)})"
            if compared
            else ""
        )
        statement.scan = Advisory(
            "full_scan",
            database,
            shape,
            f"scans the whole of {table}" + ("; an index would let it seek" if index else ""),
            index,
        )

    def figures(self) -> list[StatementFigures]:
        """Count, percentiles and rows of every statement seen within the window."""
        since = time.monotonic() - _WINDOW_SECONDS
        out = []
        for (database, shape), statement in self._statements.items():
            samples = [s for s in statement.samples if s[0] >= since]
            if not samples:
                continue
            ms = sorted(s[1] for s in samples)
            out.append(
                StatementFigures(
                    database,
                    shape,
                    len(samples),
                    _percentile(ms, 0.50),
                    _percentile(ms, 0.95),
                    _percentile(ms, 0.99),
                    sum(s[2] for s in samples),
                )
            )
        return sorted(out, key=lambda f: f.count * f.p50_ms, reverse=True)

    def slowest(self) -> list[SlowStatement]:
        """The slowest recent statements, slowest first."""
        return [entry[2] for entry in sorted(self._slowest, reverse=True)]

    def advisories(self) -> list[Advisory]:
        """N+1 patterns seen, then full scans of statements run since the last reset."""
        scans = [s.scan for s in self._statements.values() if s.scan is not None and s.samples]
        return [*self._n_plus_one.values(), *scans]

    def reset(self) -> None:
        """Forget every figure and advisory (plans already looked at stay known)."""
        for statement in self._statements.values():
            statement.samples.clear()
        self._slowest.clear()
        self._by_peer.clear()
        self._n_plus_one.clear()

    def _note_slow(self, slow: SlowStatement) -> None:
        self._seq += 1
        entry = (slow.duration_ms, self._seq, slow)
        if len(self._slowest) < _SLOWEST:
            heapq.heappush(self._slowest, entry)
        elif entry > self._slowest[0]:
            heapq.heapreplace(self._slowest, entry)

    def _note_peer(self, database: str, shape: str, peer: str, now: float) -> None:
        key = (database, shape, peer)
        times = self._by_peer.get(key)
        if times is None:
            times = self._by_peer[key] = deque(maxlen=self.n_plus_one_count)
            if len(self._by_peer) > 4 * _MAX_STATEMENTS:
                self._by_peer.popitem(last=False)
        self._by_peer.move_to_end(key)
        times.append(now)
        full = len(times) == self.n_plus_one_count
        if full and now - times[0] <= self.n_plus_one_window:
            self._n_plus_one[(database, shape)] = Advisory(
                "n_plus_one",
                database,
                shape,
                f"{peer} ran it {self.n_plus_one_count} times within "
                f"{self.n_plus_one_window:g} s: one query with IN (...) or a join would do",
            )


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
