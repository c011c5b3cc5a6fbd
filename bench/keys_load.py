"""Load for key-level cache invalidation, run in its own process: ``python -m bench.keys_load``.

The orders table (``bench.datasets.orders_database``) is read by customer,
the customer drawn from a Zipf distribution (s = 1.1, fixed seed; which
customer has which rank is a fixed random permutation) over ``CUSTOMERS``.

``prime PORT``
    read every customer once, ``CALLERS`` at a time, so the cache holds
    them all; and the tags the most read customer's answer is cached under.
``mixed PORT SEED FRACTION WARM SECONDS COUNT``
    ``CALLERS`` tasks on one channel issue operations back to back, for
    WARM seconds unmeasured, then measured until COUNT operations or
    SECONDS pass. An operation is a point read of a Zipf customer or, with
    probability FRACTION (0.05 for 5%), a one-row write: half
    ``BatchUpdate`` of a random row's amount, half ``BatchInsert`` of a row
    for a Zipf customer. SEED fixes the operations, so two servers given
    the same SEED get the same ones. Every read's ``cache_status`` is
    counted: HIT_LOCAL and HIT_REDIS are hits, anything else is not.
``inserts PORT BATCHES ROWS SECONDS``
    BatchInserts of ROWS rows one after the other, after two unmeasured
    ones, until BATCHES or SECONDS pass.
``updates PORT CONCURRENCY COUNT SECONDS``
    CONCURRENCY tasks each issuing one-row BatchUpdates back to back, after
    a short unmeasured warm-up, until COUNT calls or SECONDS pass.

Each prints one JSON object.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.query_load import status_name
from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc

DATABASE = "orders"
ROWS = 100_000
CUSTOMERS = 10_000
ZIPF_S = 1.1
CALLERS = 100
READ = "SELECT id, customer, day, amount FROM orders WHERE customer = ?"
UPDATE = "UPDATE orders SET amount = ? WHERE id = ?"
HITS = frozenset({"HIT_LOCAL", "HIT_REDIS"})
_UPDATE_OP = -1
_INSERT_OP = -2
_QUERY_METHOD = f"/{pb.DESCRIPTOR.services_by_name['DataAccess'].full_name}/Query"

RawCall = Callable[..., Awaitable[bytes]]


class Zipf:
    """Customers 1..CUSTOMERS drawn with P(rank k) proportional to k^-ZIPF_S."""

    def __init__(self) -> None:
        self.by_rank = list(range(1, CUSTOMERS + 1))
        random.Random(1729).shuffle(self.by_rank)  # the same ranks in every process
        weights = [k**-ZIPF_S for k in range(1, CUSTOMERS + 1)]
        self._cumulative = list(itertools.accumulate(weights))

    def draw(self, pick: random.Random) -> int:
        """One customer."""
        rank = bisect.bisect(self._cumulative, pick.random() * self._cumulative[-1])
        return self.by_rank[min(rank, CUSTOMERS - 1)]


def read_request(customer: int) -> pb.QueryRequest:
    """The point read of ``customer``'s orders."""
    return pb.QueryRequest(database=DATABASE, sql=READ, params=[pb.Value(integer=customer)])


def update_request(pick: random.Random) -> pb.BatchUpdateRequest:
    """A BatchUpdate of one random seeded row's amount."""
    values = [
        pb.Value(real=pick.randint(100, 50_000) / 100),
        pb.Value(integer=pick.randint(1, ROWS)),
    ]
    statement = pb.Statement(sql=UPDATE, param_sets=[pb.Row(values=values)])
    return pb.BatchUpdateRequest(database=DATABASE, statements=[statement])


def insert_request(customers: list[int], pick: random.Random) -> pb.BatchInsertRequest:
    """A BatchInsert of one order for each of ``customers``."""
    rows = [
        pb.Row(
            values=[
                pb.Value(integer=customer),
                pb.Value(integer=pick.randint(1, 365)),
                pb.Value(real=pick.randint(100, 50_000) / 100),
            ]
        )
        for customer in customers
    ]
    return pb.BatchInsertRequest(
        database=DATABASE, table="orders", columns=["customer", "day", "amount"], rows=rows
    )


@dataclass
class Mix:
    """One timed loop of the mixed load: reads (latency, status) and writes."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    write_errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON for this loop."""
        reads = len(self.latencies)
        ms = sorted(1000 * s for s in self.latencies) or [0.0]
        hits = sum(n for status, n in self.statuses.items() if status in HITS)
        return {
            "reads": reads,
            "writes": self.writes,
            "seconds": self.seconds,
            "reads_per_second": reads / self.seconds,
            "writes_per_second": self.writes / self.seconds,
            "hit_rate": hits / reads if reads else 0.0,
            "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "statuses": dict(self.statuses),
            "write_errors": dict(self.write_errors),
            "load_cpu": self.cpu_seconds / self.seconds,  # of one core, by this process
        }


class Mixed:
    """The mixed load against one server: reads by raw bytes, writes through the stub."""

    def __init__(self, channel: grpc.aio.Channel, seed: int) -> None:
        self.zipf = Zipf()
        self.seed = seed
        self.stub = pb_grpc.DataAccessStub(channel)
        self.query: RawCall = channel.unary_unary(
            _QUERY_METHOD, request_serializer=None, response_deserializer=None
        )
        # Every customer's read, serialized once: a read costs this process no encoding.
        self.reads = [b""] + [read_request(c).SerializeToString() for c in range(1, CUSTOMERS + 1)]
        self.pick = random.Random(seed)  # write parameters

    def operations(self, fraction: float, count: int, salt: int) -> list[int]:
        """``count`` operations: a customer to read, or _UPDATE_OP / _INSERT_OP."""
        pick = random.Random(self.seed * 1000 + salt)
        out = []
        for _ in range(count):
            if pick.random() < fraction:
                out.append(_UPDATE_OP if pick.random() < 0.5 else _INSERT_OP)
            else:
                out.append(self.zipf.draw(pick))
        return out

    async def read(self, customer: int) -> pb.QueryResponse:
        answer = await self.query(self.reads[customer], timeout=30)
        return pb.QueryResponse.FromString(answer)

    async def run(self, operations: list[int], seconds: float) -> Mix:
        """``CALLERS`` tasks taking ``operations`` in turn until done or ``seconds`` pass."""
        mix = Mix()
        position = 0
        deadline = time.perf_counter() + seconds
        clock = time.perf_counter

        async def caller() -> None:
            nonlocal position
            while position < len(operations) and clock() < deadline:
                operation = operations[position]
                position += 1
                if operation > 0:
                    started = clock()
                    try:
                        answer = await self.query(self.reads[operation], timeout=30)
                        status = status_name(pb.QueryResponse.FromString(answer).cache_status)
                    except grpc.aio.AioRpcError as exc:
                        status = f"ERROR {exc.code().name}"
                    mix.latencies.append(clock() - started)
                    mix.statuses[status] += 1
                    continue
                try:
                    if operation == _UPDATE_OP:
                        await self.stub.BatchUpdate(update_request(self.pick), timeout=30)
                    else:
                        customers = [self.zipf.draw(self.pick)]
                        await self.stub.BatchInsert(
                            insert_request(customers, self.pick), timeout=30
                        )
                    mix.writes += 1
                except grpc.aio.AioRpcError as exc:
                    mix.write_errors[exc.code().name] += 1

        cpu = time.process_time()
        started = clock()
        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        mix.seconds = clock() - started
        mix.cpu_seconds = time.process_time() - cpu
        return mix


async def prime(port: int) -> dict[str, Any]:
    """Read every customer once; the tags the most read customer's answer is cached under."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        load = Mixed(channel, 0)
        primed = await load.run(list(range(1, CUSTOMERS + 1)), 300.0)
        tags = (await load.read(load.zipf.by_rank[0])).tags
    return {"seconds": primed.seconds, "statuses": dict(primed.statuses), "tags": sorted(tags)}


async def mixed(
    port: int, seed: int, fraction: float, warm: float, seconds: float, count: int
) -> dict[str, Any]:
    """The mixed load at write share ``fraction``: a warm-up, then the timed loop."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        load = Mixed(channel, seed)
        await load.run(load.operations(fraction, count, 0), warm)
        mix = await load.run(load.operations(fraction, count, 1), seconds)
    return mix.summary()


async def inserts(port: int, batches: int, rows: int, seconds: float) -> dict[str, Any]:
    """BatchInserts of ``rows`` Zipf-customer rows one after the other."""
    zipf, pick = Zipf(), random.Random(batches)
    requests = [
        insert_request([zipf.draw(pick) for _ in range(rows)], pick) for _ in range(batches + 2)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        first = await stub.BatchInsert(requests[0], timeout=60)
        await stub.BatchInsert(requests[1], timeout=60)
        done = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        for request in requests[2:]:
            if time.perf_counter() >= deadline:
                break
            await stub.BatchInsert(request, timeout=60)
            done += 1
        elapsed = time.perf_counter() - started
    return {"rows": done * rows, "seconds": elapsed, "tags": sorted(first.invalidated_tags)}


async def updates(port: int, concurrency: int, count: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` tasks each issuing one-row BatchUpdates back to back."""
    pick = random.Random(count)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        first = await stub.BatchUpdate(update_request(pick), timeout=60)

        async def loop(calls: int, seconds: float) -> int:
            issued = 0
            deadline = time.perf_counter() + seconds

            async def caller() -> None:
                nonlocal issued
                while issued < calls and time.perf_counter() < deadline:
                    issued += 1
                    await stub.BatchUpdate(update_request(pick), timeout=60)

            await asyncio.gather(*(caller() for _ in range(concurrency)))
            return issued

        await loop(concurrency * 4, 1.0)
        started = time.perf_counter()
        done = await loop(count, seconds)
        elapsed = time.perf_counter() - started
    return {"rows": done, "seconds": elapsed, "tags": sorted(first.invalidated_tags)}


def main(argv: list[str]) -> None:
    """Run the command in ``argv`` and print its JSON."""
    command, port, *rest = argv
    if command == "prime":
        result = asyncio.run(prime(int(port)))
    elif command == "mixed":
        seed, fraction, warm, seconds, count = rest
        result = asyncio.run(
            mixed(int(port), int(seed), float(fraction), float(warm), float(seconds), int(count))
        )
    elif command == "inserts":
        batches, rows, seconds = rest
        result = asyncio.run(inserts(int(port), int(batches), int(rows), float(seconds)))
    elif command == "updates":
        concurrency, count, seconds = rest
        result = asyncio.run(updates(int(port), int(concurrency), int(count), float(seconds)))
    else:
        raise SystemExit(
            f"usage: python -m bench.keys_load mixed|inserts|updates PORT ... ({command}?)"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
