"""The core tiers import neither gRPC nor protobuf nor the generated code.

Each check runs in a fresh interpreter, so that nothing this test session has
already imported hides a tier's own imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The api side, the only modules allowed to import the wire format. metrics.py and
# telemetry.py are here for their gRPC server interceptors: issue 13 moves those
# into service/api/, and this list shrinks to that folder.
API = {
    "service.__main__",
    "service.codec",
    "service.metrics",
    "service.server",
    "service.servicer",
    "service.status",
    "service.telemetry",
}

# Everything below the api tier: values and errors, the db tier, the cache, the router, merge.
CORE = (
    "service.errors",
    "service.values",
    "service.db.connection",
    "service.db.writer",
    "service.db.database",
    "service.cache.tagged",
    "service.router",
    "service.merge",
)

# Imports each named module in turn and prints, per module, the wire-format
# modules that its import brought in (the first importer is the one blamed).
_PROBE = """
import importlib, json, sys

def wire(name):
    return (
        name == "grpc" or name.startswith("grpc.") or name.startswith("google.protobuf")
        or name.startswith("dataaccess_client") or name.endswith("_pb2")
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
    return [name for name in names if name not in API]


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
