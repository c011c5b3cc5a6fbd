"""Scale-out on PostgreSQL: a real primary, a real streaming standby, three service processes.

The primary and its standby (``pg_basebackup -R -X stream``) run on loopback, each on
its own port; the service processes (``python -m service``) share one real
``redis-server``. They check the read-replica contract end to end:

- a caller that passes the token of its write reads it at once, whichever process it
  asks (the primary answers while the replica lags), while a tokenless read may be
  served, old, by the lagging replica;
- reads that fill the cache run on the primary, so no process ever caches (or serves)
  a value older than a write already acknowledged;
- a failover (the primary stopped, the standby promoted) loses no acknowledged write
  and duplicates none, when every write is retried with its idempotency key;
- a replica that goes away (a read cut off on it, or the standby stopped) leaves the
  reads to the primary or answers UNAVAILABLE, never INTERNAL.

Lag is made deterministic with ``recovery_min_apply_delay`` on the standby. It is
switched on with ALTER SYSTEM and a reload once the services have started (their
migrations and reader role must reach the standby first: a replica pool ``SET ROLE``s
to that role as it connects), so it is not a ``-c`` option, which would win over it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from tests.conftest import (
    KITCHEN_MIGRATIONS,
    PostgresProcess,
    RedisProcess,
    plain_rows,
    row,
    value,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KITCHEN_PG_MIGRATIONS = KITCHEN_MIGRATIONS.parent / "kitchen_pg"
DATABASE = "kitchen"
DELAY_SECONDS = 2.0
REPLICA_WAIT_SECONDS = 0.5
# A table whose rows carry no key of the caller's: a write applied twice shows as two rows.
EVENTS_MIGRATION = """
CREATE TABLE events (
    id   bigserial PRIMARY KEY,
    tag  text NOT NULL
);
"""
READ_ITEM = "SELECT t FROM items WHERE id = $1"
WRITE_ITEM = "UPDATE items SET t = $1 WHERE id = $2"


def _bin_dir() -> Path:
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not binaries:
        raise AssertionError("PostgreSQL is missing: `make test` installs it")
    return binaries[-1]


class Node(PostgresProcess):
    """A PostgreSQL server started with extra ``-c`` options."""

    def __init__(self, options: Sequence[str] = ()) -> None:
        super().__init__()
        self.options = list(options)

    @property
    def data(self) -> Path:
        """Its data folder."""
        return self.workdir / "data"

    def launch(self) -> None:
        """Start the server on its data folder and port with its options; wait until it
        accepts connections."""
        bin_dir = _bin_dir()
        args = [str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        args += ["-c", "listen_addresses=127.0.0.1", "-k", str(self.workdir)]
        for option in self.options:
            args += ["-c", option]
        with (self.workdir / "postgres.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, **self._as)
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if subprocess.run([*ready, "-U", "postgres"], check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"PostgreSQL did not start: {self.log()}")

    def log(self) -> str:
        """Its server log."""
        path = self.workdir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def lsn(self, sql: str) -> int | None:
        """The LSN ``sql`` selects, as an integer (asyncpg's form, the token's)."""
        text = self.psql(f"SELECT ({sql}) - '0/0'::pg_lsn").strip()
        return int(text) if text else None


class Standby(Node):
    """A streaming standby of ``primary``, cloned with pg_basebackup."""

    def __init__(self, primary: Node, options: Sequence[str] = ()) -> None:
        super().__init__(options)
        self.primary = primary

    def start(self) -> None:
        """Clone the primary (``-R``: it follows it on start) and start as its standby."""
        args = [str(_bin_dir() / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port)]
        args += ["-U", "postgres", "-D", str(self.data), "-R", "-X", "stream", "-c", "fast"]
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=120, check=False, **self._as
        )
        assert done.returncode == 0, done.stderr
        self.launch()
        assert self.psql("SELECT pg_is_in_recovery()").strip() == "t"

    def replayed(self) -> int:
        """How far it has replayed the primary's WAL."""
        position = self.lsn("pg_last_wal_replay_lsn()")
        assert position is not None, "not a standby"
        return position

    def wait_replayed(self, position: int, timeout: float = 30) -> None:
        """Wait until it has replayed ``position``."""
        deadline = time.monotonic() + timeout
        while self.replayed() < position:
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby did not replay {position} in {timeout} s")
            time.sleep(0.02)

    def delay(self, seconds: float) -> None:
        """Apply each commit ``seconds`` after the primary made it (from now on)."""
        ms = round(seconds * 1000)
        self.psql(f"ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'")
        self.psql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        setting = "SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'"
        while self.psql(setting).strip() != str(ms):  # in ms
            if time.monotonic() > deadline:
                raise AssertionError("recovery_min_apply_delay was not reloaded")
            time.sleep(0.05)

    def promote(self) -> None:
        """Make it a primary (``pg_ctl promote -w``)."""
        args = [str(_bin_dir() / "pg_ctl"), "promote", "-D", str(self.data), "-w", "-t", "60"]
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=90, check=False, **self._as
        )
        assert done.returncode == 0, done.stderr + done.stdout


@dataclass
class Pair:
    """A primary, its standby and the served database's name on both."""

    primary: Node
    standby: Standby
    name: str = DATABASE

    @property
    def primary_url(self) -> str:
        """The served database on the primary."""
        return self.primary.database_url(self.name)

    @property
    def standby_url(self) -> str:
        """The served database on the standby."""
        return self.standby.database_url(self.name)

    def caught_up(self, timeout: float = 30) -> None:
        """Wait until the standby has replayed everything the primary wrote so far."""
        position = self.primary.lsn("pg_current_wal_lsn()")
        assert position is not None
        self.standby.wait_replayed(position, timeout)


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A primary with one streaming standby (asynchronous, no delay yet), both stopped by
    their pids after the test, on failure too."""
    primary = Node(
        [
            "wal_level=replica",
            "max_wal_senders=10",
            "hot_standby=on",
            "synchronous_commit=on",
            "synchronous_standby_names=",
            "wal_keep_size=256MB",
        ]
    )
    standby: Standby | None = None
    try:
        primary.start()
        primary.psql(f"CREATE DATABASE {DATABASE}")
        # A promoted standby must never wait for a synchronous standby it does not have.
        standby = Standby(primary, ["hot_standby=on", "synchronous_standby_names="])
        standby.start()
        assert primary.psql("SHOW synchronous_standby_names").strip() == ""
        assert standby.psql("SHOW synchronous_standby_names").strip() == ""
        yield Pair(primary, standby)
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """kitchen_pg's migrations and one more: ``events`` (tag, no caller's key)."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for script in sorted(KITCHEN_PG_MIGRATIONS.glob("*.sql")):
        shutil.copy(script, folder / script.name)
    (folder / "0003_events.sql").write_text(EVENTS_MIGRATION, encoding="utf-8")
    return folder


def _document(
    tmp_path: Path, url: str, redis: RedisProcess, migrations: Path, replicas: Sequence[str] = ()
) -> dict[str, Any]:
    kitchen: dict[str, Any] = {
        "name": DATABASE,
        "url": url,
        "migrations": str(migrations),
        "allowed_tables": ["parents", "items", "notes", "events"],
    }
    if replicas:
        kitchen |= {"replicas": list(replicas), "replica_wait_seconds": REPLICA_WAIT_SECONDS}
    return {
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "redis_url": redis.url,
        "databases": [kitchen],
        "limits": {"readers_per_database": 2, "acquire_timeout_seconds": 2.0},
        "shutdown_grace_seconds": 2,
    }


class Service:
    """A stub on one service process."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.DataAccessStub(self.channel)

    async def write(self, text: str, item: int = 1) -> str:
        """Set item ``item``'s ``t``; the write's consistency token."""
        request = pb.BatchUpdateRequest(
            database=DATABASE,
            statements=[pb.Statement(sql=WRITE_ITEM, param_sets=[row(text, item)])],
        )
        answer: pb.BatchUpdateResponse = await self.stub.BatchUpdate(request, timeout=10)
        assert list(answer.rows_affected) == [1], answer
        assert answer.consistency_token.startswith(f"{DATABASE}@"), answer
        return answer.consistency_token

    async def read(
        self, mode: pb.CacheMode.ValueType, token: str = "", item: int = 1
    ) -> tuple[str, pb.CacheStatus.ValueType]:
        """Item ``item``'s ``t`` and the answer's cache status."""
        request = pb.QueryRequest(
            database=DATABASE,
            sql=READ_ITEM,
            params=[value(item)],
            cache=pb.CacheOptions(mode=mode),
            consistency_token=token,
        )
        answer: pb.QueryResponse = await self.stub.Query(request, timeout=10)
        rows = plain_rows(answer)
        assert len(rows) == 1, rows
        return str(rows[0][0]), answer.cache_status

    async def stream(self, token: str = "", item: int = 1) -> str:
        """Item ``item``'s ``t`` through QueryStream."""
        request = pb.QueryRequest(
            database=DATABASE, sql=READ_ITEM, params=[value(item)], consistency_token=token
        )
        found = []
        async for chunk in self.stub.QueryStream(request, timeout=10):
            found += plain_rows(chunk)
        assert len(found) == 1, found
        return str(found[0][0])

    async def reads(self) -> tuple[int, int]:
        """(replica_reads, primary_reads) of the served database so far."""
        stats: pb.StatsResponse = await self.stub.Stats(pb.StatsRequest(), timeout=10)
        pool = next(p for p in stats.pools if p.database == DATABASE)
        return pool.replica_reads, pool.primary_reads

    async def close(self) -> None:
        """Close its channel."""
        await self.channel.close(None)


def _position(token: str) -> int:
    database, _, position = token.rpartition("@")
    assert database == DATABASE and position.isdigit(), token
    return int(position)


async def _three(
    service_process: Any, document: dict[str, Any]
) -> tuple[Service, Service, Service]:
    started = []
    for name in ("A", "B", "C"):
        process = await asyncio.to_thread(service_process, document)
        started.append(Service(name, process.port))
    return started[0], started[1], started[2]


async def _delayed_services(
    tmp_path: Path,
    pair: Pair,
    redis_server: RedisProcess,
    migrations: Path,
    service_process: Any,
) -> tuple[Service, Service, Service]:
    """Three services reading from the standby; item 1 is 'old' everywhere; then the
    standby applies commits DELAY_SECONDS late."""
    document = _document(
        tmp_path, pair.primary_url, redis_server, migrations, replicas=[pair.standby_url]
    )
    a, b, c = await _three(service_process, document)
    request = pb.BatchInsertRequest(
        database=DATABASE, table="items", columns=["id", "t"], rows=[row(1, "old")]
    )
    answer: pb.BatchInsertResponse = await a.stub.BatchInsert(request, timeout=10)
    await asyncio.to_thread(pair.standby.wait_replayed, _position(answer.consistency_token))
    await asyncio.to_thread(pair.caught_up)
    await asyncio.to_thread(pair.standby.delay, DELAY_SECONDS)
    return a, b, c


async def test_a_token_reads_its_write_at_once_through_another_process(
    pair: Pair,
    redis_server: RedisProcess,
    migrations: Path,
    tmp_path: Path,
    service_process: Any,
) -> None:
    """Write through A; B, given the token, answers the new value at once (from the
    primary: the replica lags DELAY_SECONDS > replica_wait_seconds); C, given none,
    answers from the lagging replica, the old value while the delay holds, the new one
    after."""
    a, b, c = await _delayed_services(tmp_path, pair, redis_server, migrations, service_process)
    try:
        bypass = pb.CACHE_MODE_BYPASS
        b_before, c_before = await b.reads(), await c.reads()
        written_at = time.monotonic()
        token = await a.write("new")

        seen_b, status = await b.read(bypass, token)
        assert (seen_b, status) == ("new", pb.CACHE_STATUS_BYPASS)
        seen_c, _ = await c.read(bypass)
        within = time.monotonic() - written_at
        assert within < DELAY_SECONDS - 0.3, f"too slow to see the delay hold: {within:.2f} s"
        assert pair.standby.replayed() < _position(token), "the standby did not lag"
        assert seen_c == "old", "a tokenless read while the replica lags: the replica's value"

        b_after, c_after = await b.reads(), await c.reads()
        # B: the replica had not reached the token within replica_wait_seconds.
        assert (b_after[0] - b_before[0], b_after[1] - b_before[1]) == (0, 1), (b_before, b_after)
        # C: no token, so the replica answered at once.
        assert (c_after[0] - c_before[0], c_after[1] - c_before[1]) == (1, 0), (c_before, c_after)

        # QueryStream too: with the token the new value, without it the replica's.
        assert await b.stream(token) == "new"
        if time.monotonic() - written_at < DELAY_SECONDS - 0.3:
            assert await c.stream() == "old"

        # After the delay the tokenless read, still on the replica, sees the new value.
        deadline = time.monotonic() + DELAY_SECONDS + 15
        polls = 0
        while True:
            seen_c, _ = await c.read(bypass)
            polls += 1
            if seen_c == "new":
                break
            assert seen_c == "old", seen_c
            assert time.monotonic() < deadline, "the replica never showed the write"
            await asyncio.sleep(0.05)
        caught_up_after = time.monotonic() - written_at
        assert caught_up_after >= DELAY_SECONDS - 0.2, caught_up_after
        c_final = await c.reads()
        assert c_final[1] == c_after[1], "C's tokenless reads went to the primary"
        assert c_final[0] - c_after[0] >= polls, (c_after, c_final)

        # Once the replica has replayed the token, B's read with it runs there.
        b_mid = await b.reads()
        assert await b.read(bypass, token) == ("new", pb.CACHE_STATUS_BYPASS)
        b_end = await b.reads()
        assert (b_end[0] - b_mid[0], b_end[1] - b_mid[1]) == (1, 0), (b_mid, b_end)
    finally:
        for service in (a, b, c):
            await service.close()


async def test_no_process_caches_or_serves_a_value_older_than_an_acknowledged_write(
    pair: Pair,
    redis_server: RedisProcess,
    migrations: Path,
    tmp_path: Path,
    service_process: Any,
) -> None:
    """Ten times: write through A, read (cache USE, no token) through B at once, then
    through C at once and after the lagging standby caught up, and through A and B
    again: always the value just written. Reads that fill the cache run on the primary:
    no replica read is counted anywhere."""
    a, b, c = await _delayed_services(tmp_path, pair, redis_server, migrations, service_process)
    try:
        use = pb.CACHE_MODE_USE
        for service in (a, b, c):  # each process has item 1's old value cached
            assert (await service.read(use))[0] == "old"
        before = [await s.reads() for s in (a, b, c)]
        statuses: list[str] = []
        for round_ in range(10):
            expected = f"v{round_}"
            token = await a.write(expected)
            lagging = pair.standby.replayed() < _position(token)
            for service in (b, c, a):
                seen, status = await service.read(use)
                statuses.append(f"{round_}{service.name}:{pb.CacheStatus.Name(status)}")
                assert seen == expected, (round_, service.name, "right away", seen, lagging)
            await asyncio.to_thread(pair.standby.wait_replayed, _position(token))
            for service in (c, b, a):
                seen, status = await service.read(use)
                statuses.append(f"{round_}{service.name}:{pb.CacheStatus.Name(status)}")
                assert seen == expected, (round_, service.name, "caught up", seen)
        after = [await s.reads() for s in (a, b, c)]
        for service, was, now in zip((a, b, c), before, after, strict=True):
            assert now[0] == was[0], (service.name, "a replica filled the cache", was, now)
        print("cache statuses:", " ".join(statuses))
    finally:
        for service in (a, b, c):
            await service.close()


@dataclass
class Writes:
    """A steady stream of idempotent 1-row BatchInserts and when each was acknowledged."""

    acknowledged: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    next_number: int = 0

    def number(self) -> int:
        """The next write's number."""
        self.next_number += 1
        return self.next_number


_RETRIED = (grpc.StatusCode.UNAVAILABLE,)
_WRITE_BOUND_SECONDS = 60.0


async def _write_until(service: Service, writes: Writes, stop: asyncio.Event) -> None:
    """Insert one event per call, each with its own idempotency key, retried with the same
    key on UNAVAILABLE until acknowledged (within _WRITE_BOUND_SECONDS); until ``stop``."""
    while not stop.is_set():
        tag = f"event-{writes.number()}"
        request = pb.BatchInsertRequest(
            database=DATABASE,
            table="events",
            columns=["tag"],
            rows=[row(tag)],
            idempotency_key=f"key-{tag}",
        )
        give_up = time.monotonic() + _WRITE_BOUND_SECONDS
        while True:
            try:
                answer: pb.BatchInsertResponse = await service.stub.BatchInsert(request, timeout=5)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                writes.codes[code.name] = writes.codes.get(code.name, 0) + 1
                assert code in _RETRIED, f"{tag} through {service.name}: {code} {exc.details()}"
                assert time.monotonic() < give_up, f"{tag} never acknowledged: {exc.details()}"
                writes.retries += 1
                await asyncio.sleep(0.05)
                continue
            assert answer.rows_affected == 1, (tag, answer)
            writes.acknowledged[tag] = time.monotonic()
            break
        await asyncio.sleep(0.01)


async def test_failover_loses_and_duplicates_no_acknowledged_write(
    pair: Pair,
    redis_server: RedisProcess,
    migrations: Path,
    tmp_path: Path,
    service_process: Any,
) -> None:
    """Writes stream through three processes whose url lists the primary and the standby
    (target_session_attrs=read-write); the primary stops, the standby is promoted, the
    writes go on; the promoted standby holds every acknowledged write exactly once."""
    primary, standby = pair.primary, pair.standby
    url = (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
        f"/{DATABASE}?target_session_attrs=read-write"
    )
    document = _document(tmp_path, url, redis_server, migrations)
    services = await _three(service_process, document)
    writes, stop = Writes(), asyncio.Event()
    writers = [asyncio.ensure_future(_write_until(s, writes, stop)) for s in services]
    try:
        deadline = time.monotonic() + 30
        while len(writes.acknowledged) < 30:
            assert time.monotonic() < deadline, "writes did not flow before the failover"
            assert not any(w.done() for w in writers), [w.exception() for w in writers if w.done()]
            await asyncio.sleep(0.05)
        stopping = time.monotonic()
        await asyncio.to_thread(primary.halt)
        halted = time.monotonic()
        await asyncio.to_thread(standby.promote)
        promoted = time.monotonic()
        deadline = time.monotonic() + _WRITE_BOUND_SECONDS
        while sum(1 for t in writes.acknowledged.values() if t > halted) < 30:
            assert time.monotonic() < deadline, ("writes did not resume", writes.codes)
            assert not any(w.done() for w in writers), [w.exception() for w in writers if w.done()]
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*writers), _WRITE_BOUND_SECONDS + 10)
    finally:
        stop.set()
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        for service in services:
            await service.close()

    first = min(t for t in writes.acknowledged.values() if t > halted)
    failover = first - stopping
    print(
        f"failover_seconds={failover:.3f} (halt {halted - stopping:.3f} s, promote"
        f" {promoted - halted:.3f} s; {len(writes.acknowledged)} writes acknowledged,"
        f" {writes.retries} retries: {writes.codes})"
    )
    assert failover < 60, failover

    assert standby.psql("SELECT pg_is_in_recovery()").strip() == "f"
    stored = standby.psql("SELECT tag, count(*) FROM events GROUP BY tag", DATABASE)
    counts = {tag: int(n) for tag, n in (line.split("|") for line in stored.split())}
    lost = sorted(set(writes.acknowledged) - set(counts))
    doubled = sorted(tag for tag, n in counts.items() if n > 1)
    unasked = sorted(set(counts) - set(writes.acknowledged))
    assert not lost, f"acknowledged writes missing after the failover: {lost}"
    assert not doubled, f"writes stored more than once: {doubled}"
    assert not unasked, f"rows no acknowledged write made: {unasked}"


SLOW_READ = "SELECT t FROM items, (SELECT pg_sleep(3)) AS slow WHERE id = $1"


async def _one_reading_the_standby(
    tmp_path: Path,
    pair: Pair,
    redis_server: RedisProcess,
    migrations: Path,
    service_process: Any,
) -> Service:
    """One service with the standby as its replica; item 1 is 'old' on both servers."""
    document = _document(
        tmp_path, pair.primary_url, redis_server, migrations, replicas=[pair.standby_url]
    )
    process = await asyncio.to_thread(service_process, document)
    service = Service("A", process.port)
    request = pb.BatchInsertRequest(
        database=DATABASE, table="items", columns=["id", "t"], rows=[row(1, "old")]
    )
    answer: pb.BatchInsertResponse = await service.stub.BatchInsert(request, timeout=10)
    await asyncio.to_thread(pair.standby.wait_replayed, _position(answer.consistency_token))
    return service


async def test_a_replica_read_cut_off_midway_answers_unavailable_or_the_rows(
    pair: Pair,
    redis_server: RedisProcess,
    migrations: Path,
    tmp_path: Path,
    service_process: Any,
) -> None:
    """A read the replica answers (no token; BYPASS, pg_sleep is volatile) whose backend is
    terminated on the standby mid-way answers UNAVAILABLE (or the rows, read again on the
    primary), never INTERNAL."""
    service = await _one_reading_the_standby(
        tmp_path, pair, redis_server, migrations, service_process
    )
    try:
        before = await service.reads()
        slow = pb.QueryRequest(database=DATABASE, sql=SLOW_READ, params=[value(1)])
        call = asyncio.ensure_future(service.stub.Query(slow, timeout=20))
        terminate = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(pair.standby.psql, terminate)).strip() == "0":
            assert time.monotonic() < deadline, "the slow read never reached the replica"
            assert not call.done(), call
            await asyncio.sleep(0.05)
        try:
            cut: pb.QueryResponse = await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
        else:
            assert plain_rows(cut) == [("old",)], cut
        after = await service.reads()
        assert after[0] == before[0] + 1, ("the replica did not take the slow read", before, after)
        # The service goes on: the next reads are answered.
        assert await service.read(pb.CACHE_MODE_BYPASS) == ("old", pb.CACHE_STATUS_BYPASS)
    finally:
        await service.close()


async def test_with_the_standby_stopped_the_primary_answers_every_read(
    pair: Pair,
    redis_server: RedisProcess,
    migrations: Path,
    tmp_path: Path,
    service_process: Any,
) -> None:
    """The standby stops: reads with and without a token, Query and QueryStream, are
    answered by the primary (Stats counts them there)."""
    service = await _one_reading_the_standby(
        tmp_path, pair, redis_server, migrations, service_process
    )
    try:
        await asyncio.to_thread(pair.standby.halt)
        token = await service.write("new")
        before = await service.reads()
        assert await service.read(pb.CACHE_MODE_BYPASS) == ("new", pb.CACHE_STATUS_BYPASS)
        assert await service.read(pb.CACHE_MODE_BYPASS, token) == ("new", pb.CACHE_STATUS_BYPASS)
        assert await service.stream(token) == "new"
        assert await service.stream() == "new"
        after = await service.reads()
        assert (after[0] - before[0], after[1] - before[1]) == (0, 4), (before, after)
    finally:
        await service.close()
