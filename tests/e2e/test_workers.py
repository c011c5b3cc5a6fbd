"""``python -m service --workers 2``: real worker processes on one port, a real Redis, real
SQLite files; stopped by SIGTERM to the supervisor, as Kubernetes does.

Each new channel is a new connection (a local subchannel pool each), and the
kernel spreads connections over the workers; a channel's worker is known by
the process id its Stats answer names.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service.api.servicer import PID_METADATA
from service.consistency import positions
from tests.conftest import RedisProcess, free_port, row

pytestmark = pytest.mark.integration

COUNT = pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items WHERE qty >= 1000")
_SLOW = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)"
    " SELECT count(*) FROM c"
)


@dataclass
class Service:
    """A supervisor started by a test, the port its workers share, and its log."""

    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    def lines(self, message: str) -> list[dict[str, Any]]:
        """The log lines whose ``msg`` is ``message``."""
        entries = [json.loads(s) for s in self.log.read_text().splitlines() if s.startswith("{")]
        return [entry for entry in entries if entry["msg"] == message]

    def worker_pids(self) -> set[int]:
        """The process ids the workers' "serving" lines name."""
        return {line["pid"] for line in self.lines("serving")}

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the supervisor; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextmanager
def workers(
    tmp_path: Path,
    document: dict[str, Any],
    count: int = 2,
    listen: str | None = None,
    name: str = "service",
) -> Iterator[Service]:
    """``python -m service --workers COUNT`` on ``document``, once every worker serves."""
    Path(document["data_dir"]).mkdir(parents=True, exist_ok=True)
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(document))
    log = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        "DATAACCESS_CONFIG": str(config),
        "DATAACCESS_LISTEN": listen or f"127.0.0.1:{free_port()}",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--workers", str(count)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
        )
    service = Service(process, log)
    try:
        deadline = time.monotonic() + 30
        while len(service.lines("serving")) < count:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the workers did not all serve: {log.read_text()}")
            time.sleep(0.05)
        service.port = service.lines("serving")[0]["port"]
        yield service
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def kitchen(document: dict[str, Any], redis: RedisProcess) -> dict[str, Any]:
    """The test config with only the kitchen database, and Redis."""
    databases = [d for d in document["databases"] if d["name"] == "kitchen"]
    return {**document, "databases": databases, "redis_url": redis.url}


def connection(port: int) -> grpc.aio.Channel:
    """A channel with a connection of its own (not shared through the global pool)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)


async def pid_of(stub: pb_grpc.DataAccessAsyncStub) -> int:
    """The process id of the worker serving the stub's connection."""
    call = stub.Stats(pb.StatsRequest(), timeout=5)
    await call
    return int(dict(await call.trailing_metadata() or ())[PID_METADATA])


@asynccontextmanager
async def by_worker(
    port: int, wanted: int = 2
) -> AsyncIterator[dict[int, pb_grpc.DataAccessAsyncStub]]:
    """One stub per worker, each on a connection of its own, keyed by the worker's pid."""
    channels: list[grpc.aio.Channel] = []
    stubs: dict[int, pb_grpc.DataAccessAsyncStub] = {}
    try:
        while len(stubs) < wanted:
            assert len(channels) < 40, f"connections reached only {sorted(stubs)}"
            channels.append(connection(port))
            stub = pb_grpc.DataAccessStub(channels[-1])
            stubs.setdefault(await pid_of(stub), stub)
        yield stubs
    finally:
        for channel in channels:
            await channel.close(None)


async def insert(stub: pb_grpc.DataAccessAsyncStub, qty: int, key: str = "") -> Any:
    request = pb.BatchInsertRequest(
        database="kitchen", table="items", columns=["qty"], rows=[row(qty)], idempotency_key=key
    )
    return await stub.BatchInsert(request, timeout=10)


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


async def test_both_workers_serve_connections_on_one_port(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    with workers(tmp_path, kitchen(document, redis_server)) as service:
        pids = service.worker_pids()
        assert len(pids) == 2 and service.process.pid not in pids
        assert {_parent_of(pid) for pid in pids} == {service.process.pid}
        assert {line["port"] for line in service.lines("serving")} == {service.port}
        assert [line["worker"] for line in sorted(service.lines("serving"), key=_worker)] == [0, 1]
        async with by_worker(service.port) as stubs:
            assert set(stubs) == pids
            for stub in stubs.values():
                answer = await stub.Query(pb.QueryRequest(database="kitchen", sql="SELECT 1"))
                assert answer.rows[0].values[0].integer == 1
        assert service.stop() == 0
    # Migrations ran once, before the workers, and no worker applied them again.
    applied = service.lines("migrated")
    assert applied and all("worker" not in line for line in applied)
    assert len(applied) == len({line["migration"] for line in applied})


def _worker(line: dict[str, Any]) -> int:
    return int(line["worker"])


@pytest.mark.slow
async def test_a_write_through_one_worker_is_never_read_stale_through_another(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    with workers(tmp_path, kitchen(document, redis_server)) as service:
        async with by_worker(service.port) as stubs, by_worker(service.port) as busy:
            first, second = stubs.values()
            # Other callers keep both workers busy meanwhile, as a service under load is.
            load = [asyncio.ensure_future(_keep_busy(s)) for s in busy.values() for _ in range(8)]
            try:
                for seq in range(100):
                    writer, reader = (first, second) if seq % 2 == 0 else (second, first)
                    before = await _in_l1(reader)
                    await insert(writer, 1000 + seq)
                    after = await reader.Query(COUNT, timeout=5)  # at once: no sleep, no retry
                    assert after.rows[0].values[0].integer == before + 1, (seq, after.cache_status)
            finally:
                for task in load:
                    task.cancel()
                await asyncio.gather(*load, return_exceptions=True)
        assert service.stop() == 0


async def _in_l1(reader: pb_grpc.DataAccessAsyncStub) -> int:
    """The count, once the reader's worker answered it from its L1.

    A sibling's commit also looks, to SQLite, like another process's write: each worker
    then drops the database's cached reads (README, "One process per core"), so a first
    try may miss."""
    for _ in range(20):
        await reader.Query(COUNT, timeout=5)
        cached = await reader.Query(COUNT, timeout=5)
        if cached.cache_status == pb.CACHE_STATUS_HIT_LOCAL:
            return int(cached.rows[0].values[0].integer)
    raise AssertionError("the count never came from L1")


async def _keep_busy(stub: pb_grpc.DataAccessAsyncStub) -> None:
    other = pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM parents")
    while True:
        await stub.Query(other, timeout=5)


@pytest.mark.slow
async def test_two_services_of_two_workers_on_one_redis_stay_coherent(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    shared = kitchen(document, redis_server)
    with (
        workers(tmp_path, shared, name="one") as one,
        workers(tmp_path, shared, name="two") as two,
    ):
        async with by_worker(one.port) as ones, by_worker(two.port) as twos:
            readers = [*ones.values(), *twos.values()]
            for seq in range(12):
                writer = readers[seq % 4]
                before = {id(r): (await r.Query(COUNT, timeout=5)).rows for r in readers}
                await insert(writer, 2000 + seq)
                # Across services L1 may serve within its validation window; past it, never.
                await asyncio.sleep(0.15)
                for reader in readers:
                    after = await reader.Query(COUNT, timeout=5)
                    was = before[id(reader)][0].values[0].integer
                    assert after.rows[0].values[0].integer == was + 1, seq
        assert one.stop() == 0
        assert two.stop() == 0


@pytest.mark.slow
async def test_sigterm_lets_calls_in_flight_on_every_worker_finish(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    document = {**kitchen(document, redis_server), "shutdown_grace_seconds": 10}
    with workers(tmp_path, document) as service:
        async with by_worker(service.port) as stubs:
            slow = pb.QueryRequest(
                database="kitchen", sql=_SLOW, cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)
            )
            calls = [
                asyncio.ensure_future(stub.Query(slow, timeout=30))
                for stub in stubs.values()
                for _ in range(2)
            ]
            await asyncio.sleep(0.3)
            started = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*calls)
            assert [a.rows[0].values[0].integer for a in answers] == [3_000_000] * len(calls)
            code = await asyncio.to_thread(service.process.wait, 30)
        assert code == 0
        assert time.monotonic() - started < 10
        stopping = service.lines("stopping")
        assert sorted(line["worker"] for line in stopping) == [0, 1]
        assert all(line["cause"] == "SIGTERM" and line["calls_in_flight"] >= 1 for line in stopping)
        assert len(service.lines("stopped")) == 2
        assert [line["exit_code"] for line in service.lines("worker stopped")] == [0, 0]


async def test_consistency_tokens_grow_across_workers(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    with workers(tmp_path, kitchen(document, redis_server)) as service:
        async with by_worker(service.port) as stubs:
            first, second = stubs.values()
            seen = []
            for seq in range(20):
                answer = await insert(first if seq % 2 else second, 3000 + seq)
                seen.append(positions(answer.consistency_token)["kitchen"])
            together = await asyncio.gather(*(insert(s, 4000) for s in (first, second) * 5))
        assert seen == sorted(seen) and len(set(seen)) == len(seen), seen
        newer = [positions(a.consistency_token)["kitchen"] for a in together]
        assert min(newer) > seen[-1]
        assert service.stop() == 0


@pytest.mark.slow
async def test_one_idempotency_key_sent_to_two_workers_at_once_writes_once(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    with workers(tmp_path, kitchen(document, redis_server)) as service:
        async with by_worker(service.port) as stubs:
            first, second = stubs.values()
            for seq in range(25):
                key = f"twice-{seq}"
                a, b = await asyncio.gather(
                    insert(first, 5000 + seq, key), insert(second, 5000 + seq, key)
                )
                assert a.rows_affected == b.rows_affected == 1
                count = pb.QueryRequest(
                    database="kitchen",
                    sql="SELECT count(*) FROM items WHERE qty = ?",
                    params=[pb.Value(integer=5000 + seq)],
                )
                answer = await first.Query(count, timeout=5)
                assert answer.rows[0].values[0].integer == 1, key
        assert service.stop() == 0


@pytest.mark.slow
async def test_a_worker_that_dies_stops_the_service_with_its_status(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    with workers(tmp_path, kitchen(document, redis_server)) as service:
        victim, survivor = sorted(service.worker_pids())
        os.kill(victim, signal.SIGKILL)
        code = await asyncio.to_thread(service.process.wait, 30)
        assert code == 128 + signal.SIGKILL
        [died] = service.lines("a worker died: stopping the others")
        assert died["pid"] == victim and died["exit_code"] == 128 + signal.SIGKILL
        [stopping] = service.lines("stopping")
        index = {line["pid"]: line["worker"] for line in service.lines("serving")}
        assert stopping["cause"] == "a sibling worker died"
        assert stopping["worker"] == index[survivor]


@pytest.mark.slow
async def test_workers_stop_when_their_supervisor_is_killed(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    with workers(tmp_path, kitchen(document, redis_server)) as service:
        pids = service.worker_pids()
        service.process.kill()
        service.process.wait(10)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() for pid in pids):
            assert time.monotonic() < deadline, "orphaned workers went on serving"
            await asyncio.sleep(0.05)
        stopping = service.lines("stopping")
        assert [line["cause"] for line in stopping] == ["supervisor gone"] * 2


async def test_port_zero_is_picked_once_and_shared(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    with workers(tmp_path, kitchen(document, redis_server), listen="127.0.0.1:0") as service:
        assert service.port != 0
        [started] = service.lines("workers started")
        assert started["listen"] == f"127.0.0.1:{service.port}"
        assert {line["listen"] for line in service.lines("serving")} == {started["listen"]}
        async with by_worker(service.port) as stubs:
            assert set(stubs) == service.worker_pids()
        assert service.stop() == 0


async def test_a_busy_port_stops_the_start_before_any_worker_forks(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess, service_process: Any
) -> None:
    stale = service_process({**kitchen(document, redis_server), "listen_reuse_port": True})
    second = {**kitchen(document, redis_server), "data_dir": str(tmp_path / "second")}
    with pytest.raises(AssertionError, match="the workers did not all serve"):
        with workers(tmp_path, second, listen=f"127.0.0.1:{stale.port}"):
            pass
    errors = [s for s in (tmp_path / "service.log").read_text().splitlines() if "dataaccess:" in s]
    assert errors == [
        f"dataaccess: listen: cannot bind 127.0.0.1:{stale.port}: address already in use (is "
        "another server running there? several servers share it only with listen_reuse_port: "
        "true)"
    ]


@pytest.mark.slow
async def test_each_worker_serves_its_metrics_and_a_busy_metrics_port_is_not_fatal(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess
) -> None:
    busy = __import__("socket").socket()
    for _ in range(50):  # a free port whose next one is free too: worker 1's, taken here
        base = free_port()
        try:
            busy.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            continue
    busy.listen()
    document = {**kitchen(document, redis_server), "metrics_listen": f"127.0.0.1:{base}"}
    try:
        with workers(tmp_path, document) as service:
            metrics = {line["worker"]: line["metrics"] for line in service.lines("serving")}
            assert metrics == {0: f"127.0.0.1:{base}", 1: "off"}
            with urllib.request.urlopen(f"http://127.0.0.1:{base}/metrics", timeout=5) as page:
                assert b"dataaccess_cache_entries" in page.read()
            async with by_worker(service.port) as stubs:
                assert len(stubs) == 2  # worker 1 serves calls all the same
            assert service.stop() == 0
    finally:
        busy.close()
