"""Config: environment first, then YAML; anything wrong stops the start with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Config, ConfigError, DatabaseConfig, PostgresDatabaseConfig
from tests.conftest import MIGRATIONS, build_config


def _doc(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    (tmp_path / "data").mkdir(exist_ok=True)
    return {
        "data_dir": str(tmp_path / "data"),
        "databases": [
            {"name": "live", "path": "live.db"},
            {"name": "archive", "path": "archive.db"},
        ],
        **extra,
    }


def test_the_contract_example_loads(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    document = yaml.safe_load(
        """
listen: 127.0.0.1:50051
data_dir: DATA
redis_url: redis://127.0.0.1:6379/0
databases:
  - name: live
    path: live.db
    migrations: MIGRATIONS/live
    allowed_tables: [orders]
  - name: archive
    path: archive.db
groups:
  - name: history
    members: [archive, live]
    route:
      kind: range
      bounds: [{member: archive, below: "2026-01-01"}, {member: live}]
""".replace("DATA", str(tmp_path / "data")).replace("MIGRATIONS", str(MIGRATIONS))
    )
    config = build_config(tmp_path, document)
    assert config.listen == "127.0.0.1:50051"
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    live = config.database("live")
    assert isinstance(live, DatabaseConfig) and live.path == tmp_path / "data" / "live.db"
    assert live.allowed_tables == frozenset({"orders"})
    assert config.groups[0].members == ("archive", "live")
    assert config.groups[0].route is not None and config.groups[0].route.kind == "range"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = build_config(
        tmp_path,
        _doc(tmp_path, listen="127.0.0.1:1", l1_max_entries=5),
        {
            "DATAACCESS_LISTEN": "127.0.0.1:2",
            "DATAACCESS_L1_MAX_ENTRIES": "0",
            "DATAACCESS_REDIS_URL": "redis://127.0.0.1:1/0",
        },
    )
    assert config.listen == "127.0.0.1:2"
    assert config.l1_max_entries == 0
    assert config.redis_url == "redis://127.0.0.1:1/0"


def test_no_config_is_the_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config.from_env({})
    assert config.listen == "127.0.0.1:50051"
    assert config.redis_url is None
    assert [db.name for db in config.databases] == ["live", "archive"]
    assert all(db.path.parent == tmp_path / "data" for db in config.sqlite_databases)
    assert all(db.migrations is not None for db in config.databases)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown key 'colour'"),
        (
            {"databases": [{"name": "live", "path": "live.db", "size": 1}]},
            "databases[0]: unknown key 'size'",
        ),
        ({"databases": [{"name": "live", "path": "missing/live.db"}]}, "does not exist"),
        (
            {"databases": [{"name": "live", "path": "a.db"}, {"name": "live", "path": "b.db"}]},
            "duplicate name 'live'",
        ),
        ({"groups": [{"name": "g", "members": ["live", "nope"]}]}, "unknown member 'nope'"),
        ({"groups": [{"name": "live", "members": ["archive"]}]}, "duplicate name 'live'"),
        ({"limits": {"max_rowz": 1}}, "limits: unknown key 'max_rowz'"),
        ({"sqlite": {"synchronous": "SOMETIMES"}}, "sqlite.synchronous"),
        ({"shutdown_grace_seconds": 45}, "below Kubernetes' 30 s"),
        ({"cache": {"breaker_failures": 0}}, "cache.breaker_failures: must be above 0"),
        ({"cache": {"l1_validation_window_seconds": -1}}, "cache.l1_validation_window"),
        ({"cache": {"redis_timeout": 1}}, "cache: unknown key 'redis_timeout'"),
        ({"redis_url": "127.0.0.1:6379"}, "redis_url: expected redis://"),
        ({"sqlite": {"temp_store": "RAM"}}, "sqlite.temp_store: expected one of"),
        (
            {"auth": {"tokens": [{"name": "t", "sha256": "abc", "scopes": []}]}},
            "auth.tokens.t.sha256",
        ),
        (
            {"auth": {"tokens": [{"name": "t", "sha256": "a" * 64, "scopes": ["root"]}]}},
            "'root' is not read:NAME",
        ),
        ({"auth": {"users": []}}, "auth: unknown key 'users'"),
        ({"auth": {"tokens": []}}, "auth.tokens: at least one token"),
        (
            {
                "auth": {
                    "tokens": [
                        {"name": "a", "sha256": "a" * 64, "scopes": []},
                        {"name": "b", "sha256": "a" * 64, "scopes": []},
                    ]
                }
            },
            "two tokens share a sha256",
        ),
        (
            {"tls": {"cert_file": "/nonexistent.pem", "key_file": "/k.pem"}},
            "tls.cert_file: /nonexistent.pem",
        ),
        ({"tls": {"cert_file": "/etc/hostname"}}, "tls.key_file: missing"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_config(tmp_path, {**_doc(tmp_path), **change})


def test_bad_config_stops_the_server_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**_doc(tmp_path), "colour": "blue"}))
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        env={"DATAACCESS_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["dataaccess: config: unknown key 'colour'"]


def test_the_cache_section_is_read(tmp_path: Path) -> None:
    config = build_config(
        tmp_path, _doc(tmp_path, cache={"l1_validation_window_seconds": 0, "breaker_failures": 5})
    )
    assert config.cache.l1_validation_window_seconds == 0
    assert config.cache.breaker_failures == 5
    assert config.cache.redis_socket_timeout_seconds == 0.25


def test_a_database_is_a_sqlite_file_or_a_postgresql_url(tmp_path: Path) -> None:
    document = _doc(tmp_path)
    document["databases"].append(
        {
            "name": "orders",
            "url": "postgresql://app@127.0.0.1:5432/orders",
            "allowed_tables": ["orders"],
            "pool_size": 4,
        }
    )
    config = build_config(tmp_path, document)
    orders = config.database("orders")
    assert isinstance(orders, PostgresDatabaseConfig)
    assert orders.url == "postgresql://app@127.0.0.1:5432/orders"
    assert orders.schema == "public" and orders.pool_size == 4
    assert orders.reader == "dataaccess_reader_orders"
    assert [db.name for db in config.sqlite_databases] == ["live", "archive"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"url": "mysql://x/y"}, "databases.orders.url: expected postgresql://"),
        ({"url": "postgresql://x/y", "path": "o.db"}, "path and url both given"),
        ({"url": "postgresql://x/y", "schema": "Bad-Name"}, "databases.orders.schema"),
        ({"url": "postgresql://x/y", "pool_size": 0}, "databases.orders.pool_size"),
        ({"url": "postgresql://x/y", "nope": 1}, "nope"),
    ],
)
def test_a_bad_postgresql_entry_names_the_key(
    tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    document = _doc(tmp_path)
    document["databases"].append({"name": "orders", **entry})
    with pytest.raises(ConfigError, match=message):
        build_config(tmp_path, document)


def test_a_postgresql_url_takes_its_secrets_from_the_environment(tmp_path: Path) -> None:
    document = _doc(tmp_path)
    document["databases"].append(
        {
            "name": "orders",
            "url": "postgresql://app:${ORDERS_PASSWORD}@db-rw:5432/orders",
            "replicas": ["postgresql://app:${ORDERS_PASSWORD}@db-ro:5432/orders"],
        }
    )
    config = build_config(tmp_path, document, {"ORDERS_PASSWORD": "s3cret"})
    orders = config.database("orders")
    assert isinstance(orders, PostgresDatabaseConfig)
    assert orders.url == "postgresql://app:s3cret@db-rw:5432/orders"
    assert orders.replicas == ("postgresql://app:s3cret@db-ro:5432/orders",)
    with pytest.raises(ConfigError, match="no ORDERS_PASSWORD"):
        build_config(tmp_path, document)
