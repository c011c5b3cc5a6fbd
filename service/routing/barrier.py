"""A group's read barrier: group reads share it, an archive slice's swap holds it alone.

A slice's rows are in both members from its copy's commit until its delete's,
and two files never commit together: a group read running then would count
them twice, and a routed read that picked its member before the bounds moved
could miss them. So a swap waits for the group reads running to end, holds new
ones back (each until its own deadline) for the three commits it takes, and
lets them go. Reads of one member by its own name never wait: they see that
member as it is.

A QueryStream of the group holds it shared too, for as long as its client
reads: a swap waits for one only briefly, with the barrier still open (reads
queued behind a closed one would wait as long as the stream), and is then put
off.

The barrier is in this process only. While another process holds a rule's
claim (it moves the rows, and this one cannot see when), the group's reads
here are refused (``refuse``) until this process takes the claim over.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from service import errors

STREAM_WAIT_SECONDS = 2.0  # a swap waits this long for the group's streams to end


class StreamRunning(errors.Unavailable):
    """A swap put off: a QueryStream of the group is running (its client reads at its
    own pace, and the group's reads would queue behind a swap waiting for it)."""


class GroupBarrier:
    """Shared by a group's reads, held alone by its archive swaps (which go first)."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._reads = 0
        self._open = asyncio.Event()  # set: reads may start
        self._open.set()
        self._drained = asyncio.Event()  # set: no read is running
        self._drained.set()
        self._streams = 0  # QueryStreams of the group running: swaps are put off
        self._no_streams = asyncio.Event()
        self._no_streams.set()
        self.held_reads = 0  # reads that waited for a swap (for tests and figures)
        self.sealed = ""  # why the group's reads are refused for good ("": they are not)
        self._refusals: dict[str, str] = {}  # rule: why, while another process moves its rows

    def reading(self, deadline: float) -> _Reading:
        """Hold the barrier shared for one read (waiting, up to ``deadline``, for a swap)."""
        return _Reading(self, deadline)

    def seal(self, reason: str) -> None:
        """Refuse the group's reads from now on: a slice could not be finished."""
        self.sealed = reason
        self._open.clear()

    @property
    def refused(self) -> str:
        """Why the group's reads are refused for now ("": they are not)."""
        return next(iter(self._refusals.values()), "")

    def refuse(self, rule: str, reason: str) -> None:
        """Refuse the group's reads until every refusing rule is admitted: another process
        moves that rule's rows."""
        self._refusals[rule] = reason

    def admit(self, rule: str) -> None:
        """This process moves ``rule``'s rows now."""
        self._refusals.pop(rule, None)

    async def _enter(self, deadline: float) -> None:
        if self.refused:
            raise errors.Unavailable(self.refused)
        if not self._open.is_set():
            self.held_reads += 1
        # Checked again after each wake: another swap may have closed it since.
        while not self._open.is_set():
            if self.sealed:
                raise errors.Unavailable(self.sealed)
            try:
                await asyncio.wait_for(self._open.wait(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                raise errors.DeadlineExceeded(
                    f"{self.group}: the deadline passed while an archive slice moved"
                ) from None
        self._reads += 1
        self._drained.clear()

    def _leave(self) -> None:
        self._reads -= 1
        if not self._reads:
            self._drained.set()

    def streaming(self, deadline: float) -> _Streaming:
        """Hold the barrier shared for a QueryStream: a swap meanwhile is put off."""
        return _Streaming(self, deadline)

    def swapping(self) -> _Swapping:
        """Hold the barrier alone: new reads wait, running ones end first."""
        return _Swapping(self)

    async def _close(self) -> None:
        while True:
            while not self._open.is_set():  # one swap at a time
                if self.sealed:
                    raise errors.Unavailable(self.sealed)
                await self._open.wait()
            if not self._streams:
                break
            try:  # reads go on meanwhile: the barrier is still open
                await asyncio.wait_for(self._no_streams.wait(), STREAM_WAIT_SECONDS)
            except TimeoutError:
                raise StreamRunning(
                    f"{self.group}: a QueryStream of the group is running"
                ) from None
        self._open.clear()
        await self._drained.wait()

    def _reopen(self) -> None:
        if not self.sealed:
            self._open.set()


class _Reading:
    def __init__(self, barrier: GroupBarrier, deadline: float) -> None:
        self._barrier = barrier
        self._deadline = deadline

    async def __aenter__(self) -> None:
        await self._barrier._enter(self._deadline)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._barrier._leave()


class _Streaming(_Reading):
    async def __aenter__(self) -> None:
        await super().__aenter__()
        self._barrier._streams += 1
        self._barrier._no_streams.clear()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._barrier._streams -= 1
        if not self._barrier._streams:
            self._barrier._no_streams.set()
        await super().__aexit__(kind, value, traceback)


class _Swapping:
    def __init__(self, barrier: GroupBarrier) -> None:
        self._barrier = barrier

    async def __aenter__(self) -> None:
        try:
            await self._barrier._close()
        except BaseException:
            self._barrier._reopen()
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._barrier._reopen()
