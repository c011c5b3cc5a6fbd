"""``python -m service [serve [--workers N]|migrate|litestream-config|restore|copy]``: build
the Config, then serve until SIGTERM or SIGINT (or apply the migrations, print the Litestream
config that replicates every configured database, restore the missing ones from their
replicas, or copy one SQLite database into a PostgreSQL one and print both sides' row counts).

``serve`` runs one server process, or several sharing the port (``--workers``,
``DATAACCESS_WORKERS``, ``workers:``; by default one per CPU when Redis is
configured: ``service.processes``). The first signal stops gracefully within
``shutdown_grace_seconds`` (calls in flight finish, queued writes commit,
buffered spans get a bounded share of the grace); a second one exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from service.config import Config, ConfigError
from service.db import (
    CopyError,
    MigrationError,
    RestoreError,
    check_counts,
    copy_database,
    counts_table,
    litestream_config,
    migrate,
    restore_missing,
)
from service.observe.logs import setup_logging
from service.observe.telemetry import Telemetry, trace_exporters
from service.processes.count import WorkerCountError, worker_count
from service.processes.stopping import request_stop, serve_until
from service.processes.supervisor import serve_workers
from service.server import StartError

USAGE = (
    "usage: python -m service [serve [--workers N]|migrate|litestream-config [FILE]|restore"
    "|copy SOURCE TARGET]"
)
# Each command and how many arguments it takes.
COMMANDS = {
    "serve": (0,),
    "migrate": (0,),
    "litestream-config": (0, 1),
    "restore": (0,),
    "copy": (2,),
}


def main(argv: list[str]) -> int:
    """Run the command in ``argv``; the process exit code."""
    argv, workers = _take_workers(argv)
    command, args = (argv[0], argv[1:]) if argv else ("serve", [])
    if len(args) not in COMMANDS.get(command, ()) or (workers and command != "serve"):
        print(USAGE, file=sys.stderr)
        return 2
    target = args[0] if args else None
    # The flag is the environment's variable given on the command line: it comes first.
    environ = {**os.environ, **({"DATAACCESS_WORKERS": workers} if workers else {})}
    try:
        config = Config.from_env(environ)
        setup_logging(config.log_level)
        if command == "migrate":
            migrate(config)
        elif command == "litestream-config" and target:  # a file, for Litestream's container
            Path(target).write_text(litestream_config(config), encoding="utf-8")
        elif command == "litestream-config":
            print(litestream_config(config), end="")
        elif command == "restore":
            restore_missing(config)
        elif command == "copy":
            counts = asyncio.run(copy_database(config, args[0], args[1]))
            print(counts_table(counts), end="")
            check_counts(counts)
        else:
            return _serve(config)
    except (
        ConfigError,
        CopyError,
        MigrationError,
        RestoreError,
        StartError,
        WorkerCountError,
    ) as exc:
        print(f"dataaccess: {exc}", file=sys.stderr)
        return 1
    return 0


def _take_workers(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--workers N`` (or ``--workers=N``), and N; "" when malformed."""
    rest: list[str] = []
    workers = None
    words = iter(argv)
    for word in words:
        if word == "--workers":
            workers = next(words, "")
        elif word.startswith("--workers="):
            workers = word.removeprefix("--workers=")
        else:
            rest.append(word)
    if workers is not None and not workers.isdigit():
        return ["--workers"], ""  # no command takes that: the usage line
    return rest, workers


def _serve(config: Config) -> int:
    """Serve in this process, or from several forked workers; the exit code."""
    count = worker_count(config)
    trace_exporters(os.environ)  # an unknown exporter stops the start here, not in each worker
    if count > 1:
        return serve_workers(config, count)
    asyncio.run(_serve_until_signalled(config, Telemetry.from_env(os.environ)))
    return 0


async def _serve_until_signalled(config: Config, telemetry: Telemetry) -> None:
    stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, request_stop, signum, stop)
    await serve_until(config, stop, telemetry)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
