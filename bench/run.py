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
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


@dataclass
class Row:
    """One line of the table: a figure, its comparison, and the goal for their ratio."""

    scenario: str
    ours: list[float]
    theirs: list[float]
    unit: str
    against: str
    goal: float | None

    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours, self.theirs, strict=True)]

    def line(self) -> str:
        r = self.ratios()
        med = statistics.median(r)
        goal = "-" if self.goal is None else f">= {self.goal:g}"
        verdict = "" if self.goal is None else "met" if med >= self.goal else "NOT met"
        return (
            f"| {self.scenario} | {statistics.median(self.ours):,.0f} {self.unit} | "
            f"{self.against}: {statistics.median(self.theirs):,.0f} {self.unit} | "
            f"{med:.2f} ({min(r):.2f}-{max(r):.2f}) | {goal} | {verdict} |"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(workdir: Path, sqlite: dict[str, Any], limits: dict[str, Any]) -> Iterator[int]:
    """``python -m service`` on a fresh events database; yields its port."""
    data = workdir / f"data-{time.monotonic_ns()}"
    data.mkdir()
    config = {
        "data_dir": str(data),
        "databases": [
            {"name": "events", "path": "events.db", "migrations": str(ROOT / "schema" / "events")}
        ],
        "sqlite": sqlite,
        "limits": limits,
    }
    path = data / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = _free_port()
    env = {
        **os.environ,
        "DATAACCESS_CONFIG": str(path),
        "DATAACCESS_LISTEN": f"127.0.0.1:{port}",
        "DATAACCESS_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], env=env)
    try:
        _wait(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(30)


def _wait(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("bench: the server did not start")


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


def stdlib_executemany(workdir: Path, rows: int) -> float:
    """Rows/s of stdlib sqlite3 executemany in one transaction on the same schema."""
    path = workdir / f"stdlib-{time.monotonic_ns()}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript((ROOT / "schema" / "events" / "0001_events.sql").read_text())
    data = [
        (f"2026-01-{i % 28 + 1:02d}", ("click", "view", "buy")[i % 3], i, f"payload {i:08d}")
        for i in range(rows)
    ]
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events (day, kind, value, payload) VALUES (?, ?, ?, ?)", data)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return rows / elapsed


def bench_batch_insert(workdir: Path, rounds: int, batches: int) -> Row:
    ours, theirs = [], []
    for _ in range(rounds):
        theirs.append(stdlib_executemany(workdir, batches * 1000))
        with serving(workdir, {"synchronous": "NORMAL"}, {}) as port:
            result = load("batch_insert", port, batches, 1000)
        ours.append(result["rows"] / result["seconds"])
    return Row(
        "BatchInsert, 1,000-row batches", ours, theirs, "rows/s", "stdlib executemany, one tx", 0.5
    )


def bench_group_commit(workdir: Path, rounds: int, each: int) -> list[Row]:
    rows_ours, rows_theirs, tx_ours, tx_theirs = [], [], [], []
    full = {"synchronous": "FULL"}
    for _ in range(rounds):
        with serving(workdir, full, {"group_commit": False}) as port:
            single = load("concurrent_inserts", port, 64, each)
        with serving(workdir, full, {"group_commit": True}) as port:
            grouped = load("concurrent_inserts", port, 64, each)
        rows_theirs.append(single["rows"] / single["seconds"])
        rows_ours.append(grouped["rows"] / grouped["seconds"])
        tx_theirs.append(single["transactions"] / single["seconds"])
        tx_ours.append(grouped["transactions"] / grouped["seconds"])
    return [
        Row(
            "64 concurrent 1-row inserts, synchronous=FULL",
            rows_ours,
            rows_theirs,
            "rows/s",
            "one tx per RPC",
            10.0,
        ),
        Row("  the same, commits", tx_ours, tx_theirs, "tx/s", "one tx per RPC", None),
    ]


def main() -> None:
    """Run the benchmarks, print the table, write it under bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and rows (~1 min)")
    args = parser.parse_args()
    rounds, batches, each = (3, 10, 10) if args.quick else (5, 50, 40)
    with tempfile.TemporaryDirectory(prefix="dataaccess-bench-") as tmp:
        workdir = Path(tmp)
        steps: list[Callable[[], Row | list[Row]]] = [
            lambda: bench_batch_insert(workdir, rounds, batches),
            lambda: bench_group_commit(workdir, rounds, each),
        ]
        rows: list[Row] = []
        for step in steps:
            result = step()
            rows += result if isinstance(result, list) else [result]
    _report(rows, quick=args.quick)


def _report(rows: list[Row], *, quick: bool) -> None:
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
    text = "\n".join([head, "", *table])
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(text + "\n")
    (RESULTS / "latest.json").write_text(
        json.dumps(
            {"header": head, "rows": [asdict(r) | {"ratios": r.ratios()} for r in rows]}, indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
