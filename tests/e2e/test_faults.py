"""The fault suite: a steady workload while Redis is paused, killed and restarted from
its snapshot, a database file is made unreadable and restored, memory bombs are sent,
an outside process reads the file, a second service starts and stops on the same
files, and the server is SIGKILLed. Zero acknowledged writes lost, zero stale reads,
and Health answered within 1 s throughout (but while the server itself is down).

Run with ``-s`` to see the figures the README's Reliability section reports.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from tests.conftest import RedisProcess, row, value
from tests.db.test_memory import BOMBS, REFUSED
from tests.e2e.test_other_processes import read_from_outside

pytestmark = [pytest.mark.slow, pytest.mark.integration]
COUNT = "SELECT count(*) FROM items WHERE qty >= 1000"
# Read by its UNIQUE code: cached under that code's key tag, dropped only by its write.
BY_CODE = "SELECT count(*) FROM items WHERE code = ?"


@dataclass
class Tally:
    """What the workload saw."""

    acknowledged: set[int] = field(default_factory=set)
    requests: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    stale: list[tuple[int, int]] = field(default_factory=list)
    health_worst_ms: float = 0.0
    faults: list[str] = field(default_factory=list)
    running: bool = True


async def _writer(stub: pb_grpc.DataAccessAsyncStub, tally: Tally) -> None:
    # Past every code an earlier writer may have committed (codes are UNIQUE).
    seq = max(tally.acknowledged, default=1000) + 100
    while tally.running:
        seq += 1
        tally.requests += 1
        try:
            await stub.BatchInsert(
                pb.BatchInsertRequest(
                    database="kitchen",
                    table="items",
                    columns=["qty", "code"],
                    rows=[row(seq, f"c{seq}")],
                ),
                timeout=5,
            )
            tally.acknowledged.add(seq)
        except grpc.aio.AioRpcError as exc:
            tally.errors[f"BatchInsert {exc.code().name}"] += 1
            await asyncio.sleep(0.05)


async def _reader(stub: pb_grpc.DataAccessAsyncStub, tally: Tally) -> None:
    while tally.running:
        floor = len(tally.acknowledged)
        tally.requests += 1
        try:
            answer = await stub.Query(pb.QueryRequest(database="kitchen", sql=COUNT), timeout=5)
            seen = answer.rows[0].values[0].integer
            if seen < floor:
                tally.stale.append((seen, floor))
        except grpc.aio.AioRpcError as exc:
            tally.errors[f"Query {exc.code().name}"] += 1
            await asyncio.sleep(0.05)


async def _keyed_reader(stub: pb_grpc.DataAccessAsyncStub, tally: Tally) -> None:
    """Reads the next code before its write (caching "none") and the newest acknowledged
    code after it: the newest must always be found, whatever is cached."""
    while tally.running:
        newest = max(tally.acknowledged, default=1000)
        for seq, floor in ((newest + 1, 0), (newest, 1 if newest > 1000 else 0)):
            tally.requests += 1
            try:
                answer = await stub.Query(
                    pb.QueryRequest(database="kitchen", sql=BY_CODE, params=[value(f"c{seq}")]),
                    timeout=5,
                )
                seen = answer.rows[0].values[0].integer
                if seen < floor:
                    tally.stale.append((seen, floor))
            except grpc.aio.AioRpcError as exc:
                tally.errors[f"Query {exc.code().name}"] += 1
                await asyncio.sleep(0.05)


async def _health(stub: pb_grpc.DataAccessAsyncStub, tally: Tally, paused: asyncio.Event) -> None:
    while tally.running:
        if not paused.is_set():
            started = time.monotonic()
            tally.requests += 1
            try:
                await stub.Health(pb.HealthRequest(), timeout=5)
                if not paused.is_set():
                    worst = (time.monotonic() - started) * 1000
                    tally.health_worst_ms = max(tally.health_worst_ms, worst)
            except grpc.aio.AioRpcError as exc:
                if not paused.is_set():
                    tally.errors[f"Health {exc.code().name}"] += 1
        await asyncio.sleep(0.1)


def _bomb(port: int, name: str, outcomes: list[grpc.StatusCode]) -> None:
    """Send one memory bomb from another thread's channel; note how it was answered."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        query = pb_grpc.DataAccessStub(channel).Query
        try:
            query(pb.QueryRequest(database="kitchen", sql=BOMBS[name]), timeout=5)
            outcomes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            outcomes.append(exc.code())


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0


async def test_faults_lose_no_acknowledged_write_and_serve_nothing_stale(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess, service_process: Any
) -> None:
    document = {**document, "redis_url": redis_server.url, "cache": {"breaker_reset_seconds": 0.2}}
    server = await asyncio.to_thread(service_process, document)
    tally = Tally()
    server_down = asyncio.Event()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.DataAccessStub(channel)
    tasks = [
        asyncio.ensure_future(_writer(stub, tally)),
        *(asyncio.ensure_future(_reader(stub, tally)) for _ in range(4)),
        *(asyncio.ensure_future(_keyed_reader(stub, tally)) for _ in range(2)),
        asyncio.ensure_future(_health(stub, tally, server_down)),
    ]

    async def fault(name: str, action: Any, then: float) -> None:
        tally.faults.append(name)
        await asyncio.to_thread(action)
        await asyncio.sleep(then)

    try:
        await asyncio.sleep(1.0)
        await fault("Redis paused (SIGSTOP)", lambda: redis_server.signal(signal.SIGSTOP), 2.0)
        await fault("Redis resumed (SIGCONT)", lambda: redis_server.signal(signal.SIGCONT), 1.5)
        await fault("Redis snapshot saved", redis_server.save, 0.5)
        await fault("Redis killed (SIGKILL)", redis_server.kill, 1.5)
        await fault("Redis restarted from its snapshot", redis_server.start, 2.0)
        path = Path(document["data_dir"]) / "kitchen.db"

        def unreadable() -> None:
            path.rename(path.with_suffix(".moved"))
            path.write_bytes(b"\x00" * 4096)

        def restored() -> None:
            path.unlink()
            path.with_suffix(".moved").rename(path)

        await fault("database file made unreadable", unreadable, 1.0)
        await fault("database file restored", restored, 1.0)
        bombs: list[grpc.StatusCode] = []
        for bomb in ("json_group_array over millions of rows", "a big GROUP BY"):
            send = functools.partial(_bomb, server.port, bomb, bombs)
            await fault(f"memory bomb: {bomb}", send, 0.2)
        await fault("an outside process read the file", lambda: read_from_outside(path), 0.5)
        second: list[Any] = []
        await fault(
            "a second service started on the same files",
            lambda: second.append(service_process(document)),
            1.0,
        )
        await fault("the second service stopped (SIGTERM)", lambda: _stop(second[0].process), 0.5)
        await fault("an outside process read the file", lambda: read_from_outside(path), 0.5)
        server_down.set()
        await fault("server killed (SIGKILL)", server.process.kill, 0.5)
        restarted = await asyncio.to_thread(service_process, {**document})
        await channel.close(None)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}")
        stub = pb_grpc.DataAccessStub(channel)
        tasks += [
            asyncio.ensure_future(_writer(stub, tally)),
            asyncio.ensure_future(_reader(stub, tally)),
            asyncio.ensure_future(_keyed_reader(stub, tally)),
        ]
        server_down.clear()
        tasks.append(asyncio.ensure_future(_health(stub, tally, server_down)))
        await asyncio.sleep(2.0)
    finally:
        tally.running = False
        await asyncio.gather(*tasks, return_exceptions=True)
    rows = await stub.Query(
        pb.QueryRequest(
            database="kitchen",
            sql="SELECT qty FROM items WHERE qty >= 1000",
            max_rows=100_000,
            cache=pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS),
        )
    )
    await channel.close(None)
    stored = {r.values[0].integer for r in rows.rows}
    lost = tally.acknowledged - stored
    print(
        f"\nfault suite: {len(tally.faults)} faults ({'; '.join(tally.faults)}), "
        f"{tally.requests} requests, {len(tally.acknowledged)} writes acknowledged, "
        f"lost writes: {len(lost)}, stale reads: {len(tally.stale)}, "
        f"worst Health: {tally.health_worst_ms:.0f} ms, errors: {dict(tally.errors)}, "
        f"memory bombs answered: {[code.name for code in bombs]}"
    )
    assert not lost
    assert set(bombs) <= REFUSED, bombs
    assert tally.stale == []
    assert tally.health_worst_ms < 1000
    assert len(tally.acknowledged) > 50
    unexpected = {k for k in tally.errors if not k.endswith(("UNAVAILABLE", "CANCELLED"))}
    assert not unexpected, tally.errors
