"""Cached-read load over several connections, in its own process, with the server's CPU time:
``python -m bench.workers_load PORT SERVER_PID WORKERS SECONDS CONNECTIONS CONCURRENCY``.

Opens CONNECTIONS connections (a local subchannel pool each, so none is
shared) spread evenly over the WORKERS worker processes (a connection's worker
is the pid its Stats answer names; extra connections are closed), warms each
worker's L1, then runs CONCURRENCY callers, spread over the connections, asking
``bench.query_load.QUERY`` for SECONDS. Reads the user+sys CPU time of the
server (SERVER_PID and its children, from /proc) and of this process around
the timed loop. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from bench.query_load import QUERY, Sample, drive, status_name
from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc

TICKS = os.sysconf("SC_CLK_TCK")
_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def server_cpu(pid: int) -> float:
    """Seconds of user+sys CPU used so far by ``pid`` and its children (the workers)."""
    return sum(_cpu_of(one) for one in [pid, *_children(pid)])


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def _pid_of(stub: pb_grpc.DataAccessAsyncStub) -> int:
    call = stub.Stats(pb.StatsRequest(), timeout=10)
    await call
    return int(dict(await call.trailing_metadata() or ())["dataaccess-pid"])


async def spread(port: int, workers: int, connections: int) -> list[grpc.aio.Channel]:
    """``connections`` channels, as many on each worker (the kernel picks; extras close)."""
    wanted = connections // workers
    kept: dict[int, list[grpc.aio.Channel]] = {}
    deadline = time.monotonic() + 30
    while sum(len(c) for c in kept.values()) < connections:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: connections reached {sorted(kept)} only")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS)
        group = kept.setdefault(await _pid_of(pb_grpc.DataAccessStub(channel)), [])
        if len(kept) > workers or len(group) >= wanted:
            await channel.close(None)
            if len(kept) > workers:
                raise SystemExit(f"bench: more workers than {workers}: {sorted(kept)}")
            continue
        group.append(channel)
    return [channel for group in kept.values() for channel in group]


async def warm(stub: pb_grpc.DataAccessAsyncStub) -> None:
    """Ask until this connection's worker answers from its L1."""
    for _ in range(100):
        if status_name((await stub.Query(QUERY, timeout=10)).cache_status) == "HIT_LOCAL":
            return
    raise SystemExit("bench: the query never came from L1")


async def measure(
    port: int, pid: int, workers: int, seconds: float, connections: int, concurrency: int
) -> dict[str, Any]:
    channels = await spread(port, workers, connections)
    stubs = [pb_grpc.DataAccessStub(channel) for channel in channels]
    try:
        for stub in stubs:
            await warm(stub)
        each = concurrency // connections
        await asyncio.gather(*(drive(stub, each, 10**9, 1.0) for stub in stubs))  # warm-up
        cpu, own = server_cpu(pid), time.process_time()
        samples = await asyncio.gather(*(drive(stub, each, 10**9, seconds) for stub in stubs))
        cpu, own = server_cpu(pid) - cpu, time.process_time() - own
    finally:
        for channel in channels:
            await channel.close(None)
    total = Sample(seconds=max(s.seconds for s in samples))
    for sample in samples:
        total.latencies += sample.latencies
        total.statuses.update(sample.statuses)
    answers = len(total.latencies)
    return {
        **total.summary("HIT_LOCAL"),
        "server_cpu_us": 1e6 * cpu / answers,
        "load_cpu_us": 1e6 * own / answers,
    }


def main() -> None:
    port, pid, workers = (int(a) for a in sys.argv[1:4])
    seconds = float(sys.argv[4])
    connections, concurrency = int(sys.argv[5]), int(sys.argv[6])
    result = asyncio.run(measure(port, pid, workers, seconds, connections, concurrency))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
