"""Per-caller concurrency: one token cannot hold more than its share of the server.

With authentication on, each token may have at most ``per_caller`` calls in
flight; past it a call is refused at once with RESOURCE_EXHAUSTED, so one
busy or misbehaving caller cannot starve the others. (The server-wide cap is
grpc's ``maximum_concurrent_rpcs``; the per-database ones are the reader
pools and write queues.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service import errors


class CallerSlots:
    """Counts the calls each caller has in flight."""

    def __init__(self, per_caller: int, enabled: bool) -> None:
        self.per_caller = per_caller
        self.enabled = enabled
        self._in_flight: dict[str, int] = {}

    @contextmanager
    def admit(self, caller: str) -> Iterator[None]:
        """Hold one of ``caller``'s slots for the block, or refuse."""
        if not self.enabled:
            yield
            return
        held = self._in_flight.get(caller, 0)
        if held >= self.per_caller:
            raise errors.ResourceExhausted(
                f"{caller} has {held} calls in flight, its limit: wait for some to finish"
            )
        self._in_flight[caller] = held + 1
        try:
            yield
        finally:
            left = self._in_flight[caller] - 1
            if left:
                self._in_flight[caller] = left
            else:
                del self._in_flight[caller]
