"""What the cache is told: its bounds and Redis behaviour, and how long one answer lives."""

from __future__ import annotations

from dataclasses import dataclass

from service.cache.redis_tier import RedisSettings


@dataclass(frozen=True)
class CacheSettings:
    """The cache's bounds, lifetimes and Redis behaviour."""

    l1_max_entries: int = 10_000
    l1_max_bytes: int = 64 * 1024 * 1024
    l1_validation_window: float = 0.1
    redis: RedisSettings | None = None
    breaker_failures: int = 3
    breaker_reset: float = 1.0
    max_tags: int = 1_000_000
    max_tag_bytes: int = 64 * 1024 * 1024  # tags and tokens held in process, all together


@dataclass(frozen=True)
class EntryPolicy:
    """How long one answer lives."""

    ttl: float
    stale_while_revalidate: float = 0.0
    refresh: bool = False
