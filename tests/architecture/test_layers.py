"""The core tiers import neither gRPC nor protobuf nor the generated code.

Each check runs in a fresh interpreter, so that nothing this test session has
already imported hides a tier's own imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each check starts a fresh interpreter, and one a whole server.
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# The api side, the only modules allowed to import the wire format: the service.api
# package, and the process around it (server.py wires the gRPC server, __main__ runs it,
# service.processes runs it in several worker processes).
API_PACKAGE = "service.api"
API_PROCESS = {"service.__main__", "service.server"}
PROCESSES_PACKAGE = "service.processes"


def _is_api(module: str) -> bool:
    return module in API_PROCESS or any(
        module == p or module.startswith(p + ".") for p in (API_PACKAGE, PROCESSES_PACKAGE)
    )


# Everything below the api tier: values and errors, the db tier, the cache, the router, merge,
# and the grpc-free halves of metrics and telemetry (their interceptors live in service.api).
CORE = (
    "service.errors",
    "service.values",
    "service.domain",
    "service.config",
    "service.tags",
    "service.scopes",
    "service.hot_reads",
    "service.access",
    "service.db",
    "service.db.door",
    "service.db.sqlite.connection",
    "service.db.sqlite.group_commit",
    "service.db.sqlite.database",
    "service.db.sqlite.migrate",
    "service.cache.tagged",
    "service.routing.router",
    "service.routing.fan_out",
    "service.routing.merge",
    "service.observe.health",
    "service.observe.metrics",
    "service.observe.stats_report",
    "service.observe.telemetry",
)

# Imports each named module in turn and prints, per module, the wire-format
# modules that its import brought in (the first importer is the one blamed).
_PROBE = """
import importlib, json, sys

def wire(name):
    return (
        name == "grpc" or name.startswith("grpc.") or name.startswith("google.protobuf")
        or name.startswith("dataaccess_client") or name == "dataaccess"
        or name.startswith("dataaccess.") or name.endswith("_pb2")
    )

seen = {name for name in sys.modules if wire(name)}
blamed = {}
for module in sys.argv[1:]:
    importlib.import_module(module)
    new = sorted(name for name in sys.modules if wire(name) and name not in seen)
    seen.update(new)
    if new:
        blamed[module] = new
print(json.dumps(blamed))
"""


def _wire_imports(modules: list[str]) -> dict[str, list[str]]:
    """Per module, the wire-format modules its import brought in, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    blamed: dict[str, list[str]] = json.loads(result.stdout)
    return blamed


def _modules_below_the_api() -> list[str]:
    names = (
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in sorted((ROOT / "service").rglob("*.py"))
    )
    return [name for name in names if not _is_api(name)]


def _report(blamed: dict[str, list[str]]) -> str:
    return "; ".join(
        f"{module} brings in {len(names)}: {', '.join(names[:3])}, ..."
        for module, names in blamed.items()
    )


def test_the_core_imports_no_grpc_protobuf_or_generated_code() -> None:
    blamed = _wire_imports(list(CORE))
    assert blamed == {}, _report(blamed)


def test_nothing_below_the_api_imports_grpc_protobuf_or_generated_code() -> None:
    modules = _modules_below_the_api()
    assert set(CORE) <= set(modules) and "service.access" in modules
    blamed = _wire_imports(modules)
    assert blamed == {}, _report(blamed)


def test_the_probe_sees_the_api_import_grpc() -> None:
    # Guards the two tests above against a probe that sees nothing.
    modules = ["service.api.status", "service.api.codec", "service.api.servicer"]
    blamed = _wire_imports(modules)
    assert "grpc" in blamed.get("service.api.status", []), blamed
    assert any(name.endswith("_pb2") for name in blamed.get("service.api.codec", [])), blamed
    assert not any(_is_api(name) for name in _modules_below_the_api())


# Imports the generated stubs and prints the modules of the hand-written client that came along.
_STUBS_PROBE = """
import json, sys
from dataaccess.v1 import data_access_pb2, data_access_pb2_grpc
assert data_access_pb2_grpc.DataAccessStub and data_access_pb2.QueryRequest
print(json.dumps(sorted(name for name in sys.modules if name.startswith("dataaccess_client"))))
"""


def test_the_generated_stubs_import_without_the_hand_written_client() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _STUBS_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == []


# Runs a whole server (start, one Query and one BatchInsert through the generated stubs, a
# Stats call, stop) and prints the modules of the hand-written client it loaded.
_SERVER_PROBE = """
import asyncio, json, os, sys
import grpc
from dataaccess.v1 import data_access_pb2 as pb, data_access_pb2_grpc as pb_grpc
from service.config import Config
from service.server import DataAccessServer


async def main():
    server = DataAccessServer(Config.from_env(os.environ))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataAccessStub(channel)
        answer = await stub.Query(pb.QueryRequest(database="live", sql="SELECT 1 AS one"))
        assert answer.rows[0].values[0].integer == 1
        await stub.Stats(pb.StatsRequest())
    await server.stop(grace=1.0)

asyncio.run(main())
print(json.dumps(sorted(name for name in sys.modules if name.startswith("dataaccess_client"))))
"""


def test_the_server_process_never_imports_the_hand_written_client(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATAACCESS_DATA_DIR": str(tmp_path / "data"),
        "DATAACCESS_LISTEN": "127.0.0.1:0",
    }
    result = subprocess.run(
        [sys.executable, "-c", _SERVER_PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout.splitlines()[-1]) == []
