"""One frozen, validated Config, built once at start-up from the environment and YAML.

The environment comes first (12-factor, prefix ``DATAACCESS_``), then the YAML
file named by ``DATAACCESS_CONFIG``; with neither, the embedded default serves
``live`` and ``archive`` under ``./data``. Anything wrong raises ConfigError
with one line that names the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

REPO_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
TEMP_STORES = ("DEFAULT", "FILE", "MEMORY")


class ConfigError(Exception):
    """The configuration is wrong; the message is one line naming the key."""


@dataclass(frozen=True)
class SqliteSettings:
    """PRAGMAs and limits every connection opens with."""

    synchronous: str = "NORMAL"
    busy_timeout_ms: int = 5000
    cache_size_kib: int = 8192  # per connection; the soft heap limit caps them all together
    mmap_size_bytes: int = 268_435_456
    # FILE: sorts, DISTINCT and GROUP BY spill to temp_dir. MEMORY would hold them in
    # the heap (unbounded but for the heap limit) and measured 4x slower for GROUP BY.
    temp_store: str = "FILE"
    temp_dir: Path | None = None  # SQLite's temporary files (SQLITE_TMPDIR); None: data_dir/tmp
    max_page_count: int = (
        0  # 0: no cap; else the database's size cap in pages (SQLITE_FULL past it)
    )
    # How often each database asks SQLite whether another process committed to it
    # (PRAGMA data_version); 0 turns the check off.
    outside_writes_check_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise ConfigError(f"sqlite.synchronous: expected one of {', '.join(SYNCHRONOUS_MODES)}")
        if self.temp_store not in TEMP_STORES:
            raise ConfigError(f"sqlite.temp_store: expected one of {', '.join(TEMP_STORES)}")
        _require_non_negative("sqlite.busy_timeout_ms", self.busy_timeout_ms)
        _require_non_negative("sqlite.cache_size_kib", self.cache_size_kib)
        _require_non_negative(
            "sqlite.outside_writes_check_seconds", self.outside_writes_check_seconds
        )


@dataclass(frozen=True)
class Limits:
    """Caps on requests, results and waits."""

    max_rows: int = 10_000
    max_result_bytes: int = 8 * 1024 * 1024
    max_message_bytes: int = 16 * 1024 * 1024
    stream_chunk_rows: int = 1000
    stream_chunk_bytes: int = 1024 * 1024
    max_sql_length: int = 100_000
    max_params: int = 999
    readers_per_database: int = 4
    acquire_timeout_seconds: float = 5.0
    default_deadline_seconds: float = 30.0
    idempotency_window_seconds: float = 86_400.0
    reader_idle_timeout_seconds: float = 300.0
    reader_max_lifetime_seconds: float = 3600.0
    reader_validate_after_idle_seconds: float = 30.0
    write_queue_size: int = 1024
    group_commit: bool = True  # False: one transaction per write RPC (for comparison only)
    max_concurrent_rpcs: int = 1024  # past it, new calls get RESOURCE_EXHAUSTED at once
    max_concurrent_per_caller: int = 256  # per token; only with auth on
    # Tags a caller names (cache.tags, invalidate_tags, Invalidate's tags): each
    # is held in process and in Redis, so a request may name only so many.
    max_tags_per_request: int = 32
    max_tag_bytes: int = 256
    max_batch_rows: int = 100_000  # rows in one BatchInsert, or param sets in one BatchUpdate
    # The process's memory budget: SQLite's heap (all connections share it) is held
    # to 3/8 of it, leaving the rest for Python, gRPC, the L1 cache and results.
    memory_budget_mib: int = 512

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_result_bytes", "max_message_bytes", "stream_chunk_rows"):
            _require_positive(f"limits.{name}", getattr(self, name))
        _require_positive("limits.readers_per_database", self.readers_per_database)
        _require_positive("limits.acquire_timeout_seconds", self.acquire_timeout_seconds)
        _require_positive("limits.default_deadline_seconds", self.default_deadline_seconds)
        _require_positive("limits.max_tags_per_request", self.max_tags_per_request)
        _require_positive("limits.max_tag_bytes", self.max_tag_bytes)
        if self.memory_budget_mib < 64:
            raise ConfigError("limits.memory_budget_mib: must be at least 64")
        if self.max_result_bytes >= self.max_message_bytes:
            raise ConfigError("limits.max_result_bytes: must be below limits.max_message_bytes")


@dataclass(frozen=True)
class CacheConfig:
    """How the cache checks Redis and rides out its faults (YAML section ``cache``)."""

    l1_validation_window_seconds: float = 0.1  # an L1 hit older than this asks Redis (MGET)
    redis_socket_timeout_seconds: float = 0.25
    redis_connect_timeout_seconds: float = 0.25
    redis_health_check_interval_seconds: float = 5.0
    redis_key_prefix: str = "dataaccess"
    redis_max_connections: int = 64
    breaker_failures: int = 3  # failures in a row that open the breaker
    breaker_reset_seconds: float = 1.0  # how often an open breaker probes Redis
    lease_seconds: float = 2.0  # how long other replicas wait for one replica's load
    # How long a tag's token stays in Redis at least; a load extends it to
    # outlive the entry it stores, so only tokens nothing uses go sooner.
    token_ttl_seconds: float = 3600.0

    def __post_init__(self) -> None:
        _require_non_negative(
            "cache.l1_validation_window_seconds", self.l1_validation_window_seconds
        )
        for name in (
            "redis_socket_timeout_seconds",
            "redis_connect_timeout_seconds",
            "breaker_failures",
            "breaker_reset_seconds",
            "lease_seconds",
            "token_ttl_seconds",
            "redis_max_connections",
        ):
            _require_positive(f"cache.{name}", getattr(self, name))


@dataclass(frozen=True)
class TlsConfig:
    """Serve over TLS; with ``client_ca_file``, callers must present a certificate it signed."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"tls.{name}: {path} is not a file")


@dataclass(frozen=True)
class TokenConfig:
    """One bearer token: a name for logs, its SHA-256 (hex, never the token), its scopes."""

    name: str
    sha256: str
    scopes: frozenset[str]

    def __post_init__(self) -> None:
        where = f"auth.tokens.{self.name}"
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ConfigError(f"{where}.sha256: expected 64 lower-case hex digits")
        for scope in self.scopes:
            if scope != "admin" and not re.fullmatch(r"(read|write):(\*|\w+)", scope):
                raise ConfigError(
                    f"{where}.scopes: {scope!r} is not read:NAME, write:NAME or admin"
                )


@dataclass(frozen=True)
class DatabaseConfig:
    """One SQLite database the service serves."""

    name: str
    path: Path
    migrations: Path | None = None
    allowed_tables: frozenset[str] | None = None


@dataclass(frozen=True)
class RouteBound:
    """One step of a range route: keys below ``below`` go to ``member``."""

    member: str
    below: str | int | float | None = None


@dataclass(frozen=True)
class RouteConfig:
    """How a group's ``route_key`` picks one member."""

    kind: str
    column: str | None = None
    bounds: tuple[RouteBound, ...] = ()


@dataclass(frozen=True)
class GroupConfig:
    """A named set of databases queried together."""

    name: str
    members: tuple[str, ...]
    route: RouteConfig | None = None


@dataclass(frozen=True)
class Config:
    """Everything the server needs, validated."""

    listen: str = "127.0.0.1:50051"
    # True only when several server processes are meant to share ``listen``
    # (SO_REUSEPORT); off, a second server on a busy address fails to start.
    listen_reuse_port: bool = False
    metrics_listen: str | None = None  # host:port of the Prometheus endpoint; None: off
    data_dir: Path = Path("data")
    redis_url: str | None = None
    l1_max_entries: int = 10_000
    l1_max_bytes: int = 64 * 1024 * 1024
    cache_ttl_seconds: float = 60.0
    log_level: str = "INFO"
    shutdown_grace_seconds: float = 20.0
    health_interval_seconds: float = 2.0  # how often the standard health status is refreshed
    health_deep_interval_seconds: float = 10.0  # a deep Health report is reused this long
    databases: tuple[DatabaseConfig, ...] = ()
    groups: tuple[GroupConfig, ...] = ()
    sqlite: SqliteSettings = field(default_factory=SqliteSettings)
    limits: Limits = field(default_factory=Limits)
    cache: CacheConfig = field(default_factory=CacheConfig)
    auth_tokens: tuple[TokenConfig, ...] = ()  # none: auth is off
    tls: TlsConfig | None = None  # none: plaintext (loopback, or a mesh that encrypts)

    def __post_init__(self) -> None:
        _require_non_negative("l1_max_entries", self.l1_max_entries)
        _require_positive("health_interval_seconds", self.health_interval_seconds)
        _require_non_negative("health_deep_interval_seconds", self.health_deep_interval_seconds)
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError("redis_url: expected redis://, rediss:// or unix://")
        if not 0 < self.shutdown_grace_seconds < 30:
            raise ConfigError("shutdown_grace_seconds: must be above 0 and below Kubernetes' 30 s")
        if not self.databases:
            raise ConfigError("databases: at least one database is needed")
        _check_names(self.databases, self.groups)
        for database in self.databases:
            if not database.path.parent.is_dir():
                raise ConfigError(
                    f"databases.{database.name}.path: folder {database.path.parent} does not exist"
                )
            if database.migrations is not None and not database.migrations.is_dir():
                raise ConfigError(
                    f"databases.{database.name}.migrations: folder {database.migrations} "
                    "does not exist"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Build the Config from ``environ`` and the YAML file it may name."""
        config_path = environ.get("DATAACCESS_CONFIG")
        document = _load_yaml(Path(config_path)) if config_path else None
        return _build(document, environ, Path(config_path).parent if config_path else Path.cwd())

    def database(self, name: str) -> DatabaseConfig | None:
        """The database called ``name``, if any."""
        return next((db for db in self.databases if db.name == name), None)


TOP_KEYS = {
    "listen",
    "listen_reuse_port",
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
    "databases",
    "groups",
    "sqlite",
    "limits",
    "cache",
    "auth",
    "tls",
}
TOKEN_KEYS = {"name", "sha256", "scopes"}
DATABASE_KEYS = {"name", "path", "migrations", "allowed_tables"}
GROUP_KEYS = {"name", "members", "route"}
ROUTE_KEYS = {"kind", "column", "bounds"}
BOUND_KEYS = {"member", "below"}


def _build(document: dict[str, Any] | None, environ: Mapping[str, str], config_dir: Path) -> Config:
    doc = document or {}
    _reject_unknown("config", doc, TOP_KEYS)
    data_dir = Path(environ.get("DATAACCESS_DATA_DIR") or doc.get("data_dir") or "data")
    data_dir = data_dir if data_dir.is_absolute() else Path.cwd() / data_dir
    if document is None or "databases" not in doc:
        databases = _embedded_databases(data_dir, environ)
    else:
        databases = tuple(
            _database(i, raw, data_dir, config_dir) for i, raw in enumerate(doc["databases"] or [])
        )
    return Config(
        listen=environ.get("DATAACCESS_LISTEN") or str(doc.get("listen", Config.listen)),
        listen_reuse_port=_flag("listen_reuse_port", doc.get("listen_reuse_port", False)),
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
        databases=databases,
        groups=tuple(_group(i, raw) for i, raw in enumerate(doc.get("groups") or [])),
        sqlite=_sqlite(doc.get("sqlite"), environ, data_dir),
        limits=_limits(doc.get("limits"), environ),
        cache=_section("cache", CacheConfig, doc.get("cache")),
        auth_tokens=_tokens(doc.get("auth")),
        tls=_tls(doc.get("tls"), config_dir),
    )


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


def _database(index: int, raw: Any, data_dir: Path, config_dir: Path) -> DatabaseConfig:
    where = f"databases[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _reject_unknown(where, raw, DATABASE_KEYS)
    name = _name(where, raw)
    if "path" not in raw:
        raise ConfigError(f"{where}.path: missing")
    allowed = raw.get("allowed_tables")
    if allowed is not None and not isinstance(allowed, list):
        raise ConfigError(f"{where}.allowed_tables: expected a list of table names")
    return DatabaseConfig(
        name=name,
        path=_resolve(Path(str(raw["path"])), data_dir),
        migrations=_migrations_dir(raw.get("migrations"), data_dir, config_dir),
        allowed_tables=frozenset(str(t) for t in allowed) if allowed is not None else None,
    )


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
    return GroupConfig(
        name=_name(where, raw),
        members=tuple(str(m) for m in members),
        route=_route(f"{where}.route", route) if route is not None else None,
    )


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


def _check_names(databases: tuple[DatabaseConfig, ...], groups: tuple[GroupConfig, ...]) -> None:
    seen: set[str] = set()
    for name in [db.name for db in databases] + [g.name for g in groups]:
        if name in seen:
            raise ConfigError(f"databases/groups: duplicate name {name!r}")
        seen.add(name)
    database_names = {db.name for db in databases}
    for group in groups:
        members = list(group.members)
        members += [b.member for b in group.route.bounds] if group.route else []
        for member in members:
            if member not in database_names:
                raise ConfigError(f"groups.{group.name}: unknown member {member!r}")


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


def _flag(key: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{key}: expected true or false")
    return raw


def _require_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be above 0")


def _require_non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}: must not be negative")
