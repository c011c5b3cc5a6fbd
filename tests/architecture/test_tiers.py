"""No tier imports one above it: api -> access -> cache | routing -> db, observe beside.

Read from the source (every ``import`` statement, also inside functions), so
a late import cannot hide an upward dependency. ``service.db`` is reached
only through its door: no module outside ``service/db/`` names an engine's
package, and the door itself names none.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"

# What each tier may not import (prefixes of module names).
_ACCESS = ("service.access", "service.scopes", "service.tags", "service.hot_reads")
_WIRING = ("service.server", "service.__main__", "service.processes")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "service.db": (
        "service.api",
        *_ACCESS,
        "service.cache",
        "service.routing",
        "service.observe",
        *_WIRING,
    ),
    "service.cache": (
        "service.api",
        *_ACCESS,
        "service.routing",
        "service.db",
        "service.observe",
        *_WIRING,
    ),
    "service.routing": ("service.api", *_ACCESS, "service.cache", "service.observe", *_WIRING),
    "service.observe": ("service.api", *_ACCESS, *_WIRING),
    "service.access": ("service.api", *_WIRING),
    "service.scopes": ("service.api", "service.access", *_WIRING),
    "service.tags": ("service.api", "service.access", *_WIRING),
    "service.hot_reads": ("service.api", "service.access", *_WIRING),
    "service.api": _WIRING,
}
ENGINES = ("service.db.sqlite", "service.db.postgres")


def _module(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "service" or name.startswith("service.")}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = {_module(path): _imports(path) for path in sorted(SERVICE.rglob("*.py"))}


@pytest.mark.parametrize("tier", sorted(FORBIDDEN))
def test_a_tier_imports_nothing_above_it(tier: str) -> None:
    upward = {
        (module, name)
        for module, imported in MODULES.items()
        if _within(module, tier)
        for name in imported
        for above in FORBIDDEN[tier]
        if _within(name, above)
    }
    assert upward == set()


def test_only_the_db_package_names_an_engine() -> None:
    outside = {
        (module, name)
        for module, imported in MODULES.items()
        if not _within(module, "service.db")
        for name in imported
        for engine in ENGINES
        if _within(name, engine)
    }
    assert outside == set()
    door = MODULES["service.db.door"]
    assert not any(_within(name, engine) for name in door for engine in ENGINES)


def test_the_rules_see_every_tier_and_its_imports() -> None:
    # Guards the tests above against rules that match nothing.
    assert all(any(_within(m, tier) for m in MODULES) for tier in FORBIDDEN)
    assert "service.db.door" in MODULES["service.access"]
    for engine in ENGINES:
        assert any(_within(name, engine) for name in MODULES["service.db"])
