"""``make bench``: each speed goal as a ratio of two things measured side by side, in one run.

The server runs as users run it (``python -m service``), the load comes from
another process, and every pair is measured alternately over several rounds;
the table shows the median ratio with its min-max next to the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench.cached import L1_HIT, REDIS_HIT, Plan, bare_server, bench_cached, bench_tracing
from bench.durability import bench_durability
from bench.harness import ROOT, Row, serving
from bench.idempotent import bench_idempotent
from bench.keys import bench_keys
from bench.misses import bench_misses
from bench.postgres import bench_postgres
from bench.sqlite_scenarios import bench_group, bench_points, bench_scaling
from bench.workers import bench_workers

RESULTS = ROOT / "results"


def load(scenario: str, port: int, *numbers: int) -> dict[str, float]:
    """Run one load generator in its own process."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", scenario, str(port), *map(str, numbers)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return dict(json.loads(out.stdout))


def stdlib_executemany(path: Path, rows: int, batch_rows: int = 0) -> float:
    """Rows/s of stdlib sqlite3 executemany on the same schema: in one transaction, or
    with ``batch_rows`` one transaction per that many rows.

    Called once per round on the same file, so its table grows as the
    service's does (the service keeps one database across rounds).
    """
    fresh = not path.exists()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    if fresh:
        conn.executescript((ROOT / "schema" / "events" / "0001_events.sql").read_text())
    data = [
        (f"2026-01-{i % 28 + 1:02d}", ("click", "view", "buy")[i % 3], i, f"payload {i:08d}")
        for i in range(rows)
    ]
    step = batch_rows or rows
    batches = [data[start : start + step] for start in range(0, rows, step)]
    insert = "INSERT INTO events (day, kind, value, payload) VALUES (?, ?, ?, ?)"
    started = time.perf_counter()
    for batch in batches:
        conn.execute("BEGIN")
        conn.executemany(insert, batch)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return rows / elapsed


def bench_batch_insert(workdir: Path, rounds: int, batches: int) -> list[Row]:
    """Batches as the client sends them (columnar) and in the row form, against stdlib in
    one transaction; and the columnar batches against stdlib committing every 1,000 rows,
    as the service must (each BatchInsert is a transaction of its own)."""
    columnar: list[float] = []
    rows: list[float] = []
    theirs: list[float] = []
    per_batch: list[float] = []
    with serving(workdir, {"synchronous": "NORMAL"}, {}) as port:
        for n in range(rounds):
            theirs.append(stdlib_executemany(workdir / "stdlib.db", batches * 1000))
            per_batch.append(stdlib_executemany(workdir / "stdlib.db", batches * 1000, 1000))
            forms = ("batch_insert", "batch_insert_rows")
            for scenario in forms if n % 2 == 0 else forms[::-1]:
                result = load(scenario, port, batches, 1000)
                figures = columnar if scenario == "batch_insert" else rows
                figures.append(result["rows"] / result["seconds"])
    against = "stdlib executemany, one tx"
    return [
        Row("BatchInsert, 1,000-row batches", columnar, theirs, "rows/s", against, 0.5),
        Row("  the same, row form", rows, theirs, "rows/s", against, None),
        Row("  the same", columnar, per_batch, "rows/s", "stdlib, one tx per 1,000 rows", None),
    ]


def bench_group_commit(workdir: Path, rounds: int, each: int) -> list[Row]:
    """64 concurrent one-row BatchInserts at synchronous=FULL: group commit against one
    transaction per RPC, and against a bare server answering the same calls doing nothing
    (the gRPC request rate, which is what limits group commit)."""
    rows_ours, rows_theirs, tx_ours, tx_theirs, rows_bare = [], [], [], [], []
    full = {"synchronous": "FULL"}
    empty = workdir / "bare-query.bin"
    empty.write_bytes(b"")
    with (
        serving(workdir, full, {"group_commit": False}) as one_each,
        serving(workdir, full, {"group_commit": True}) as together,
        bare_server(empty) as bare,
    ):
        for n in range(rounds):
            order = (one_each, together, bare) if n % 2 == 0 else (bare, together, one_each)
            answers = {port: load("concurrent_inserts", port, 64, each) for port in order}
            single, grouped, nothing = answers[one_each], answers[together], answers[bare]
            rows_theirs.append(single["rows"] / single["seconds"])
            rows_ours.append(grouped["rows"] / grouped["seconds"])
            tx_theirs.append(single["transactions"] / single["seconds"])
            tx_ours.append(grouped["transactions"] / grouped["seconds"])
            rows_bare.append(nothing["rows"] / nothing["seconds"])
    title = "64 concurrent 1-row inserts, synchronous=FULL"
    return [
        Row(title, rows_ours, rows_bare, "rows/s", "bare grpc.aio, same calls", 0.8),
        Row("  the same", rows_ours, rows_theirs, "rows/s", "one tx per RPC", None),
        Row("  the same, commits", tx_ours, tx_theirs, "tx/s", "one tx per RPC", None),
    ]


def main() -> None:
    """Run the benchmarks, print the table, write it under bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and rows (~1 min)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only the steps whose name contains NAME (repeatable; the table is not saved): "
        + ", ".join(STEPS),
    )
    args = parser.parse_args()
    names = [n for n in STEPS if not args.only or any(o in n for o in args.only)]
    if not names:
        parser.error(f"--only: no step matches {args.only}; the steps are {', '.join(STEPS)}")
    with tempfile.TemporaryDirectory(prefix="dataaccess-bench-") as tmp:
        rows: list[Row] = []
        for name in names:
            rows += STEPS[name](Path(tmp), args.quick)
    _report(rows, quick=args.quick, save=not args.only)


def _batch_insert(workdir: Path, quick: bool) -> list[Row]:
    return bench_batch_insert(workdir, *((3, 10) if quick else (5, 50)))


def _group_commit(workdir: Path, quick: bool) -> list[Row]:
    return bench_group_commit(workdir, *((3, 10) if quick else (5, 40)))


STEPS: dict[str, Callable[[Path, bool], list[Row]]] = {
    "batch_insert": _batch_insert,
    "group_commit": _group_commit,
    "idempotent": bench_idempotent,
    "cached_l1": lambda workdir, quick: bench_cached(workdir, L1_HIT, Plan.for_run(quick)),
    "cached_redis": lambda workdir, quick: bench_cached(workdir, REDIS_HIT, Plan.for_run(quick)),
    "tracing": lambda workdir, quick: bench_tracing(workdir, Plan.for_run(quick)),
    "misses": bench_misses,
    "keys": bench_keys,
    "points": bench_points,
    "group": bench_group,
    "scaling": bench_scaling,
    "durability": bench_durability,
    "postgres": bench_postgres,
    "workers": bench_workers,
}


def _report(rows: list[Row], *, quick: bool, save: bool) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    head = (
        f"{time.strftime('%Y-%m-%d')} · commit {commit} · {os.cpu_count()} cores · "
        f"Python {platform.python_version()} · SQLite {sqlite3.sqlite_version}"
        f"{' · quick' if quick else ''}"
    )
    table = [
        "| scenario | dataaccess | compared with | ratio, median (min-max) | goal | |",
        "| --- | --- | --- | --- | --- | --- |",
        *[row.line() for row in rows],
    ]
    text = "\n".join([head, "", *table, *_warnings(rows)])
    print(text)
    if not save:
        print("(--only: not written to bench/results/)", file=sys.stderr)
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(text + "\n")
    (RESULTS / "latest.json").write_text(
        json.dumps(
            {"header": head, "rows": [asdict(r) | {"ratios": r.ratios()} for r in rows]}, indent=2
        )
        + "\n"
    )


def _warnings(rows: list[Row]) -> list[str]:
    """One line under the table for each scenario with rows whose figures are not what they name."""
    invalid: dict[str, int] = {}
    parent = ""
    for row in rows:
        parent = parent if row.scenario.startswith(" ") else row.scenario
        if row.invalid is not None:
            invalid[parent] = invalid.get(parent, 0) + 1
    lines = [
        f"WARNING: {name}: {count} row(s) invalid, see the last column; "
        "their figures do not measure what the rows name."
        for name, count in invalid.items()
    ]
    return ["", *lines] if lines else []


if __name__ == "__main__":
    main()
