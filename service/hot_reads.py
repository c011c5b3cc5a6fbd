"""Reads remembered by the caller's own request bytes, so a repeat skips decoding and keying.

A repeat of a read seen before is answered from the cache under the key and
tags the full path computed then, once the caller's scopes still allow it;
the cache itself still checks that every tag is current. Bounded by entries
and by the bytes of the remembered requests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from service.cache.tagged import EntryPolicy

MAX_REQUEST_BYTES = 4096  # requests larger than this are not remembered
_MAX_BYTES = 8 * 1024 * 1024  # all remembered requests together


@dataclass(frozen=True)
class HotRead:
    """Where a remembered read's answer is, and whose it is."""

    key: str
    tags: Sequence[str]
    policy: EntryPolicy
    target: str  # the database or group the request named
    members: Sequence[str]


class HotReads:
    """Remembered reads by request bytes, least recently used first out."""

    def __init__(self, max_entries: int) -> None:
        self._reads: OrderedDict[bytes, HotRead] = OrderedDict()
        self._max_entries = max(max_entries, 1)
        self._bytes = 0

    def get(self, identity: bytes) -> HotRead | None:
        """The read remembered under ``identity``, if any."""
        return self._reads.get(identity)

    def remember(self, identity: bytes, read: HotRead) -> None:
        """Remember ``read`` under ``identity`` (a request too large is not remembered)."""
        if not identity or len(identity) > MAX_REQUEST_BYTES:
            return
        if identity not in self._reads:
            self._bytes += len(identity)
        self._reads[identity] = read
        self._reads.move_to_end(identity)
        while len(self._reads) > self._max_entries or self._bytes > _MAX_BYTES:
            forgotten, _ = self._reads.popitem(last=False)
            self._bytes -= len(forgotten)
