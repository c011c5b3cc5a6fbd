"""Uncached reads, group fan-out and scaling: the service against SQLite itself and a peer.

- Uncached point query (indexed, 1M rows) at 32 concurrent calls against
  the same query through stdlib ``sqlite3`` in one process (SQLite's own
  limit) and through Datasette's JSON API (a peer a user might pick,
  installed in the bench venv only and serving the same file read-only).
- A group query over two databases, merged, against the same two queries
  one after the other.
- Scaling: point-query latency at 10k, 100k and 1M rows, and Invalidate of
  a tag with 1, 1k and 100k dependent entries: both should stay flat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.datasets import events_database, stdlib_point_queries
from bench.harness import Row, free_port, running, serving

BENCH_PYTHON = Path(os.environ.get("BENCH_PYTHON", ".venv-bench/bin/python"))


def _load(*args: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.query_load", *args]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=900)
    return dict(json.loads(out.stdout))


def _database_config(name: str, path: Path) -> dict[str, Any]:
    return {"name": name, "path": str(path)}


def bench_points(workdir: Path, quick: bool) -> list[Row]:
    """Uncached point queries: the service, stdlib sqlite3 in-process, and Datasette."""
    rows = 200_000 if quick else 1_000_000
    rounds, count, seconds = (3, 1500, "2") if quick else (5, 8000, "5")
    path = events_database(workdir / f"events-{rows}.db", rows)
    ours, stdlib, peer = [], [], []
    with ExitStack() as stack:
        extra = {"databases": [_database_config("events", path)]}
        port = stack.enter_context(serving(workdir, {}, {}, extra))
        datasette = _start_datasette(stack, path)
        for _ in range(rounds):
            result = _load("points", str(port), str(rows), seconds, f"32:{count}")
            ours.append(float(result["32"]["per_second"]))
            stdlib.append(stdlib_point_queries(path, rows, 1.0))
            if datasette is not None:
                peer.append(_datasette_rate(datasette, path.stem, rows, count, seconds))
    label = f"Uncached point query ({rows:,} rows), 32 concurrent calls"
    out = [Row(label, ours, stdlib, "req/s", "stdlib sqlite3 in-process, serial", None)]
    if peer:
        out.append(Row("  the same", ours, peer, "req/s", "Datasette JSON API", 3.0))
    return out


def _start_datasette(stack: ExitStack, path: Path) -> int | None:
    if not BENCH_PYTHON.exists():
        print(f"bench: no {BENCH_PYTHON} (make bench makes it): Datasette skipped", file=sys.stderr)
        return None
    port = free_port()
    argv = [str(BENCH_PYTHON), "-m", "datasette", "serve", "-i", str(path)]
    argv += ["-h", "127.0.0.1", "-p", str(port), "--setting", "sql_time_limit_ms", "10000"]
    return int(stack.enter_context(running(argv, port, "Datasette")))


def _datasette_rate(port: int, database: str, rows: int, count: int, seconds: str) -> float:
    argv = [str(BENCH_PYTHON), "-m", "bench.http_load", str(port), database, str(rows)]
    argv += [seconds, f"32:{count}"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=900)
    result = json.loads(out.stdout)["32"]
    if result["errors"]:
        raise SystemExit(f"bench: Datasette answered {result['errors']} errors")
    return float(result["per_second"])


def bench_group(workdir: Path, quick: bool) -> list[Row]:
    """A merged group query over two databases against the two queries one after the other.

    Measured with the default ``temp_store=MEMORY`` and with ``FILE``: the
    GROUP BY sorts in memory contend with each other when they run in
    parallel.
    """
    rows = 50_000 if quick else 200_000
    a = events_database(workdir / f"group-a-{rows}.db", rows)
    b = events_database(workdir / f"group-b-{rows}.db", rows)
    extra = {
        "databases": [_database_config("a", a), _database_config("b", b)],
        "groups": [{"name": "ab", "members": ["a", "b"]}],
    }
    out = []
    for temp_store in ("MEMORY", "FILE"):
        grouped, serial = [], []
        with serving(workdir, {"temp_store": temp_store}, {}, extra) as port:
            for _ in range(3 if quick else 5):
                result = _load("group", str(port), "5" if quick else "20")
                grouped.append(1000 / float(result["group_ms"]))
                serial.append(1000 / float(result["serial_ms"]))
        title = f"Group query a + b merged (GROUP BY, 2 x {rows:,} rows), temp_store={temp_store}"
        against = "the two queries one after the other"
        out.append(
            Row(
                title if temp_store == "MEMORY" else f"  the same, temp_store={temp_store}",
                grouped,
                serial,
                "req/s",
                against,
                None,
            )
        )
    return out


def bench_scaling(workdir: Path, quick: bool) -> list[Row]:
    """Point-query latency by table size, and Invalidate time by dependent entries."""
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    entries = (1, 1_000, 10_000) if quick else (1, 1_000, 100_000)
    rounds = 3 if quick else 5
    latency: dict[int, list[float]] = {size: [] for size in sizes}
    for size in sizes:
        path = events_database(workdir / f"events-{size}.db", size)
        with serving(workdir, {}, {}, {"databases": [_database_config("events", path)]}) as port:
            for _ in range(rounds):
                result = _load("points", str(port), str(size), "3", "1:500" if quick else "1:1500")
                latency[size].append(float(result["1"]["p50_ms"]))
    invalidate: dict[int, list[float]] = {n: [] for n in entries}
    room = {"l1_max_entries": 4 * sum(entries), "l1_max_bytes": 1 << 30}
    with serving(workdir, {}, {}, room) as port:
        for round_ in range(3):  # filling 100k entries takes a while
            for n in entries:
                result = _load("invalidate", str(port), str(n), f"scale-{round_}-{n}")
                invalidate[n].append(float(result["first_ms"]))
    small = sizes[0]
    out = [
        Row(
            f"Point query p50, {size:,} rows",
            latency[size],
            latency[small],
            "ms",
            f"{small:,} rows",
            None,
            lower_is_better=True,
        )
        for size in sizes[1:]
    ]
    out += [
        Row(
            f"Invalidate a tag with {n:,} entries",
            invalidate[n],
            invalidate[entries[0]],
            "ms",
            "a tag with 1 entry",
            None,
            lower_is_better=True,
        )
        for n in entries[1:]
    ]
    return out
