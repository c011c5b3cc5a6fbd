"""Write marks shared by the worker processes of one service: a sibling's acknowledged
write is seen at once, not when its pub/sub message arrives.

Across replicas an L1 entry is trusted for ``l1_validation_window_seconds``
after Redis last confirmed it, and a write elsewhere reaches it by pub/sub:
a read just after another replica's write may be served from L1 before the
message lands. Workers of one service answer one address, so a client's
next call may reach any of them: that window would break read-your-writes.

So the workers share one table in memory mapped before they were forked:
each worker owns a row of counters, and after a write's new tokens reached
Redis (before the write is answered) it adds one to the counter of every
tag it changed (a tag picks its counter by hash; workers forked from one
parent share the hash seed). An L1 entry remembers the sum of its tags'
counters in the siblings' rows, read before Redis confirmed it; while the
sum is unchanged no sibling changed its tags since, and once it moves the
entry is confirmed with Redis again (one MGET), which sees the write. A
sibling whose invalidations could not reach Redis raises its row's holding
flag, and while one is up no worker uses the cache (Redis may still hold
entries those writes made stale).

Each row has one writer, its worker's event loop, so no count is ever lost;
counters only grow, so an unchanged sum means unchanged counters.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable

SLOTS = 4096  # counters per worker (a power of two); a collision costs one MGET, never a stale read
_WORD = 8


class SiblingMarks:
    """The table for ``workers`` workers, mapped shared so every forked worker sees it."""

    def __init__(self, workers: int, slots: int = SLOTS) -> None:
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self.workers = workers
        self.slots = slots
        # Anonymous and MAP_SHARED: the same pages in the parent and in every child it forks.
        self._memory = mmap.mmap(-1, workers * (slots + 1) * _WORD)

    def seat(self, index: int) -> WorkerMarks:
        """Worker ``index``'s side of the table (its own row, its siblings' rows)."""
        words = memoryview(self._memory).cast("Q")
        width = self.slots + 1
        rows = [words[i * width : (i + 1) * width] for i in range(self.workers)]
        return WorkerMarks(rows[index], [row for i, row in enumerate(rows) if i != index])


class WorkerMarks:
    """One worker's marks: it writes its own row and reads its siblings'."""

    def __init__(self, own: memoryview, siblings: list[memoryview]) -> None:
        self._own = own
        self._siblings = siblings
        self._mask = len(own) - 2  # the last word of a row is its holding flag
        self._flag = len(own) - 1

    def touch(self, tags: Iterable[str]) -> None:
        """This worker's new tokens for ``tags`` are in Redis: count a change of each."""
        own, mask = self._own, self._mask
        for tag in tags:
            own[hash(tag) & mask] += 1

    def read(self, tags: Iterable[str]) -> int:
        """The sum of the siblings' counters of ``tags``: it moves when a sibling changed one."""
        mask = self._mask
        return sum(row[hash(tag) & mask] for tag in tags for row in self._siblings)

    def hold(self, holding: bool) -> None:
        """Say whether this worker holds invalidations Redis has not taken yet."""
        self._own[self._flag] = int(holding)

    def siblings_holding(self) -> bool:
        """Whether any sibling holds invalidations Redis has not taken yet."""
        flag = self._flag
        return any(row[flag] for row in self._siblings)
