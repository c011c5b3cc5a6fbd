"""Health of one PostgreSQL database: connectivity, role (primary or standby), replication
lag, size, and transactions open too long."""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg

from service import errors
from service.db.door import Finding, Severity
from service.db.postgres.connections import ReaderPool

_PROBE_SECONDS = 1.0
LONG_TRANSACTION_SECONDS = 300
_FACTS = """
SELECT pg_is_in_recovery() AS standby,
       pg_database_size(current_database()) AS size,
       CASE WHEN pg_is_in_recovery()
            THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())
            ELSE (SELECT max(extract(epoch FROM replay_lag)) FROM pg_stat_replication) END AS lag,
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
          AND xact_start < now() - make_interval(secs => $1)) AS long_transactions
"""


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


async def probe(
    readers: ReaderPool,
    writers: asyncpg.Pool | None,
    database: str,
    deep: bool,
    on_lag: Callable[[float], None] = lambda seconds: None,
) -> list[Finding]:
    """What a Health call reports for this database; ``on_lag`` is told the replication lag."""
    started = time.monotonic()
    deadline = started + _PROBE_SECONDS * (10 if deep else 1)
    try:
        async with readers.reader(deadline) as connection:
            await connection.fetchval("SELECT 1", timeout=deadline - time.monotonic())
        if writers is None:
            raise errors.Unavailable(f"{database}: not open")
        async with writers.acquire(timeout=max(0.01, deadline - time.monotonic())) as connection:
            facts = await connection.fetchrow(
                _FACTS, float(LONG_TRANSACTION_SECONDS), timeout=deadline - time.monotonic()
            )
    except errors.DataAccessError as exc:
        return [Finding("", Severity.CRITICAL, exc.message, _ms(started))]
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        return [Finding("", Severity.CRITICAL, f"PostgreSQL unreachable: {exc}", _ms(started))]
    assert facts is not None
    found = [Finding("", Severity.HEALTHY, "probe query answered", _ms(started))]
    role = "standby (read only)" if facts["standby"] else "primary"
    found.append(Finding("role", Severity.HEALTHY, role))
    lag = facts["lag"]
    lag_text = "no standbys" if lag is None else f"{float(lag):.2f} s"
    on_lag(0.0 if lag is None else float(lag))
    found.append(Finding("replication", Severity.HEALTHY, f"replication lag {lag_text}"))
    found.append(Finding("size", Severity.HEALTHY, f"{int(facts['size']) // 1024} KiB"))
    long = int(facts["long_transactions"])
    severity = Severity.DEGRADED if long else Severity.HEALTHY
    found.append(
        Finding(
            "long_transactions",
            severity,
            f"{long} transactions open over {LONG_TRANSACTION_SECONDS} s",
        )
    )
    return found
