"""What one worker knows of its place among the service's processes."""

from __future__ import annotations

from dataclasses import dataclass

from service.cache.siblings import WorkerMarks


@dataclass(frozen=True)
class WorkerSeat:
    """Worker ``index`` of ``count``, forked by a supervisor that already ran the migrations."""

    index: int
    count: int
    marks: WorkerMarks  # the write marks it shares with its siblings
