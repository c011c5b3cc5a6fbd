"""Durability off the node: the real ``litestream`` replicating every database of a real
``python -m service`` to a real S3-compatible server (moto) on loopback, then restored.

A steady stream of acknowledged writes, everything SIGKILLed, the data directory deleted,
each database restored as the pod's init container does: every write acknowledged more
than the sync interval (+1 s) before the kill is back, the files pass integrity_check, and
the cache serves the restored data. Also: two restore cycles in a row (Litestream 0.5.0
lost data there), a point-in-time restore, and a restore that must leave a volume alone.

Run with ``-s`` to see the RPO and restore times.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import itertools
import random
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from tests.conftest import Litestream, RedisProcess, S3Server, Subprocess, row

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SYNC_SECONDS = 1.0  # replication.sync_interval_seconds
SAFE_AGE = SYNC_SECONDS + 1.0  # a write acknowledged longer than this before the kill is kept


@dataclass(frozen=True)
class Target:
    """A table of one database that the workload appends numbered rows to."""

    database: str
    table: str
    columns: tuple[str, ...]
    make: Callable[[int], pb.Row]
    number: str  # the column holding the row's number
    where: str  # the workload's rows

    @property
    def numbers_sql(self) -> str:
        return f"SELECT {self.number} FROM {self.table} WHERE {self.where}"

    @property
    def count_sql(self) -> str:
        return f"SELECT count(*) FROM {self.table} WHERE {self.where}"


TARGETS = (
    Target(
        "kitchen",
        "items",
        ("qty", "code"),
        lambda n: row(n, f"w{n}"),
        "qty",
        "code LIKE 'w%'",
    ),
    Target(
        "live",
        "scrap_events",
        ("run_id", "reason", "units"),
        lambda n: row(1, "replication test", n),
        "units",
        "reason = 'replication test'",
    ),
    Target(
        "archive",
        "production_runs",
        ("day", "line", "shift", "sku", "units_produced"),
        lambda n: row("2030-01-01", f"w{n}", 1, "BRK-100", n),
        "units_produced",
        "line LIKE 'w%'",
    ),
)


@dataclass
class Workload:
    """Acknowledged writes per database: number -> when the ack came (monotonic)."""

    acks: dict[str, dict[int, float]] = field(
        default_factory=lambda: {t.database: {} for t in TARGETS}
    )
    numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    last_number: int = 0
    reads: int = 0
    running: bool = True


async def insert(stub: pb_grpc.DataAccessAsyncStub, target: Target, number: int) -> None:
    await stub.BatchInsert(
        pb.BatchInsertRequest(
            database=target.database,
            table=target.table,
            columns=list(target.columns),
            rows=[target.make(number)],
        ),
        timeout=5,
    )


async def _writer(stub: pb_grpc.DataAccessAsyncStub, target: Target, load: Workload) -> None:
    while load.running:
        number = load.last_number = next(load.numbers)
        try:
            await insert(stub, target, number)
        except grpc.aio.AioRpcError:
            return  # the server is gone (killed): nothing more is acknowledged
        load.acks[target.database][number] = time.monotonic()
        await asyncio.sleep(0.005)


async def _reader(stub: pb_grpc.DataAccessAsyncStub, target: Target, load: Workload) -> None:
    """Reads the count through the cache all along, so the cache holds the newest state."""
    while load.running:
        try:
            await stub.Query(
                pb.QueryRequest(database=target.database, sql=target.count_sql), timeout=5
            )
            load.reads += 1
        except grpc.aio.AioRpcError:
            return
        await asyncio.sleep(0.02)


def stored(path: Path, target: Target) -> set[int]:
    """The workload's numbers in a database file, read directly."""
    with closing(sqlite3.connect(path)) as conn:
        return {n for (n,) in conn.execute(target.numbers_sql)}


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def fingerprint(data_dir: Path) -> dict[str, str]:
    """Every file under the data directory and a hash of its bytes."""
    return {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file()
    }


class Node:
    """One pod: the service and Litestream on a data directory, killed together."""

    def __init__(
        self,
        tmp_path: Path,
        document: dict[str, Any],
        socket_dir: Path,
        service_process: Any,
        litestream: Any,
        prefix: str = "service",
    ) -> None:
        self.document = {
            **document,
            "replication": {
                "sync_interval_seconds": SYNC_SECONDS,
                "litestream_socket": str(socket_dir / "litestream.sock"),
            },
        }
        self.data_dir = Path(self.document["data_dir"])
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = tmp_path / "service-config.yaml"
        config.write_text(yaml.safe_dump(self.document), encoding="utf-8")
        self.litestream: Litestream = litestream(config, prefix)
        self.service_process = service_process
        self.service: Subprocess | None = None
        self.channel: grpc.aio.Channel | None = None

    def path(self, database: str) -> Path:
        return self.data_dir / f"{database}.db"

    @property
    def stub(self) -> pb_grpc.DataAccessAsyncStub:
        assert self.channel is not None
        return pb_grpc.DataAccessStub(self.channel)

    async def start(self) -> None:
        """As the pod starts: Litestream (the sidecar), then the service (which migrates)."""
        await asyncio.to_thread(self.litestream.replicate)
        service: Subprocess = await asyncio.to_thread(self.service_process, self.document)
        self.service = service
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        await asyncio.to_thread(self.litestream.sync)  # it replicates every database

    def crash(self) -> float:
        """SIGKILL the service and Litestream (a lost node); when (monotonic)."""
        assert self.service is not None
        killed_at = time.monotonic()
        self.service.process.kill()
        self.litestream.kill()
        self.service.process.wait(10)
        return killed_at

    async def stop(self) -> None:
        """SIGTERM the service, then Litestream (its final sync)."""
        assert self.service is not None
        await self.close_channel()
        self.service.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(self.service.process.wait, 20) == 0
        assert await asyncio.to_thread(self.litestream.stop) == 0

    async def close_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None

    def wipe(self) -> None:
        """The node is gone: an empty volume in its place."""
        shutil.rmtree(self.data_dir)
        self.data_dir.mkdir()

    def restore(self) -> float:
        """Restore every database as the pod's init container does (``python -m service
        restore``: ``litestream restore -if-db-not-exists -if-replica-exists`` for each
        database missing from the volume); the seconds it took."""
        started = time.monotonic()
        self.litestream.service_restore()
        return time.monotonic() - started


async def run_and_crash(node: Node, load: Workload, seconds: float, readers: bool) -> float:
    """The steady workload for ``seconds``, then the node is SIGKILLed under it."""
    load.running = True
    stub = node.stub
    tasks = [asyncio.ensure_future(_writer(stub, t, load)) for t in TARGETS]
    if readers:
        tasks += [asyncio.ensure_future(_reader(stub, t, load)) for t in TARGETS]
    try:
        await asyncio.sleep(seconds)
        killed_at = node.crash()
    finally:
        load.running = False
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    await node.close_channel()
    return killed_at


@dataclass
class Outcome:
    """One restore after a crash."""

    lost: dict[str, list[int]]  # acknowledged more than SAFE_AGE before the kill, not back
    late_lost: dict[str, list[int]]  # acknowledged within SAFE_AGE of the kill, not back
    rpo: dict[str, float]  # the kill to the newest acknowledged write that came back
    oldest_lost_age: float  # the kill to the oldest acknowledged write that did not (0: none)

    @property
    def worst_rpo(self) -> float:
        return max(self.rpo.values())

    @property
    def late_lost_count(self) -> int:
        return sum(len(v) for v in self.late_lost.values())


def check_restored(node: Node, load: Workload, killed_at: float, first: int = 1) -> Outcome:
    """Every file passes integrity_check and holds every write (numbered ``first`` or
    above) acknowledged earlier than SAFE_AGE before the kill; what was lost and the RPO."""
    lost, late_lost, rpo, oldest_lost = {}, {}, {}, killed_at
    for target in TARGETS:
        path = node.path(target.database)
        assert path.exists(), f"{target.database} was not restored"
        assert integrity(path) == "ok", target.database
        back = stored(path, target)
        # An ack noted after the kill was sent before it (the loop was busy killing).
        acks = {n: t for n, t in load.acks[target.database].items() if n >= first}
        missing = sorted(set(acks) - back)
        lost[target.database] = [n for n in missing if acks[n] < killed_at - SAFE_AGE]
        late_lost[target.database] = [n for n in missing if acks[n] >= killed_at - SAFE_AGE]
        rpo[target.database] = killed_at - max((acks[n] for n in set(acks) & back), default=0.0)
        oldest_lost = min([oldest_lost, *(acks[n] for n in missing)])
    return Outcome(lost, late_lost, rpo, killed_at - oldest_lost)


def _count(response: pb.QueryResponse) -> int:
    return response.rows[0].values[0].integer


async def test_crash_wipe_and_restore_keep_every_write_older_than_the_sync_interval(
    tmp_path: Path,
    document: dict[str, Any],
    socket_dir: Path,
    service_process: Any,
    litestream: Any,
    redis_server: RedisProcess,
) -> None:
    # Redis is outside the pod and outlives it, caching the newest reads before the kill.
    document = {**document, "redis_url": redis_server.url}
    node = Node(tmp_path, document, socket_dir, service_process, litestream)
    await node.start()
    load = Workload()
    # The kill lands anywhere in Litestream's sync cycle (the cycle starts with Litestream).
    seconds = 4.0 + random.uniform(0, SYNC_SECONDS)
    killed_at = await run_and_crash(node, load, seconds, readers=True)
    node.wipe()
    restore_seconds = node.restore()
    outcome = check_restored(node, load, killed_at)
    acknowledged = sum(len(a) for a in load.acks.values())
    rpo = ", ".join(f"{name} {age:.2f} s" for name, age in outcome.rpo.items())
    print(
        f"\nreplication crash: {acknowledged} writes acknowledged over {seconds:.2f} s into "
        f"{len(TARGETS)} databases ({load.reads} cached reads); RPO (kill to the newest "
        f"restored ack): worst {outcome.worst_rpo:.2f} s ({rpo}); acknowledged writes lost: "
        f"{outcome.late_lost_count}, the oldest acknowledged {outcome.oldest_lost_age:.2f} s "
        f"before the kill; restore of {len(TARGETS)} databases: {restore_seconds:.2f} s"
    )
    assert all(not lost for lost in outcome.lost.values()), outcome.lost
    assert acknowledged > 100, load.acks
    assert outcome.worst_rpo <= SAFE_AGE

    # The pod comes back on the restored volume with the same Redis: reads serve the
    # restored data, not the newer counts cached before the kill.
    await node.start()
    await asyncio.to_thread(node.litestream.wait_synced)  # and Litestream syncs on its own
    for target in TARGETS:
        on_file = len(stored(node.path(target.database), target))
        answer = await node.stub.Query(
            pb.QueryRequest(database=target.database, sql=target.count_sql), timeout=5
        )
        assert _count(answer) == on_file, (target.database, _count(answer), on_file)
    await node.stop()


async def test_two_restore_cycles_in_a_row_keep_the_writes_of_both(
    tmp_path: Path,
    document: dict[str, Any],
    socket_dir: Path,
    service_process: Any,
    litestream: Any,
) -> None:
    node = Node(tmp_path, document, socket_dir, service_process, litestream)
    load = Workload()
    kills, firsts = [], []
    await node.start()
    for cycle in (1, 2):
        firsts.append(load.last_number + 1)
        seconds = 3.5 + random.uniform(0, SYNC_SECONDS)
        kills.append(await run_and_crash(node, load, seconds, readers=False))
        node.wipe()
        node.restore()
        outcome = check_restored(node, load, kills[-1], first=firsts[-1])
        print(
            f"\nrestore cycle {cycle}: worst RPO {outcome.worst_rpo:.2f} s, "
            f"{outcome.late_lost_count} acknowledged writes lost"
        )
        assert all(not lost for lost in outcome.lost.values()), (cycle, outcome.lost)
        if cycle == 1:
            await node.start()  # replication resumes on the restored files
    # After the second restore, the first cycle's writes are all there too.
    for target in TARGETS:
        back = stored(node.path(target.database), target)
        acks = load.acks[target.database]
        cycle_1 = {n for n, t in acks.items() if n < firsts[1] and t < kills[0] - SAFE_AGE}
        cycle_2 = {n for n, t in acks.items() if n >= firsts[1] and t < kills[1] - SAFE_AGE}
        assert cycle_1 and cycle_2, target.database
        assert cycle_1 <= back, (target.database, sorted(cycle_1 - back))
        assert cycle_2 <= back, (target.database, sorted(cycle_2 - back))


async def test_point_in_time_restore_gives_the_state_between_two_writes(
    tmp_path: Path,
    document: dict[str, Any],
    socket_dir: Path,
    service_process: Any,
    litestream: Any,
) -> None:
    node = Node(tmp_path, document, socket_dir, service_process, litestream)
    await node.start()
    kitchen = TARGETS[0]
    await insert(node.stub, kitchen, 1)  # A
    await asyncio.to_thread(node.litestream.sync)
    between = datetime.datetime.now(datetime.UTC)
    await insert(node.stub, kitchen, 2)  # B
    await asyncio.to_thread(node.litestream.sync)
    await node.stop()

    earlier, latest = tmp_path / "pit" / "earlier.db", tmp_path / "pit" / "latest.db"
    restore = node.litestream.restore
    done = await asyncio.to_thread(restore, node.path("kitchen"), timestamp=between, output=earlier)
    assert done.returncode == 0, done.stderr
    done = await asyncio.to_thread(restore, node.path("kitchen"), output=latest)
    assert done.returncode == 0, done.stderr
    assert integrity(earlier) == "ok"
    assert stored(earlier, kitchen) == {1}
    assert stored(latest, kitchen) == {1, 2}


async def test_restore_if_db_not_exists_leaves_a_volume_that_has_the_database_alone(
    tmp_path: Path,
    document: dict[str, Any],
    socket_dir: Path,
    service_process: Any,
    litestream: Any,
    s3_server: S3Server,
) -> None:
    node = Node(tmp_path, document, socket_dir, service_process, litestream)
    await node.start()
    kitchen = TARGETS[0]
    await insert(node.stub, kitchen, 1)
    await asyncio.to_thread(node.litestream.sync)
    await node.stop()
    for target in TARGETS:  # each database has its replica under <LITESTREAM_PATH>/<name>
        assert s3_server.keys(f"service/{target.database}/"), target.database
    # The volume now differs from the replica: a restore over it would lose this row.
    with closing(sqlite3.connect(node.path("kitchen"))) as conn, conn:
        conn.execute("INSERT INTO items (qty, code) VALUES (2, 'w2')")
    before = fingerprint(node.data_dir)
    assert {f"{t.database}.db" for t in TARGETS} <= set(before)

    node.restore()  # python -m service restore: every file is there, nothing to do
    assert fingerprint(node.data_dir) == before
    node.litestream.restore_all()  # -if-db-not-exists -if-replica-exists, each exits 0
    assert fingerprint(node.data_dir) == before
    refused = node.litestream.restore(node.path("kitchen"))  # without -if-db-not-exists
    assert refused.returncode != 0
    assert fingerprint(node.data_dir) == before
    assert stored(node.path("kitchen"), kitchen) == {1, 2}


async def test_first_boot_restores_nothing_when_no_replica_exists(
    tmp_path: Path,
    document: dict[str, Any],
    socket_dir: Path,
    service_process: Any,
    litestream: Any,
    s3_server: S3Server,
) -> None:
    node = Node(tmp_path, document, socket_dir, service_process, litestream, prefix="new")
    assert s3_server.keys("new/") == []
    node.restore()  # an empty bucket and an empty volume: nothing restored, no error
    assert fingerprint(node.data_dir) == {}
    node.litestream.restore_all()  # each exits 0, writes nothing
    assert fingerprint(node.data_dir) == {}
    refused = node.litestream.restore(node.litestream.databases[0])
    assert refused.returncode != 0  # without -if-replica-exists it is an error


async def test_reads_cached_before_the_node_was_lost_are_not_served_after_the_restore(
    tmp_path: Path,
    document: dict[str, Any],
    socket_dir: Path,
    service_process: Any,
    litestream: Any,
    redis_server: RedisProcess,
) -> None:
    """Writes acknowledged while Litestream was stalled are lost with the node; Redis, outside
    the pod, still holds reads that saw them: the restored service must not serve those.
    The last replicated write is to items, the lost ones to items and to notes."""
    document = {**document, "redis_url": redis_server.url}
    node = Node(tmp_path, document, socket_dir, service_process, litestream)
    await node.start()
    kitchen = TARGETS[0]
    await insert(node.stub, kitchen, 1)
    await asyncio.to_thread(node.litestream.sync)
    node.litestream.signal(signal.SIGSTOP)  # replication stalls: what follows stays local
    for number in (2, 3):
        await insert(node.stub, kitchen, number)
    await node.stub.BatchInsert(
        pb.BatchInsertRequest(
            database="kitchen", table="notes", columns=["parent_id", "body"], rows=[row(1, "lost")]
        ),
        timeout=5,
    )
    reads = {
        "items": pb.QueryRequest(database="kitchen", sql=kitchen.count_sql),
        "notes": pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM notes"),
    }
    for name, expected in (("items", 3), ("notes", 1)):
        assert _count(await node.stub.Query(reads[name], timeout=5)) == expected
        cached = await node.stub.Query(reads[name], timeout=5)
        assert cached.cache_status in (pb.CACHE_STATUS_HIT_LOCAL, pb.CACHE_STATUS_HIT_REDIS)
    assert int(redis_server.cli("DBSIZE")) > 0  # the reads are in Redis too
    await node.close_channel()
    node.crash()
    node.wipe()
    node.restore()
    assert stored(node.path("kitchen"), kitchen) == {1}

    await node.start()  # the same Redis, with the reads of 3 items and 1 note in it
    answers = {name: await node.stub.Query(read, timeout=5) for name, read in reads.items()}
    print(
        "\nafter the restore: "
        + ", ".join(
            f"{name} {_count(a)} ({pb.CacheStatus.Name(a.cache_status)})"
            for name, a in answers.items()
        )
    )
    await node.stop()
    assert _count(answers["items"]) == 1
    assert _count(answers["notes"]) == 0


async def _replication_check(node: Node, database: str) -> pb.HealthCheck:
    report = await node.stub.Health(pb.HealthRequest(), timeout=5)
    [check] = [c for c in report.checks if c.name == f"database:{database}:replication"]
    return check


async def test_health_reports_replication_from_litestreams_socket_and_degrades_without_it(
    tmp_path: Path,
    document: dict[str, Any],
    socket_dir: Path,
    service_process: Any,
    litestream: Any,
) -> None:
    node = Node(tmp_path, document, socket_dir, service_process, litestream, prefix="health")
    await node.start()
    try:
        check = await _replication_check(node, "kitchen")
        assert check.status == pb.HEALTH_STATUS_HEALTHY, check.message
        assert "last synced" in check.message
        node.litestream.kill()  # the sidecar is gone: its socket no longer answers
        for _ in range(50):
            check = await _replication_check(node, "kitchen")
            if check.status != pb.HEALTH_STATUS_HEALTHY:
                break
            await asyncio.sleep(0.1)
        assert check.status == pb.HEALTH_STATUS_DEGRADED, check.message
        assert "does not answer" in check.message
    finally:
        await node.close_channel()
