"""What every benchmark shares: the table's Row, free ports, and processes serving on them.

Each process (``python -m service``, ``redis-server``, the bare server) runs on
a loopback port of its own and is stopped by its pid when the block ends.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent
DIGITS = {"ms": 2, "hit rate": 3}  # decimals a figure is printed with, by unit; else 0


@dataclass
class Row:
    """One line of the table: a figure, its comparison, and the goal for their ratio.

    The ratio is always ours / theirs; for a figure where lower is better
    (latency) the goal is a ceiling instead of a floor. With ``absolute`` the
    goal bounds our figure itself (a hit rate, a latency in ms), not the
    ratio. ``invalid`` says why the figures do not measure what the row
    claims, and replaces the verdict.
    """

    scenario: str
    ours: list[float]
    theirs: list[float]
    unit: str
    against: str
    goal: float | None
    lower_is_better: bool = False
    invalid: str | None = None
    absolute: bool = False

    def ratios(self) -> list[float]:
        return [a / b if b else math.inf for a, b in zip(self.ours, self.theirs, strict=True)]

    def line(self) -> str:
        r = self.ratios()
        med = statistics.median(r)
        return (
            f"| {self.scenario} | {self._figure(self.ours)} | "
            f"{self.against}: {self._figure(self.theirs)} | "
            f"{med:.2f} ({min(r):.2f}-{max(r):.2f}) | {self._goal()} | "
            f"{self._verdict(statistics.median(self.ours) if self.absolute else med)} |"
        )

    def _figure(self, values: list[float]) -> str:
        digits = DIGITS.get(self.unit, 0)
        return f"{statistics.median(values):,.{digits}f} {self.unit}"

    def _goal(self) -> str:
        if self.goal is None:
            return "-"
        bound = f"{'<=' if self.lower_is_better else '>='} {self.goal:g}"
        return f"{bound} {self.unit}" if self.absolute else bound

    def _verdict(self, median: float) -> str:
        """Met or not: ``median`` is the ratio's, or with ``absolute`` our figure's."""
        if self.invalid is not None:
            return self.invalid
        if self.goal is None:
            return ""
        met = median <= self.goal if self.lower_is_better else median >= self.goal
        return "met" if met else "NOT met"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str = "the server") -> None:
    """Return once ``port`` accepts connections; exit if ``process`` dies or 30 s pass."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not start")


@contextmanager
def running(
    argv: list[str], port: int, what: str, env: dict[str, str] | None = None
) -> Iterator[int]:
    """Start ``argv``, wait until ``port`` answers, yield it; stop the process by its pid."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, what)
        yield port
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def serving(
    workdir: Path,
    sqlite: dict[str, Any],
    limits: dict[str, Any],
    extra: dict[str, Any] | None = None,
    env_extra: dict[str, str] | None = None,
    prepare: Callable[[Path], None] | None = None,
    args: Sequence[str] = (),
) -> Iterator[int]:
    """``python -m service`` on a fresh events database; yields its port.

    ``extra`` adds top-level config keys (``redis_url``, ``l1_max_entries``, ...);
    ``env_extra`` adds environment variables (``OTEL_*``); ``prepare`` is given
    the data directory before the server starts (to seed events.db); ``args``
    follow ``python -m service`` (``--workers 2``). It serves from one process
    unless ``args`` or ``env_extra`` ask for workers.
    """
    data = workdir / f"data-{time.monotonic_ns()}"
    data.mkdir()
    if prepare is not None:
        prepare(data)
    config = {
        "data_dir": str(data),
        "databases": [
            {"name": "events", "path": "events.db", "migrations": str(ROOT / "schema" / "events")}
        ],
        "sqlite": sqlite,
        "limits": limits,
        **(extra or {}),
    }
    path = data / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    # The caller's own DATAACCESS_* would override the file (environment first): drop them.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DATAACCESS_")}
    env = {
        **inherited,
        "DATAACCESS_CONFIG": str(path),
        "DATAACCESS_LISTEN": f"127.0.0.1:{port}",
        "DATAACCESS_LOG_LEVEL": "WARNING",
        "DATAACCESS_WORKERS": "1",  # the default with Redis would be one per CPU
        **(env_extra or {}),
    }
    with running([sys.executable, "-m", "service", *args], port, "the server", env):
        yield port
