"""A circuit breaker for Redis: after a few failures in a row, stop paying timeouts.

Closed, calls go through and failures are counted; ``failure_threshold`` in
a row open it. Open, callers skip Redis at once until a probe (run by the
cache's recovery task, not by callers) succeeds and closes it again.
"""

from __future__ import annotations

CLOSED, OPEN = "closed", "open"


class CircuitBreaker:
    """Counts consecutive failures and says whether Redis may be called."""

    def __init__(self, failure_threshold: int) -> None:
        self.failure_threshold = failure_threshold
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened = 0  # how many times it opened

    @property
    def closed(self) -> bool:
        """Whether callers may use Redis."""
        return self.state == CLOSED

    def record_success(self) -> None:
        """A call succeeded: the run of failures ends."""
        self.consecutive_failures = 0

    def record_failure(self) -> bool:
        """A call failed; True when this failure opened the breaker."""
        self.consecutive_failures += 1
        if self.state == CLOSED and self.consecutive_failures >= self.failure_threshold:
            self.trip()
            return True
        return False

    def trip(self) -> None:
        """Open now, whatever the count."""
        if self.state != OPEN:
            self.opened += 1
        self.state = OPEN

    def close(self) -> None:
        """A probe succeeded: callers may use Redis again."""
        self.state = CLOSED
        self.consecutive_failures = 0
