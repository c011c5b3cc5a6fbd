"""How many CPUs this process may use: its cgroup's CPU quota, within its CPU affinity.

A container's CPU limit is a quota (cgroup v2 ``cpu.max``: ``"150000 100000"``
is 1.5 CPUs; v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``), not a set of
cores: the host's core count says nothing about it. The quota is rounded up
(1.5 CPUs keep two processes busy half the time each) and bounded by
``sched_getaffinity`` (the cores the process may run on at all). Every level
from the process's cgroup up to the root may set a quota: the smallest counts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")


def available_cpus(
    root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP, affinity: int | None = None
) -> int:
    """The CPUs the quota allows (rounded up), at most the affinity's; at least one."""
    allowed = len(os.sched_getaffinity(0)) if affinity is None else affinity
    quota = cpu_quota(root, membership)
    if quota is None:
        return max(1, allowed)
    return max(1, min(allowed, math.ceil(quota)))


def cpu_quota(root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP) -> float | None:
    """The smallest CPU quota over the process's cgroup and its ancestors; None: unlimited."""
    quotas = [
        quota
        for folder in _cgroup_folders(root, membership)
        if (quota := _quota_in(folder)) is not None
    ]
    return min(quotas, default=None)


def _cgroup_folders(root: Path, membership: Path) -> list[Path]:
    """Where the process's CPU controller may keep its files: v2's and v1's, leaf to root."""
    try:
        lines = membership.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    folders = []
    for line in lines:
        controllers, _, path = line.partition(":")[2].partition(":")
        if controllers == "":  # v2: one unified hierarchy
            folders += _ancestors(root, path)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                folders += _ancestors(mount, path)
    # Inside a container the cgroup is often mounted as the root itself.
    return folders + [root, root / "cpu"]


def _ancestors(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and each folder above it up to ``mount``, those that exist."""
    parts = [part for part in path.split("/") if part]
    candidates = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [folder for folder in candidates if folder.is_dir()]


def _quota_in(folder: Path) -> float | None:
    """The CPUs ``folder``'s files allow (v2 ``cpu.max``, v1 cfs), or None: no limit there."""
    v2 = _read(folder / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _ratio(quota, period)
    quota_us, period_us = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota_us is None or period_us is None:
        return None
    return _ratio(quota_us, period_us)


def _ratio(quota: str, period: str) -> float | None:
    """``quota / period`` in CPUs; None for ``max``, -1 or anything unreadable."""
    try:
        share, every = int(quota), int(period)
    except ValueError:
        return None  # "max": no limit
    return share / every if share > 0 and every > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
