"""The Makefile as a new user meets it: `make help` lists every target it documents."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_make_help_lists_every_documented_target() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    documented = re.findall(r"^([A-Za-z0-9_.-]+):[^\n]*## ", makefile, re.MULTILINE)
    shown = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = [line.split()[0] for line in shown.stdout.splitlines() if line.strip()]
    assert "k8s-validate" in documented  # a name with a digit in it
    assert listed == documented
