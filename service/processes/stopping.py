"""How a server process stops: the first request drains, a second one exits at once.

The first request (SIGTERM or SIGINT in a single process; the supervisor's
word in a worker) stops gracefully within ``shutdown_grace_seconds``: calls in
flight finish, queued writes commit, buffered spans get a bounded share of
the grace. A second one exits at once, with 128 + the signal's number.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from service.config import Config
from service.observe.telemetry import Telemetry
from service.processes.seat import WorkerSeat
from service.server import serve

log = logging.getLogger("service")


def request_stop(signum: int, stop: asyncio.Future[str], cause: str | None = None) -> None:
    """Ask for a graceful stop (``cause``: why; else the signal's name), or, asked before,
    exit now."""
    name = signal.Signals(signum).name
    if not stop.done():
        stop.set_result(cause or name)
        return
    log.warning("second %s: exiting now, without waiting for calls in flight", name)
    os._exit(128 + signum)


async def serve_until(
    config: Config, stop: asyncio.Future[str], telemetry: Telemetry, seat: WorkerSeat | None = None
) -> None:
    """Serve until ``stop`` resolves, then flush the buffered spans within their share."""
    try:
        await serve(config, stop, telemetry, seat)
    finally:
        # Still inside the loop, so a second request during the flush exits at once too.
        flush = telemetry.flush_seconds(config.shutdown_grace_seconds)
        await asyncio.to_thread(telemetry.shutdown, flush)
