"""The configuration's model: frozen dataclasses that check their own values.

Each class validates itself in ``__post_init__`` and raises ConfigError with
one line that names the key, so a Config that exists is a valid one. Reading
the environment and YAML into these classes is ``loading``'s job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "AUTO_VACUUM_MODES",
    "SYNCHRONOUS_MODES",
    "TEMP_STORES",
    "CacheConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "GroupConfig",
    "PostgresDatabaseConfig",
    "AnyDatabaseConfig",
    "Limits",
    "ReplicationConfig",
    "ARCHIVE_DATES",
    "ARCHIVE_STEPS",
    "ArchiveRule",
    "RouteBound",
    "RouteConfig",
    "SqliteSettings",
    "TlsConfig",
    "TokenConfig",
    "WarmQuery",
]
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
TEMP_STORES = ("DEFAULT", "FILE", "MEMORY")
AUTO_VACUUM_MODES = ("NONE", "FULL", "INCREMENTAL")


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
    # Scheduled maintenance, each run through the writer (service.db.sqlite.maintenance).
    # PRAGMA optimize every so often and once at start; 0 turns it off.
    optimize_interval_seconds: float = 3600.0
    # auto_vacuum given to a file the service creates; an existing file keeps its own
    # (NONE to INCREMENTAL takes one full VACUUM, which the service never runs by itself).
    auto_vacuum: str = "NONE"
    incremental_vacuum_pages: int = 0  # pages freed per run at most; 0 turns it off
    incremental_vacuum_interval_seconds: float = 600.0
    # How long a maintenance run may wait for and hold the writer before it is stopped.
    maintenance_deadline_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.auto_vacuum not in AUTO_VACUUM_MODES:
            raise ConfigError(f"sqlite.auto_vacuum: expected one of {', '.join(AUTO_VACUUM_MODES)}")
        for name in (
            "optimize_interval_seconds",
            "incremental_vacuum_pages",
            "incremental_vacuum_interval_seconds",
        ):
            _require_non_negative(f"sqlite.{name}", getattr(self, name))
        _require_positive("sqlite.maintenance_deadline_seconds", self.maintenance_deadline_seconds)
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
class WarmQuery:
    """A read kept cached ahead of callers (YAML ``cache.warm``): loaded at start, loaded
    again when a write drops it and before its ttl runs out."""

    name: str
    database: str
    sql: str
    params: tuple[int | float | str | None, ...] = ()
    ttl_seconds: float | None = None  # None: the service's cache_ttl_seconds


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
    # A read SQLite answers by an equality lookup on a key is tagged by the key
    # values it looked up, so a write drops only the reads of the keys it changed;
    # false: every read is tagged by the tables it reads (the comparison and escape hatch).
    key_tags: bool = True
    # Past this many distinct keys changed in one table by one write, the write
    # bumps the table's key generation (every keyed read of it) instead.
    max_keys_per_write: int = 256
    warm: tuple[WarmQuery, ...] = ()  # reads kept cached ahead of callers (service.warming)

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
            "max_keys_per_write",
        ):
            _require_positive(f"cache.{name}", getattr(self, name))
        if not isinstance(self.key_tags, bool):
            raise ConfigError("cache.key_tags: expected true or false")


@dataclass(frozen=True)
class ReplicationConfig:
    """Continuous replication by a Litestream process beside the service (YAML section
    ``replication``): Litestream then owns checkpoints, and Health reads its state."""

    # Litestream's control socket (its ``socket.path``); Health asks it for each
    # database's last sync.
    litestream_socket: Path = Path("/var/run/litestream/litestream.sock")
    sync_interval_seconds: float = 1.0  # how often Litestream ships the WAL
    # Health degrades when a database's last sync is older than this.
    max_sync_age_seconds: float = 10.0
    metrics_listen: str | None = None  # Litestream's Prometheus endpoint (its ``addr``)

    def __post_init__(self) -> None:
        _require_positive("replication.sync_interval_seconds", self.sync_interval_seconds)
        _require_positive("replication.max_sync_age_seconds", self.max_sync_age_seconds)
        if self.max_sync_age_seconds <= self.sync_interval_seconds:
            raise ConfigError(
                "replication.max_sync_age_seconds: must be above replication.sync_interval_seconds"
            )


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
class PostgresDatabaseConfig:
    """One PostgreSQL database the service serves (``url: postgresql://...``).

    ``url``'s role runs migrations and writes, and owns the tables; reads run as
    ``<reader_role>``, a role the service keeps able to SELECT the allowed tables
    and nothing else. ``schema`` is the one schema whose tables the database serves.
    """

    name: str
    url: str
    migrations: Path | None = None
    allowed_tables: frozenset[str] | None = None
    schema: str = "public"
    reader_role: str = ""  # empty: dataaccess_reader_<name>
    pool_size: int = 8  # writer connections; readers take limits.readers_per_database
    # Streaming standbys (or the operator's -ro Service) that uncached reads may use.
    replicas: tuple[str, ...] = ()
    # How long a read carrying a consistency token waits for a replica to replay past
    # it before it reads the primary instead.
    replica_wait_seconds: float = 0.5

    def __post_init__(self) -> None:
        where = f"databases.{self.name}"
        if not self.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"{where}.url: expected postgresql://...")
        for key in ("schema", "reader_role"):
            value = getattr(self, key)
            if value and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
                raise ConfigError(f"{where}.{key}: expected a lower-case SQL identifier")
        _require_positive(f"{where}.pool_size", self.pool_size)
        _require_non_negative(f"{where}.replica_wait_seconds", self.replica_wait_seconds)
        for index, replica in enumerate(self.replicas):
            if not replica.startswith(("postgresql://", "postgres://")):
                raise ConfigError(f"{where}.replicas[{index}]: expected postgresql://...")

    @property
    def reader(self) -> str:
        """The role reads run as."""
        return self.reader_role or f"dataaccess_reader_{self.name.lower()}"[:63]


AnyDatabaseConfig = DatabaseConfig | PostgresDatabaseConfig


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


ARCHIVE_DATES = ("text", "unix_seconds")
ARCHIVE_STEPS = ("begin", "copy", "delete", "finish")


@dataclass(frozen=True)
class ArchiveRule:
    """Rows of ``table`` in ``source`` whose ``date_column`` is older than ``age_days`` move
    to ``target`` (YAML ``groups[].archive``), ``slice_rows`` at a time, a pass every
    ``interval_seconds``. ``dates``: ``text`` (ISO 8601, compared as text) or
    ``unix_seconds`` (integers); the cutoff is a whole UTC day. ``keep_ids``: copies keep
    their INTEGER PRIMARY KEY (False: the target numbers them, when its ids are its own)."""

    table: str
    source: str
    target: str
    date_column: str
    age_days: float
    dates: str = "text"
    slice_rows: int = 500
    interval_seconds: float = 300.0
    keep_ids: bool = True  # False: the target gives moved rows new INTEGER PRIMARY KEYs

    def __post_init__(self) -> None:
        for key in ("table", "date_column"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.isidentifier():
                raise ConfigError(f"{key}: expected a name, got {value!r}")
        if not isinstance(self.source, str) or not isinstance(self.target, str):
            raise ConfigError("source, target: expected database names")
        if self.source == self.target:
            raise ConfigError(f"source and target are both {self.source!r}")
        for key in ("age_days", "interval_seconds"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key}: expected a number")
        _require_non_negative("age_days", self.age_days)
        _require_positive("interval_seconds", self.interval_seconds)
        if self.dates not in ARCHIVE_DATES:
            raise ConfigError(f"dates: expected one of {', '.join(ARCHIVE_DATES)}")
        if isinstance(self.slice_rows, bool) or not isinstance(self.slice_rows, int):
            raise ConfigError("slice_rows: expected a whole number")
        if not 1 <= self.slice_rows <= 10_000:
            raise ConfigError("slice_rows: expected 1 to 10000")

    @property
    def folded_table(self) -> str:
        """The table's name as SQLite compares it: ASCII letters in any case are one."""
        return self.table.translate(_ASCII_LOWER)

    @property
    def key(self) -> str:
        """The rule's name in the journals of both files (``Events`` and ``events`` are
        one table: a config that changes the case still finds its half-moved slice)."""
        return f"{self.folded_table}:{self.source}>{self.target}"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class GroupConfig:
    """A named set of databases queried together."""

    name: str
    members: tuple[str, ...]
    route: RouteConfig | None = None
    archive: tuple[ArchiveRule, ...] = ()

    def __post_init__(self) -> None:
        for rule in self.archive:
            for member in (rule.source, rule.target):
                if member not in self.members:
                    raise ConfigError(
                        f"groups.{self.name}.archive: {member!r} is not a member of the group"
                    )
        if self.archive and self.route is not None:
            _check_archive_route(self)


def _check_archive_route(group: GroupConfig) -> None:
    """A routed group's stored boundary is its route's: one rule, and a range step from
    the rule's target to its source."""
    where = f"groups.{group.name}.archive"
    route = group.route
    assert route is not None
    if len(group.archive) > 1:
        raise ConfigError(f"{where}: a group with a route takes one archive rule")
    if route.kind != "range":
        raise ConfigError(f"{where}: archiving by age needs a range route, not {route.kind}")
    rule = group.archive[0]
    steps = [bound.member for bound in route.bounds]
    at = steps.index(rule.target) if rule.target in steps else -1
    if at < 0 or at + 1 >= len(steps) or steps[at + 1] != rule.source:
        raise ConfigError(
            f"{where}: the route needs a bound for {rule.target!r} followed by one for "
            f"{rule.source!r} (the boundary archival moves)"
        )


@dataclass(frozen=True)
class Config:
    """Everything the server needs, validated."""

    listen: str = "127.0.0.1:50051"
    # True only when several server processes are meant to share ``listen``
    # (SO_REUSEPORT); off, a second server on a busy address fails to start.
    listen_reuse_port: bool = False
    # Server processes sharing ``listen`` (one per core); None: the CPUs the cgroup
    # allows when Redis is configured, else one (service.processes.count).
    workers: int | None = None
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
    # Close client connections after this long (gracefully), so clients connect again
    # and spread over replicas that came up since; None: never.
    max_connection_age_seconds: float | None = None
    databases: tuple[AnyDatabaseConfig, ...] = ()
    groups: tuple[GroupConfig, ...] = ()
    sqlite: SqliteSettings = field(default_factory=SqliteSettings)
    limits: Limits = field(default_factory=Limits)
    cache: CacheConfig = field(default_factory=CacheConfig)
    auth_tokens: tuple[TokenConfig, ...] = ()  # none: auth is off
    tls: TlsConfig | None = None  # none: plaintext (loopback, or a mesh that encrypts)
    replication: ReplicationConfig | None = None  # none: the service checkpoints itself
    # Fault injection for the crash tests (DATAACCESS_ARCHIVE_PAUSE_AFTER): archival stops
    # for good after this step commits (begin, copy, delete or finish), to be killed there.
    archive_pause_after: str | None = None

    def __post_init__(self) -> None:
        _require_non_negative("l1_max_entries", self.l1_max_entries)
        _require_positive("health_interval_seconds", self.health_interval_seconds)
        _check_workers(self.workers, self.redis_url)
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
        _check_archive(self)
        if self.archive_pause_after not in (None, *ARCHIVE_STEPS):
            raise ConfigError(
                f"DATAACCESS_ARCHIVE_PAUSE_AFTER: expected one of {', '.join(ARCHIVE_STEPS)}"
            )
        _check_warm(
            self.cache.warm, {db.name for db in self.databases} | {g.name for g in self.groups}
        )
        for database in self.databases:
            if isinstance(database, DatabaseConfig) and not database.path.parent.is_dir():
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
        # Imported here: loading builds these classes, so it imports this module.
        from service.config.loading import load

        return load(environ)

    def database(self, name: str) -> AnyDatabaseConfig | None:
        """The database called ``name``, if any."""
        return next((db for db in self.databases if db.name == name), None)

    @property
    def sqlite_databases(self) -> tuple[DatabaseConfig, ...]:
        """The SQLite databases (files), in config order."""
        return tuple(db for db in self.databases if isinstance(db, DatabaseConfig))


def _check_names(databases: tuple[AnyDatabaseConfig, ...], groups: tuple[GroupConfig, ...]) -> None:
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


def _check_archive(config: Config) -> None:
    """Archival moves rows between SQLite files, under one process's group barrier."""
    moved: dict[tuple[str, str], str] = {}
    for group in config.groups:
        for rule in group.archive:
            # Two rules picking the same rows would move them twice (or fight over them).
            table = (rule.source, rule.folded_table)
            if table in moved:
                raise ConfigError(
                    f"groups.{group.name}.archive: {rule.source}.{rule.table} is already "
                    f"archived by groups.{moved[table]}"
                )
            moved[table] = group.name
            for member in (rule.source, rule.target):
                if not isinstance(config.database(member), DatabaseConfig):
                    raise ConfigError(
                        f"groups.{group.name}.archive: {member!r} is not a SQLite database "
                        "(archival moves rows between SQLite files)"
                    )
            if config.workers is not None and config.workers > 1:
                # Group reads wait for a slice's swap in this process only.
                raise ConfigError(
                    f"groups.{group.name}.archive: archival needs workers: 1, not "
                    f"{config.workers} (set by DATAACCESS_WORKERS, --workers or workers:; "
                    "the group's reads are held while a slice moves, in one process)"
                )


def _check_warm(warm: tuple[WarmQuery, ...], targets: set[str]) -> None:
    seen: set[str] = set()
    for query in warm:
        if query.name in seen:
            raise ConfigError(f"cache.warm: duplicate name {query.name!r}")
        seen.add(query.name)
        if query.database not in targets:
            raise ConfigError(f"cache.warm.{query.name}: unknown database {query.database!r}")
        if query.ttl_seconds is not None and query.ttl_seconds <= 0:
            raise ConfigError(f"cache.warm.{query.name}.ttl_seconds: must be positive")


def _check_workers(workers: int | None, redis_url: str | None) -> None:
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("workers: expected a whole number of processes, 1 or more")
    if workers > 1 and redis_url is None:
        # L1 is per process: a write through one worker would leave the others' L1 stale.
        raise ConfigError(
            f"workers: {workers} processes need redis_url (each one's L1 would go on serving "
            "what another's write changed); set DATAACCESS_REDIS_URL or run 1 worker"
        )


def _require_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be above 0")


def _require_non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}: must not be negative")
