"""Reading the configuration: the environment and YAML into the model's classes.

The environment comes first (12-factor, prefix ``DATAACCESS_``), then the YAML
file named by ``DATAACCESS_CONFIG``; with neither, the embedded default serves
``live`` and ``archive`` under ``./data``. Unknown keys are refused and relative
paths are resolved here; the values themselves are checked by ``model``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from service.config.model import (
    AnyDatabaseConfig,
    ArchiveRule,
    CacheConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    GroupConfig,
    Limits,
    PostgresDatabaseConfig,
    ReplicationConfig,
    RouteBound,
    RouteConfig,
    SqliteSettings,
    TlsConfig,
    TokenConfig,
    WarmQuery,
)

REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def load(environ: Mapping[str, str]) -> Config:
    """Build the Config from ``environ`` and the YAML file it may name."""
    config_path = environ.get("DATAACCESS_CONFIG")
    document = _load_yaml(Path(config_path)) if config_path else None
    return _build(document, environ, Path(config_path).parent if config_path else Path.cwd())


TOP_KEYS = {
    "listen",
    "listen_reuse_port",
    "workers",
    "metrics_listen",
    "data_dir",
    "redis_url",
    "l1_max_entries",
    "l1_max_bytes",
    "cache_ttl_seconds",
    "log_level",
    "shutdown_grace_seconds",
    "health_interval_seconds",
    "health_deep_interval_seconds",
    "max_connection_age_seconds",
    "databases",
    "groups",
    "sqlite",
    "limits",
    "cache",
    "auth",
    "tls",
    "replication",
}
TOKEN_KEYS = {"name", "sha256", "scopes"}
DATABASE_KEYS = {"name", "path", "migrations", "allowed_tables"}
POSTGRES_KEYS = {
    "name",
    "url",
    "migrations",
    "allowed_tables",
    "schema",
    "reader_role",
    "pool_size",
    "replicas",
    "replica_wait_seconds",
}
GROUP_KEYS = {"name", "members", "route", "archive"}
ARCHIVE_KEYS = set(ArchiveRule.__dataclass_fields__)
ROUTE_KEYS = {"kind", "column", "bounds"}
BOUND_KEYS = {"member", "below"}


def _build(document: dict[str, Any] | None, environ: Mapping[str, str], config_dir: Path) -> Config:
    doc = document or {}
    _reject_unknown("config", doc, TOP_KEYS)
    data_dir = Path(environ.get("DATAACCESS_DATA_DIR") or doc.get("data_dir") or "data")
    data_dir = data_dir if data_dir.is_absolute() else Path.cwd() / data_dir
    databases: tuple[AnyDatabaseConfig, ...]
    if document is None or "databases" not in doc:
        databases = _embedded_databases(data_dir, environ)
    else:
        databases = tuple(
            _database(i, raw, data_dir, config_dir, environ)
            for i, raw in enumerate(doc["databases"] or [])
        )
    return Config(
        listen=environ.get("DATAACCESS_LISTEN") or str(doc.get("listen", Config.listen)),
        archive_pause_after=environ.get("DATAACCESS_ARCHIVE_PAUSE_AFTER") or None,
        listen_reuse_port=_flag("listen_reuse_port", doc.get("listen_reuse_port", False)),
        workers=_workers(environ.get("DATAACCESS_WORKERS"), doc.get("workers")),
        data_dir=data_dir,
        metrics_listen=environ.get("DATAACCESS_METRICS_LISTEN")
        or doc.get("metrics_listen")
        or None,
        redis_url=environ.get("DATAACCESS_REDIS_URL") or doc.get("redis_url") or None,
        l1_max_entries=_int(
            "l1_max_entries", environ.get("DATAACCESS_L1_MAX_ENTRIES", doc.get("l1_max_entries"))
        ),
        l1_max_bytes=int(doc.get("l1_max_bytes", Config.l1_max_bytes)),
        cache_ttl_seconds=float(doc.get("cache_ttl_seconds", Config.cache_ttl_seconds)),
        log_level=str(environ.get("DATAACCESS_LOG_LEVEL") or doc.get("log_level", "INFO")).upper(),
        shutdown_grace_seconds=float(
            environ.get("DATAACCESS_SHUTDOWN_GRACE_SECONDS")
            or doc.get("shutdown_grace_seconds", Config.shutdown_grace_seconds)
        ),
        health_interval_seconds=float(
            doc.get("health_interval_seconds", Config.health_interval_seconds)
        ),
        health_deep_interval_seconds=float(
            doc.get("health_deep_interval_seconds", Config.health_deep_interval_seconds)
        ),
        max_connection_age_seconds=_optional_seconds(doc.get("max_connection_age_seconds")),
        databases=databases,
        groups=tuple(_group(i, raw) for i, raw in enumerate(doc.get("groups") or [])),
        sqlite=_sqlite(doc.get("sqlite"), environ, data_dir),
        limits=_limits(doc.get("limits"), environ),
        cache=_cache(doc.get("cache")),
        auth_tokens=_tokens(doc.get("auth")),
        tls=_tls(doc.get("tls"), config_dir),
        replication=_replication(doc.get("replication"), environ),
    )


def _replication(raw: Any, environ: Mapping[str, str]) -> ReplicationConfig | None:
    """The replication section; ``DATAACCESS_LITESTREAM_SOCKET`` alone turns it on too."""
    socket = environ.get("DATAACCESS_LITESTREAM_SOCKET")
    if raw is None and socket is None:
        return None
    replication: ReplicationConfig = _section("replication", ReplicationConfig, raw or {})
    path = Path(str(socket or replication.litestream_socket))
    return replace(replication, litestream_socket=path)


def _sqlite(raw: Any, environ: Mapping[str, str], data_dir: Path) -> SqliteSettings:
    """The sqlite section, its temp_dir resolved against data_dir (data_dir/tmp if unset)."""
    settings: SqliteSettings = _section("sqlite", SqliteSettings, raw)
    temp_dir = environ.get("DATAACCESS_SQLITE_TEMP_DIR") or settings.temp_dir or "tmp"
    return replace(settings, temp_dir=_resolve(Path(str(temp_dir)), data_dir))


def _limits(raw: Any, environ: Mapping[str, str]) -> Limits:
    limits: Limits = _section("limits", Limits, raw)
    budget = environ.get("DATAACCESS_MEMORY_BUDGET_MIB")
    if budget is None:
        return limits
    try:
        return replace(limits, memory_budget_mib=int(budget))
    except ValueError as exc:
        raise ConfigError(
            f"DATAACCESS_MEMORY_BUDGET_MIB: expected an integer, got {budget!r}"
        ) from exc


def _tls(raw: Any, config_dir: Path) -> TlsConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("tls: expected a mapping with cert_file and key_file")
    _reject_unknown("tls", raw, {"cert_file", "key_file", "client_ca_file"})
    for key in ("cert_file", "key_file"):
        if key not in raw:
            raise ConfigError(f"tls.{key}: missing")
    ca = raw.get("client_ca_file")
    return TlsConfig(
        cert_file=_resolve(Path(str(raw["cert_file"])), config_dir),
        key_file=_resolve(Path(str(raw["key_file"])), config_dir),
        client_ca_file=_resolve(Path(str(ca)), config_dir) if ca else None,
    )


def _tokens(raw: Any) -> tuple[TokenConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError("auth: expected a mapping with tokens")
    _reject_unknown("auth", raw, {"tokens"})
    tokens = []
    if not raw.get("tokens"):
        # An empty list would quietly turn auth off: say so instead.
        raise ConfigError("auth.tokens: at least one token (or no auth section at all)")
    for i, token in enumerate(raw.get("tokens") or []):
        if not isinstance(token, dict):
            raise ConfigError(f"auth.tokens[{i}]: expected a mapping")
        _reject_unknown(f"auth.tokens[{i}]", token, TOKEN_KEYS)
        scopes = token.get("scopes") or []
        if not isinstance(scopes, list):
            raise ConfigError(f"auth.tokens[{i}].scopes: expected a list")
        tokens.append(
            TokenConfig(
                name=_name(f"auth.tokens[{i}]", token),
                sha256=str(token.get("sha256", "")),
                scopes=frozenset(str(s) for s in scopes),
            )
        )
    for kind in ("name", "sha256"):
        values = [getattr(t, kind) for t in tokens]
        if len(set(values)) != len(values):
            raise ConfigError(f"auth.tokens: two tokens share a {kind}")
    return tuple(tokens)


def _embedded_databases(data_dir: Path, environ: Mapping[str, str]) -> tuple[DatabaseConfig, ...]:
    data_dir.mkdir(parents=True, exist_ok=True)
    migrations_root = Path(environ.get("DATAACCESS_MIGRATIONS_DIR") or REPO_MIGRATIONS)
    return tuple(
        DatabaseConfig(
            name=name,
            path=data_dir / f"{name}.db",
            migrations=migrations_root / name if (migrations_root / name).is_dir() else None,
        )
        for name in ("live", "archive")
    )


def _database(
    index: int, raw: Any, data_dir: Path, config_dir: Path, environ: Mapping[str, str]
) -> AnyDatabaseConfig:
    where = f"databases[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    if "url" in raw:
        return _postgres_database(where, raw, data_dir, config_dir, environ)
    _reject_unknown(where, raw, DATABASE_KEYS)
    name = _name(where, raw)
    if "path" not in raw:
        raise ConfigError(f"{where}.path: missing (a SQLite file), or url: postgresql://...")
    return DatabaseConfig(
        name=name,
        path=_resolve(Path(str(raw["path"])), data_dir),
        migrations=_migrations_dir(raw.get("migrations"), data_dir, config_dir),
        allowed_tables=_allowed_tables(where, raw),
    )


def _postgres_database(
    where: str, raw: dict[str, Any], data_dir: Path, config_dir: Path, environ: Mapping[str, str]
) -> PostgresDatabaseConfig:
    if "path" in raw:
        raise ConfigError(f"{where}: path and url both given; a database is one or the other")
    _reject_unknown(where, raw, POSTGRES_KEYS)
    return PostgresDatabaseConfig(
        name=_name(where, raw),
        url=_expand(f"{where}.url", str(raw["url"]), environ),
        migrations=_migrations_dir(raw.get("migrations"), data_dir, config_dir),
        allowed_tables=_allowed_tables(where, raw),
        schema=str(raw.get("schema", "public")),
        reader_role=str(raw.get("reader_role", "")),
        pool_size=_integer(f"{where}.pool_size", raw.get("pool_size", 8)),
        replicas=tuple(
            _expand(f"{where}.replicas", url, environ)
            for url in _urls(f"{where}.replicas", raw.get("replicas", []))
        ),
        replica_wait_seconds=float(raw.get("replica_wait_seconds", 0.5)),
    )


def _urls(key: str, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(url, str) for url in raw):
        raise ConfigError(f"{key}: expected a list of postgresql:// URLs")
    return tuple(raw)


def _allowed_tables(where: str, raw: dict[str, Any]) -> frozenset[str] | None:
    allowed = raw.get("allowed_tables")
    if allowed is not None and not isinstance(allowed, list):
        raise ConfigError(f"{where}.allowed_tables: expected a list of table names")
    return frozenset(str(t) for t in allowed) if allowed is not None else None


def _integer(key: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(f"{key}: expected an integer")
    return raw


def _migrations_dir(raw: Any, data_dir: Path, config_dir: Path) -> Path | None:
    """Resolve against the data dir as the contract says, else the config file's folder."""
    if raw is None:
        return None
    path = Path(str(raw))
    if path.is_absolute():
        return path
    candidates = [data_dir / path, config_dir / path, Path.cwd() / path]
    return next((c for c in candidates if c.is_dir()), data_dir / path)


def _group(index: int, raw: Any) -> GroupConfig:
    where = f"groups[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _reject_unknown(where, raw, GROUP_KEYS)
    members = raw.get("members")
    if not isinstance(members, list) or not members:
        raise ConfigError(f"{where}.members: expected a non-empty list of database names")
    route = raw.get("route")
    archive = raw.get("archive") or []
    if not isinstance(archive, list):
        raise ConfigError(f"{where}.archive: expected a list of rules")
    return GroupConfig(
        name=_name(where, raw),
        members=tuple(str(m) for m in members),
        route=_route(f"{where}.route", route) if route is not None else None,
        archive=tuple(_archive_rule(f"{where}.archive[{i}]", r) for i, r in enumerate(archive)),
    )


def _archive_rule(where: str, raw: Any) -> ArchiveRule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _reject_unknown(where, raw, ARCHIVE_KEYS)
    required = ("table", "source", "target", "date_column", "age_days")
    missing = [key for key in required if key not in raw]
    if missing:
        raise ConfigError(f"{where}: {missing[0]} is required")
    try:
        return ArchiveRule(**raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _route(where: str, raw: Any) -> RouteConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _reject_unknown(where, raw, ROUTE_KEYS)
    kind = raw.get("kind")
    if kind not in ("range", "hash"):
        raise ConfigError(f"{where}.kind: expected range or hash")
    bounds = []
    for i, bound in enumerate(raw.get("bounds") or []):
        if not isinstance(bound, dict) or "member" not in bound:
            raise ConfigError(f"{where}.bounds[{i}]: expected a mapping with a member")
        _reject_unknown(f"{where}.bounds[{i}]", bound, BOUND_KEYS)
        bounds.append(RouteBound(member=str(bound["member"]), below=bound.get("below")))
    if kind == "range" and not bounds:
        raise ConfigError(f"{where}.bounds: a range route needs bounds")
    column = raw.get("column")
    return RouteConfig(kind=kind, column=str(column) if column else None, bounds=tuple(bounds))


def _section(where: str, cls: type[Any], raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _reject_unknown(where, raw, set(cls.__dataclass_fields__))
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


WARM_KEYS = {"name", "database", "sql", "params", "ttl_seconds"}


def _cache(raw: Any) -> CacheConfig:
    """The ``cache`` section; its ``warm`` list is read into WarmQuery entries."""
    if not isinstance(raw, dict) or "warm" not in raw:
        return _section("cache", CacheConfig, raw)  # type: ignore[no-any-return]
    warm = raw["warm"] or []
    if not isinstance(warm, list):
        raise ConfigError("cache.warm: expected a list of named queries")
    section: CacheConfig = _section(
        "cache", CacheConfig, {k: v for k, v in raw.items() if k != "warm"}
    )
    return replace(section, warm=tuple(_warm_query(i, entry) for i, entry in enumerate(warm)))


def _warm_query(index: int, raw: Any) -> WarmQuery:
    where = f"cache.warm[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with name, database and sql")
    _reject_unknown(where, raw, WARM_KEYS)
    name = _name(where, raw)
    database, sql = raw.get("database"), raw.get("sql")
    if not isinstance(database, str) or not isinstance(sql, str) or not sql.strip():
        raise ConfigError(f"{where}: database and sql are required")
    params = raw.get("params") or []
    if not isinstance(params, list) or not all(
        p is None or (isinstance(p, int | float | str) and not isinstance(p, bool)) for p in params
    ):
        raise ConfigError(f"{where}.params: expected a list of numbers, strings or nulls")
    ttl = raw.get("ttl_seconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise ConfigError(f"{where}.ttl_seconds: expected a number of seconds")
    return WarmQuery(name, database, sql, tuple(params), None if ttl is None else float(ttl))


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"DATAACCESS_CONFIG: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"DATAACCESS_CONFIG: {path} is not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"DATAACCESS_CONFIG: {path} must hold a mapping")
    return document


def _reject_unknown(where: str, raw: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")


def _name(where: str, raw: Mapping[str, Any]) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"{where}.name: expected a name of letters, digits and underscores")
    return name


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def _int(key: str, raw: Any) -> int:
    if raw is None:
        return Config.l1_max_entries
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: expected an integer, got {raw!r}") from exc


def _workers(variable: str | None, raw: Any) -> int | None:
    """``DATAACCESS_WORKERS`` (or ``--workers``), else the file's ``workers``; None: not set."""
    if variable:
        if not variable.strip().isdigit():
            raise ConfigError(f"DATAACCESS_WORKERS: expected a whole number, got {variable!r}")
        return int(variable)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError("workers: expected a whole number of processes, 1 or more")
    return raw


def _flag(key: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{key}: expected true or false")
    return raw


def _optional_seconds(raw: Any) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise ConfigError("max_connection_age_seconds: expected a number of seconds above 0")
    return float(raw)


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(key: str, text: str, environ: Mapping[str, str]) -> str:
    """``text`` with each ``${NAME}`` replaced by the environment's NAME (a password from a
    Secret, say, so it never sits in the config file); a missing one stops the start."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{key}: the environment has no {name} for ${{{name}}}")
        return environ[name]

    return _VARIABLE.sub(value, text)
