"""``python -m service [serve|migrate]``: build the Config, then serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from service.config import Config, ConfigError
from service.db.migrate import MigrationError
from service.logs import setup_logging
from service.server import StartError, migrate, serve
from service.telemetry import Telemetry

USAGE = "usage: python -m service [serve|migrate]"


def main(argv: list[str]) -> int:
    """Run the command in ``argv``; the process exit code."""
    command = argv[0] if argv else "serve"
    if command not in ("serve", "migrate") or len(argv) > 1:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        config = Config.from_env(os.environ)
        setup_logging(config.log_level)
        if command == "migrate":
            migrate(config)
        else:
            telemetry = Telemetry.from_env(os.environ)
            try:
                asyncio.run(_serve_until_signalled(config, telemetry))
            finally:
                telemetry.shutdown()
    except (ConfigError, MigrationError, StartError) as exc:
        print(f"dataaccess: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signalled(config: Config, telemetry: Telemetry) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(config, stop, telemetry)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
