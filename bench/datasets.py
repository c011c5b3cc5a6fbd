"""Benchmark data: events databases of a given size, built with the stdlib in the bench's folder."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent / "schema" / "events" / "0001_events.sql"
KINDS = ("click", "view", "buy")


def events_database(path: Path, rows: int) -> Path:
    """An events database of ``rows`` rows at ``path`` (reused when it is already there)."""
    if path.exists():
        return path
    building = path.with_suffix(".building")
    conn = sqlite3.connect(building, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA.read_text())
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO events (id, day, kind, value, payload) VALUES (?, ?, ?, ?, ?)",
            (
                (i, f"2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}", KINDS[i % 3], i % 1000, f"p{i:09d}")
                for i in range(1, rows + 1)
            ),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    building.rename(path)
    return path


def stdlib_point_queries(path: Path, rows: int, seconds: float) -> float:
    """Point queries per second through the stdlib ``sqlite3`` module in this process."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    sql = "SELECT id, day, kind, value FROM events WHERE id = ?"
    pick = random.Random(7)
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(500):
            conn.execute(sql, (pick.randint(1, rows),)).fetchall()
        done += 500
    elapsed = time.perf_counter() - started
    conn.close()
    return done / elapsed


ORDERS_SCHEMA = Path(__file__).resolve().parent / "schema" / "orders" / "0001_orders.sql"


def orders_database(path: Path, rows: int, customers: int) -> Path:
    """An orders database of ``rows`` rows over ``customers`` customers (reused when there).

    Each order goes to a customer drawn uniformly (fixed seed), so every customer
    has about ``rows / customers`` orders; ``day`` is 1-365, ``amount`` 1-500.
    """
    if path.exists():
        return path
    building = path.with_suffix(".building")
    pick = random.Random(5)
    conn = sqlite3.connect(building, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(ORDERS_SCHEMA.read_text())
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO orders (id, customer, day, amount) VALUES (?, ?, ?, ?)",
            (
                (
                    i,
                    pick.randint(1, customers),
                    pick.randint(1, 365),
                    pick.randint(100, 50_000) / 100,
                )
                for i in range(1, rows + 1)
            ),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    building.rename(path)
    return path
