"""Stopping a background task for sure: cancel it, and again, until it has ended.

One cancel is not always enough. On Python 3.11 redis-py sends each command
through ``asyncio.wait_for``, which swallows a cancellation that lands just as
the send completes, and a read timeout expiring at the same moment turns it
into a TimeoutError: a task that talks to Redis (the invalidation listener, the
gate's recovery, the health watcher's PING) then runs on, and whoever awaits it
waits forever. This hung server shutdown about once in ten test runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

_RECANCEL_SECONDS = 0.1  # how often a task being stopped is cancelled again


async def stop_task(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for its end, cancelling again while it runs on."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_SECONDS)
    if not task.cancelled():
        task.exception()  # retrieved: a task being stopped may end with any error
