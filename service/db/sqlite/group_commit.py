"""The group-commit writer: one connection per database behind a bounded queue.

Write RPCs queued together share one transaction and one COMMIT, each in its
own SAVEPOINT so that a failing one rolls back alone (one alone in its
transaction needs none: its failure rolls the transaction back); every RPC is
answered only after the COMMIT that holds it returned. A job past its deadline, or
whose caller went away, is stopped by the progress handler; SQLite then
rolls back the whole transaction, so the batch is run again without it.
With a ``KeyCapture``, each committed job's outcome also names the keys it
changed, as the capture's triggers saw them while the job ran. This module
queues and answers the jobs; ``group_transactions`` runs them on the
writer's thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace

from service import errors
from service.db.door import AfterCommit, TagsOfWrite, WriteOutcome
from service.db.sqlite.connection import SqliteConnection
from service.db.sqlite.group_transactions import Group, GroupTransactions, Job, stop_error
from service.db.sqlite.key_capture import KeyCapture
from service.db.sqlite.write_plans import WritePlan

log = logging.getLogger(__name__)
_PROGRESS_STEPS = 1000
_GATHER_PASSES = 8
_GATHER_WINDOW_SECONDS = 0.001


@dataclass
class WriteCounters:
    """Commit counters of one database."""

    transactions: int = 0
    batches: int = 0
    rows: int = 0


class WriteBatcher:
    """Takes write jobs for one database and commits them in groups."""

    def __init__(
        self,
        conn: SqliteConnection,
        queue_size: int = 1024,
        max_group: int = 256,
        after_commit: AfterCommit | None = None,
        use_outbox: bool = False,
        tracer: trace.Tracer | None = None,
        capture: KeyCapture | None = None,
    ):
        self.database = conn.database
        self._transactions = GroupTransactions(conn, use_outbox, capture)
        self._tracer = tracer or trace.NoOpTracerProvider().get_tracer(__name__)
        self._after_commit = after_commit
        self._finishing: set[asyncio.Task[None]] = set()
        self.counters = WriteCounters()
        self._conn = conn
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self._max_group = max_group
        self._group: Group | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._last_group_size = 0

    async def start(self) -> None:
        """Install the progress handler and start taking jobs."""
        await self._conn.run(
            lambda raw: raw.set_progress_handler(self._stop_requested, _PROGRESS_STEPS)
        )
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def submit(
        self,
        plan: WritePlan,
        deadline: float | None,
        tags_of: TagsOfWrite | None = None,
        own: bool = False,
    ) -> WriteOutcome:
        """Queue ``plan`` and wait for the COMMIT that holds it.

        ``tags_of`` names the cache tags a committed outcome invalidates; they
        are handed to ``after_commit`` (and recorded in the outbox) before
        any caller of the transaction is answered, even if this one left.
        ``own``: the service's own statement, trusted past the guard but still
        stopped at ``deadline``.
        """
        if self._closing:
            raise errors.Unavailable(f"{self.database}: the service is shutting down")
        job = Job(
            plan,
            deadline,
            asyncio.get_running_loop().create_future(),
            tags_of,
            trace.get_current_span().get_span_context(),
            own=own,
        )
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise errors.ResourceExhausted(f"{self.database}: the write queue is full") from None
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    @property
    def queued(self) -> int:
        """Write calls waiting for a transaction now."""
        return self._queue.qsize()

    @property
    def in_transaction(self) -> int:
        """Write calls in the transaction being run now."""
        return 0 if self._group is None else len(self._group.jobs)

    def reset_counters(self) -> None:
        """Start counting commits from zero."""
        self.counters = WriteCounters()

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        while not self._queue.empty() or self._group is not None:
            await asyncio.sleep(0.01)
        await asyncio.gather(*self._finishing, return_exceptions=True)
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            await self._gather_arrivals()
            while len(jobs) < self._max_group and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            self._last_group_size = len(jobs)
            live = [job for job in jobs if not self._skip(job)]
            if live:
                await self._commit(live)

    async def _gather_arrivals(self) -> None:
        """Let calls that are already being handled reach the queue before the group closes.

        Each pass of the event loop runs the handlers whose requests arrived; a
        few passes cost microseconds and turn a burst into few transactions.
        """
        if self._max_group == 1:
            return
        for _ in range(_GATHER_PASSES):
            before = self._queue.qsize()
            await asyncio.sleep(0)
            if self._queue.qsize() == before:
                break
        if self._last_group_size > 1 or not self._queue.empty():
            # Writers are arriving together: a short wait fills the group, as an
            # fsync-bound commit would; a lone writer never pays it.
            await asyncio.sleep(_GATHER_WINDOW_SECONDS)

    def _skip(self, job: Job) -> bool:
        if not job.stopped():
            return False
        if not job.future.done():
            job.future.set_exception(stop_error(self.database, job))
        return True

    async def _commit(self, jobs: list[Job]) -> None:
        group = Group(jobs, [None] * len(jobs))
        self._group = group
        # One transaction serves many calls: a child of the first, linked to all.
        spans = [job.rpc_span for job in jobs if job.rpc_span and job.rpc_span.is_valid]
        parent = trace.set_span_in_context(trace.NonRecordingSpan(spans[0])) if spans else None
        with self._tracer.start_as_current_span(
            "db.write_batch",
            context=parent,
            kind=trace.SpanKind.CLIENT,
            links=[trace.Link(span) for span in spans],
            attributes={
                "db.system.name": "sqlite",
                "db.namespace": self.database,
                "db.operation.name": "write_batch",
                "db.operation.batch.size": len(jobs),
            },
        ) as span:
            await self._commit_in_span(group, span)

    async def _commit_in_span(self, group: Group, span: trace.Span) -> None:
        jobs = group.jobs
        try:
            await self._conn.run(lambda raw: self._transactions.run(raw, group))
        except errors.DataAccessError as exc:
            group.results = [exc] * len(jobs)
        except Exception as exc:  # a bug must not leave callers waiting forever
            log.exception("write group failed on %s", self.database)
            group.results = [errors.Internal(f"{self.database}: {exc}")] * len(jobs)
        finally:
            self._group = None
        committed = [r for r in group.results if isinstance(r, WriteOutcome)]
        span.set_attribute("dataaccess.rows_written", sum(r.rows_written for r in committed))
        if len(committed) < len(jobs):
            span.set_status(trace.StatusCode.ERROR, f"{len(jobs) - len(committed)} writes failed")
        self._answer(group)

    def delivered(self, row_ids: Sequence[int]) -> None:
        """The tags of these outbox rows reached Redis: a later transaction deletes them."""
        self._transactions.delivered(row_ids)

    def _answer(self, group: Group) -> None:
        # The service's own jobs (maintenance) are not callers' writes: not counted.
        results = zip(group.jobs, group.results, strict=True)
        committed = [r for job, r in results if isinstance(r, WriteOutcome) and not job.own]
        if committed:
            self.counters.transactions += 1
            self.counters.batches += len(committed)
            self.counters.rows += sum(r.rows_written for r in committed)
        if not group.tags or self._after_commit is None:
            self._settle(group)
            return
        # Delivering the tags waits on Redis; the next group need not wait for it.
        task = asyncio.ensure_future(self._deliver_then_settle(group, self._after_commit))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _deliver_then_settle(self, group: Group, after_commit: AfterCommit) -> None:
        rows = group.outbox_ids
        receipt = (lambda: self.delivered(rows)) if rows else None
        try:
            await after_commit(list(group.tags), receipt)
        except Exception:  # the write is committed: its callers must hear so
            log.exception("invalidating after a commit on %s failed", self.database)
        self._settle(group)

    def _settle(self, group: Group) -> None:
        for job, result in zip(group.jobs, group.results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, WriteOutcome):
                job.future.set_result(result)
            else:
                job.future.set_exception(result or errors.Internal("write was not run"))

    # The progress handler runs on the writer's thread.

    def _stop_requested(self) -> bool:
        group = self._group
        current = group.current if group is not None else None
        if current is None or (self._conn.guard.trusted and not current.own):
            return False
        return current.stopped()
