"""Key-level cache invalidation: a mixed read/write load with key tags on against table tags.

Two servers run side by side on copies of one orders database (100,000
rows, 10,000 customers, an index on ``(customer, day)``), each with its L1
cache and a ``redis-server`` of its own: one with ``cache.key_tags: true``,
one with ``false`` (every read tagged by the tables it reads). Each server
is primed first (every customer read once). Then for each write share
(0%, 1%, 5%; 0% first, as it drops nothing) and each round, each server
(the one measured first alternating) gets a load process of its own
(``bench.keys_load mixed``): 100 callers issuing point reads of
Zipf-drawn customers and one-row writes, warmed up, then measured. The
rows give the hit rate (HIT_LOCAL or HIT_REDIS among all read answers),
read p50 and p99, reads/s and writes/s; the goals are absolute, on the
key-tags server at 5% writes.

Then the write side on the same two servers: serial 1,000-row BatchInserts
and concurrent one-row BatchUpdates, key tracking on over off.

Each server's own answers show whether the setting took effect: a read is
cached under ``key:`` tags only with key tags on, and a one-row write bumps
them only then. Where that is not so, every row says it is invalid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cached import redis_server
from bench.datasets import orders_database
from bench.harness import Row, serving
from bench.keys_load import CALLERS, CUSTOMERS, HITS, ROWS, ZIPF_S

FRACTIONS = (0.0, 0.01, 0.05)
GOAL_FRACTION = 0.05
HIT_RATE_GOAL = 0.85
P99_GOAL_MS = 200.0
WRITE_GOAL = 0.85
UPDATE_CONCURRENCY = 32
AGAINST = "table tags (key_tags: false)"
TITLE = (
    f"Key tags, {CALLERS} callers, Zipf {ZIPF_S:g} reads "
    f"({CUSTOMERS:,} customers, {ROWS:,} rows) + 1-row writes"
)
Results = list[dict[str, Any]]  # one load JSON per round
Steps = dict[float, Results]  # the mixed load's, by write share


@dataclass(frozen=True)
class KeysPlan:
    """How much to measure: rounds; per write share, warm-up and timed loop caps; writes."""

    rounds: int
    warm: float
    seconds: float
    count: int  # operations per timed loop at most
    batches: int  # 1,000-row BatchInserts per round at most
    updates: int  # one-row BatchUpdates per round at most
    write_seconds: float

    @classmethod
    def for_run(cls, quick: bool) -> KeysPlan:
        if quick:
            return cls(3, 1.0, 3.0, 60_000, 30, 10_000, 3.0)
        return cls(3, 2.0, 10.0, 200_000, 100, 40_000, 10.0)


def bench_keys(workdir: Path, quick: bool) -> list[Row]:
    """The mixed-load rows for each write share, then the write-side rows."""
    if shutil.which("redis-server") is None:
        print("bench: no redis-server (make redis-server): key tags skipped", file=sys.stderr)
        return []
    plan = KeysPlan.for_run(quick)
    built = orders_database(workdir / f"orders-{ROWS}.db", ROWS, CUSTOMERS)
    primed: dict[bool, dict[str, Any]] = {}
    mixed: dict[bool, Steps] = {True: {f: [] for f in FRACTIONS}, False: {f: [] for f in FRACTIONS}}
    inserts: dict[bool, Results] = {True: [], False: []}
    updates: dict[bool, Results] = {True: [], False: []}
    with ExitStack() as stack:
        ports = {key_tags: _server(stack, workdir, built, key_tags) for key_tags in (True, False)}
        for key_tags, port in ports.items():
            primed[key_tags] = _load("prime", port)
            print(f"bench: keys: {_described(key_tags, primed[key_tags])}", file=sys.stderr)
        for fraction in FRACTIONS:  # 0% first: it drops nothing, so the cache stays primed
            for n in range(plan.rounds):
                for key_tags in (True, False) if n % 2 == 0 else (False, True):
                    step = (str(n), str(fraction), str(plan.warm), str(plan.seconds))
                    mixed[key_tags][fraction].append(
                        _load("mixed", ports[key_tags], *step, str(plan.count))
                    )
        for n in range(plan.rounds):
            order = (True, False) if n % 2 == 0 else (False, True)
            for key_tags in order:
                batches = (str(plan.batches), "1000", str(plan.write_seconds))
                inserts[key_tags].append(_load("inserts", ports[key_tags], *batches))
            for key_tags in order[::-1]:
                calls = (str(UPDATE_CONCURRENCY), str(plan.updates), str(plan.write_seconds))
                updates[key_tags].append(_load("updates", ports[key_tags], *calls))
    _print_load(mixed)
    return _mixed_rows(primed, mixed) + _write_rows(inserts, updates)


def _server(stack: ExitStack, workdir: Path, built: Path, key_tags: bool) -> int:
    """A server on a copy of ``built`` with its own redis-server; its port."""
    redis = stack.enter_context(redis_server(workdir))
    extra: dict[str, Any] = {
        "databases": [{"name": "orders", "path": "orders.db"}],  # in the server's data dir
        "redis_url": f"redis://127.0.0.1:{redis}/0",
        "cache_ttl_seconds": 3600,  # no expiry during the run: only writes drop entries
        "cache": {"key_tags": key_tags},
    }

    def copy(data: Path) -> None:
        shutil.copyfile(built, data / "orders.db")

    return int(stack.enter_context(serving(workdir, {}, {}, extra, prepare=copy)))


def _load(command: str, port: int, *args: str) -> dict[str, Any]:
    """Run ``bench.keys_load`` in its own process; its JSON."""
    argv = [sys.executable, "-m", "bench.keys_load", command, str(port), *args]
    try:
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench: keys_load {command} failed:\n{exc.stderr}") from exc
    return dict(json.loads(out.stdout))


def _described(key_tags: bool, primed: dict[str, Any]) -> str:
    """One stderr line on priming a server."""
    setting = "on" if key_tags else "off"
    misses = sum(n for status, n in primed["statuses"].items() if status not in HITS)
    return (
        f"key_tags {setting}: read all {CUSTOMERS:,} customers in {primed['seconds']:.1f} s "
        f"({misses:,} misses); a read is cached under {', '.join(primed['tags'])}"
    )


def _print_load(mixed: dict[bool, Steps]) -> None:
    """One stderr line per write share: how busy the load process was (one core is its limit)."""
    for fraction in FRACTIONS:
        busy = [r["load_cpu"] for results in mixed.values() for r in results[fraction]]
        print(
            f"bench: keys: {100 * fraction:g}% writes: the load process used "
            f"{min(busy):.2f}-{max(busy):.2f} of a core",
            file=sys.stderr,
        )


def _mixed_rows(primed: dict[bool, dict[str, Any]], mixed: dict[bool, Steps]) -> list[Row]:
    """Per write share: hit rate, read p50 and p99, reads/s, writes/s (not at 0%)."""
    setting = _setting_invalid(
        primed[True]["tags"], primed[False]["tags"], "a read is cached under"
    )
    out: list[Row] = []
    for fraction in FRACTIONS:
        share = f"{100 * fraction:g}% writes"
        invalid = setting or _errors_invalid([*mixed[True][fraction], *mixed[False][fraction]])
        at_goal = fraction == GOAL_FRACTION
        metrics: list[tuple[str, str, str, float | None, bool]] = [
            ("hit rate", "hit_rate", "hit rate", HIT_RATE_GOAL if at_goal else None, False),
            ("read p50", "p50_ms", "ms", None, True),
            ("read p99", "p99_ms", "ms", P99_GOAL_MS if at_goal else None, True),
            ("reads/s", "reads_per_second", "req/s", None, False),
        ]
        if fraction > 0:
            metrics.append(("writes/s", "writes_per_second", "writes/s", None, False))
        for label, key, unit, goal, lower in metrics:
            name = f"{TITLE}, {share}, {label}" if not out else f"  the same, {share}, {label}"
            ours = [float(r[key]) for r in mixed[True][fraction]]
            theirs = [float(r[key]) for r in mixed[False][fraction]]
            row = Row(name, ours, theirs, unit, AGAINST, goal, lower, invalid, absolute=True)
            out.append(row)
    return out


def _write_rows(inserts: dict[bool, Results], updates: dict[bool, Results]) -> list[Row]:
    """Rows/s with key tracking on over off: 1,000-row BatchInserts, one-row BatchUpdates."""
    invalid = _setting_invalid(
        updates[True][0]["tags"], updates[False][0]["tags"], "a 1-row write bumps"
    )
    against = "key tracking off"
    out = []
    for name, results in (
        ("BatchInsert, 1,000-row batches into orders, key tracking on", inserts),
        (f"1-row BatchUpdate, {UPDATE_CONCURRENCY} concurrent calls, key tracking on", updates),
    ):
        ours, theirs = ([r["rows"] / r["seconds"] for r in results[k]] for k in (True, False))
        out.append(Row(name, ours, theirs, "rows/s", against, WRITE_GOAL, invalid=invalid))
    return out


def _setting_invalid(on: list[str], off: list[str], what: str) -> str | None:
    """Why the two servers do not differ as key tags on and off should, if they do not.

    ``on`` and ``off`` are the tags of the same kind of call on each server,
    ``what`` says which (``a read is cached under``, ``a 1-row write bumps``).
    """
    keyed_on = any(tag.startswith("key:") for tag in on)
    keyed_off = any(tag.startswith("key:") for tag in off)
    if keyed_on and not keyed_off:
        return None
    if not keyed_on:
        return f"invalid: key tags not in effect (with key_tags: true {what} {', '.join(on)})"
    return f"invalid: key tags with key_tags: false ({what} {', '.join(off)})"


def _errors_invalid(results: Results) -> str | None:
    """Why the timed loops of ``results`` do not measure the load, if calls failed."""
    failed: Counter[str] = Counter()
    for result in results:
        failed.update({s: n for s, n in result["statuses"].items() if s.startswith("ERROR")})
        failed.update({f"write {s}": n for s, n in result["write_errors"].items()})
    if not failed:
        return None
    seen = ", ".join(f"{s} {n:,}" for s, n in failed.most_common())
    return f"invalid: {sum(failed.values()):,} calls failed ({seen})"
