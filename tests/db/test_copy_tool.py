"""``python -m service copy``: a real SQLite file copied into a real PostgreSQL database,
every value kept, resumed after an interruption without duplicates, counts checked."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from service.config import Config, DatabaseConfig, PostgresDatabaseConfig
from service.db.postgres.copy_from_sqlite import (
    CopyError,
    check_counts,
    copy_database,
    counts_table,
)
from service.db.postgres.sqlite_source import postgres_type

BIG = 2**63 - 1
AWKWARD_TEXT = "tab\there\nnew line\r\\back\\slash \\N é ☃"


def make_sqlite(path: Path, script: str, rows: dict[str, list[tuple[Any, ...]]]) -> Path:
    """A SQLite file at ``path`` made by ``script``, with ``rows`` inserted per table."""
    with sqlite3.connect(path) as db:
        db.executescript(script)
        for table, values in rows.items():
            marks = ", ".join("?" for _ in values[0])
            db.executemany(f'INSERT INTO "{table}" VALUES ({marks})', values)
    db.close()
    return path


def config_of(sqlite_path: Path, url: str, schema: str = "public") -> Config:
    return Config(
        databases=(
            DatabaseConfig("src", sqlite_path),
            PostgresDatabaseConfig("pg", url, schema=schema),
        )
    )


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres_url, timeout=10)
    try:
        yield connection
    finally:
        await connection.close()


SCHEMA = """
CREATE TABLE items (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, data BLOB, big BIGINT,
  flag BOOLEAN, amount DECIMAL(10, 2), day DATE, loose
);
CREATE TABLE pairs (a TEXT, b INTEGER, note VARCHAR(20), PRIMARY KEY (a, b)) WITHOUT ROWID;
CREATE TABLE _dataaccess_outbox (id INTEGER PRIMARY KEY);
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY);
CREATE VIRTUAL TABLE docs USING fts5(body);
"""
ITEMS = [
    (1, AWKWARD_TEXT, 0.1, b"\x00\x01\\\t\n\xff", BIG, 1, 1.5, "2026-01-02", "x"),
    (2, "", None, None, None, None, None, None, None),
    (3, "neg", -1e300, b"", -BIG - 1, 0, 12345678.25, "not a date", 7),
]
PAIRS = [("a\tb", 1, None), ("a\tb", 2, "two"), ("z", -5, "\\")]


async def test_copy_keeps_every_value_and_maps_types(tmp_path: Path, postgres_url: str, pg) -> None:
    path = make_sqlite(tmp_path / "src.db", SCHEMA, {"items": ITEMS, "pairs": PAIRS})
    counts = await copy_database(config_of(path, postgres_url), "src", "pg")

    assert [(c.table, c.source, c.target) for c in counts] == [("items", 3, 3), ("pairs", 3, 3)]
    rows = await pg.fetch("SELECT * FROM items ORDER BY id")
    assert [tuple(r) for r in rows][1] == (2, "", None, None, None, None, None, None, None)
    first, third = tuple(rows[0]), tuple(rows[2])
    assert first[:5] == ITEMS[0][:5]
    assert (first[5], str(first[6]), first[7], first[8]) == (True, "1.5", "2026-01-02", "x")
    assert third[:6] == (3, "neg", -1e300, b"", -BIG - 1, False)
    assert (third[7], third[8]) == ("not a date", "7")  # text, exactly as SQLite held it
    pairs = await pg.fetch("SELECT a, b, note FROM pairs ORDER BY a, b")
    assert [tuple(r) for r in pairs] == PAIRS
    types = await pg.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_name = 'items' ORDER BY ordinal_position"
    )
    assert [(r[0], r[1], r[2]) for r in types] == [
        ("id", "bigint", "NO"),
        ("name", "text", "NO"),
        ("price", "double precision", "YES"),
        ("data", "bytea", "YES"),
        ("big", "bigint", "YES"),
        ("flag", "boolean", "YES"),
        ("amount", "numeric", "YES"),
        ("day", "text", "YES"),
        ("loose", "text", "YES"),
    ]
    keys = await pg.fetch(
        "SELECT conrelid::regclass::text AS t, pg_get_constraintdef(oid) AS d"
        " FROM pg_constraint WHERE contype = 'p' AND conrelid::regclass::text IN ('items', 'pairs')"
        " ORDER BY 1"
    )
    assert [(r["t"], r["d"]) for r in keys] == [
        ("items", "PRIMARY KEY (id)"),
        ("pairs", "PRIMARY KEY (a, b)"),
    ]
    made = {
        r[0] for r in await pg.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert made == {"items", "pairs", "_dataaccess_copy_progress"}  # no internal, FTS, shadow


def test_declared_types_map_by_sqlite_affinity() -> None:
    assert [
        postgres_type(t)
        for t in ["INT", "UNSIGNED BIG INT", "NVARCHAR(10)", "CLOB", "BLOB", "DOUBLE PRECISION"]
    ] == ["bigint", "bigint", "text", "text", "bytea", "double precision"]
    assert [postgres_type(t) for t in ["FLOAT", "NUMERIC", "DECIMAL(5,2)", "", "BOOLEAN"]] == [
        "double precision",
        "numeric",
        "numeric",
        "text",
        "boolean",
    ]
    assert postgres_type("FLOATING POINT") == "bigint"  # SQLite's own rule: it holds "INT"


async def test_an_existing_target_table_is_used_as_it_is(
    tmp_path: Path, postgres_url: str, pg
) -> None:
    path = make_sqlite(
        tmp_path / "src.db",
        "CREATE TABLE Notes (ID INTEGER PRIMARY KEY, Body, Raw BLOB);",
        {"Notes": [(1, "hello", "text in a blob column"), (2, b"bytes", b"\x00")]},
    )
    await pg.execute(
        "CREATE TABLE notes (id integer PRIMARY KEY, body varchar(40), raw bytea,"
        " added timestamptz NOT NULL DEFAULT now())"
    )
    await copy_database(config_of(path, postgres_url), "src", "pg")

    rows = await pg.fetch("SELECT id, body, raw, added IS NOT NULL FROM notes ORDER BY id")
    assert [tuple(r) for r in rows] == [
        (1, "hello", b"text in a blob column", True),
        (2, "bytes", b"\x00", True),
    ]


async def test_a_rerun_resumes_after_the_last_committed_batch(
    tmp_path: Path, postgres_url: str, pg
) -> None:
    path = make_sqlite(
        tmp_path / "src.db",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT);"
        "CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID;",
        {
            "events": [(i, f"k{i}") for i in range(1, 2_501)],
            "tags": [(f"t{i:04d}", i) for i in range(1, 2_501)],
        },
    )
    # No primary key in the target, so a duplicated row would not be refused; a check
    # that rejects rows past 1,700 makes a table's third batch fail.
    await pg.execute(
        "CREATE TABLE events (id bigint, kind text, CONSTRAINT upto CHECK (id <= 1700))"
    )
    await pg.execute("CREATE TABLE tags (name text, n bigint, CONSTRAINT upto CHECK (n <= 1700))")
    config = config_of(path, postgres_url)

    with pytest.raises(CopyError, match="upto"):
        await copy_database(config, "src", "pg", batch_rows=800)
    assert await pg.fetchval("SELECT count(*) FROM events") == 1_600
    await pg.execute("ALTER TABLE events DROP CONSTRAINT upto")
    with pytest.raises(CopyError, match="upto"):
        await copy_database(config, "src", "pg", batch_rows=800)
    assert await pg.fetchval("SELECT count(*) FROM tags") == 1_600
    await pg.execute("ALTER TABLE tags DROP CONSTRAINT upto")
    counts = await copy_database(config, "src", "pg", batch_rows=800)

    assert [(c.source, c.target) for c in counts] == [(2_500, 2_500), (2_500, 2_500)]
    assert await pg.fetchval("SELECT count(DISTINCT id) FROM events") == 2_500
    assert await pg.fetchval("SELECT count(DISTINCT name) FROM tags") == 2_500
    progress = await pg.fetch("SELECT tbl, last_key, rows, done FROM _dataaccess_copy_progress")
    assert sorted(tuple(r) for r in progress) == [
        ("events", "[2500]", 2_500, True),
        ("tags", '["t2500"]', 2_500, True),
    ]


async def test_a_target_with_rows_the_copy_did_not_write_is_refused(
    tmp_path: Path, postgres_url: str, pg
) -> None:
    path = make_sqlite(
        tmp_path / "src.db", "CREATE TABLE t (id INTEGER PRIMARY KEY);", {"t": [(1,), (2,)]}
    )
    await pg.execute("CREATE TABLE t (id bigint); INSERT INTO t VALUES (1)")

    with pytest.raises(CopyError, match="already has rows this copy did not write"):
        await copy_database(config_of(path, postgres_url), "src", "pg")
    assert await pg.fetchval("SELECT count(*) FROM t") == 1


async def test_counts_that_differ_are_reported(tmp_path: Path, postgres_url: str, pg) -> None:
    path = make_sqlite(
        tmp_path / "src.db",
        "CREATE TABLE a (id INTEGER PRIMARY KEY); CREATE TABLE b (id INTEGER PRIMARY KEY);",
        {"a": [(1,), (2,)], "b": [(1,)]},
    )
    config = config_of(path, postgres_url)
    check_counts(await copy_database(config, "src", "pg"))
    with sqlite3.connect(path) as db:  # written after its table was copied: a finished
        db.execute("INSERT INTO a VALUES (3)")  # table is skipped, so the counts differ
    db.close()

    counts = await copy_database(config, "src", "pg")
    assert counts_table(counts).splitlines() == [
        "table  sqlite  postgresql",
        "a           3           2  DIFFERS",
        "b           1           1  ok",
    ]
    with pytest.raises(CopyError, match=r"^row counts differ after the copy: a \(sqlite 3, "):
        check_counts(counts)


def write_config(tmp_path: Path, sqlite_path: Path, url: str) -> dict[str, str]:
    document = {
        "data_dir": str(tmp_path),
        "databases": [
            {"name": "src", "path": str(sqlite_path)},
            {"name": "pg", "url": url, "schema": "moved"},
        ],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    return {**os.environ, "DATAACCESS_CONFIG": str(tmp_path / "config.yaml")}


def run_copy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "copy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_cli_copies_and_prints_the_counts(tmp_path: Path, postgres_url: str, pg) -> None:
    path = make_sqlite(tmp_path / "src.db", SCHEMA, {"items": ITEMS, "pairs": PAIRS})
    env = write_config(tmp_path, path, postgres_url)

    done = run_copy(env, "src", "pg")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "table  sqlite  postgresql",
        "items       3           3  ok",
        "pairs       3           3  ok",
    ]
    assert await pg.fetchval("SELECT name FROM moved.items WHERE id = 1") == AWKWARD_TEXT

    await pg.execute("DELETE FROM moved.pairs WHERE b = 2")
    mismatch = run_copy(env, "src", "pg")
    assert mismatch.returncode == 1
    assert "pairs       3           2  DIFFERS" in mismatch.stdout
    last = mismatch.stderr.strip().splitlines()[-1]
    assert last.startswith("dataaccess: row counts differ after the copy: pairs (sqlite 3, ")

    for args, message in [
        (("pg", "pg"), "dataaccess: pg: not a configured SQLite database"),
        (("src", "nope"), "dataaccess: nope: not a configured PostgreSQL database"),
    ]:
        wrong = run_copy(env, *args)
        assert (wrong.returncode, wrong.stderr.strip()) == (1, message)
    usage = run_copy(env, "src")
    assert usage.returncode == 2 and "copy SOURCE TARGET" in usage.stderr


async def test_a_killed_cli_copy_resumes_without_duplicates(
    tmp_path: Path, postgres_url: str, pg
) -> None:
    rows = 300_000
    path = tmp_path / "src.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO big VALUES (?, ?)", ((i, f"v{i}") for i in range(rows)))
    db.close()
    env = write_config(tmp_path, path, postgres_url)
    await pg.execute("CREATE SCHEMA moved; CREATE TABLE moved.big (id bigint, v text)")

    process = subprocess.Popen(
        [sys.executable, "-m", "service", "copy", "src", "pg"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not await pg.fetchval("SELECT count(*) FROM moved.big"):
            assert time.monotonic() < deadline and process.poll() is None
            await asyncio.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(10)
    copied = await pg.fetchval("SELECT count(*) FROM moved.big")
    assert 0 < copied < rows and copied % 5_000 == 0

    done = run_copy(env, "src", "pg")
    assert done.returncode == 0, done.stderr
    assert await pg.fetchval("SELECT count(*) FROM moved.big") == rows
    assert await pg.fetchval("SELECT count(DISTINCT id) FROM moved.big") == rows
