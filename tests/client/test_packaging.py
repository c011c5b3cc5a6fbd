"""The client's distribution: `pip install ./client_py` builds it without littering the tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.conftest import REPO

CLIENT = REPO / "client_py"


def test_building_the_client_leaves_nothing_in_its_source_tree(tmp_path: Path) -> None:
    source = tmp_path / "client_py"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    # What a non-editable `pip install ./client_py` runs, with the backend from .venv
    # (no isolation, so the test needs no package index).
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(tmp_path / "wheels"), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    [wheel] = (tmp_path / "wheels").glob("dataaccess_client-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    generated = [f"data_access_pb2{kind}" for kind in (".py", ".pyi", "_grpc.py", "_grpc.pyi")]
    # The generated stubs at the proto package's path, apart from the hand-written client.
    for needed in ("__init__.py", "py.typed", *(f"v1/{name}" for name in generated)):
        assert f"dataaccess/{needed}" in names
    for needed in ("py.typed", "client.py", "cli.py", "__main__.py"):
        assert f"dataaccess_client/{needed}" in names
    # The old path keeps only the modules that re-export the stubs for existing callers.
    shims = {name for name in names if name.startswith("dataaccess_client/v1/")}
    old_names = ("__init__.py", "data_access_pb2.py", "data_access_pb2_grpc.py")
    assert shims == {f"dataaccess_client/v1/{name}" for name in old_names}
    assert not any("__pycache__" in name or name.startswith("tests/") for name in names)


def test_the_command_needs_the_cli_extra_and_the_client_does_not() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not any(dep.startswith("rich") for dep in project["dependencies"])
    assert any(dep.startswith("rich") for dep in project["optional-dependencies"]["cli"])
    assert project["scripts"]["dataaccess"] == "dataaccess_client.__main__:main"
    install = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "-e './client_py[cli]'" in install  # make install brings the command's extra


def test_the_old_stub_path_still_names_the_same_classes() -> None:
    # Callers written against dataaccess_client.v1 keep working: the same classes, not copies.
    from dataaccess.v1 import data_access_pb2, data_access_pb2_grpc
    from dataaccess_client.v1 import data_access_pb2 as old_pb2
    from dataaccess_client.v1 import data_access_pb2_grpc as old_pb2_grpc

    assert old_pb2.QueryRequest is data_access_pb2.QueryRequest
    assert old_pb2_grpc.DataAccessStub is data_access_pb2_grpc.DataAccessStub
