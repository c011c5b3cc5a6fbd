"""Cached Query against a bare grpc.aio server that answers the same bytes doing nothing.

The real server (``python -m service``) is warmed until the cache answers the
Query; its answer's bytes become the bare server's (``bench.bare``) answer, so
the two differ only in what the server does per call. Each round measures
both, alternating which goes first, at 1, 32 and 128 concurrent calls, from a
load process of its own (``bench.query_load``). Every answer's cache_status is
checked: a row whose answers did not all come from the tier it names is marked
invalid instead of reporting a figure that measures something else.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Row, free_port, running, serving
from bench.query_load import ANY

CONCURRENCY = (1, 32, 128)
AGAINST = "bare grpc.aio, same bytes"
Results = list[dict[str, Any]]  # one measure JSON per round, keyed by concurrency


@dataclass(frozen=True)
class Scenario:
    """A cache tier to hit: the status every answer must carry and the goal at 32 calls."""

    title: str
    expect: str
    goal_at_32: float
    redis: bool


L1_HIT = Scenario("Cached Query, L1 hit", "HIT_LOCAL", 0.9, redis=False)
REDIS_HIT = Scenario("Cached Query, Redis hit (L1 off)", "HIT_REDIS", 0.65, redis=True)


@dataclass(frozen=True)
class Plan:
    """How much to measure: rounds, answers per timed loop by concurrency, a time cap per loop."""

    rounds: int
    counts: dict[int, int]
    seconds: float

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        if quick:
            return cls(3, {1: 300, 32: 1200, 128: 1200}, 1.5)
        return cls(5, {1: 1500, 32: 5000, 128: 5000}, 3.0)

    def steps(self) -> list[str]:
        return [f"{c}:{self.counts[c]}" for c in CONCURRENCY]


def bench_cached(workdir: Path, scenario: Scenario, plan: Plan) -> list[Row]:
    """The scenario's rows: requests/s at each concurrency, then latency at 1."""
    if scenario.redis and shutil.which("redis-server") is None:
        print(
            f"bench: no redis-server (make redis-server): {scenario.title} skipped", file=sys.stderr
        )
        return []
    with ExitStack() as stack:
        extra: dict[str, Any] = {"cache_ttl_seconds": 3600}  # no expiry during the run
        if scenario.redis:
            redis = stack.enter_context(redis_server(workdir))
            extra |= {"redis_url": f"redis://127.0.0.1:{redis}/0", "l1_max_entries": 0}
        ours = stack.enter_context(serving(workdir, {}, {}, extra))
        response = workdir / f"response-{time.monotonic_ns()}.bin"
        query_load("capture", ours, str(response))
        bare = stack.enter_context(bare_server(response))
        mine, theirs = measure_rounds(ours, bare, scenario.expect, plan)
    return rows(scenario, mine, theirs)


@contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    """A throwaway ``redis-server`` on a free loopback port, no persistence; yields its port."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    with running(argv, port, "redis-server"):
        yield port


@contextmanager
def bare_server(response: Path) -> Iterator[int]:
    """``python -m bench.bare`` answering ``response``'s bytes; yields its port."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.bare", str(port), str(response)]
    with running(argv, port, "the bare server"):
        yield port


def query_load(command: str, port: int, *args: str) -> dict[str, Any]:
    """Run ``bench.query_load`` in its own process; its JSON."""
    argv = [sys.executable, "-m", "bench.query_load", command, str(port), *args]
    try:
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench: query_load {command} failed:\n{exc.stderr}") from exc
    return dict(json.loads(out.stdout))


def measure_rounds(ours: int, bare: int, expect: str, plan: Plan) -> tuple[Results, Results]:
    """Both servers, every round, the one measured first alternating from round to round."""
    mine: Results = []
    theirs: Results = []
    for n in range(plan.rounds):
        pair = [(mine, ours, expect), (theirs, bare, ANY)]
        for into, port, status in pair if n % 2 == 0 else pair[::-1]:
            into.append(query_load("measure", port, status, str(plan.seconds), *plan.steps()))
    return mine, theirs


def rows(scenario: Scenario, mine: Results, theirs: Results) -> list[Row]:
    """Requests/s at each concurrency (the goal at 32), then p50 and p99 latency at 1."""
    out = []
    for c in CONCURRENCY:
        name = (
            f"{scenario.title}, 1 call at a time" if c == 1 else f"  the same, {c} concurrent calls"
        )
        goal = scenario.goal_at_32 if c == 32 else None
        figures = _figures(mine, c, "per_second"), _figures(theirs, c, "per_second")
        out.append(Row(name, *figures, "req/s", AGAINST, goal, invalid=_invalid(mine, c, scenario)))
    for key in ("p50_ms", "p99_ms"):
        name = f"  the same, {key[:3]} latency, 1 call at a time"
        figures = _figures(mine, 1, key), _figures(theirs, 1, key)
        invalid = _invalid(mine, 1, scenario)
        out.append(Row(name, *figures, "ms", AGAINST, None, lower_is_better=True, invalid=invalid))
    return out


def _figures(results: Results, concurrency: int, key: str) -> list[float]:
    return [float(r[str(concurrency)][key]) for r in results]


def _invalid(mine: Results, concurrency: int, scenario: Scenario) -> str | None:
    """Why the answers at ``concurrency`` do not measure the scenario's tier, if they do not."""
    statuses: Counter[str] = Counter()
    for result in mine:
        statuses.update(result[str(concurrency)]["statuses"])
    answers = sum(statuses.values())
    wrong = answers - statuses[scenario.expect]
    if wrong == 0:
        return None
    seen = ", ".join(f"{s} {n:,}" for s, n in statuses.most_common() if s != scenario.expect)
    return f"invalid: {wrong:,} of {answers:,} answers were not {scenario.expect} ({seen})"


TRACED = Scenario("Cached Query (L1 hit), tracing on", "HIT_LOCAL", 0.8, redis=False)
# (row title, OTEL_TRACES_SAMPLER, its argument, goal at 32 concurrent calls)
SAMPLINGS = (
    ("always-on", "always_on", "", 0.8),
    ("parent-based 5%", "parentbased_traceidratio", "0.05", 0.95),
)


def bench_tracing(workdir: Path, plan: Plan) -> list[Row]:
    """Cached Query with tracing exported to a loopback OTLP receiver, always sampled and at 5%,
    each against the same server with tracing off."""
    with ExitStack() as stack:
        sink = free_port()
        stack.enter_context(
            running([sys.executable, "-m", "bench.otlp_sink", str(sink)], sink, "the OTLP sink")
        )
        extra: dict[str, Any] = {"cache_ttl_seconds": 3600}
        plain = stack.enter_context(serving(workdir, {}, {}, extra))
        query_load("capture", plain, str(workdir / f"warm-{plain}.bin"))
        out = []
        for title, sampler, argument, goal in SAMPLINGS:
            otel = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_TRACES_SAMPLER": sampler,
                "OTEL_TRACES_SAMPLER_ARG": argument,
            }
            with serving(workdir, {}, {}, extra, otel) as traced:
                query_load("capture", traced, str(workdir / f"warm-{traced}.bin"))
                mine, theirs = measure_rounds(traced, plain, TRACED.expect, plan)
            figures = _figures(mine, 32, "per_second"), _figures(theirs, 32, "per_second")
            invalid = _invalid(mine, 32, TRACED)
            name = f"{TRACED.title} ({title}, OTLP to loopback), 32 concurrent calls"
            out.append(Row(name, *figures, "req/s", "tracing off", goal, invalid=invalid))
    return out
