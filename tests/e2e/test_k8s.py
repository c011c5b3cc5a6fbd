"""The Kubernetes manifests: valid offline, consistent with what the server reads, and runnable.

Renders the overlays with ``kubectl kustomize`` and checks them against the
code: ports, probe service names, environment names and the config file;
then starts the server exactly as the manifest's containers would, on
loopback, with the sidecar's Redis command line.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk import environment_variables

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from service.config import Config, Limits, PostgresDatabaseConfig
from service.db import litestream_config
from service.server import SERVICE_NAME
from tests.conftest import (
    REPO,
    PostgresProcess,
    RedisProcess,
    _wait_serving,
    free_port,
    plain_rows,
    value,
)

pytestmark = pytest.mark.integration

K8S = REPO / "k8s"
VENV_BIN = Path(sys.executable).parent
OVERLAYS = ("dev", "prod")  # SQLite: a StatefulSet with a Redis sidecar
SCALE = "scale"  # PostgreSQL: a Deployment, a shared Redis, a CloudNativePG Cluster
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
    for overlay in (*OVERLAYS, SCALE):
        for version in ("1.29.0", "1.37.0"):
            assert f"{overlay} is valid for Kubernetes {version}" in result.stdout
    # The custom resources, which kubernetes-validate would pass unseen, against their CRDs.
    for custom in (
        "Cluster/dataaccess-pg (postgresql.cnpg.io/v1)",
        "ObjectStore/dataaccess-pg-backups (barmancloud.cnpg.io/v1)",
        "ScheduledBackup/dataaccess-pg-nightly (postgresql.cnpg.io/v1)",
    ):
        assert f"scale: {custom} is valid against the vendored CRD schemas" in result.stdout


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
    """The container's environment as Kubernetes sets it: values, and resource fields
    (Secrets are left to the test)."""
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for entry in container["env"]:
        field = entry.get("valueFrom", {}).get("resourceFieldRef")
        if field is not None:
            env[entry["name"]] = str(_resource_field(container, field))
    return env


def _resource_field(container: dict[str, Any], field: dict[str, str]) -> int:
    """A resourceFieldRef's value: the resource over the divisor, rounded up (CPUs here)."""
    kind, _, resource = field["resource"].partition(".")
    assert resource == "cpu" and field.get("divisor", "1") == "1", field
    return math.ceil(_cpus(container["resources"][kind][resource]))


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


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


@pytest.mark.parametrize("overlay", (*OVERLAYS, SCALE))
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


@pytest.mark.parametrize("overlay", (*OVERLAYS, SCALE))
def test_one_worker_per_cpu_of_the_limit_each_with_its_metrics_port(overlay: str) -> None:
    objects = _render(overlay)
    pod = _scale_pod(objects) if overlay == SCALE else _pod(objects)
    main = _container(pod, "dataaccess")
    [entry] = [e for e in main["env"] if e["name"] == "DATAACCESS_WORKERS"]
    assert entry["valueFrom"]["resourceFieldRef"] == {"resource": "limits.cpu", "divisor": "1"}
    workers = int(_env(main)["DATAACCESS_WORKERS"])
    assert workers == math.ceil(_cpus(main["resources"]["limits"]["cpu"]))
    config = _config(objects)
    assert config["redis_url"]  # several workers need Redis: the config refuses them without
    # Worker i serves its metrics on the configured port + i: each is declared and open.
    first = int(config["metrics_listen"].rsplit(":", 1)[1])
    wanted = set(range(first, first + workers))
    declared = {p["containerPort"]: p["name"] for p in main["ports"]}
    assert wanted <= set(declared)
    service = _one(objects, "Service", "dataaccess-metrics")
    assert {declared[port] for port in wanted} <= {
        p["targetPort"] for p in service["spec"]["ports"]
    }
    [scrapers] = [
        rule
        for rule in _one(objects, "NetworkPolicy", "dataaccess")["spec"]["ingress"]
        if {"protocol": "TCP", "port": first} in rule["ports"]
    ]
    assert {p["port"] for p in scrapers["ports"]} >= wanted


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


# The scale overlay: stateless replicas on PostgreSQL (CloudNativePG), one shared Redis.

CLUSTER = "dataaccess-pg"
BARMAN_PLUGIN = "barman-cloud.cloudnative-pg.io"


def _scale() -> list[dict[str, Any]]:
    return _render(SCALE)


def _scale_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(_one(objects, "Deployment", "dataaccess")["spec"]["template"]["spec"])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def _pod_labels(objects: list[dict[str, Any]], name: str = "dataaccess") -> dict[str, str]:
    return dict(_one(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"])


def _placeholders(url: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", url))


def _secret_env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each variable set from a Secret: (secret, key)."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_the_scale_overlay_runs_stateless_replicas_spread_over_nodes_and_zones() -> None:
    objects = _scale()
    assert not [o for o in objects if o["kind"] in ("StatefulSet", "PersistentVolumeClaim")]
    deployment = _one(objects, "Deployment", "dataaccess")
    assert deployment["spec"]["replicas"] == 3
    pod = _scale_pod(objects)
    labels = _pod_labels(objects)
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert _selects(constraint["labelSelector"]["matchLabels"], labels)
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])

    # Probes and securityContext as the SQLite pods', so the same checks hold.
    base_pod = _pod(_render("dev"))
    base_main, main = _container(base_pod, "dataaccess"), _container(pod, "dataaccess")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe] == base_main[probe], probe
    assert pod["securityContext"] == base_pod["securityContext"]
    for container in (main, _container(pod, "migrate", init=True)):
        assert container["securityContext"] == base_main["securityContext"], container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    config = _config(objects)
    budget = config.get("limits", {}).get("memory_budget_mib") or Limits.memory_budget_mib
    assert budget * 1024**2 * 1.25 <= _bytes(main["resources"]["limits"]["memory"])
    grace = float(config.get("shutdown_grace_seconds", Config.shutdown_grace_seconds))
    assert pod.get("terminationGracePeriodSeconds", 30) >= grace + 5


def test_the_autoscaler_keeps_more_replicas_than_the_disruption_budget() -> None:
    objects = _scale()
    hpa = _one(objects, "HorizontalPodAutoscaler", "dataaccess")
    pdb = _one(objects, "PodDisruptionBudget", "dataaccess")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "dataaccess",
    }
    minimum, maximum = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    # One replica more than the budget keeps: a node drain can always evict one.
    assert minimum >= 3 and minimum >= pdb["spec"]["minAvailable"] + 1
    assert maximum > minimum
    assert _one(objects, "Deployment", "dataaccess")["spec"]["replicas"] == minimum
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert _selects(pdb["spec"]["selector"]["matchLabels"], _pod_labels(objects))
    # PostgreSQL is sized for the most replicas the HPA makes (and one surging).
    cluster = _one(objects, "Cluster", CLUSTER)
    max_connections = int(cluster["spec"]["postgresql"]["parameters"]["max_connections"])
    config = _config(objects)
    readers = config.get("limits", {}).get("readers_per_database", Limits.readers_per_database)
    # Each worker process (one per CPU of the container's limit) opens its own pools.
    workers = int(_env(_container(_scale_pod(objects), "dataaccess"))["DATAACCESS_WORKERS"])
    per_replica = workers * sum(db["pool_size"] + readers + 1 for db in config["databases"])
    assert (maximum + 1) * per_replica < max_connections


def test_grpc_has_a_headless_service_for_per_call_balancing() -> None:
    objects = _scale()
    labels = _pod_labels(objects)
    headless = _one(objects, "Service", "dataaccess-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)
    assert _selects(headless["spec"]["selector"], labels)
    [port] = headless["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["appProtocol"]) == (50051, "grpc", "grpc")
    metrics = _one(objects, "Service", "dataaccess-metrics")
    assert _selects(metrics["spec"]["selector"], labels)
    container_ports = {p["name"] for p in _container(_scale_pod(objects), "dataaccess")["ports"]}
    assert {p["targetPort"] for p in metrics["spec"]["ports"]} <= container_ports
    policy = _one(objects, "NetworkPolicy", "dataaccess")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], labels)


def test_every_replica_shares_one_redis_and_none_has_a_sidecar() -> None:
    objects = _scale()
    pod = _scale_pod(objects)
    for container in pod["containers"] + pod.get("initContainers", []):
        assert "redis" not in container["name"] and "redis" not in container["image"]
    redis_url = urlsplit(_config(objects)["redis_url"])
    service = _one(objects, "Service", str(redis_url.hostname))
    assert redis_url.port in [p["port"] for p in service["spec"]["ports"]]
    [redis] = [
        o
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
        and _selects(service["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"])
    ]
    assert redis["spec"]["replicas"] == 1
    [container] = redis["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("redis:")
    args = container["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    # No password: only the service's pods may reach it.
    [policy] = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and _selects(
            o["spec"]["podSelector"]["matchLabels"], _pod_labels(objects, redis["metadata"]["name"])
        )
    ]
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    assert _selects(peer["podSelector"]["matchLabels"], _pod_labels(objects))


def test_the_sqlite_overlays_keep_their_redis_sidecar() -> None:
    for overlay in OVERLAYS:
        objects = _render(overlay)
        sidecar = _container(_pod(objects), "redis", init=True)
        assert sidecar["restartPolicy"] == "Always"
        assert urlsplit(_config(objects)["redis_url"]).hostname == "127.0.0.1"
        assert not [o for o in objects if o["kind"] == "Cluster"]
        assert "dataaccess" not in [
            o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"
        ]


def test_the_postgres_cluster_commits_synchronously_and_archives_wal() -> None:
    objects = _scale()
    cluster = _one(objects, "Cluster", CLUSTER)
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] == 3
    assert spec["postgresql"]["synchronous"] == {
        "method": "any",
        "number": 1,
        "dataDurability": "required",
    }
    # Not the deprecated fields: minSyncReplicas/maxSyncReplicas, backup.barmanObjectStore.
    assert not {"minSyncReplicas", "maxSyncReplicas"} & set(spec)
    assert "barmanObjectStore" not in spec.get("backup", {})
    [archiver] = [p for p in spec["plugins"] if p.get("isWALArchiver")]
    assert archiver["name"] == BARMAN_PLUGIN and archiver.get("enabled", True)
    store = _one(objects, "ObjectStore", archiver["parameters"]["barmanObjectName"])
    assert store["apiVersion"] == "barmancloud.cnpg.io/v1"
    configuration = store["spec"]["configuration"]
    assert configuration["destinationPath"].startswith("s3://")
    credentials = configuration["s3Credentials"]
    for key in ("accessKeyId", "secretAccessKey"):
        assert set(credentials[key]) == {"name", "key"}  # from a Secret, never inline
    [backup] = [o for o in objects if o["kind"] == "ScheduledBackup"]
    assert backup["spec"]["cluster"]["name"] == CLUSTER
    assert backup["spec"]["method"] == "plugin"
    assert backup["spec"]["pluginConfiguration"]["name"] == BARMAN_PLUGIN


def test_the_config_points_at_the_operators_services_with_its_credentials(
    tmp_path: Path,
) -> None:
    objects = _scale()
    config = _config(objects)
    assert config["max_connection_age_seconds"] > 0
    pod = _scale_pod(objects)
    main, migrate = _container(pod, "dataaccess"), _container(pod, "migrate", init=True)
    secrets = _secret_env(main)
    assert _secret_env(migrate) == secrets
    databases = config["databases"]
    assert databases and all("url" in db and "path" not in db for db in databases)
    for database in databases:
        url = urlsplit(database["url"])
        assert url.hostname == f"{CLUSTER}-rw"
        assert [urlsplit(r).hostname for r in database["replicas"]] == [f"{CLUSTER}-ro"]
        for text in (database["url"], *database["replicas"]):
            # Each ${NAME} is set in both containers, from the operator's app Secret.
            for name in _placeholders(text):
                assert secrets[name][0] == f"{CLUSTER}-app", name
            assert "sslmode=verify-full" in text
            [root_cert] = re.findall(r"sslrootcert=([^&]+)", text)
            for container in (main, migrate):
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert mounts[str(Path(root_cert).parent)] == "pg-ca"
    [ca] = [v for v in pod["volumes"] if v["name"] == "pg-ca"]
    assert ca["secret"]["secretName"] == f"{CLUSTER}-ca"
    assert ca["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # not its key

    # Every variable the pod sets is read by the server, named by the config, or OTel's.
    named = set().union(*(_placeholders(str(db)) for db in databases))
    read_by_server = set(re.findall(r"DATAACCESS_[A-Z_]+", _service_source()))
    for container in (main, migrate):
        for env in container["env"]:
            name = env["name"]
            assert name in read_by_server or name in named or name.startswith("OTEL_"), name

    (tmp_path / "config.yaml").write_text(_local_migrations(config_map_text(objects)))
    built = Config.from_env(
        {"DATAACCESS_CONFIG": str(tmp_path / "config.yaml")}
        | {name: f"{name.lower()}0" for name in secrets}
    )
    assert built.max_connection_age_seconds == config["max_connection_age_seconds"]
    for database in built.databases:
        assert isinstance(database, PostgresDatabaseConfig)
        assert "${" not in database.url and "dataaccess_pg_password0" in database.url


def config_map_text(objects: list[dict[str, Any]]) -> str:
    return str(_one(objects, "ConfigMap", "dataaccess-config")["data"]["config.yaml"])


def _local_migrations(text: str) -> str:
    """A config naming the image's migrations (/app/migrations), pointed at this checkout's."""
    return text.replace("/app/migrations/", f"{MIGRATIONS_DIR}/")


MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def test_a_broken_custom_resource_fails_validation(tmp_path: Path) -> None:
    broken = tmp_path / "k8s"
    shutil.copytree(K8S, broken)
    manifest = broken / "overlays" / SCALE / "postgres.yaml"
    text = manifest.read_text()
    assert "dataDurability: required" in text
    manifest.write_text(text.replace("dataDurability: required", "dataDurabilty: required"))
    result = _validate(broken)
    assert result.returncode != 0
    assert f"Cluster/{CLUSTER} (postgresql.cnpg.io/v1) is NOT valid" in result.stdout
    assert "'dataDurabilty' was unexpected" in result.stdout
    assert "dev is valid for Kubernetes 1.29.0" in result.stdout  # the others unaffected


def test_a_custom_resource_without_its_crd_fails_validation(tmp_path: Path) -> None:
    missing = tmp_path / "k8s"
    shutil.copytree(K8S, missing)
    (missing / "crds" / "barmancloud.cnpg.io_objectstores.yaml").unlink()
    result = _validate(missing)
    assert result.returncode != 0
    assert "no CRD for barmancloud.cnpg.io/v1 ObjectStore" in result.stdout


def test_a_scale_pod_serves_postgres_set_up_as_the_cluster_bootstraps_it(tmp_path: Path) -> None:
    """The Deployment's containers, its config and env, against a real PostgreSQL set up as
    the operator bootstraps the Cluster (an owner without CREATEROLE, its database, then
    postInitSQL as the superuser), and a real Redis: migrate, start, every probe SERVING,
    a read of each database as its reader role."""
    objects = _scale()
    pod = _scale_pod(objects)
    main, migrate = _container(pod, "dataaccess"), _container(pod, "migrate", init=True)
    initdb = _one(objects, "Cluster", CLUSTER)["spec"]["bootstrap"]["initdb"]
    owner = initdb["owner"]
    config = _config(objects)
    served = {db["name"]: urlsplit(db["url"]).path.lstrip("/") for db in config["databases"]}
    server = PostgresProcess()
    redis = RedisProcess(tmp_path)
    try:
        server.start()
        # What the operator does before postInitSQL: the owner, its database.
        server.psql(f"CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
        server.psql(f"CREATE DATABASE {initdb['database']} OWNER {owner}")
        for statement in initdb["postInitSQL"]:
            server.psql(statement)
        for name, database in served.items():
            _psql_as(
                server,
                owner,
                database,
                f"CREATE TABLE items (id bigint PRIMARY KEY, t text NOT NULL);"
                f" INSERT INTO items VALUES (1, '{name}')",
            )
        redis.start()
        port = free_port()
        config_path = tmp_path / "config.yaml"
        config_path.write_text(
            yaml.safe_dump(_local_scale_config(config, server.port, redis.url, port))
        )
        secrets = {name: "unused-with-trust" for name in _secret_env(main)}
        secrets["DATAACCESS_PG_USER"] = owner
        env = {
            "DATAACCESS_WORKERS": _env(main)["DATAACCESS_WORKERS"],  # as the CPU limit says
            "DATAACCESS_CONFIG": str(config_path),
            "PATH": os.environ["PATH"],
            "OTEL_TRACES_EXPORTER": "none",
            **secrets,
        }
        subprocess.run(_python(migrate["command"]), env=env, check=True, timeout=60, cwd=tmp_path)
        log = tmp_path / "server.log"
        with _process(_python(main["command"]), log, env) as process:
            _wait_serving(port, process, log)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    service = main[probe]["grpc"].get("service", "")
                    answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING, probe
                stub = pb_grpc.DataAccessStub(channel)
                for name in served:
                    request = pb.QueryRequest(
                        database=name, sql="SELECT t FROM items WHERE id = $1", params=[value(1)]
                    )
                    assert plain_rows(stub.Query(request, timeout=10)) == [(name,)]
    finally:
        redis_process = redis.process
        if redis_process is not None:
            redis_process.kill()
            redis_process.wait(10)
        server.stop()


def _psql_as(server: PostgresProcess, role: str, database: str, sql: str) -> None:
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    args = [str(binaries[-1] / "psql"), "-h", "127.0.0.1", "-p", str(server.port)]
    args += ["-U", role, "-d", database, "-v", "ON_ERROR_STOP=1", "-qAtc", sql]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)


def _local_scale_config(
    config: dict[str, Any], pg_port: int, redis_url: str, port: int
) -> dict[str, Any]:
    """The scale config on loopback: the operator's Services become the one local server
    (no TLS there, so no sslmode), the ${NAME}s are kept for the service to expand."""

    def local(url: str) -> str:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        return urlunsplit((parts.scheme, f"{userinfo}@127.0.0.1:{pg_port}", parts.path, "", ""))

    databases = [
        {
            **db,
            "url": local(db["url"]),
            "replicas": [local(r) for r in db["replicas"]],
            "migrations": _local_migrations(db["migrations"]),
        }
        for db in config["databases"]
    ]
    return {
        **config,
        "listen": f"127.0.0.1:{port}",
        "metrics_listen": f"127.0.0.1:{free_port()}",
        "redis_url": redis_url,
        "databases": databases,
    }
