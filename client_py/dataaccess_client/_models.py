"""The plain Python values the client takes and the results it returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

SqlValue = None | int | float | str | bytes
"""A value as SQLite stores it, by storage class (NULL, INTEGER, REAL, TEXT, BLOB)."""

SqlInput = SqlValue | bytearray | memoryview
"""A value the client accepts: a SqlValue, or bytes in another buffer type."""

Params = Sequence[SqlInput] | Mapping[str, SqlInput]
"""Statement parameters: a sequence for ``?`` and ``?NNN``, a mapping for ``:name``."""

Row = tuple[SqlValue, ...]

CacheMode = Literal["use", "bypass", "refresh"]
OnConflict = Literal["abort", "ignore", "replace", "upsert"]
AggregateFunction = Literal["sum", "count", "min", "max"]
"""How a group query re-aggregates a column of its members' partial results."""


@dataclass(frozen=True)
class QueryResult:
    """The answer to a Query, or one chunk of a QueryStream."""

    columns: list[str]
    decl_types: list[str]
    rows: list[Row]
    cache_status: str
    """Where the answer came from: miss, hit_local, hit_redis, stale or bypass."""
    databases: list[str]
    tags: list[str]
    truncated: bool


@dataclass(frozen=True)
class InsertResult:
    """The outcome of a committed BatchInsert."""

    rows_affected: int
    last_insert_rowid: int
    invalidated_tags: list[str]
    consistency_token: str = ""  # where it committed; the client sends it with its reads


@dataclass(frozen=True)
class UpdateResult:
    """The outcome of a committed BatchUpdate: one count per statement."""

    rows_affected: list[int]
    invalidated_tags: list[str]
    consistency_token: str = ""  # where it committed; the client sends it with its reads


@dataclass(frozen=True)
class HealthCheck:
    """The outcome of one health check, like ``database:live`` or ``redis``."""

    name: str
    status: str
    message: str
    duration_ms: float


@dataclass(frozen=True)
class HealthResult:
    """The service's health: healthy, degraded or critical, and a score from 1 down to 0."""

    status: str
    score: float
    checks: list[HealthCheck]
