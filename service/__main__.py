"""``python -m service [serve|migrate|litestream-config|restore|copy]``: build the Config,
then serve until SIGTERM or SIGINT (or apply the migrations, print the Litestream config that
replicates every configured database, restore the missing ones from their replicas, or copy
one SQLite database into a PostgreSQL one and print both sides' row counts).

The first signal stops gracefully within ``shutdown_grace_seconds`` (calls in
flight finish, queued writes commit, buffered spans get a bounded share of
the grace); a second one exits at once.
"""

from __future__ import annotations

import asyncio
import logging
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
from service.observe.telemetry import Telemetry
from service.server import StartError, serve

USAGE = (
    "usage: python -m service [serve|migrate|litestream-config [FILE]|restore|copy SOURCE TARGET]"
)
# Each command and how many arguments it takes.
COMMANDS = {
    "serve": (0,),
    "migrate": (0,),
    "litestream-config": (0, 1),
    "restore": (0,),
    "copy": (2,),
}
log = logging.getLogger("service")


def main(argv: list[str]) -> int:
    """Run the command in ``argv``; the process exit code."""
    command, args = (argv[0], argv[1:]) if argv else ("serve", [])
    if len(args) not in COMMANDS.get(command, ()):
        print(USAGE, file=sys.stderr)
        return 2
    target = args[0] if args else None
    try:
        config = Config.from_env(os.environ)
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
            asyncio.run(_serve_until_signalled(config, Telemetry.from_env(os.environ)))
    except (ConfigError, CopyError, MigrationError, RestoreError, StartError) as exc:
        print(f"dataaccess: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signalled(config: Config, telemetry: Telemetry) -> None:
    stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, _on_signal, signum, stop)
    try:
        await serve(config, stop, telemetry)
    finally:
        # Still inside the loop, so a second signal during the flush exits at once too.
        flush = telemetry.flush_seconds(config.shutdown_grace_seconds)
        await asyncio.to_thread(telemetry.shutdown, flush)


def _on_signal(signum: int, stop: asyncio.Future[str]) -> None:
    name = signal.Signals(signum).name
    if not stop.done():
        stop.set_result(name)
        return
    log.warning("second %s: exiting now, without waiting for calls in flight", name)
    os._exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
