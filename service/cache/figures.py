"""What the cache shows its observers: each tier's figures, and a probe of Redis.

Stats and metrics read ``TierSnapshot``s; a health check reads one
``CacheProbe``. Neither judges: what counts as healthy is the observer's call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.cache.redis_tier import RedisUnavailable
from service.cache.tiers import CacheTiers


@dataclass(frozen=True)
class TierSnapshot:
    """One tier's counters and contents, for Stats."""

    tier: str
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    bypasses: int = 0
    state: str = ""


@dataclass(frozen=True)
class CacheProbe:
    """Redis as one PING found it, and whether reads use it now."""

    reachable: bool  # PING answered
    breaker: str  # the gate's state: "closed", "open", "... (holding invalidations)"
    in_use: bool  # reads use Redis now: the breaker is closed and nothing is held
    message: str
    duration_ms: float  # how long PING took; 0 when it did not answer


def tier_snapshots(tiers: CacheTiers) -> list[TierSnapshot]:
    """Counters per tier: L1, and L2 when Redis is configured."""
    c = tiers.local.counters
    snapshots = [
        TierSnapshot(
            "l1",
            c.hits,
            c.misses,
            c.evictions,
            len(tiers.local),
            tiers.local.bytes,
            c.bypasses,
            "on" if tiers.l1_usable() else "off",
        )
    ]
    if tiers.redis is not None:
        r = tiers.l2_counters
        state = tiers.gate.state if tiers.gate is not None else ""
        snapshots.append(TierSnapshot("l2", r.hits, r.misses, r.evictions, 0, 0, r.bypasses, state))
    return snapshots


async def probe_redis(tiers: CacheTiers) -> CacheProbe | None:
    """PING Redis (leaving the breaker alone); None when there is no Redis tier."""
    if tiers.redis is None or tiers.gate is None:
        return None
    gate = tiers.gate
    started = time.monotonic()
    try:
        await tiers.redis.ping()
    except RedisUnavailable as exc:
        message = f"unreachable, reads bypass the cache: {exc}"
        return CacheProbe(False, gate.state, gate.usable, message, 0.0)
    elapsed_ms = (time.monotonic() - started) * 1000
    state = gate.state
    return CacheProbe(True, state, gate.usable, f"PING answered; breaker {state}", elapsed_ms)
