"""Fixtures: real SQLite files in a temp dir and a real gRPC server on a free loopback port."""

from __future__ import annotations

import asyncio
import datetime
import gc
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
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


@pytest.fixture(autouse=True, scope="session")
def _one_process_unless_asked() -> Iterator[None]:
    """``python -m service`` started by a test serves from one process unless the test asks
    for workers (``DATAACCESS_WORKERS`` or ``--workers``): with Redis the default would be
    one per CPU, and the other tests measure one process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATAACCESS_WORKERS", "1")
        yield


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
        _wait_answering(port, process, log)
        return Subprocess(process, port, log)

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def _wait_answering(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the server answers a gRPC call: the port is bound (and accepts) before
    the start's last steps, such as finishing a half-moved archive slice."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 20
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        checker = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()}")
            try:
                checker.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                return
            except grpc.RpcError as exc:
                waiting = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
                if exc.code() not in waiting:
                    return  # it answered, with a status of its own
    raise AssertionError(f"server did not answer: {log.read_text()}")


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


# --- Replication: a real S3-compatible server (moto) and the real Litestream binary ---------

BIN = Path(sys.executable).parent  # the venv's bin: `make test` installs litestream there


def _aws_free_environ() -> dict[str, str]:
    """This environment without AWS_*: the machines here set AWS_CA_BUNDLE, and Litestream's
    S3 client then fails ("unable to add custom RootCAs"); no AWS_PROFILE or endpoint either."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


class S3Server:
    """``moto_server`` on a free loopback port, in a temp dir, stopped by its pid."""

    BUCKET = "backups"
    REGION = "us-east-1"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """Its URL (path-style: the bucket is the first path segment)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """An environment for its clients: no AWS_CA_BUNDLE, any credentials."""
        return {
            **_aws_free_environ(),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": self.REGION,
            "AWS_DEFAULT_REGION": self.REGION,
        }

    def request(self, method: str, path: str = "/") -> tuple[int, bytes]:
        """One unsigned request (moto does not check signatures), never through a proxy."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(self.endpoint + path, method=method)
        try:
            with opener.open(request, timeout=5) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def start(self) -> None:
        """Start it, wait until it answers, create the bucket."""
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with (self.workdir / "moto.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"moto_server exited: {self.log()}")
            try:
                if self.request("GET")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"moto_server did not answer: {self.log()}")
            time.sleep(0.1)
        status, body = self.request("PUT", f"/{self.BUCKET}")
        assert status == 200, (status, body)

    def keys(self, prefix: str = "") -> list[str]:
        """The object keys in the bucket under ``prefix``."""
        query = urllib.parse.urlencode({"list-type": "2", "prefix": prefix, "max-keys": "1000"})
        status, body = self.request("GET", f"/{self.BUCKET}?{query}")
        assert status == 200, (status, body)
        return re.findall(r"<Key>([^<]*)</Key>", body.decode())

    def log(self) -> str:
        """What it wrote so far."""
        return (self.workdir / "moto.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM it, SIGKILL it if it lingers, reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    """A started moto_server with the bucket ``backups``, stopped by its pid after the test."""
    workdir = tmp_path / "s3"
    workdir.mkdir()
    server = S3Server(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def litestream_yaml(service_config: Path, env: dict[str, str]) -> str:
    """The Litestream config for the databases of the service config at ``service_config``:
    ``python -m service litestream-config``, as the pod makes it (${VAR} placeholders that
    Litestream expands from its environment)."""
    return _run_service_command(["litestream-config"], service_config, env)


def _run_service_command(argv: list[str], service_config: Path, env: dict[str, str]) -> str:
    """``python -m service ARGV`` on that config: its stdout (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "service", *argv],
        env={**env, "DATAACCESS_CONFIG": str(service_config)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class SyncState:
    """One database as Litestream's control socket lists it."""

    status: str
    last_sync_at: datetime.datetime | None


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _rfc3339(text: str) -> datetime.datetime:
    # Go writes nanoseconds; Python parses at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.datetime.fromisoformat(text)


class Litestream:
    """The real ``litestream`` on one service config, replicating to ``s3`` under ``prefix``.

    ``replicate()`` starts ``litestream replicate`` as a process; ``stop()`` SIGTERMs it and
    waits (its final sync), ``kill()`` SIGKILLs it (a lost node); ``restore()`` runs
    ``litestream restore`` for one database.
    """

    def __init__(self, workdir: Path, s3: S3Server, service_config: Path, prefix: str) -> None:
        self.workdir = workdir
        self.env = {
            **s3.env,
            "LITESTREAM_BUCKET": s3.BUCKET,
            "LITESTREAM_PATH": prefix,
            "LITESTREAM_ENDPOINT": s3.endpoint,
            "LITESTREAM_REGION": s3.REGION,
        }
        self.service_config = service_config
        self.config = workdir / "litestream.yml"
        self.config.write_text(litestream_yaml(service_config, self.env), encoding="utf-8")
        document = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        self.socket = Path(document["socket"]["path"])
        self.databases = [Path(db["path"]) for db in document["dbs"]]
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log(self) -> Path:
        """The log of the latest ``replicate``."""
        return self.workdir / f"litestream-{self.runs}.log"

    def replicate(self, timeout: float = 15) -> None:
        """Start ``litestream replicate`` and wait until its control socket answers."""
        assert self.process is None or self.process.poll() is not None, "already replicating"
        self.runs += 1
        args = [str(BIN / "litestream"), "replicate", "-config", str(self.config)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=out, env=self.env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"litestream exited: {self.log.read_text()}")
            try:
                self.status()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"litestream's socket did not answer: {self.log.read_text()}")
            time.sleep(0.05)

    def status(self) -> dict[Path, SyncState]:
        """``GET /list`` on the control socket: each database's status and last sync."""
        connection = _UnixHTTPConnection(self.socket, timeout=2)
        try:
            connection.request("GET", "/list")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 200, (response.status, body)
        listed = json.loads(body)["databases"] or []
        return {
            Path(db["path"]): SyncState(
                db.get("status", ""),
                _rfc3339(db["last_sync_at"]) if db.get("last_sync_at") else None,
            )
            for db in listed
        }

    def wait_synced(self, after: datetime.datetime | None = None, timeout: float = 15) -> None:
        """Wait until every database had two syncs that began after ``after`` (default: now).

        ``last_sync_at`` moves on every sync, changes or not; a sync that ended just after
        ``after`` may have read the WAL before it, so the second one is the proof.
        """
        after = after or datetime.datetime.now(datetime.UTC)
        deadline = time.monotonic() + timeout
        first: dict[Path, datetime.datetime] = {}
        while True:
            try:
                states = self.status()
            except OSError:
                states = {}
            for path in self.databases:
                state = states.get(path)
                synced = state.last_sync_at if state else None
                if synced is None or synced <= after:
                    continue
                first.setdefault(path, synced)
            if len(first) == len(self.databases) and all(
                (s := states[p].last_sync_at) is not None and s > first[p] for p in first
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not synced within {timeout} s: {states}")
            time.sleep(0.05)

    def sync(self, timeout: float = 15) -> None:
        """Make the running ``replicate`` ship every database now and wait until the
        replica has it (``litestream sync -wait``, through the control socket)."""
        for database in self.databases:
            args = [str(BIN / "litestream"), "sync", "-wait", "-json"]
            args += ["-timeout", str(round(timeout)), "-socket", str(self.socket), str(database)]
            done = subprocess.run(
                args, env=self.env, capture_output=True, text=True, timeout=timeout + 5, check=False
            )
            assert done.returncode == 0, (database, done.stdout, done.stderr)
            answer = json.loads(done.stdout)
            assert answer["replica_txid"] == answer["txid"], answer

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (a clean shutdown, its final sync) and wait; the exit code."""
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def signal(self, signum: int) -> None:
        """Send ``signum`` (SIGSTOP, SIGCONT) to it."""
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def restore(
        self,
        database: Path,
        *,
        if_db_not_exists: bool = False,
        if_replica_exists: bool = False,
        timestamp: datetime.datetime | None = None,
        output: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """``litestream restore`` of one database (by its configured path); not checked."""
        args = [str(BIN / "litestream"), "restore", "-config", str(self.config)]
        args += ["-if-db-not-exists"] if if_db_not_exists else []
        args += ["-if-replica-exists"] if if_replica_exists else []
        if timestamp is not None:
            utc = timestamp.astimezone(datetime.UTC)
            args += ["-timestamp", utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
        args += ["-o", str(output)] if output is not None else []
        args.append(str(database))
        return subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def service_restore(self) -> str:
        """``python -m service restore`` (the pod's restore init container) with this
        Litestream on PATH and its environment; its output (it must succeed)."""
        env = {**self.env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        return _run_service_command(["restore"], self.service_config, env)

    def restore_all(self) -> dict[Path, subprocess.CompletedProcess[str]]:
        """Restore every configured database as the pod's init container does (each must
        succeed): ``restore -if-db-not-exists -if-replica-exists``, one per invocation."""
        done = {}
        for database in self.databases:
            done[database] = self.restore(database, if_db_not_exists=True, if_replica_exists=True)
            assert done[database].returncode == 0, done[database].stderr
        return done


@pytest.fixture
def litestream(tmp_path: Path, s3_server: S3Server) -> Iterator[Any]:
    """Make a :class:`Litestream` for a service config (``make(config_path, prefix)``);
    every one still running after the test is SIGKILLed."""
    made: list[Litestream] = []

    def make(service_config: Path, prefix: str = "service") -> Litestream:
        workdir = tmp_path / f"litestream-{len(made)}"
        workdir.mkdir()
        made.append(Litestream(workdir, s3_server, service_config, prefix))
        return made[-1]

    try:
        yield make
    finally:
        for one in made:
            one.kill()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short temporary directory for Unix sockets (their paths have at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sock-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class PostgresProcess:
    """A real PostgreSQL server on a free loopback port in its own temp dir, stopped by its
    pid. Run as the ``postgres`` user when the tests run as root (as CI does): PostgreSQL
    refuses to run as root."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pg-"))  # short: its socket lives here
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
            self._as = {"user": "postgres", "group": "postgres", "extra_groups": []}

    @property
    def url(self) -> str:
        """A superuser's connection URL."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """initdb (trust on loopback only), start the server, wait until it accepts."""
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not binaries:
            raise AssertionError("PostgreSQL is missing: `make test` installs it")
        bin_dir, data = binaries[-1], self.workdir / "data"
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
            **self._as,
        )
        self.launch()

    def launch(self) -> None:
        """Start the server on its data folder and port; wait until it accepts."""
        bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        data = self.workdir / "data"
        args = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port)]
        args += ["-c", "listen_addresses=127.0.0.1", "-k", str(self.workdir)]
        with (self.workdir / "postgres.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, **self._as)
        deadline = time.monotonic() + 20
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        while time.monotonic() < deadline:
            # Not only the port: a server still starting up refuses connections.
            if subprocess.run(ready + ["-U", "postgres"], check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(
            f"PostgreSQL did not start: {(self.workdir / 'postgres.log').read_text()}"
        )

    def halt(self) -> None:
        """Fast shutdown (SIGINT), keeping its files for ``launch``."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove its files."""
        self.halt()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql as the superuser; its output."""
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        args = [str(binaries[-1] / "psql"), "-h", "127.0.0.1", "-p", str(self.port)]
        args += ["-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-qAtc", sql]
        done = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)
        return done.stdout

    def database_url(self, name: str) -> str:
        """The superuser's URL of database ``name``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def fresh_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t{next(_DATABASE_NUMBERS)}_{os.getpid()}"
        self.psql(f"CREATE DATABASE {name}")
        return self.database_url(name)


_DATABASE_NUMBERS = itertools.count(1)


@pytest.fixture
def postgres_server() -> Iterator[PostgresProcess]:
    """A started PostgreSQL server, stopped after the test."""
    server = PostgresProcess()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresProcess]:
    """One PostgreSQL server for the session; tests take a fresh database each."""
    server = PostgresProcess()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresProcess) -> str:
    """A fresh database on the session's PostgreSQL server."""
    return postgres_cluster.fresh_database()
