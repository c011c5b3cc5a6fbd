"""How many workers: the configured count, else one per CPU with Redis, else one; how it
is configured (flag, environment, YAML) and what stops the start."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import ConfigError
from service.processes.count import WorkerCountError, worker_count
from service.processes.supervisor import worker_config
from tests.conftest import build_config

REDIS = "redis://127.0.0.1:6379/0"


def _doc(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "data").mkdir(exist_ok=True)
    return {"data_dir": str(tmp_path / "data"), "databases": [{"name": "live", "path": "l.db"}]}


def test_by_default_one_per_cpu_with_redis(tmp_path: Path) -> None:
    config = build_config(tmp_path, {**_doc(tmp_path), "redis_url": REDIS})
    assert config.workers is None
    assert worker_count(config, cpus=lambda: 4) == 4


def test_by_default_one_without_redis_and_it_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = build_config(tmp_path, _doc(tmp_path))
    with caplog.at_level(logging.INFO):
        assert worker_count(config, cpus=lambda: 4) == 1
    [line] = [r for r in caplog.records if r.getMessage().startswith("one worker")]
    assert "redis_url" in line.getMessage() and line.__dict__["cpus"] == 4


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    document = {**_doc(tmp_path), "redis_url": REDIS, "workers": 3}
    assert build_config(tmp_path, document).workers == 3
    assert build_config(tmp_path, document, {"DATAACCESS_WORKERS": "2"}).workers == 2
    config = build_config(tmp_path, document, {"DATAACCESS_WORKERS": "1"})
    assert worker_count(config, cpus=lambda: 8) == 1


@pytest.mark.parametrize(
    ("document", "env", "message"),
    [
        ({"workers": 2}, {}, "workers: 2 processes need redis_url"),
        ({}, {"DATAACCESS_WORKERS": "4"}, "workers: 4 processes need redis_url"),
        ({"workers": 0, "redis_url": REDIS}, {}, "workers: expected a whole number"),
        ({"workers": "two", "redis_url": REDIS}, {}, "workers: expected a whole number"),
        ({"redis_url": REDIS}, {"DATAACCESS_WORKERS": "x"}, "DATAACCESS_WORKERS: expected"),
    ],
)
def test_a_bad_count_names_the_key(
    tmp_path: Path, document: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(tmp_path, {**_doc(tmp_path), **document}, env)


def test_the_memory_budget_is_shared_and_each_share_must_be_usable(tmp_path: Path) -> None:
    document = {**_doc(tmp_path), "redis_url": REDIS, "limits": {"memory_budget_mib": 512}}
    config = build_config(tmp_path, document, {"DATAACCESS_WORKERS": "2"})
    assert worker_count(config) == 2
    assert worker_config(config, "127.0.0.1:1", 1, 2).limits.memory_budget_mib == 256
    small = build_config(tmp_path, document, {"DATAACCESS_WORKERS": "16"})
    with pytest.raises(WorkerCountError, match="512 MiB over 16 workers leaves under 64"):
        worker_count(small)


def test_each_worker_serves_metrics_on_its_own_port(tmp_path: Path) -> None:
    document = {**_doc(tmp_path), "redis_url": REDIS, "metrics_listen": "0.0.0.0:9464"}
    config = build_config(tmp_path, document, {"DATAACCESS_WORKERS": "2"})
    ports = [worker_config(config, "0.0.0.0:50051", i, 2).metrics_listen for i in range(2)]
    assert ports == ["0.0.0.0:9464", "0.0.0.0:9465"]
    free = build_config(tmp_path, {**document, "metrics_listen": "127.0.0.1:0"})
    assert worker_config(free, "127.0.0.1:1", 1, 2).metrics_listen == "127.0.0.1:0"
    shared = worker_config(config, "0.0.0.0:50051", 1, 2)
    assert shared.listen_reuse_port and shared.listen == "0.0.0.0:50051"
    assert not config.listen_reuse_port  # one process never shares its port


def _service(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_doc(tmp_path)))
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={"DATAACCESS_CONFIG": str(path), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_two_workers_asked_for_without_redis_stop_the_start_with_one_line(tmp_path: Path) -> None:
    result = _service(tmp_path, "--workers", "2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "dataaccess: workers: 2 processes need redis_url (each one's L1 would go on serving "
        "what another's write changed); set DATAACCESS_REDIS_URL or run 1 worker"
    ]
    by_env = _service(tmp_path, DATAACCESS_WORKERS="2")
    assert by_env.returncode == 1 and "workers: 2 processes need redis_url" in by_env.stderr


@pytest.mark.parametrize(
    "args", [("--workers",), ("--workers", "two"), ("--workers=-1",), ("migrate", "--workers", "2")]
)
def test_a_malformed_workers_flag_prints_the_usage(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _service(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m service [serve [--workers N]")
