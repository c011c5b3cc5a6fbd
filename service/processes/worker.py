"""One worker's life, in the process its supervisor forked: serve until told to stop.

Everything a server holds (event loop, gRPC server, database connections,
Redis client, telemetry threads) is made here, after the fork. A worker
ignores SIGTERM and SIGINT themselves: a Ctrl-C in a terminal, or a stop sent
to the whole process group, reaches every process at once, and the
supervisor passes each on exactly once through the worker's control pipe
(one byte: the signal's number; 0 when the supervisor stops the service
itself because a sibling died). So one stop is never counted twice: the
first byte drains, as one process does on SIGTERM, a second exits at once.
End of file on the pipe means the supervisor is gone (killed): the worker
stops gracefully rather than serve on unsupervised.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from service.config import Config
from service.observe.logs import setup_logging
from service.observe.telemetry import Telemetry
from service.processes.seat import WorkerSeat
from service.processes.stopping import request_stop, serve_until
from service.server import StartError

SIBLING_DIED = 0  # the control byte that says the supervisor stops the service itself
_STOPPING = {signal.SIGTERM, signal.SIGINT}


def run_worker(config: Config, seat: WorkerSeat, control: int) -> int:
    """Serve ``config`` as worker ``seat`` until the pipe ``control`` says stop; exit code."""
    for signum in _STOPPING:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPPING)  # blocked across the fork
    setup_logging(config.log_level, {"worker": seat.index})
    try:
        asyncio.run(_serve_until_told(config, Telemetry.from_env(os.environ), seat, control))
    except StartError as exc:
        print(f"dataaccess: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_told(
    config: Config, telemetry: Telemetry, seat: WorkerSeat, control: int
) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[str] = loop.create_future()
    loop.add_reader(control, _read_control, loop, control, stop)
    try:
        await serve_until(config, stop, telemetry, seat)
    finally:
        loop.remove_reader(control)


def _read_control(loop: asyncio.AbstractEventLoop, control: int, stop: asyncio.Future[str]) -> None:
    message = os.read(control, 16)
    if not message:  # the supervisor is gone: nobody will ever say stop
        loop.remove_reader(control)
        if not stop.done():
            stop.set_result("supervisor gone")
        return
    for code in message:
        if code == SIBLING_DIED:
            request_stop(signal.SIGTERM, stop, "a sibling worker died")
        else:
            request_stop(code, stop)
