"""Idempotent writes against plain ones: one-row BatchInserts, one at a time, same server.

The events database is seeded, before the server starts, with 1,000,000
live idempotency keys (random, as clients make them), so the figure shows
what a full key table costs each write; a write that scanned the table
(as the expiry did before it used an index) would take tens of milliseconds.
Plain and idempotent writes alternate round by round on the same server.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.harness import Row, serving
from service.db.sqlite import idempotency

SEEDED_KEYS = 1_000_000


def seed_keys(data_dir: Path, keys: int = SEEDED_KEYS) -> None:
    """Write ``keys`` live idempotency keys into events.db, created within the last day."""
    conn = sqlite3.connect(data_dir / "events.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")  # a fresh file: nothing to recover
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(idempotency.CREATE_TABLE)
        now = time.time()
        fingerprint = hashlib.sha256(b"seed").hexdigest()
        outcome = json.dumps({"rows_affected": [1], "last_insert_rowid": 1, "tables": ["events"]})
        # Sorted, so the B-tree is built by appending; the keys stay random.
        names = sorted(uuid.uuid4().hex for _ in range(keys))
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO {idempotency.TABLE} VALUES (?, ?, ?, ?)",
            ((name, fingerprint, outcome, now - 80_000 * n / keys) for n, name in enumerate(names)),
        )
        conn.execute(idempotency.CREATE_INDEX)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _latencies(port: int, calls: int, idempotent: bool) -> list[float]:
    argv = [sys.executable, "-m", "bench.load", "single_inserts", str(port), str(calls)]
    argv.append("1" if idempotent else "0")
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300)
    return list(json.loads(out.stdout)["latencies_ms"])


def bench_idempotent(workdir: Path, quick: bool) -> list[Row]:
    """p50 latency of a one-row idempotent BatchInsert over a plain one, 1M live keys."""
    rounds, calls = (3, 100) if quick else (5, 300)
    ours: list[float] = []
    theirs: list[float] = []
    started = time.perf_counter()
    with serving(workdir, {"synchronous": "NORMAL"}, {}, prepare=seed_keys) as port:
        print(
            f"bench: seeded and started in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        for n in range(rounds):
            for idempotent in (n % 2 == 0, n % 2 != 0):
                figure = statistics.median(_latencies(port, calls, idempotent))
                (ours if idempotent else theirs).append(figure)
    return [
        Row(
            f"1-row BatchInsert with idempotency_key, {SEEDED_KEYS:,} live keys, p50",
            ours,
            theirs,
            "ms",
            "the same without a key",
            1.5,
            lower_is_better=True,
        )
    ]
