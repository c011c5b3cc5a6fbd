"""Admission: how many DataAccess calls may be in flight, in all and per caller.

At most ``total`` calls run at once (the standard health and reflection
services are not counted, so probes and anonymous streams cannot use the
room up); with authentication on, each token may also hold at most
``per_caller`` of them, so one busy or misbehaving caller cannot starve the
others. Past either, a call is refused at once with RESOURCE_EXHAUSTED.
(grpc's ``maximum_concurrent_rpcs`` stays as a looser backstop for every
service; the per-database limits are the reader pools and write queues.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service import errors


class CallerSlots:
    """Counts the calls in flight, in all and for each caller."""

    def __init__(self, total: int, per_caller: int, per_caller_enabled: bool) -> None:
        self.total = total
        self.per_caller = per_caller
        self.enabled = per_caller_enabled
        self._in_flight: dict[str, int] = {}
        self._running = 0

    @property
    def running(self) -> int:
        """Calls in flight now."""
        return self._running

    @contextmanager
    def admit(self, caller: str) -> Iterator[None]:
        """Hold one slot (and one of ``caller``'s) for the block, or refuse."""
        if not self.enabled and self._running < self.total:
            self._running += 1  # the common case, kept short: it is on every call
            try:
                yield
            finally:
                self._running -= 1
            return
        if self._running >= self.total:
            raise errors.ResourceExhausted(
                f"{self._running} calls are in flight, the server's limit: retry later"
            )
        self._running += 1
        try:
            if self.enabled:
                with self._own(caller):
                    yield
            else:
                yield
        finally:
            self._running -= 1

    @contextmanager
    def _own(self, caller: str) -> Iterator[None]:
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
