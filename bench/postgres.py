"""The service on PostgreSQL against asyncpg itself and against the service on SQLite.

A throwaway PostgreSQL (initdb + postgres on a free loopback port, as the
``postgres`` OS user when run as root, stopped by its pid) holds two
databases with the same 100,000 events rows: ``bench``, served by
``python -m service`` (its migrations, ``bench/schema/events_pg``, create and
seed it), and ``direct``, which asyncpg writes to without the service's
triggers. A second server serves the same rows from a SQLite file. Each
round measures:

- uncached point reads (cache BYPASS) at 32 concurrent calls: the service on
  PostgreSQL, asyncpg on a pool in the load process (as many connections as
  the service's readers), the service on SQLite;
- a cached Query (L1 hits) on PostgreSQL against the same on SQLite;
- BatchInsert of 1,000-row batches through the service against asyncpg's
  ``copy_records_to_table`` of the same rows (which goes first alternating).

Every load runs in a process of its own (``bench.postgres_load``). The reads
and the hits are measured in turns of a fraction of a second within one load
process, so a load elsewhere on the machine weighs on both sides of a ratio
alike. An answer with the wrong cache status marks its row invalid.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from bench.datasets import events_database
from bench.harness import ROOT, Row, free_port, serving, wait_for_port

ROWS = 100_000  # as bench/schema/events_pg/0002_seed.sql seeds
MIGRATIONS = ROOT / "schema" / "events_pg"
READERS = 4  # the service's limits.readers_per_database, and the asyncpg pool's size
CONCURRENCY = 32
Results = list[dict[str, Any]]


@contextmanager
def postgres_server() -> Iterator[str]:
    """initdb and a PostgreSQL server on a free loopback port (trust, loopback only);
    yields the superuser's URL of the ``postgres`` database. Stopped by its pid."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not binaries:
        raise FileNotFoundError("PostgreSQL is missing: make postgresql")
    bin_dir = binaries[-1]
    workdir = Path(tempfile.mkdtemp(prefix="pg-bench-"))  # short: its socket lives here
    port = free_port()
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(workdir, "postgres", "postgres")
        run_as = {"user": "postgres", "group": "postgres", "extra_groups": []}
    process: subprocess.Popen[bytes] | None = None
    try:
        data = workdir / "data"
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        subprocess.run(initdb, check=True, capture_output=True, timeout=120, **run_as)
        argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
        argv += ["-c", "listen_addresses=127.0.0.1", "-k", str(workdir)]
        with (workdir / "postgres.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=log, **run_as)
        wait_for_port(port, process, "PostgreSQL")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def database_url(server: str, name: str) -> str:
    """The URL of database ``name`` on the server whose URL is ``server``."""
    return server.rsplit("/", 1)[0] + f"/{name}"


async def _create_databases(server: str) -> None:
    """``bench`` (empty: the service migrates it) and ``direct`` (the same table and rows)."""
    connection = await _connect(server)
    try:
        await connection.execute("CREATE DATABASE bench")
        await connection.execute("CREATE DATABASE direct")
    finally:
        await connection.close()
    direct = await asyncpg.connect(database_url(server, "direct"), timeout=10)
    try:
        for migration in sorted(MIGRATIONS.glob("*.sql")):
            await direct.execute(migration.read_text())
    finally:
        await direct.close()


async def _connect(url: str) -> asyncpg.Connection:
    """A connection, once the server is past starting up (its port opens before that)."""
    for _ in range(200):
        try:
            return await asyncpg.connect(url, timeout=10)
        except asyncpg.CannotConnectNowError:
            await asyncio.sleep(0.1)
    raise SystemExit("bench: PostgreSQL did not finish starting up")


def _load(*args: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.postgres_load", *args]
    try:
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench: postgres_load {args[0]} failed:\n{exc.stderr}") from exc
    return dict(json.loads(out.stdout))


def bench_postgres(workdir: Path, quick: bool) -> list[Row]:
    """The rows: point reads (vs asyncpg, vs SQLite), BatchInsert (vs COPY), L1 hits (vs SQLite)."""
    if not sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        print("bench: no PostgreSQL (make postgresql): postgres skipped", file=sys.stderr)
        return []
    rounds, seconds, batches = (3, "1", 10) if quick else (4, "2", 20)
    lite_path = events_database(workdir / f"events-{ROWS}.db", ROWS)
    results: dict[str, Results] = {
        name: [] for name in ("pg", "asyncpg", "lite", "copy", "direct", "pg_hit", "lite_hit")
    }
    with ExitStack() as stack:
        server = stack.enter_context(postgres_server())
        asyncio.run(_create_databases(server))
        bench_url, direct_url = database_url(server, "bench"), database_url(server, "direct")
        limits = {"readers_per_database": READERS}
        extra: dict[str, Any] = {"cache_ttl_seconds": 3600}  # no expiry during the run
        pg_db = {"name": "events", "url": bench_url, "migrations": str(MIGRATIONS)}
        lite_db = {"name": "events", "path": str(lite_path)}
        pg = stack.enter_context(serving(workdir, {}, limits, extra | {"databases": [pg_db]}))
        lite = stack.enter_context(serving(workdir, {}, limits, extra | {"databases": [lite_db]}))
        ports = (str(pg), str(lite))
        points = ("points", *ports, bench_url, str(READERS), str(ROWS), str(CONCURRENCY), seconds)
        hits = ("hits", *ports, str(CONCURRENCY), seconds)
        writes = [
            ("copy", ("service-copy", str(pg), str(batches))),
            ("direct", ("asyncpg-copy", direct_url, str(batches))),
        ]
        for n in range(rounds):
            for measured in (_load(*points), _load(*hits)):  # each load in turns within
                for name, summary in measured.items():
                    results[name].append(summary)
            for name, args in writes if n % 2 == 0 else writes[::-1]:
                results[name].append(_load(*args))
    return _rows(results, batches)


def _rate(results: Results) -> list[float]:
    return [
        float(r["per_second"]) if "per_second" in r else r["rows"] / r["seconds"] for r in results
    ]


def _invalid(results: Results, expect: str) -> str | None:
    """Why these answers do not measure what the row names, if they do not."""
    statuses: Counter[str] = Counter()
    for result in results:
        statuses.update(result["statuses"])
    answers = sum(statuses.values())
    wrong = answers - statuses[expect]
    if wrong == 0:
        return None
    seen = ", ".join(f"{s} {n:,}" for s, n in statuses.most_common() if s != expect)
    return f"invalid: {wrong:,} of {answers:,} answers were not {expect} ({seen})"


def _rows(results: dict[str, Results], batches: int) -> list[Row]:
    pg, asyncpg_, lite = (_rate(results[k]) for k in ("pg", "asyncpg", "lite"))
    read_invalid = _invalid(results["pg"], "BYPASS") or _invalid(results["lite"], "BYPASS")
    hit_invalid = _invalid(results["pg_hit"], "HIT_LOCAL") or _invalid(
        results["lite_hit"], "HIT_LOCAL"
    )
    title = f"PostgreSQL uncached point read ({ROWS:,} rows), {CONCURRENCY} concurrent calls"
    return [
        Row(
            title,
            pg,
            asyncpg_,
            "req/s",
            f"asyncpg in-process, pool of {READERS}",
            None,
            invalid=read_invalid,
        ),
        Row("  the same", pg, lite, "req/s", "the service on SQLite", None, invalid=read_invalid),
        Row(
            f"PostgreSQL BatchInsert, 1,000-row batches ({batches} per round)",
            _rate(results["copy"]),
            _rate(results["direct"]),
            "rows/s",
            "asyncpg copy_records_to_table",
            None,
        ),
        Row(
            f"PostgreSQL cached Query, L1 hit, {CONCURRENCY} concurrent calls",
            _rate(results["pg_hit"]),
            _rate(results["lite_hit"]),
            "req/s",
            "the same on SQLite",
            0.9,
            invalid=hit_invalid,
        ),
    ]
