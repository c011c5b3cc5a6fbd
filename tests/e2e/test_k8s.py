"""The Kubernetes manifests: valid offline, consistent with what the server reads, and runnable.

Renders the overlays with ``kubectl kustomize`` and checks them against the
code: ports, probe service names, environment names and the config file;
then starts the server exactly as the manifest's containers would, on
loopback, with the sidecar's Redis command line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk import environment_variables

from service.config import Config, Limits
from service.db import litestream_config
from service.server import SERVICE_NAME
from tests.conftest import REPO, _wait_serving, free_port

pytestmark = pytest.mark.integration

K8S = REPO / "k8s"
VENV_BIN = Path(sys.executable).parent
OVERLAYS = ("dev", "prod")
READ_BY_SQLITE = {"SQLITE_TMPDIR"}  # SQLite's unix VFS reads it for its temporary files
MIN_TEMP_VOLUME = 1024**3  # an emptyDir for SQLite's temporary files needs at least this


def _render(overlay: str, root: Path = K8S) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(_kustomize(overlay, root).stdout) if doc]


def _kustomize(overlay: str, root: Path = K8S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "kustomize", str(root / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of ``kind`` called ``name`` (a ConfigMap's generated hash suffix aside)."""
    pattern = re.compile(rf"{name}(-[a-z0-9]{{10}})?")
    [found] = [o for o in objects if o["kind"] == kind and pattern.fullmatch(o["metadata"]["name"])]
    return found


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(_one(objects, "StatefulSet", "dataaccess")["spec"]["template"]["spec"])


def _container(pod: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    [found] = [c for c in pod["initContainers" if init else "containers"] if c["name"] == name]
    return dict(found)


def _config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = _one(objects, "ConfigMap", "dataaccess-config")
    return dict(yaml.safe_load(config_map["data"]["config.yaml"]))


def _validate(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(K8S / "validate.sh"), str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_every_overlay_is_valid_for_the_oldest_and_newest_kubernetes() -> None:
    result = _validate(K8S)
    assert result.returncode == 0, result.stdout + result.stderr
    for overlay in OVERLAYS:
        for version in ("1.29.0", "1.37.0"):
            assert f"{overlay} is valid for Kubernetes {version}" in result.stdout


def test_a_broken_manifest_fails_validation(tmp_path: Path) -> None:
    broken = tmp_path / "k8s"
    shutil.copytree(K8S, broken)
    manifest = broken / "base" / "statefulset.yaml"
    manifest.write_text(
        manifest.read_text().replace("  serviceName:", "  replicaz: 2\n  serviceName:")
    )
    result = _validate(broken)
    assert result.returncode != 0
    assert "dev is NOT valid for Kubernetes 1.29.0" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_environment_match_what_the_server_reads(overlay: str) -> None:
    objects = _render(overlay)
    pod = _pod(objects)
    main = _container(pod, "dataaccess")
    config = _config(objects)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["grpc"] == int(config["listen"].rsplit(":", 1)[1])
    assert ports["metrics"] == int(config["metrics_listen"].rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = main[probe]["grpc"]
        assert grpc_probe["port"] == ports["grpc"]
        assert grpc_probe.get("service", "") in ("", SERVICE_NAME)
    service = _one(objects, "Service", "dataaccess")
    [port] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert port["targetPort"] == "grpc" and port["appProtocol"] == "grpc"

    read_by_server = set(re.findall(r"DATAACCESS_[A-Z_]+", _service_source()))
    otel_names = {
        getattr(environment_variables, n)
        for n in dir(environment_variables)
        if n.startswith("OTEL_")
    }
    otel_names.add("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES")  # the gRPC instrumentation's
    for container in (main, _container(pod, "migrate", init=True)):
        for env in container["env"]:
            name = env["name"]
            known = name in read_by_server or name in otel_names or name in READ_BY_SQLITE
            assert known, f"{name} is read by nothing"
            if name == "DATAACCESS_CONFIG":
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert str(Path(env["value"]).parent) in mounts
    for database in config["databases"]:
        migrations = Path(database["migrations"])
        assert migrations.parent == Path("/app/migrations")  # where the Dockerfile puts them
        assert (REPO / "migrations" / migrations.name).is_dir()


def _service_source() -> str:
    return "\n".join(p.read_text() for p in (REPO / "service").rglob("*.py"))


def test_the_server_starts_as_the_pod_would_and_its_probe_answers_serving(tmp_path: Path) -> None:
    objects = _render("dev")
    pod = _pod(objects)
    main, migrate = _container(pod, "dataaccess"), _container(pod, "migrate", init=True)
    sidecar = _container(pod, "redis", init=True)
    redis_port, port = free_port(), free_port()
    config = _loopback_config(_config(objects), tmp_path, redis_port, port)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    redis_args = _loopback_redis(sidecar["args"], redis_port)
    redis_log = tmp_path / "redis.log"
    with _process([*sidecar["command"], *redis_args], redis_log) as redis:
        _wait_serving(redis_port, redis, redis_log)
        env = {**_env(main), "DATAACCESS_CONFIG": str(config_path), "PATH": os.environ["PATH"]}
        migrate_env = {
            **_env(migrate),
            "DATAACCESS_CONFIG": str(config_path),
            "PATH": os.environ["PATH"],
        }
        subprocess.run(
            _python(migrate["command"]), env=migrate_env, check=True, timeout=60, cwd=tmp_path
        )
        server_log = tmp_path / "server.log"
        with _process(_python(main["command"]), server_log, env) as server:
            _wait_serving(port, server, server_log)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    service = main[probe]["grpc"].get("service", "")
                    answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING, probe


def _loopback_config(
    config: dict[str, Any], tmp_path: Path, redis_port: int, port: int
) -> dict[str, Any]:
    """The pod's config with loopback addresses and this test's folders."""
    data = tmp_path / "data"
    data.mkdir()
    databases = [
        {**db, "migrations": str(REPO / "migrations" / Path(db["migrations"]).name)}
        for db in config["databases"]
    ]
    return {
        **config,
        "listen": f"127.0.0.1:{port}",
        "metrics_listen": f"127.0.0.1:{free_port()}",
        "data_dir": str(data),
        "redis_url": config["redis_url"].replace(":6379", f":{redis_port}"),
        "databases": databases,
    }


def _loopback_redis(args: list[str], port: int) -> list[str]:
    at = args.index("--port")
    assert args[args.index("--bind") + 1] == "127.0.0.1"
    return [*args[: at + 1], str(port), *args[at + 2 :]]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def _python(command: list[str]) -> list[str]:
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


class _process:
    """Run a command for the block; stop it by its pid after."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv, self.log, self.env = argv, log, env

    def __enter__(self) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=out, env=self.env)
        return self.process

    def __exit__(self, *_: object) -> None:
        self.process.kill()
        self.process.wait(10)


def test_the_configmap_is_a_config_the_server_accepts(tmp_path: Path) -> None:
    config = _loopback_config(_config(_render("prod")), tmp_path, 6379, free_port())
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    built = Config.from_env({"DATAACCESS_CONFIG": str(path)})
    assert [db.name for db in built.databases] == ["live", "archive"]
    assert built.redis_url is not None and built.metrics_listen is not None
    assert built.auth_tokens  # auth is on in production


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendering_prints_no_warning(overlay: str) -> None:
    rendered = _kustomize(overlay)
    assert rendered.stderr.strip() == "", rendered.stderr  # e.g. deprecated bases, commonLabels


def test_a_deprecated_field_fails_validation(tmp_path: Path) -> None:
    old = tmp_path / "k8s"
    shutil.copytree(K8S, old)
    kustomization = old / "overlays" / "dev" / "kustomization.yaml"
    text = kustomization.read_text().replace("patches:\n  - path: small.yaml", "")
    kustomization.write_text(text + "patchesStrategicMerge:\n  - small.yaml\n")
    result = _validate(old)
    assert result.returncode != 0
    assert "dev renders with warnings" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sqlite_temporary_files_go_on_a_sized_volume(overlay: str) -> None:
    objects = _render(overlay)
    pod = _pod(objects)
    config = _config(objects)
    # Where the service puts them (sqlite.temp_dir, default data_dir/tmp): SQLite must agree.
    temp_dir = Path(config["data_dir"]) / config.get("sqlite", {}).get("temp_dir", "tmp")
    statefulset = _one(objects, "StatefulSet", "dataaccess")
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in (_container(pod, "dataaccess"), _container(pod, "migrate", init=True)):
        tmpdir = Path(_env(container)["SQLITE_TMPDIR"])
        assert tmpdir == temp_dir
        [mount] = [m for m in container["volumeMounts"] if tmpdir.is_relative_to(m["mountPath"])]
        if mount["name"] not in claims:  # then a sized emptyDir, not the small /tmp one
            limit = volumes[mount["name"]]["emptyDir"]["sizeLimit"]
            assert _bytes(limit) >= MIN_TEMP_VOLUME, container["name"]


def _bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_waits_longer_than_the_service_drains(overlay: str) -> None:
    objects = _render(overlay)
    pod = _pod(objects)
    grace = float(
        _env(_container(pod, "dataaccess")).get("DATAACCESS_SHUTDOWN_GRACE_SECONDS")
        or _config(objects).get("shutdown_grace_seconds", Config.shutdown_grace_seconds)
    )
    # A few seconds past the drain: the Redis sidecar stops after the service.
    assert pod.get("terminationGracePeriodSeconds", 30) >= grace + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_memory_budget_fits_inside_the_container_limit(overlay: str) -> None:
    container = _container(_pod(_render(overlay)), "dataaccess")
    configured = _config(_render(overlay)).get("limits", {}).get("memory_budget_mib")
    budget_mib = int(
        _env(container).get("DATAACCESS_MEMORY_BUDGET_MIB")
        or configured
        or Limits.memory_budget_mib
    )
    limit = _bytes(container["resources"]["limits"]["memory"])
    # Room past the budget for the interpreter, gRPC's own buffers and the page cache.
    assert budget_mib * 1024**2 * 1.25 <= limit, (budget_mib, limit)


@pytest.fixture(autouse=True)
def _kubectl() -> Iterator[None]:
    if shutil.which("kubectl") is None:
        raise AssertionError("kubectl is missing: `make test` installs it")
    yield


def test_restore_runs_before_the_litestream_sidecar_and_migrations() -> None:
    pod = _pod(_render("prod"))
    order = [c["name"] for c in pod["initContainers"]]
    assert order == ["redis", "litestream-config", "restore", "litestream", "migrate"]
    sidecar = _container(pod, "litestream", init=True)
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: stopped after the service
    release = tuple(int(n) for n in sidecar["image"].rsplit(":", 1)[1].split("."))
    assert release >= (0, 5, 1)  # 0.5.0 lost data when replication resumed after a restore
    for name in ("restore", "litestream"):
        secret = _container(pod, name, init=True)["envFrom"]
        assert secret == [{"secretRef": {"name": "dataaccess-litestream"}}]
    assert _container(pod, "restore", init=True)["command"][-1] == "restore"
    assert "litestream" not in [c["name"] for c in _pod(_render("dev"))["initContainers"]]


def test_the_litestream_sidecar_replicates_every_database_the_service_serves(
    tmp_path: Path,
) -> None:
    """The sidecar's config is made, in the pod, from the service's own config: every
    database the ConfigMap names is replicated, and Health asks the socket it serves."""
    objects = _render("prod")
    pod = _pod(objects)
    made = _container(pod, "litestream-config", init=True)
    main = _container(pod, "dataaccess")
    assert _env(made)["DATAACCESS_CONFIG"] == _env(main)["DATAACCESS_CONFIG"]
    config_file = made["command"][-1]
    assert _container(pod, "litestream", init=True)["args"] == [
        "replicate",
        "-config",
        config_file,
    ]
    socket = _env(main)["DATAACCESS_LITESTREAM_SOCKET"]
    assert _env(made)["DATAACCESS_LITESTREAM_SOCKET"] == socket
    document = _loopback_config(_config(objects), tmp_path, 6379, free_port())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    built = Config.from_env(
        {"DATAACCESS_CONFIG": str(tmp_path / "config.yaml"), "DATAACCESS_LITESTREAM_SOCKET": socket}
    )
    generated = yaml.safe_load(litestream_config(built))
    assert [Path(db["path"]) for db in generated["dbs"]] == [
        db.path for db in built.sqlite_databases
    ]
    assert generated["socket"]["path"] == socket
    shared = {m["mountPath"] for m in main["volumeMounts"]}
    assert str(Path(socket).parent) in shared


def test_litestream_metrics_are_scraped_with_the_services() -> None:
    objects = _render("prod")
    ports = {p["name"]: p for p in _one(objects, "Service", "dataaccess-metrics")["spec"]["ports"]}
    assert ports["litestream-metrics"]["targetPort"] == "ls-metrics"
    sidecar = _container(_pod(objects), "litestream", init=True)
    assert {"name": "ls-metrics", "containerPort": 9091} in sidecar["ports"]
    [scrapers] = [
        rule
        for rule in _one(objects, "NetworkPolicy", "dataaccess")["spec"]["ingress"]
        if {"protocol": "TCP", "port": 9464} in rule["ports"]
    ]
    assert {"protocol": "TCP", "port": 9091} in scrapers["ports"]
    assert _config(objects)["replication"]["metrics_listen"].endswith(":9091")
