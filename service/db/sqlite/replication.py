"""The service's side of Litestream: its config for our databases, and its state for Health.

Litestream, a process beside the service, ships every database's WAL to
object storage; the service does not replicate anything itself. So that a
database added to the service's config cannot be left unreplicated, the
Litestream config is generated from the service's own database list
(``python -m service litestream-config``). Health asks Litestream's control
socket (``GET /list``) for each database's last sync: its Prometheus metrics
have no such figure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from service.config import Config, ReplicationConfig
from service.db.door import Finding, Severity
from service.db.sqlite import outbox

_ASK_SECONDS = 0.5  # a control socket that takes longer is as good as gone, for Health
_RESTORE_SECONDS = 3600.0  # one database; a restore still running after an hour is stuck
log = logging.getLogger(__name__)


class RestoreError(Exception):
    """Litestream could not restore a database."""


@dataclass(frozen=True)
class Synced:
    """What Litestream says of one database."""

    status: str
    last_sync_at: datetime | None


def litestream_config(config: Config) -> str:
    """The Litestream YAML replicating every configured database.

    Where the replicas go comes from Litestream's own environment, which it
    expands when it reads the file: ``LITESTREAM_BUCKET``, ``LITESTREAM_PATH``
    (each database goes under ``<path>/<name>``), ``LITESTREAM_ENDPOINT``
    (empty for AWS itself), ``LITESTREAM_REGION``, and the AWS credentials.
    """
    replication = config.replication or ReplicationConfig()
    interval = f"{replication.sync_interval_seconds:g}s"
    document: dict[str, Any] = {
        **({"addr": replication.metrics_listen} if replication.metrics_listen else {}),
        "socket": {"enabled": True, "path": str(replication.litestream_socket)},
        "dbs": [
            {
                "path": str(database.path),
                "replica": {
                    "type": "s3",
                    "bucket": "${LITESTREAM_BUCKET}",
                    "path": f"${{LITESTREAM_PATH}}/{database.name}",
                    "endpoint": "${LITESTREAM_ENDPOINT}",
                    "region": "${LITESTREAM_REGION}",
                    "force-path-style": True,
                    "sync-interval": interval,
                },
            }
            for database in config.sqlite_databases
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


def restore_missing(config: Config, litestream: str = "litestream") -> list[str]:
    """Restore each configured database whose file is missing from its replica, if it has
    one (a pod on an empty volume); the names of those restored. Runs before migrations:
    a database with no replica is left for them to create."""
    restored = []
    with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="litestream-") as generated:
        generated.write(litestream_config(config))
        generated.flush()
        for database in config.sqlite_databases:
            if database.path.exists():
                continue
            command = [litestream, "restore", "-config", generated.name]
            command += ["-if-db-not-exists", "-if-replica-exists", str(database.path)]
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, check=False, timeout=_RESTORE_SECONDS
                )
            except (OSError, subprocess.TimeoutExpired) as exc:  # no binary, or it hung
                raise RestoreError(f"{database.name}: litestream restore: {exc}") from exc
            if done.returncode != 0:
                raise RestoreError(f"{database.name}: litestream restore failed: {done.stderr}")
            if database.path.exists():
                _drop_cached_reads(database.path, database.name)
                log.info("restored from its replica", extra={"database": database.name})
                restored.append(database.name)
    return restored


def _drop_cached_reads(path: Path, name: str) -> None:
    """Record in the restored file's outbox that everything cached from it goes: entries
    in Redis may hold writes the replica never got, and the service delivers this before
    it serves (the service is not running yet: nothing else has the file open)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(outbox.CREATE_TABLE)
        outbox.record(conn, [f"database:{name}"])
        conn.execute("COMMIT")


async def replication_state(socket: Path) -> dict[Path, Synced]:
    """Each replicated database's status and last sync, by resolved path; raises OSError
    (or TimeoutError, ValueError) when the control socket does not answer sensibly."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket)), _ASK_SECONDS)
    try:
        writer.write(b"GET /list HTTP/1.0\r\nHost: litestream\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), _ASK_SECONDS)  # HTTP/1.0: it closes
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        raise ValueError(head.split(b"\r\n", 1)[0].decode("latin-1"))
    listed = json.loads(body).get("databases") or []
    return {Path(str(db["path"])).resolve(): _synced(db) for db in listed}


def _synced(listed: dict[str, Any]) -> Synced:
    stamp = listed.get("last_sync_at")
    when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
    return Synced(str(listed.get("status", "")), when)


async def replication_finding(path: Path, replication: ReplicationConfig) -> Finding:
    """Whether ``path`` is replicated and recently synced, as a Health finding."""
    started = time.monotonic()
    try:
        state = await replication_state(replication.litestream_socket)
    except (OSError, TimeoutError, ValueError) as exc:
        message = f"Litestream's control socket {replication.litestream_socket} does not answer"
        return _degraded(f"{message}: {exc or type(exc).__name__}", started)
    synced = state.get(path.resolve())
    if synced is None:
        return _degraded("not replicated: Litestream does not list this database", started)
    if synced.status != "replicating":
        return _degraded(f"Litestream says {synced.status or 'nothing'}", started)
    if synced.last_sync_at is None:
        return _degraded("replicated, but not synced yet", started)
    age = time.time() - synced.last_sync_at.timestamp()
    if age > replication.max_sync_age_seconds:
        limit = replication.max_sync_age_seconds
        return _degraded(f"last synced {age:.0f} s ago (over {limit:g} s)", started)
    message = f"replicated by Litestream, last synced {max(age, 0.0):.1f} s ago"
    return Finding("replication", Severity.HEALTHY, message, _ms(started))


def _degraded(message: str, started: float) -> Finding:
    return Finding("replication", Severity.DEGRADED, message, _ms(started))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
