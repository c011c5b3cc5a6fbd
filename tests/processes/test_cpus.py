"""The default worker count: the cgroup's CPU quota, rounded up, within the CPU affinity."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.processes.cpus import available_cpus, cpu_quota

pytestmark = pytest.mark.unit


def _cgroup_v2(root: Path, cpu_max: str, path: str = "/") -> Path:
    """A fake /sys/fs/cgroup holding ``cpu.max`` at ``path``, and the /proc/self/cgroup
    that names it; returns the latter."""
    folder = root.joinpath(*[p for p in path.split("/") if p])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(cpu_max + "\n")
    membership = root.parent / f"{root.name}-membership"
    membership.write_text(f"0::{path}\n")
    return membership


@pytest.mark.parametrize(
    ("cpu_max", "affinity", "expected"),
    [
        ("max 100000", 4, 4),  # no quota: the cores the process may run on
        ("150000 100000", 4, 2),  # 1.5 CPUs: rounded up
        ("200000 100000", 4, 2),
        ("50000 100000", 4, 1),  # half a CPU: still one worker
        ("800000 100000", 2, 2),  # a quota above the affinity: the affinity bounds it
    ],
)
def test_cgroup_v2_cpu_max(tmp_path: Path, cpu_max: str, affinity: int, expected: int) -> None:
    root = tmp_path / "cgroup"
    membership = _cgroup_v2(root, cpu_max)
    assert available_cpus(root, membership, affinity) == expected


def test_the_smallest_quota_from_the_process_cgroup_up_counts(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    membership = _cgroup_v2(root, "300000 100000", "/kubepods/pod1/container")
    (root / "kubepods" / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(root, membership) == 1.5
    assert available_cpus(root, membership, 8) == 2


def test_a_cgroup_mounted_as_the_root_inside_a_container(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cpu.max").write_text("250000 100000\n")
    membership = tmp_path / "membership"
    membership.write_text("0::/kubepods/pod1/container\n")  # no such folder under the mount
    assert available_cpus(root, membership, 8) == 3


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    folder = root / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("150000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    membership = tmp_path / "membership"
    membership.write_text("12:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert available_cpus(root, membership, 4) == 2


def test_cgroup_v1_without_a_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    membership = tmp_path / "membership"
    membership.write_text("1:cpu:/\n")
    assert cpu_quota(root, membership) is None
    assert available_cpus(root, membership, 3) == 3


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert available_cpus(tmp_path / "none", tmp_path / "missing", 2) == 2


def test_this_machine_gives_at_least_one() -> None:
    assert available_cpus() >= 1
