"""Warm reads: the named queries of ``cache.warm``, kept cached ahead of their callers.

Each is loaded once before the server takes calls, then looked at every
``CHECK_SECONDS`` in the background: one whose answer a write dropped (or
that expired) is loaded again, and one past ``REFRESH_AT`` of its ttl is
refreshed while its current answer keeps serving. At most ``CONCURRENCY``
loads run at once. A load is never in front of a caller: callers read
whatever is cached, and a caller arriving between a write and the reload
loads the answer itself, as without warming, so nothing stale is served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from service import errors
from service.config import WarmQuery
from service.domain import CacheMode, CacheStatus, EncodedRead, ReadRequest

log = logging.getLogger(__name__)
CHECK_SECONDS = 0.2
REFRESH_AT = 0.8  # of the ttl: refreshed ahead, before it runs out
CONCURRENCY = 4
RETRY_SECONDS = 2.0  # after a failed load
Cached = Callable[[bytes], Awaitable[EncodedRead | None]]
Load = Callable[[ReadRequest, float, bytes], Awaitable[EncodedRead]]


@dataclass
class WarmFigures:
    """One warm read as Stats shows it."""

    name: str
    database: str
    loads: int = 0  # loads and refreshes since start
    last_refresh: float = 0.0  # wall clock of the last load that succeeded; 0: never
    last_error: str = ""  # the last load's failure, "" once one succeeds again


@dataclass
class _Warm:
    query: WarmQuery
    request: ReadRequest
    identity: bytes
    ttl: float
    figures: WarmFigures
    loaded_at: float | None = None  # monotonic
    not_before: float = 0.0  # monotonic: after a failure, or an answer that is not cached


class Warmer:
    """Keeps the ``cache.warm`` reads cached: ``load_all`` at start, then ``run``."""

    def __init__(
        self,
        queries: Sequence[WarmQuery],
        cached: Cached,
        load: Load,
        default_ttl: float,
        deadline_seconds: float,
    ) -> None:
        self._cached = cached
        self._load = load
        self._deadline_seconds = deadline_seconds
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._reads = [_warm(query, default_ttl) for query in queries]

    def figures(self) -> list[WarmFigures]:
        """Every warm read's loads, last refresh and last error."""
        return [replace(read.figures) for read in self._reads]

    async def load_all(self) -> None:
        """Load every warm read once (a failure is logged and retried by ``run``)."""
        await asyncio.gather(*(self._bounded(read, CacheMode.USE) for read in self._reads))

    async def run(self) -> None:
        """Reload what writes dropped and refresh what nears its ttl, until cancelled."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            due = [(read, mode) for read in self._reads if (mode := await self._due(read))]
            await asyncio.gather(*(self._bounded(read, mode) for read, mode in due))

    async def _due(self, read: _Warm) -> CacheMode | None:
        """USE when its answer is gone, REFRESH when it nears its ttl, else None."""
        if time.monotonic() < read.not_before:
            return None
        if read.loaded_at is None or await self._cached(read.identity) is None:
            return CacheMode.USE
        if time.monotonic() - read.loaded_at >= REFRESH_AT * read.ttl:
            return CacheMode.REFRESH
        return None

    async def _bounded(self, read: _Warm, mode: CacheMode) -> None:
        async with self._slots:
            await self._load_one(read, mode)

    async def _load_one(self, read: _Warm, mode: CacheMode) -> None:
        request = replace(read.request, cache_mode=mode)
        deadline = time.monotonic() + self._deadline_seconds
        try:
            answer = await self._load(request, deadline, read.identity)
        except Exception as exc:  # the loop must outlive any one load
            message = exc.message if isinstance(exc, errors.DataAccessError) else repr(exc)
            if message != read.figures.last_error:
                log.warning("warm read %s failed: %s", read.query.name, message)
            read.figures.last_error = message
            read.not_before = time.monotonic() + RETRY_SECONDS
            return
        if answer.cache_status is CacheStatus.BYPASS:
            read.figures.last_error = "not cacheable (volatile, or the cache is off)"
            read.not_before = time.monotonic() + read.ttl  # looked at again then, not every check
            return
        if answer.cache_status is CacheStatus.MISS:
            read.loaded_at = time.monotonic()
        else:  # loaded by someone else, at a time not known here: refreshed at the next check
            read.loaded_at = time.monotonic() - read.ttl
        read.figures.loads += 1
        read.figures.last_refresh = time.time()
        read.figures.last_error = ""


def _warm(query: WarmQuery, default_ttl: float) -> _Warm:
    ttl = query.ttl_seconds if query.ttl_seconds is not None else default_ttl
    request = ReadRequest(database=query.database, sql=query.sql, params=query.params)
    request = replace(request, ttl_seconds=ttl)
    identity = f"warm:{query.name}".encode()
    return _Warm(query, request, identity, ttl, WarmFigures(query.name, query.database))
