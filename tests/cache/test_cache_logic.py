"""Pure logic of the cache: tag tokens and the circuit breaker."""

from __future__ import annotations

from service.cache.breaker import CircuitBreaker
from service.cache.tokens import TagTokens


def test_a_bump_makes_older_snapshots_stale_and_unknown_tags_are_never_current() -> None:
    tokens = TagTokens()
    snapshot = tokens.snapshot(["a", "b"])
    assert tokens.is_current(snapshot)
    tokens.bump(["b"])
    assert not tokens.is_current(snapshot)
    assert not TagTokens().is_current(snapshot)


def test_tokens_read_elsewhere_are_not_learnt_over_a_newer_replacement() -> None:
    tokens = TagTokens()
    before = tokens.changes
    tokens.replace({"a": "new"})
    tokens.learn({"a": "old", "b": "x"}, before)
    assert tokens.is_current({"a": "new"}) and not tokens.is_current({"b": "x"})
    tokens.learn({"b": "x"}, tokens.changes)
    assert tokens.is_current({"b": "x"})


def test_forgetting_tags_past_the_bound_only_makes_entries_miss() -> None:
    tokens = TagTokens(max_tags=2)
    first = tokens.snapshot(["a"])
    tokens.snapshot(["b", "c"])
    assert not tokens.is_current(first)
    assert tokens.snapshot(["a"]) != first


def test_the_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    assert not breaker.record_failure()
    breaker.record_success()
    assert not breaker.record_failure() and not breaker.record_failure()
    assert breaker.record_failure()
    assert not breaker.closed and breaker.opened == 1
    breaker.close()
    assert breaker.closed and breaker.consecutive_failures == 0
