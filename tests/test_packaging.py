"""The client's distribution: `pip install ./client_py` builds it without littering the tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
    for needed in ("py.typed", "cli.py", "v1/data_access_pb2.pyi", "v1/data_access_pb2_grpc.py"):
        assert f"dataaccess_client/{needed}" in names
    assert not any("__pycache__" in name or name.startswith("tests/") for name in names)
