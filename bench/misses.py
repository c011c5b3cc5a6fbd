"""Uncached reads against a bare grpc.aio server answering the same bytes.

The real server (``python -m service``) serves an events database of many
rows; a point read (one row by primary key) and a 20-row read through the
(day, kind) index are asked with random parameters and cache BYPASS, so each
runs SQLite and encodes its rows. The bare server (``bench.bare``) answers
every Query with the bytes of one such answer, captured from the real server,
so the two differ only in what the server does per call. Rounds alternate
which goes first; every answer of ours must be BYPASS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.cached import AGAINST, bare_server
from bench.datasets import events_database
from bench.harness import Row, serving

# (shape, row title, goal at 32 concurrent calls)
SHAPES = (
    ("point", "Uncached point read (1 row by primary key)", 0.65),
    ("rows20", "Uncached read of 20 rows (indexed)", 0.5),
)


def miss_load(command: str, port: int, *args: str) -> dict[str, Any]:
    """Run ``bench.miss_load`` in its own process; its JSON."""
    argv = [sys.executable, "-m", "bench.miss_load", command, str(port), *args]
    try:
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench: miss_load {command} failed:\n{exc.stderr}") from exc
    return dict(json.loads(out.stdout))


def bench_misses(workdir: Path, quick: bool) -> list[Row]:
    """Requests/s of each uncached read shape at 32 concurrent calls, ours against bare."""
    rows = 200_000 if quick else 1_000_000
    rounds, count, seconds = (3, 2000, "2") if quick else (5, 8000, "4")
    path = events_database(workdir / f"events-{rows}.db", rows)
    out = []
    with ExitStack() as stack:
        extra = {"databases": [{"name": "events", "path": str(path)}]}
        ours = stack.enter_context(serving(workdir, {}, {}, extra))
        for shape, title, goal in SHAPES:
            answer = workdir / f"answer-{shape}.bin"
            miss_load("capture", ours, str(rows), shape, str(answer))
            mine: list[float] = []
            theirs: list[float] = []
            statuses: dict[str, int] = {}
            with bare_server(answer) as bare:
                for n in range(rounds):
                    pair = [(mine, ours, "BYPASS"), (theirs, bare, "ANY")]
                    for into, port, expect in pair if n % 2 == 0 else pair[::-1]:
                        args = (str(rows), shape, expect, seconds, f"32:{count}")
                        result = miss_load("measure", port, *args)["32"]
                        into.append(float(result["per_second"]))
                        if port == ours:
                            for status, seen in result["statuses"].items():
                                statuses[status] = statuses.get(status, 0) + seen
            wrong = sum(seen for status, seen in statuses.items() if status != "BYPASS")
            invalid = f"invalid: {wrong:,} answers were not BYPASS ({statuses})" if wrong else None
            name = f"{title}, 32 concurrent calls"
            out.append(Row(name, mine, theirs, "req/s", AGAINST, goal, invalid=invalid))
    return out
