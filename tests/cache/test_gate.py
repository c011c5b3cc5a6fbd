"""Held invalidations and the channel against a real redis-server: delivery, logs, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio.client import PubSub

from service.cache.breaker import CircuitBreaker
from service.cache.gate import RedisGate
from service.cache.redis_tier import RedisSettings, RedisTier, RedisUnavailable
from service.cache.subscription import InvalidationListener
from service.cache.tagged import CacheSettings, EntryPolicy, TagCache
from tests.conftest import RedisProcess


async def test_a_commit_held_while_an_earlier_hold_is_delivered_is_not_lost(
    redis_server: RedisProcess,
) -> None:
    def cache() -> TagCache:
        return TagCache(CacheSettings(redis=RedisSettings(url=redis_server.url), breaker_reset=0.1))

    writer, reader = cache(), cache()
    await writer.start()
    await reader.start()
    database = {"rows": 1}
    policy = EntryPolicy(ttl=60)
    receipts: list[str] = []

    async def load() -> bytes:
        return str(database["rows"]).encode()

    assert writer.redis is not None
    deliver = writer.redis.bump
    first_delivery = True

    async def bump_then_commit_again(tags: Sequence[str]) -> dict[str, str]:
        # Redis applied the held bump; before its answer is handled, the other
        # cache loads and another commit on the same table is held.
        nonlocal first_delivery
        tokens = await deliver(tags)
        if first_delivery:
            first_delivery = False
            await reader.get_or_load("k", ["T"], load, policy)
            database["rows"] = 2
            await writer.invalidate_committed(["T"], lambda: receipts.append("second"))
        return tokens

    writer.redis.bump = bump_then_commit_again  # type: ignore[method-assign]
    try:
        writer.hold(["T"], lambda: receipts.append("first"))
        async with asyncio.timeout(10):
            while not writer.redis_usable:
                await asyncio.sleep(0.01)
        assert receipts == ["first", "second"]
        for cache_ in (writer, reader):
            assert (await cache_.get_or_load("k", ["T"], load, policy))[0] == b"2"
    finally:
        await writer.close()
        await reader.close()


async def test_held_invalidations_say_when_they_are_delivered(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TagCache(CacheSettings(redis=RedisSettings(url=redis_server.url), breaker_reset=0.1))
    await cache.start()
    try:
        with caplog.at_level(logging.INFO, logger="service.cache"):
            cache.hold(["T", "U"], None)  # as the server does at start with an outbox left over
            async with asyncio.timeout(10):
                while not cache.redis_usable:
                    await asyncio.sleep(0.01)
        lines = [r.getMessage() for r in caplog.records if "delivered" in r.getMessage()]
        assert lines == ["held invalidations delivered to Redis: 2 tags"]
    finally:
        await cache.close()


async def test_a_redis_outage_is_logged_once_each_way_with_a_summary_while_it_lasts(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    tier = RedisTier(RedisSettings(url=redis_server.url), lambda: None)
    listener = InvalidationListener(
        tier, lambda _: None, lambda: None, ping_interval=0.05, summary_interval=0.5
    )
    task = asyncio.ensure_future(listener.run())
    try:
        with caplog.at_level(logging.INFO, logger="service.cache"):
            await _until_subscribed(listener, True)
            redis_server.kill()
            await _until_subscribed(listener, False)
            await asyncio.sleep(1.2)  # about twenty attempts, two summaries
            redis_server.start()
            await _until_subscribed(listener, True)
        lines = [r.getMessage() for r in caplog.records if "invalidation channel" in r.getMessage()]
        assert lines[0].startswith("invalidation channel lost")
        assert lines[-1].startswith("invalidation channel back after")
        assert 1 <= len([line for line in lines if "still down" in line]) <= 3
        assert len(lines) <= 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await tier.close()


async def _until_subscribed(listener: InvalidationListener, subscribed: bool) -> None:
    async with asyncio.timeout(10):
        while listener.subscribed != subscribed:
            await asyncio.sleep(0.01)


async def test_a_listener_still_stops_when_redis_py_swallowed_its_cancellation(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = RedisTier(RedisSettings(url=redis_server.url), lambda: None)
    listener = InvalidationListener(tier, lambda _: None, lambda: None, ping_interval=0.05)
    get_message = PubSub.get_message
    waiting = asyncio.Event()

    async def swallowing(self: PubSub, *args: Any, **kwargs: Any) -> Any:
        waiting.set()
        try:
            return await get_message(self, *args, **kwargs)
        except asyncio.CancelledError:
            return None  # as Python 3.11's wait_for does when a send completes as it is cancelled

    task = asyncio.ensure_future(listener.run())
    try:
        await _until_subscribed(listener, True)
        monkeypatch.setattr(PubSub, "get_message", swallowing)
        await waiting.wait()
        task.cancel()  # it waits in get_message now
        await asyncio.wait({task}, timeout=5)
        assert task.cancelled()
    finally:
        task.cancel()
        await tier.close()


async def test_recovery_still_stops_when_a_probe_swallowed_its_cancellation(
    redis_server: RedisProcess,
) -> None:
    tier = RedisTier(RedisSettings(url=redis_server.url), lambda: None)
    gate = RedisGate(tier, CircuitBreaker(1), 0.001, lambda _: None, lambda: None)
    probing = asyncio.Event()

    async def swallowing_ping() -> None:
        probing.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)
        raise RedisUnavailable("a probe that did not hear it was cancelled")

    tier.ping = swallowing_ping  # type: ignore[method-assign]
    try:
        gate.trip()
        await probing.wait()
        closing = asyncio.ensure_future(gate.close())
        await asyncio.wait({closing}, timeout=5)
        assert closing.done()
    finally:
        await tier.close()
