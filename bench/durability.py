"""Durability off the node: what Litestream replicating to S3 costs writes, what a lost node
loses (RPO), and how long a restore takes (RTO).

Everything runs here: moto's S3 server on a loopback port, the real ``litestream``
(``bench.replica``), ``python -m service`` on a config with a ``replication`` section
(sync every second) and Litestream's config generated from it, as the pod runs them.

Writes: two servers side by side on fresh events databases, the same config but one with
the replication section and ``litestream replicate`` beside it. Each round (the one
measured first alternating) both get the same load from a process of their own
(``bench.durability_load inserts``): 32 concurrent one-row BatchInserts, then 1,000-row
BatchInserts one after the other. After each of its loads, the replicating one's
Litestream is asked to catch up (``litestream sync -wait``) before anything else runs.

RPO: for each run, a fresh node (service and Litestream) takes a steady stream of
acknowledged one-row writes (``bench.durability_load stream``) for a few seconds plus a
random 0-1 s (Litestream syncs on a fixed beat from its start, so the kill lands anywhere
in it); both are SIGKILLed, the data directory is wiped, ``python -m service restore``
brings the database back, and the file is read directly: the RPO is the kill time minus
the acknowledgement time of the newest write that came back.

RTO: a database of random blobs and text (1 GB; 100 MB in the quick plan) built with the
stdlib in WAL mode, shipped by Litestream (``sync -wait``, then a clean stop); then,
rounds alternating which goes first, the data directory wiped and the restore timed:
``python -m service restore``, and ``litestream restore`` alone. Every restored file must
pass ``PRAGMA integrity_check`` and hold every row.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.harness import ROOT, Row, free_port, wait_for_port
from bench.replica import S3, Litestream, missing, s3_server

SYNC_SECONDS = 1.0  # replication.sync_interval_seconds
WRITE_GOAL = 0.9  # rows/s replicating over not
RPO_GOAL_MS = 2000.0
CONCURRENCY = 32
BATCH_ROWS = 1000
WRITERS = 4  # of the RPO stream
HOLE_SECONDS = 0.25  # a lost write acknowledged this long before a restored one is a hole
EVENTS = {"name": "events", "path": "events.db", "migrations": str(ROOT / "schema" / "events")}
BLOBS = {"name": "blobs", "path": "blobs.db"}
MB = 1_000_000


@dataclass(frozen=True)
class DurabilityPlan:
    """How much to measure."""

    rounds: int  # write rounds
    seconds: float  # per timed write loop at most
    rpo_runs: int
    rpo_seconds: float  # of the write stream, before the random 0-1 s
    rto_mb: int  # the restored database's size
    rto_rounds: int

    @classmethod
    def for_run(cls, quick: bool) -> DurabilityPlan:
        if quick:
            return cls(3, 3.0, 3, 4.0, 100, 2)
        return cls(5, 5.0, 5, 4.0, 1000, 3)


def bench_durability(workdir: Path, quick: bool) -> list[Row]:
    """The write, RPO and RTO rows."""
    absent = missing()
    if absent is not None:
        print(f"bench: no {absent} in {sys.executable}'s bin: durability skipped", file=sys.stderr)
        return []
    plan = DurabilityPlan.for_run(quick)
    with ExitStack() as stack:
        s3 = stack.enter_context(s3_server(workdir))
        sockets = stack.enter_context(_short_dir())
        rows = _writes(workdir, s3, sockets, plan)
        rows += _rpo(workdir, s3, sockets, plan)
        rows += _rto(workdir, s3, sockets, plan)
    return rows


@contextmanager
def _short_dir() -> Iterator[Path]:
    """A directory under /tmp for Litestream's sockets (a socket path has at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ls-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Node:
    """One pod: ``python -m service`` and, with ``s3``, ``litestream`` replicating to it.

    ``home`` holds the config, the logs and the data directory; its name is the
    replica's prefix in the bucket and the control socket's name.
    """

    def __init__(
        self, home: Path, databases: list[dict[str, str]], s3: S3 | None, sockets: Path
    ) -> None:
        home.mkdir()
        self.home = home
        self.data = home / "data"
        self.data.mkdir()
        document: dict[str, Any] = {
            "data_dir": str(self.data),
            "databases": databases,
            "sqlite": {},
            "limits": {},
        }
        if s3 is not None:
            document["replication"] = {
                "litestream_socket": str(sockets / f"{home.name}.sock"),
                "sync_interval_seconds": SYNC_SECONDS,
            }
        self.config = home / "config.yaml"
        self.config.write_text(yaml.safe_dump(document))
        self.litestream = Litestream(home, s3, self.config, home.name) if s3 else None
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def replica(self) -> Litestream:
        if self.litestream is None:
            raise SystemExit(f"bench: {self.home.name} does not replicate")
        return self.litestream

    def start(self) -> None:
        """Litestream first (the sidecar), then the service (it migrates); once Litestream
        shipped the databases, return."""
        if self.litestream is not None:
            self.litestream.replicate()
        self.port = free_port()
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DATAACCESS_")}
        env = {
            **inherited,
            "DATAACCESS_CONFIG": str(self.config),
            "DATAACCESS_LISTEN": f"127.0.0.1:{self.port}",
            "DATAACCESS_LOG_LEVEL": "WARNING",
        }
        with (self.home / "service.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"], env=env, stdout=subprocess.DEVNULL, stderr=log
            )
        wait_for_port(self.port, self.process)
        if self.litestream is not None:
            self.litestream.sync()

    def crash(self) -> float:
        """SIGKILL the service and Litestream (a lost node); when (``time.monotonic()``)."""
        assert self.process is not None
        killed_at = time.monotonic()
        self.process.kill()
        if self.litestream is not None:
            self.litestream.kill()
        self.process.wait(10)
        return killed_at

    def stop(self) -> None:
        """SIGTERM the service, then Litestream (its final sync)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        if self.litestream is not None:
            self.litestream.stop()

    def close(self) -> None:
        """SIGKILL whatever still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.litestream is not None:
            self.litestream.kill()

    def wipe(self) -> None:
        """The node is gone: an empty volume in its place."""
        shutil.rmtree(self.data)
        self.data.mkdir()


def _load(*args: object, timeout: float = 600) -> dict[str, Any]:
    """Run ``bench.durability_load`` in its own process; its JSON."""
    argv = [sys.executable, "-m", "bench.durability_load", *map(str, args)]
    try:
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench: durability_load {args[0]} failed:\n{exc.stderr}") from exc
    return dict(json.loads(out.stdout))


# --- Writes: replicating or not ------------------------------------------------------------


def _writes(workdir: Path, s3: S3, sockets: Path, plan: DurabilityPlan) -> list[Row]:
    """Rows/s replicating over not: 32 concurrent one-row BatchInserts, 1,000-row ones."""
    loads = {"one": (CONCURRENCY, 1, 100_000), "batch": (1, BATCH_ROWS, 10_000)}
    rates: dict[str, dict[bool, list[float]]] = {k: {True: [], False: []} for k in loads}
    lags: list[float] = []
    with ExitStack() as stack:
        nodes = {
            True: Node(workdir / "writes-on", [EVENTS], s3, sockets),
            False: Node(workdir / "writes-off", [EVENTS], None, sockets),
        }
        for node in nodes.values():
            stack.callback(node.close)
            node.start()
        for n in range(plan.rounds):
            order = (True, False) if n % 2 == 0 else (False, True)
            for kind, (concurrency, rows, calls) in loads.items():
                for on in order:
                    done = _load("inserts", nodes[on].port, concurrency, rows, calls, plan.seconds)
                    rates[kind][on].append(done["rows"] / done["seconds"])
                    if on:  # caught up before the other server is measured
                        lags.append(nodes[on].replica.sync(timeout=120))
        for node in nodes.values():
            node.stop()
    shipped = len(s3.keys("writes-on/"))
    print(
        f"bench: durability: after each load, the replicating server's Litestream caught up "
        f"within {min(lags):.2f}-{max(lags):.2f} s; {shipped} objects in its replica",
        file=sys.stderr,
    )
    invalid = None if shipped else "invalid: Litestream put nothing in the bucket"
    title = (
        f"Writes with Litestream replicating to S3 (moto, sync every {SYNC_SECONDS:g} s), "
        f"{CONCURRENCY} concurrent 1-row BatchInserts"
    )
    against = "no replication"
    return [
        Row(
            title,
            rates["one"][True],
            rates["one"][False],
            "rows/s",
            against,
            WRITE_GOAL,
            invalid=invalid,
        ),
        Row(
            "  the same, 1,000-row BatchInserts one after the other",
            rates["batch"][True],
            rates["batch"][False],
            "rows/s",
            against,
            WRITE_GOAL,
            invalid=invalid,
        ),
    ]


# --- RPO: a lost node ----------------------------------------------------------------------


@dataclass(frozen=True)
class Crash:
    """One run: the kill, the restore, and what came back."""

    rpo: float  # seconds from the newest acknowledged write that came back to the kill
    acknowledged: int
    lost: int  # acknowledged, not back
    oldest_lost: float  # seconds from the oldest lost write's acknowledgement to the kill
    holes: int  # lost, acknowledged HOLE_SECONDS or more before a write that came back
    streamed: float  # seconds of writes before the kill
    restore: float  # seconds of python -m service restore
    integrity: str


def _rpo(workdir: Path, s3: S3, sockets: Path, plan: DurabilityPlan) -> list[Row]:
    """RPO median and worst (ms, against the sync interval), acknowledged writes lost."""
    crashes = [_crash(workdir / f"rpo-{n}", s3, sockets, plan) for n in range(plan.rpo_runs)]
    for n, c in enumerate(crashes):
        print(
            f"bench: durability: RPO run {n}: {c.acknowledged} writes acknowledged over "
            f"{c.streamed:.2f} s, SIGKILL; RPO {c.rpo:.2f} s; {c.lost} acknowledged writes "
            f"lost (the oldest acknowledged {c.oldest_lost:.2f} s before the kill), "
            f"{c.holes} holes; restore {c.restore:.2f} s; integrity_check {c.integrity}",
            file=sys.stderr,
        )
    invalid = _crash_invalid(crashes)
    rpo_ms = [1000 * c.rpo for c in crashes]
    sync_ms = [1000 * SYNC_SECONDS] * len(crashes)
    title = (
        f"RPO: SIGKILL of the service and Litestream under 1-row writes, empty volume, "
        f"python -m service restore, median of {len(crashes)}"
    )
    against = "sync interval"
    return [
        Row(title, rpo_ms, sync_ms, "ms", against, RPO_GOAL_MS, True, invalid, absolute=True),
        Row(
            f"  the same, worst of {len(crashes)}",
            [max(rpo_ms)],
            sync_ms[:1],
            "ms",
            against,
            RPO_GOAL_MS,
            True,
            invalid,
            absolute=True,
        ),
        Row(
            "  the same, acknowledged writes lost",
            [float(c.lost) for c in crashes],
            [float(c.acknowledged) for c in crashes],
            "writes",
            "acknowledged",
            None,
            True,
            invalid,
        ),
    ]


def _crash(home: Path, s3: S3, sockets: Path, plan: DurabilityPlan) -> Crash:
    """Start a node, stream writes, SIGKILL it, wipe it, restore it; what came back."""
    node = Node(home, [EVENTS], s3, sockets)
    out = home / "stream.out"
    seconds = plan.rpo_seconds + random.uniform(0, SYNC_SECONDS)
    with ExitStack() as stack:
        stack.callback(node.close)
        node.start()
        argv = [sys.executable, "-m", "bench.durability_load", "stream", str(node.port)]
        argv += [str(WRITERS), str(seconds + 60)]  # it stops when the server is gone
        with out.open("wb") as stdout, (home / "stream.err").open("wb") as stderr:
            load = subprocess.Popen(argv, stdout=stdout, stderr=stderr)
        stack.callback(_reap, load)
        deadline = time.monotonic() + 30
        while not out.read_text().startswith("ready\n"):
            if load.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: the write stream did not start: {_tail(home)}")
            time.sleep(0.01)
        started = time.monotonic()
        time.sleep(seconds)
        killed_at = node.crash()
        load.wait(60)
    acks = {int(n): float(t) for n, t in json.loads(out.read_text().splitlines()[-1])["acks"]}
    node.wipe()
    restore = node.replica.service_restore(timeout=120)
    path = node.data / "events.db"
    if not path.exists():
        raise SystemExit(f"bench: python -m service restore brought nothing back in {home}")
    with closing(sqlite3.connect(path)) as conn:
        integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        back = {int(n) for (n,) in conn.execute("SELECT value FROM events")}
    kept = [t for n, t in acks.items() if n in back]
    lost = [t for n, t in acks.items() if n not in back]
    newest = max(kept, default=started)
    return Crash(
        rpo=killed_at - newest,
        acknowledged=len(acks),
        lost=len(lost),
        oldest_lost=killed_at - min(lost, default=killed_at),
        holes=sum(1 for t in lost if t < newest - HOLE_SECONDS),
        streamed=killed_at - started,
        restore=restore,
        integrity=integrity,
    )


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def _tail(home: Path) -> str:
    return (home / "stream.err").read_text(errors="replace")[-2000:]


def _crash_invalid(crashes: list[Crash]) -> str | None:
    """Why the runs do not measure an RPO, if they do not."""
    if any(c.integrity != "ok" for c in crashes):
        return "invalid: a restored file failed integrity_check"
    if any(c.acknowledged == c.lost for c in crashes):
        return "invalid: no acknowledged write came back"
    if any(c.holes for c in crashes):
        return f"invalid: {sum(c.holes for c in crashes)} writes lost before ones that came back"
    return None


# --- RTO: restoring a big database ---------------------------------------------------------


def _rto(workdir: Path, s3: S3, sockets: Path, plan: DurabilityPlan) -> list[Row]:
    """Seconds (as ms) and MB/s of python -m service restore against litestream restore."""
    node = Node(workdir / "rto", [BLOBS], s3, sockets)
    path = node.data / "blobs.db"
    started = time.monotonic()
    rows = blobs_database(path, plan.rto_mb * MB)
    size = path.stat().st_size
    built = time.monotonic() - started
    restores: dict[str, list[float]] = {"service": [], "litestream": []}
    failed: list[str] = []
    with ExitStack() as stack:
        stack.callback(node.close)
        node.replica.replicate()
        shipped = node.replica.sync(timeout=1800)
        node.replica.stop()
        print(
            f"bench: durability: RTO: built a {size / MB:,.0f} MB database ({rows:,} rows) in "
            f"{built:.1f} s; Litestream shipped it to moto in {shipped:.1f} s",
            file=sys.stderr,
        )
        for n in range(plan.rto_rounds):
            order = ("service", "litestream") if n % 2 == 0 else ("litestream", "service")
            for how in order:
                node.wipe()
                restore = node.replica.service_restore if how == "service" else node.replica.restore
                restores[how].append(restore(timeout=1800))
                failed += _restored_invalid(path, rows)
    for how, seconds in restores.items():
        print(
            f"bench: durability: RTO: {how} restore of {size / MB:,.0f} MB: "
            + ", ".join(f"{s:.2f} s ({size / MB / s:,.0f} MB/s)" for s in seconds),
            file=sys.stderr,
        )
    invalid = f"invalid: {failed[0]}" if failed else None
    label = f"{size / MB / 1000:.0f} GB" if plan.rto_mb >= 1000 else f"{plan.rto_mb} MB"
    quick = ", quick plan" if plan.rto_mb < 1000 else ""
    title = f"RTO: python -m service restore of a {label} database from S3 (moto){quick}"
    against = "litestream restore alone"
    ours, theirs = restores["service"], restores["litestream"]
    return [
        Row(
            title,
            [1000 * s for s in ours],
            [1000 * s for s in theirs],
            "ms",
            against,
            None,
            True,
            invalid,
        ),
        Row(
            "  the same, MB/s",
            [size / MB / s for s in ours],
            [size / MB / s for s in theirs],
            "MB/s",
            against,
            None,
            invalid=invalid,
        ),
    ]


def _restored_invalid(path: Path, rows: int) -> list[str]:
    """What is wrong with the restored file, if anything."""
    if not path.exists():
        return ["nothing restored"]
    with closing(sqlite3.connect(path)) as conn:
        integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        count = int(conn.execute("SELECT count(*) FROM blobs").fetchone()[0])
    if integrity != "ok":
        return [f"integrity_check: {integrity}"]
    return [] if count == rows else [f"{count:,} rows restored of {rows:,}"]


def blobs_database(path: Path, size: int) -> int:
    """A WAL-mode database of random blobs and text of about ``size`` bytes; its rows."""
    pick = random.Random(20)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # a build: nothing to lose
        conn.execute(
            "CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL, note TEXT NOT NULL)"
        )
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        rows = 0
        while int(conn.execute("PRAGMA page_count").fetchone()[0]) * page_size < size:
            batch = [
                (pick.randbytes(pick.randint(200, 1200)), pick.randbytes(150).hex())
                for _ in range(10_000)
            ]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO blobs (body, note) VALUES (?, ?)", batch)
            conn.execute("COMMIT")
            rows += len(batch)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return rows
