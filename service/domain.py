"""The service's own vocabulary: requests, results, and the cache's modes and statuses.

Plain values only; no gRPC, no protobuf, no I/O. The api tier maps these to
and from the wire in one table each; every tier below speaks them directly.
The enums are ``StrEnum`` so that their values are the strings logs, spans
and tests have always seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from service.values import Params, SqlRow, SqlValue


class CacheMode(StrEnum):
    """What a read asks of the cache."""

    USE = "use"  # serve a cached answer if there is one, else load and keep it
    BYPASS = "bypass"  # run the query; neither read nor fill the cache
    REFRESH = "refresh"  # run the query and replace the cached answer


class CacheStatus(StrEnum):
    """Where a read's answer came from."""

    MISS = "miss"
    HIT_LOCAL = "hit_local"
    HIT_REDIS = "hit_redis"
    STALE = "stale"
    BYPASS = "bypass"


class CacheResult(StrEnum):
    """One cache tier's lookup, as the ``cache.result`` span attribute reports it."""

    MISS = "miss"
    HIT = "hit"
    STALE = "stale"
    BYPASS = "bypass"


@dataclass(frozen=True)
class MergeSpec:
    """How member results combine; empty means concatenate."""

    order_by: str = ""
    limit: int = 0
    group_by: Sequence[str] = ()
    aggregates: Sequence[tuple[str, str]] = field(default_factory=tuple)  # (column, function)


@dataclass(frozen=True)
class ReadRequest:
    """A Query or QueryStream."""

    database: str
    sql: str
    params: Params = ()
    max_rows: int = 0
    cache_tags: Sequence[str] = ()
    route_key: SqlValue = None
    routed: bool = False
    cache_mode: CacheMode = CacheMode.USE
    ttl_seconds: float = 0.0
    merge: MergeSpec = field(default_factory=MergeSpec)
    stale_while_revalidate: float = 0.0
    peer: str = ""  # who asked (the gRPC peer address), for N+1 advisories
    consistency_token: str = ""  # the newest write the caller saw (service.consistency)


@dataclass(frozen=True)
class ReadResult:
    """A Query's answer, or one chunk of a QueryStream."""

    columns: Sequence[tuple[str, str]]
    rows: Sequence[SqlRow]
    databases: Sequence[str]
    tags: Sequence[str]
    truncated: bool = False
    cache_status: CacheStatus = CacheStatus.BYPASS


class ResultEncoder(Protocol):
    """How a read's answer is encoded for the wire, without its cache status.

    The cache keeps answers encoded, so a hit is sent as stored; a miss, and a
    stale-while-revalidate refresh in the background, encode the answer they
    load. The api tier hands its encoder in at start-up (the core knows only
    this signature), so nothing below the api calls up into it by name.
    """

    def __call__(self, result: ReadResult, /) -> bytes: ...


@dataclass(frozen=True)
class EncodedRead:
    """A Query's answer as the wire carries it (cache hits skip encoding), and its source."""

    payload: bytes
    cache_status: CacheStatus


@dataclass(frozen=True)
class InsertRequest:
    """A BatchInsert as the domain sees it."""

    table: str
    columns: Sequence[str]
    rows: Sequence[SqlRow]
    on_conflict: str = "abort"
    conflict_columns: Sequence[str] = ()
    update_columns: Sequence[str] = ()


@dataclass(frozen=True)
class WriteOptions:
    """What every write RPC may add: tags to bump and an idempotency key."""

    invalidate_tags: Sequence[str] = ()
    idempotency_key: str = ""


@dataclass(frozen=True)
class WriteResult:
    """A committed BatchInsert or BatchUpdate."""

    rows_affected: Sequence[int]
    last_insert_rowid: int
    invalidated_tags: Sequence[str]
    consistency_token: str = ""  # where it committed (service.consistency)


@dataclass(frozen=True)
class WriteSnapshot:
    """Commit counters of one database."""

    database: str
    transactions: int
    batches: int
    rows: int
    keys_bumped: int = 0
    key_generations_bumped: int = 0
