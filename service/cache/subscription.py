"""The invalidation channel: keeps this process's tokens, and so L1, coherent across replicas.

Every write and ``Invalidate`` publishes the tags' new tokens; the listener
applies them here at once. While it is not subscribed, invalidations may be
missed, so L1 is not served; every (re)subscription starts from an empty L1.
A Redis that hangs (SIGSTOP, a dropped network) is found by pings that get
no answer. An outage is logged once when it starts, as a summary now and
then while it lasts, and once when the channel is back, however often the
listener retries meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from service.cache.redis_tier import (
    ORIGIN_TAG,
    EpochChanged,
    RedisTier,
    RedisUnavailable,
    stop_if_cancelled,
)

log = logging.getLogger(__name__)


class InvalidationListener:
    """Subscribes to the channel and hands every published token set to ``on_tokens``."""

    def __init__(
        self,
        tier: RedisTier,
        on_tokens: Callable[[dict[str, str]], object],
        on_lost: Callable[[], None],
        ping_interval: float = 0.5,
        summary_interval: float = 60.0,
    ) -> None:
        self.subscribed = False
        self._tier = tier
        self._on_tokens = on_tokens
        self._on_lost = on_lost
        self._ping_interval = ping_interval
        self._outage = _Outage(summary_interval)

    async def run(self) -> None:
        """Listen until cancelled, resubscribing after every failure."""
        while True:
            stop_if_cancelled()
            try:
                await self._listen()
            except (RedisError, RedisUnavailable, OSError, TimeoutError, ValueError) as exc:
                self._outage.failed(exc)
            finally:
                self._lose()
            await asyncio.sleep(self._ping_interval)

    def _lose(self) -> None:
        if self.subscribed:
            self.subscribed = False
            self._on_lost()

    async def _listen(self) -> None:
        pubsub = self._tier.client.pubsub()
        try:
            try:
                await pubsub.subscribe(self._tier.channel)
            except EpochChanged:  # the channel's name has no epoch: on the new Redis, again
                await pubsub.subscribe(self._tier.channel)
            await self._confirmed(pubsub)
            # Anything published before the confirmation may be lost: start empty.
            self._on_lost()
            self.subscribed = True
            self._outage.ended()
            await self._receive(pubsub)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _confirmed(self, pubsub: Any) -> None:
        until = time.monotonic() + 2 * self._ping_interval + 1
        while time.monotonic() < until:
            stop_if_cancelled()
            message = await pubsub.get_message(timeout=self._ping_interval)
            if message is not None and message["type"] == "subscribe":
                return
        raise TimeoutError("no subscription confirmation")

    async def _receive(self, pubsub: Any) -> None:
        heard = pinged = time.monotonic()
        while True:
            stop_if_cancelled()
            message = await pubsub.get_message(timeout=self._ping_interval)
            now = time.monotonic()
            if message is not None:
                heard = now
                if message["type"] == "message":
                    self._take(json.loads(message["data"]))
            if now - heard > 3 * self._ping_interval:
                raise TimeoutError("Redis stopped answering pings")
            if now - pinged >= self._ping_interval:
                pinged = now
                await pubsub.ping()

    def _take(self, tokens: dict[str, str]) -> None:
        """Take another process's new tokens; this one's own took effect when it bumped."""
        if tokens.pop(ORIGIN_TAG, None) != self._tier.origin:
            self._on_tokens(tokens)


class _Outage:
    """The channel's outages, for the log: one line each way, and a summary while it lasts."""

    def __init__(self, summary_interval: float) -> None:
        self._summary_interval = summary_interval
        self._since: float | None = None  # when the channel was lost; None while subscribed
        self._summarised = 0.0
        self._attempts = 0

    def failed(self, exc: BaseException) -> None:
        """An attempt to listen failed (or a subscription ended)."""
        now = time.monotonic()
        if self._since is None:
            self._since = self._summarised = now
            self._attempts = 0
            log.warning("invalidation channel lost, L1 is off until it is back: %s", exc)
        self._attempts += 1
        if now - self._summarised >= self._summary_interval:
            self._summarised = now
            log.warning(
                "invalidation channel still down after %.0f s (%d attempts): %s",
                now - self._since,
                self._attempts,
                exc,
            )

    def ended(self) -> None:
        """Subscribed (again)."""
        if self._since is not None:
            log.info(
                "invalidation channel back after %.1f s (%d attempts)",
                time.monotonic() - self._since,
                self._attempts,
            )
            self._since = None
