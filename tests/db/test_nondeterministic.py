"""Results that change with no write (chance, the clock) are answered BYPASS, never cached.

SQLite's authorizer names the functions a statement calls when it is first
prepared; ``'now'`` may be a literal, a bound value (positional or named, any
case) or the missing time value of ``datetime()``. A date/time function on a
fixed date stays cacheable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import Running, failure_of, started, value

MIGRATION = """
CREATE TABLE tokens (id INTEGER PRIMARY KEY, expires_at TEXT NOT NULL);
INSERT INTO tokens (expires_at) VALUES ('2000-01-01 00:00:00'), ('2999-01-01 00:00:00');
CREATE VIEW live_tokens AS SELECT id FROM tokens WHERE expires_at > datetime('now');
CREATE VIEW dated_tokens AS SELECT id, date(expires_at) AS day FROM tokens;
"""

ALWAYS = [
    "SELECT random()",
    "SELECT abs(random()) % 10 AS n",
    "SELECT randomblob(4)",
    "SELECT hex(randomblob(2)) FROM tokens",
    "SELECT id FROM tokens ORDER BY random()",
    "SELECT CURRENT_TIMESTAMP",
    "SELECT current_date",
    "SELECT Current_Time",
    "SELECT id FROM tokens WHERE expires_at > CURRENT_TIMESTAMP",
]
NOW_IN_SQL = [
    "SELECT datetime('now')",
    "SELECT date('now')",
    "SELECT time('now')",
    "SELECT julianday('now')",
    "SELECT unixepoch('now')",
    "SELECT strftime('%s', 'now')",
    "SELECT datetime('NOW', '+1 day')",
    "SELECT datetime('nOw')",
    "SELECT datetime(X'6E6F77')",
    "SELECT datetime()",
    "SELECT date ( /* no time value */ )",
    "SELECT time()",
    "SELECT julianday()",
    "SELECT unixepoch()",
    "SELECT strftime('%Y')",
    "SELECT id FROM tokens WHERE expires_at > datetime('now')",
    "SELECT id FROM live_tokens",
]
NOW_BOUND: list[tuple[str, dict[str, Any]]] = [
    ("SELECT datetime(?)", {"params": [value("now")]}),
    ("SELECT date(?, '+1 day')", {"params": [value("NOW")]}),
    ("SELECT strftime('%s', ?)", {"params": [value("Now")]}),
    ("SELECT datetime(?)", {"params": [value(b"now")]}),
    ("SELECT id FROM tokens WHERE expires_at > datetime(?1)", {"params": [value("now")]}),
    ("SELECT datetime(:t)", {"named_params": {":t": value("now")}}),
    ("SELECT julianday(@t)", {"named_params": {"@t": value("noW")}}),
    (
        "SELECT id FROM tokens WHERE expires_at > datetime($at)",
        {"named_params": {"$at": value("now")}},
    ),
]
CACHEABLE: list[tuple[str, dict[str, Any]]] = [
    ("SELECT datetime('2026-01-01')", {}),
    ("SELECT date('2026-01-01', '+1 day'), strftime('%Y', '2026-01-01')", {}),
    ("SELECT id FROM tokens WHERE expires_at > datetime(?)", {"params": [value("2026-01-01")]}),
    ("SELECT datetime(:t)", {"named_params": {":t": value("2026-01-01 10:00")}}),
    ("SELECT date(expires_at) FROM tokens", {}),
    ("SELECT day FROM dated_tokens", {}),
    ("SELECT 'now' AS word", {}),  # no date/time function: a plain string
]


@pytest.fixture
async def clocked(tmp_path: Path) -> AsyncIterator[Running]:
    """A server whose database has rows that expire and views over the clock."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_tokens.sql").write_text(MIGRATION)
    document = {
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "databases": [{"name": "clock", "path": "clock.db", "migrations": str(migrations)}],
    }
    async with started(tmp_path, document) as running:
        yield running


async def _statuses(running: Running, sql: str, extra: dict[str, Any]) -> list[int]:
    request = pb.QueryRequest(database="clock", sql=sql, **extra)
    return [(await running.stub.Query(request)).cache_status for _ in range(3)]


@pytest.mark.parametrize("sql", ALWAYS + NOW_IN_SQL)
async def test_chance_and_now_in_the_sql_are_never_cached(clocked: Running, sql: str) -> None:
    assert await _statuses(clocked, sql, {}) == [pb.CACHE_STATUS_BYPASS] * 3


@pytest.mark.parametrize(("sql", "extra"), NOW_BOUND)
async def test_now_bound_as_a_parameter_is_never_cached(
    clocked: Running, sql: str, extra: dict[str, Any]
) -> None:
    assert await _statuses(clocked, sql, extra) == [pb.CACHE_STATUS_BYPASS] * 3


@pytest.mark.parametrize(("sql", "extra"), CACHEABLE)
async def test_a_fixed_date_stays_cacheable(
    clocked: Running, sql: str, extra: dict[str, Any]
) -> None:
    statuses = await _statuses(clocked, sql, extra)
    assert statuses == [pb.CACHE_STATUS_MISS] + [pb.CACHE_STATUS_HIT_LOCAL] * 2


async def test_the_same_statement_with_now_then_a_date_then_now(clocked: Running) -> None:
    """The shape is learnt once; the bound value is looked at on every call."""
    sql = "SELECT id FROM tokens WHERE expires_at > datetime(?)"
    assert await _statuses(clocked, sql, {"params": [value("2026-01-01")]}) == [
        pb.CACHE_STATUS_MISS,
        pb.CACHE_STATUS_HIT_LOCAL,
        pb.CACHE_STATUS_HIT_LOCAL,
    ]
    assert await _statuses(clocked, sql, {"params": [value("now")]}) == [pb.CACHE_STATUS_BYPASS] * 3


async def test_an_expired_row_is_not_served_from_the_cache(clocked: Running) -> None:
    """The filter on the clock is evaluated by SQLite on every call."""
    sql = "SELECT id FROM tokens WHERE expires_at > datetime('now') ORDER BY id"
    first = await clocked.stub.Query(pb.QueryRequest(database="clock", sql=sql))
    assert [r.values[0].integer for r in first.rows] == [2]
    with clocked.sqlite("clock") as direct:  # the token expires, with no write through the service
        direct.execute("UPDATE tokens SET expires_at = '2001-01-01 00:00:00' WHERE id = 2")
    again = await clocked.stub.Query(pb.QueryRequest(database="clock", sql=sql))
    assert (again.cache_status, list(again.rows)) == (pb.CACHE_STATUS_BYPASS, [])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT changes()",
        "SELECT last_insert_rowid()",
        "SELECT total_changes()",
        "SELECT sqlite_offset(id) FROM tokens",
    ],
)
async def test_connection_state_functions_are_refused_to_readers(
    clocked: Running, sql: str
) -> None:
    """They describe the reader's own connection, never the data: refused, so never cached
    (this SQLite is built without sqlite_offset, which is then unknown)."""
    failure = await failure_of(clocked.stub.Query(pb.QueryRequest(database="clock", sql=sql)))
    assert (failure.code, "is not allowed" in failure.details) in [
        (grpc.StatusCode.PERMISSION_DENIED, True),
        (grpc.StatusCode.NOT_FOUND, False),
    ]


async def test_current_timestamp_is_allowed_in_writes_too(clocked: Running) -> None:
    """CURRENT_TIMESTAMP and datetime('now') are allowed alike, in reads and in writes."""
    statement = pb.Statement(sql="INSERT INTO tokens (expires_at) VALUES (CURRENT_TIMESTAMP)")
    await clocked.stub.BatchUpdate(pb.BatchUpdateRequest(database="clock", statements=[statement]))
    statement = pb.Statement(sql="INSERT INTO tokens (expires_at) VALUES (datetime('now'))")
    await clocked.stub.BatchUpdate(pb.BatchUpdateRequest(database="clock", statements=[statement]))
    count = await clocked.stub.Query(
        pb.QueryRequest(
            database="clock", sql="SELECT count(*) FROM tokens WHERE expires_at > '2026'"
        )
    )
    assert count.rows[0].values[0].integer == 3
