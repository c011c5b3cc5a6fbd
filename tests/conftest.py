"""Fixtures: real SQLite files in a temp dir and a real gRPC server on a free loopback port."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service.config import Config
from service.db.sqlite.database import SqliteDatabase
from service.server import DataAccessServer

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "migrations"
KITCHEN_MIGRATIONS = Path(__file__).resolve().parent / "fixtures" / "migrations" / "kitchen"


def value(python: Any) -> pb.Value:
    """A proto Value for a Python value."""
    if python is None:
        return pb.Value(null=struct_pb2.NULL_VALUE)
    if isinstance(python, bool):
        raise TypeError("no bools in SQLite")
    if isinstance(python, int):
        return pb.Value(integer=python)
    if isinstance(python, float):
        return pb.Value(real=python)
    if isinstance(python, str):
        return pb.Value(text=python)
    return pb.Value(blob=bytes(python))


def row(*values: Any) -> pb.Row:
    """A proto Row."""
    return pb.Row(values=[value(v) for v in values])


def plain(message: pb.Value) -> Any:
    """The Python value of a proto Value."""
    kind = message.WhichOneof("kind")
    assert kind is not None, "a Value with no kind set"
    return None if kind == "null" else getattr(message, kind)


def plain_rows(response: pb.QueryResponse) -> list[tuple[Any, ...]]:
    """The rows of a response as tuples of Python values."""
    return [tuple(plain(v) for v in r.values) for r in response.rows]


@dataclass
class Failure:
    """A failed call: its status, message and the fields BadRequest named."""

    code: grpc.StatusCode
    details: str
    fields: list[str]


async def failure_of(call: Any) -> Failure:
    """Await ``call`` and return how it failed; fails the test if it succeeded."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return Failure(exc.code(), exc.details() or "", _bad_request_fields(exc))
    raise AssertionError("the call succeeded")


def _bad_request_fields(exc: grpc.aio.AioRpcError) -> list[str]:
    # grpc-stubs give aio errors grpc.RpcError's tuple of _Metadatum; they carry (key, value) pairs
    metadata = cast("grpc.aio.Metadata", exc.trailing_metadata())
    for key, raw in metadata or ():
        if key == "grpc-status-details-bin" and isinstance(raw, bytes):
            status = status_pb2.Status.FromString(raw)
            fields = []
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    fields += [v.field for v in bad.field_violations]
            return fields
    return []


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_document(data_dir: Path) -> dict[str, Any]:
    """A config with live, archive and the kitchen test database."""
    return {
        "listen": "127.0.0.1:0",
        "data_dir": str(data_dir),
        "databases": [
            {"name": "live", "path": "live.db", "migrations": str(MIGRATIONS / "live")},
            {"name": "archive", "path": "archive.db", "migrations": str(MIGRATIONS / "archive")},
            {
                "name": "kitchen",
                "path": "kitchen.db",
                "migrations": str(KITCHEN_MIGRATIONS),
                "allowed_tables": ["parents", "items", "notes"],
            },
        ],
        "limits": {"readers_per_database": 2, "acquire_timeout_seconds": 2.0},
        "shutdown_grace_seconds": 2,
    }


def build_config(
    tmp_path: Path, document: dict[str, Any], env: dict[str, str] | None = None
) -> Config:
    """Write ``document`` as the YAML config and build the Config from it."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return Config.from_env({"DATAACCESS_CONFIG": str(path), **(env or {})})


def sqlite_database(server: DataAccessServer, name: str) -> SqliteDatabase:
    """The SQLite database ``name`` behind the door, for tests that reach its writer or pool."""
    database = server.router.databases[name]
    assert isinstance(database, SqliteDatabase), f"{name} is not a SQLite database"
    return database


@dataclass
class Running:
    """A started server and a stub connected to it."""

    server: DataAccessServer
    port: int
    channel: grpc.aio.Channel
    stub: pb_grpc.DataAccessAsyncStub
    data_dir: Path

    def sqlite(self, database: str) -> sqlite3.Connection:
        """A direct connection to one of the server's files, to check what it holds."""
        return sqlite3.connect(self.data_dir / f"{database}.db")


@asynccontextmanager
async def started(tmp_path: Path, document: dict[str, Any]) -> AsyncIterator[Running]:
    """Start a server on ``document``, yield it with a stub, stop it."""
    data_dir = Path(document["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    server = DataAccessServer(build_config(tmp_path, document))
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(server, port, channel, pb_grpc.DataAccessStub(channel), data_dir)
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)


@pytest.fixture
def document(tmp_path: Path) -> dict[str, Any]:
    """The default test config, to adjust before starting a server."""
    return base_document(tmp_path / "data")


@pytest.fixture
async def running(tmp_path: Path, document: dict[str, Any]) -> AsyncIterator[Running]:
    """A server on the default test config."""
    async with started(tmp_path, document) as server:
        yield server


@dataclass
class Subprocess:
    """``python -m service`` running in its own process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[Any]:
    """Start ``python -m service`` processes on free loopback ports; kill leftovers."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(document: dict[str, Any], extra_env: dict[str, str] | None = None) -> Subprocess:
        port = free_port()
        Path(document["data_dir"]).mkdir(parents=True, exist_ok=True)
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(document))
        log = tmp_path / f"server-{len(processes)}.log"
        env = {
            **os.environ,
            "DATAACCESS_CONFIG": str(config),
            "DATAACCESS_LISTEN": f"127.0.0.1:{port}",
            **(extra_env or {}),
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=tmp_path, env=env, stderr=out, stdout=out
            )
        processes.append(process)
        _wait_serving(port, process, log)
        return Subprocess(process, port, log)

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def _wait_serving(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"server did not listen: {log.read_text()}")


class RedisProcess:
    """A real ``redis-server`` on a free loopback port, in a temp dir, stopped by its pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where the service should find it."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (loading dump.rdb from its dir if one is there) and wait for PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is missing: `make test` installs it")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--save", "", "--appendonly", "no", "--maxmemory", "256mb"]
        args += ["--maxmemory-policy", "allkeys-lru"]
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not answer PING")

    def cli(self, *command: str) -> str:
        """One command through a raw socket (RESP), its reply as text ('' if none)."""
        payload = f"*{len(command)}\r\n" + "".join(f"${len(c)}\r\n{c}\r\n" for c in command)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(payload.encode())
                reply = sock.recv(1 << 16).decode(errors="replace")
        except OSError:
            return ""
        return reply[1:].split("\r\n", 1)[0] if reply[:1] in "+-:" else reply

    def save(self) -> None:
        """Write its dataset to dump.rdb now (a snapshot to come back with)."""
        assert self.cli("SAVE") == "OK"

    def signal(self, signum: int) -> None:
        """Send ``signum`` (SIGSTOP, SIGCONT, SIGKILL) to it."""
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """Stop it for good, even if it was paused."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A started redis-server, stopped by its pid after the test."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisProcess(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Every test is a unit test (pure logic in this process) or an integration test (real
# parts: a gRPC server on loopback, SQLite files, redis-server, other processes). A module
# or test may say which; otherwise a test that asks for a temporary directory (as every
# server, database file and redis-server fixture does) is integration, any other is unit.
KINDS = ("unit", "integration")
_REAL_PARTS = {"tmp_path", "tmp_path_factory"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test exactly one of the unit and integration markers."""
    for item in items:
        kinds = {mark.name for mark in item.iter_markers() if mark.name in KINDS}
        if len(kinds) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked both unit and integration")
        if not kinds:
            real = _REAL_PARTS & set(getattr(item, "fixturenames", ()))
            item.add_marker("integration" if real else "unit")


_STUCK_SECONDS = 95  # before faulthandler's thread dump (100 s) and the 120 s timeout


@pytest.fixture(autouse=True)
def _asyncio_tasks_dumped_when_stuck() -> Iterator[None]:
    """A test still running after 95 s prints every pending asyncio task's stack.

    The thread dump shows only an idle event loop when a test awaits something that
    never comes; the tasks say what it awaits. Off the hot path: one timer per test.
    """
    timer = threading.Timer(_STUCK_SECONDS, _dump_pending_tasks)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _dump_pending_tasks() -> None:
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    print(f"\n+++ {len(tasks)} pending asyncio tasks after {_STUCK_SECONDS} s +++", file=sys.stderr)
    for task in tasks:
        print(f"--- {task.get_name()}", file=sys.stderr)
        awaiting: Any = task.get_coro()
        while awaiting is not None:  # the chain of awaits, outermost first
            frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "ag_frame", None)
            if frame is not None:
                where = f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
                print(f"    {where}", file=sys.stderr)
            awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "ag_await", None)
