"""Sibling workers' shared write marks: a write acknowledged by one worker is never served
stale from another's L1, even before its pub/sub message arrives; a sibling holding
invalidations keeps every worker off the cache."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from service.cache.redis_tier import RedisSettings
from service.cache.siblings import SiblingMarks, WorkerMarks
from service.cache.tagged import CacheSettings, EntryPolicy, Loader, TagCache
from service.domain import CacheStatus
from tests.conftest import RedisProcess

POLICY = EntryPolicy(ttl=60)


@pytest.mark.unit
def test_a_worker_reads_what_its_siblings_touched_and_never_its_own() -> None:
    marks = SiblingMarks(3, slots=64)
    first, second, third = (marks.seat(i) for i in range(3))
    # String hashes are salted per process: pick a key tag whose slot is not the table's.
    key = next(
        tag
        for tag in (f"key:live.orders.id={i}" for i in range(1000))
        if hash(tag) & 63 != hash("table:live.orders") & 63
    )
    assert second.read(["table:live.orders"]) == 0
    first.touch(["table:live.orders"])
    third.touch(["table:live.orders", key])
    assert second.read(["table:live.orders"]) == 2
    assert second.read([key]) == 1
    assert first.read(["table:live.orders"]) == 1  # its own touch is not its siblings'
    assert second.read(["table:live.other"]) in (0, 1, 2, 3)  # a shared slot is a false alarm only
    assert not second.siblings_holding()
    third.hold(True)
    assert second.siblings_holding() and first.siblings_holding()
    assert not third.siblings_holding()
    third.hold(False)
    assert not first.siblings_holding()


@pytest.mark.unit
def test_the_marks_are_shared_with_a_forked_process() -> None:
    marks = SiblingMarks(2)
    parent = marks.seat(0)
    pid = os.fork()
    if pid == 0:
        marks.seat(1).touch(["t"])
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert parent.read(["t"]) == 1


def _cache(redis: RedisProcess, marks: WorkerMarks | None) -> TagCache:
    settings = CacheSettings(redis=RedisSettings(url=redis.url), breaker_reset=0.1)
    return TagCache(settings, siblings=marks)


@asynccontextmanager
async def _two_workers(
    redis: RedisProcess, shared: bool = True
) -> AsyncIterator[tuple[TagCache, TagCache]]:
    marks = SiblingMarks(2)
    writer = _cache(redis, marks.seat(0) if shared else None)
    reader = _cache(redis, marks.seat(1) if shared else None)
    await writer.start()
    await reader.start()
    try:
        yield writer, reader
    finally:
        await writer.close()
        await reader.close()


def _loader(rows: dict[str, int]) -> Loader:
    async def load() -> bytes:
        return str(rows["count"]).encode()

    return load


async def _in_l1(cache: TagCache, load: Loader) -> bytes:
    for _ in range(3):
        value, status = await cache.get_or_load("k", ["T"], load, POLICY)
        if status is CacheStatus.HIT_LOCAL:
            return value
    raise AssertionError("never answered from L1")


@pytest.mark.parametrize("shared", [True, False])
async def test_a_write_is_seen_before_its_pub_sub_message(
    redis_server: RedisProcess, shared: bool
) -> None:
    rows = {"count": 1}
    load = _loader(rows)
    async with _two_workers(redis_server, shared) as (writer, reader):
        assert await _in_l1(reader, load) == b"1"
        # The reader's pub/sub is slow: the write's message has not arrived when it reads.
        assert reader.listener is not None
        late: list[dict[str, str]] = []
        reader.listener._on_tokens = late.append
        rows["count"] = 2
        await writer.invalidate_committed(["T"], None)
        value, status = await reader.get_or_load("k", ["T"], load, POLICY)
        if shared:
            assert (value, status) == (b"2", CacheStatus.MISS)
        else:  # what the marks are for: alone, the reader trusts its L1 for the window
            assert (value, status) == (b"1", CacheStatus.HIT_LOCAL)


async def test_while_a_sibling_holds_invalidations_no_worker_uses_the_cache(
    redis_server: RedisProcess,
) -> None:
    rows = {"count": 1}
    load = _loader(rows)
    async with _two_workers(redis_server) as (writer, reader):
        await _in_l1(reader, load)
        assert writer.redis is not None
        deliver = writer.redis.bump
        release = asyncio.Event()

        async def slow_bump(tags: list[str]) -> dict[str, str]:
            await release.wait()  # Redis takes the held tags only once released
            return await deliver(tags)

        writer.redis.bump = slow_bump  # type: ignore[assignment, method-assign]
        writer.hold(["T"], None)  # as a commit whose bump failed is held
        rows["count"] = 2
        assert not reader.redis_usable
        value, status = await reader.get_or_load("k", ["T"], load, POLICY)
        assert (value, status) == (b"2", CacheStatus.BYPASS)
        release.set()
        async with asyncio.timeout(10):
            while not reader.redis_usable:
                await asyncio.sleep(0.01)
        value, status = await reader.get_or_load("k", ["T"], load, POLICY)
        assert value == b"2" and status is not CacheStatus.BYPASS
