"""Cached reads from one worker process against two (``--workers``), with CPU time per call.

Both servers run as users run them (``python -m service --workers N``) with
Redis and L1, each on its own key prefix of one ``redis-server``; every answer
must be an L1 hit. The load (``bench.workers_load``) comes from a process of
its own over 8 connections, as many on each worker (the kernel spreads
connections, not calls), at 32 concurrent calls; the two servers are measured
alternately, round after round. Besides requests/s each round reports the
server's user+sys CPU time per call (supervisor and workers, from /proc) and
the load generator's: on 2 cores the load generator takes a share of the same
CPUs, so throughput alone understates what a second worker buys.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.cached import query_load, redis_server
from bench.harness import Row, serving

CONNECTIONS = 8
CONCURRENCY = 32
Results = list[dict[str, Any]]


def bench_workers(workdir: Path, quick: bool) -> list[Row]:
    """Requests/s, server CPU per call and the load's CPU per call: 2 workers against 1."""
    if shutil.which("redis-server") is None:
        print("bench: no redis-server (make redis-server): workers skipped", file=sys.stderr)
        return []
    rounds, seconds = (3, 2.0) if quick else (5, 4.0)
    results: dict[int, Results] = {1: [], 2: []}
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(workdir))
        ports = {}
        for workers in results:
            extra = {
                "cache_ttl_seconds": 3600,  # no expiry during the run
                "redis_url": f"redis://127.0.0.1:{redis}/0",
                "cache": {"redis_key_prefix": f"workers{workers}"},
            }
            args = ("--workers", str(workers))
            ports[workers] = stack.enter_context(serving(workdir, {}, {}, extra, args=args))
            query_load("capture", ports[workers], str(workdir / f"workers-{workers}.bin"))
        pids = {workers: _server_pid(("--workers", str(workers))) for workers in results}
        time.sleep(1.0)  # each worker sees the seed rows as a foreign commit once: let it pass
        for n in range(rounds):
            for workers in (1, 2) if n % 2 == 0 else (2, 1):
                results[workers].append(_load(ports[workers], pids[workers], workers, seconds))
    return _rows(results[2], results[1])


def _server_pid(args: tuple[str, ...]) -> int:
    """The pid of this process's child ``python -m service ARGS`` (the supervisor)."""
    for task in Path("/proc/self/task").iterdir():
        for child in (task / "children").read_text().split():
            words = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
            if words[-3:-1] == list(args) or words[-2:] == list(args):
                return int(child)
    raise SystemExit(f"bench: no server started with {' '.join(args)}")


def _load(port: int, pid: int, workers: int, seconds: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.workers_load", str(port), str(pid), str(workers)]
    argv += [str(seconds), str(CONNECTIONS), str(CONCURRENCY)]
    try:
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench: workers_load failed:\n{exc.stderr}") from exc
    time.sleep(0.5)  # the servers' background work (health probes) settles between runs
    return dict(json.loads(out.stdout))


def _rows(two: Results, one: Results) -> list[Row]:
    def figures(key: str) -> tuple[list[float], list[float]]:
        return [float(r[key]) for r in two], [float(r[key]) for r in one]

    invalid = _invalid(two + one)
    title = (
        f"Cached Query, L1 hit (Redis on), {CONCURRENCY} concurrent calls over "
        f"{CONNECTIONS} connections, 2 worker processes"
    )
    return [
        Row(title, *figures("per_second"), "req/s", "1 worker", None, invalid=invalid),
        Row(
            "  the same, server CPU per call (supervisor and workers, user+sys)",
            *figures("server_cpu_us"),
            "us",
            "1 worker",
            None,
            lower_is_better=True,
            invalid=invalid,
        ),
        Row(
            "  the same, load generator CPU per call (same 2 cores)",
            *figures("load_cpu_us"),
            "us",
            "1 worker",
            None,
            lower_is_better=True,
            invalid=invalid,
        ),
    ]


def _invalid(results: Results) -> str | None:
    wrong = sum(int(r["unexpected"]) for r in results)
    answers = sum(int(r["answers"]) for r in results)
    return None if wrong == 0 else f"invalid: {wrong:,} of {answers:,} answers were not HIT_LOCAL"
