"""Archival: each group's archive rules move rows past their age from source to target.

At start, before the server takes calls, ``recover`` completes every rule's
unfinished slice (see ``service.db.sqlite.archiving``) and hands its stored
bounds to the router. Then ``run`` makes a pass of each rule every
``interval_seconds``: the cutoff is the start of the UTC day ``age_days``
back; under the group's barrier the source first stores that rows below it
are moving (routed reads of them read both members from then on), then slice
by slice: the rows are picked (a read, outside the barrier), and with the
barrier held alone they are copied, deleted and finished, and the router
takes the new bounds. A step that fails ends the pass (logged once, tried
again at the next); a slice left half-moved is finished before the barrier
lets reads go, and if that cannot be done the group's reads are refused
until a restart finishes it. One process moves a rule's rows (it holds the
rule's claim); in another, the group's reads are refused (its barrier cannot
hold that process's swaps) until it takes the claim over, when that process
has stopped, and finishes the slice it may have left.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service import errors
from service.config import ArchiveRule, GroupConfig
from service.db.door import ArchiveMark, ArchiveSlice, Severity, SliceMover, TagsOfWriteOn
from service.routing.barrier import GroupBarrier, StreamRunning
from service.routing.router import Router
from service.values import SqlValue

log = logging.getLogger(__name__)
FINISH_RETRY_SECONDS = 1.0
FINISH_ATTEMPTS = 5
STOP_WAIT_SECONDS = 5.0
PUT_OFF_RETRY_SECONDS = 5.0  # a pass put off by a group stream is tried again this soon
DAY = 86_400


@dataclass
class ArchiveFigures:
    """One archive rule as Stats shows it."""

    group: str
    table: str
    source: str
    target: str
    date_column: str
    age_days: float
    boundary: SqlValue = None  # every row dated below it is in the target
    moving_below: SqlValue = None  # a pass is moving rows below it
    cutoff: SqlValue = None  # the start of the UTC day age_days back: the next pass's cutoff
    passes: int = 0
    slices: int = 0
    rows_moved: int = 0
    rows_kept: int = 0  # changed or deleted in the source after their copy: left there
    last_pass: float = 0.0  # wall clock of the last pass that ended without error
    last_error: str = ""


def cutoff_of(rule: ArchiveRule, now: float) -> SqlValue:
    """The start of the UTC day ``age_days`` before ``now``: text ``YYYY-MM-DD`` or seconds."""
    day = math.floor((now - rule.age_days * DAY) / DAY) * DAY
    if rule.dates == "unix_seconds":
        return day
    return datetime.fromtimestamp(day, UTC).date().isoformat()


@dataclass
class _Rule:
    group: GroupConfig
    rule: ArchiveRule
    mover: SliceMover
    barrier: GroupBarrier
    figures: ArchiveFigures
    due: float = 0.0  # monotonic: the next pass
    passing: asyncio.Lock = field(default_factory=asyncio.Lock)  # one pass of a rule at a time
    refusal: str = ""  # why the group's reads are refused for this rule ("": they are not)
    logged: str = field(default="", repr=False)


class Archiver:
    """Moves every configured group's old rows to their archive member."""

    def __init__(
        self, router: Router, tags_of: TagsOfWriteOn, pause_after: str | None = None
    ) -> None:
        self._router = router
        self._pause_after = pause_after  # fault injection: see Config.archive_pause_after
        self._rules: list[_Rule] = []
        for group in router.groups.values():
            for rule in group.archive:
                source = router.databases[rule.source]
                target = router.databases[rule.target]
                figures = ArchiveFigures(
                    group.name,
                    rule.table,
                    rule.source,
                    rule.target,
                    rule.date_column,
                    rule.age_days,
                )
                mover = source.mover(rule, target, tags_of)
                barrier = router.barriers[group.name]
                self._rules.append(_Rule(group, rule, mover, barrier, figures))
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None

    def findings(self) -> list[tuple[str, Severity, str]]:
        """Each rule's health: (check name, severity, message)."""
        found = []
        for rule in self._rules:
            figures = rule.figures
            name = f"archive:{rule.group.name}.{rule.rule.table}"
            if rule.barrier.sealed or rule.barrier.refused:
                reason = rule.barrier.sealed or rule.refusal or rule.barrier.refused
                found.append((name, Severity.DEGRADED, reason))
            elif figures.last_error:
                found.append((name, Severity.DEGRADED, f"last pass stopped: {figures.last_error}"))
            else:
                moved = f"{figures.rows_moved} rows moved since start"
                below = f"every row dated below {str(figures.boundary)} is in {rule.rule.target}"
                state = below if figures.boundary is not None else "no pass has ended yet"
                found.append((name, Severity.HEALTHY, f"{state}; {moved}"))
        return found

    def figures(self) -> list[ArchiveFigures]:
        """Every rule's figures now."""
        now = time.time()
        for rule in self._rules:
            rule.figures.cutoff = cutoff_of(rule.rule, now)
        return [rule.figures for rule in self._rules]

    async def recover(self) -> None:
        """Finish every slice a stop left half-moved; the router takes the stored bounds."""
        for rule in self._rules:
            if unserved := self._unserved(rule):
                # Its stored bounds (and any half-moved slice) cannot be read: a routed
                # read would follow the config's bound and miss the rows moved past it.
                self._refuse(
                    rule,
                    f"{rule.group.name}: {unserved} cannot be served, and the group's "
                    f"{rule.rule.table} rows archival moved may be in it or follow its bounds",
                )
                continue
            try:
                await self._recover(rule)
            except errors.DataAccessError as exc:
                log.error("archive %s: cannot finish a slice: %s", rule.rule.key, exc.message)
                rule.figures.last_error = exc.message
                rule.barrier.seal(
                    f"{rule.group.name}: an archive slice of {rule.rule.table} could not be "
                    f"finished at start ({exc.message})"
                )

    def _claimed(self, rule: _Rule) -> bool:
        """Whether this process may move the rule's rows (no other process does); if not,
        the group's reads here are refused until it may."""
        if rule.mover.claim():
            return True
        self._refuse(
            rule,
            f"{rule.group.name}: another process archives its {rule.rule.table} rows (it "
            "holds their archive lock), and this one cannot see when they move: read the "
            "group there, or its members by name",
        )
        return False

    def _refuse(self, rule: _Rule, reason: str) -> None:
        """Refuse the group's reads here until ``_take_over`` succeeds."""
        if rule.refusal != reason:
            log.warning("archive %s: %s", rule.rule.key, reason)
        rule.refusal = reason
        rule.barrier.refuse(rule.rule.key, reason)
        rule.figures.last_error = reason  # Stats and `dataaccess archive` say it too

    async def _take_over(self, rule: _Rule) -> None:
        """Take the claim another process held (it stopped): finish its slice, then serve
        the group's reads here."""
        if not self._claimed(rule):
            return
        try:
            await self._recover(rule)
        except errors.DataAccessError as exc:
            rule.mover.release()  # tried again in a moment (or by another process)
            log.warning("archive %s: cannot finish a slice: %s", rule.rule.key, exc.message)
            return
        if rule.figures.last_error == rule.refusal:
            rule.figures.last_error = ""
        rule.refusal = ""
        rule.barrier.admit(rule.rule.key)
        log.info("archive %s: this process moves the rows now", rule.rule.key)

    async def _recover(self, rule: _Rule) -> None:
        if not self._claimed(rule):
            self._take(rule, await rule.mover.mark())  # for the figures
            return
        ends = await rule.mover.finish()
        for end in ends:
            rule.figures.rows_moved += end.moved
            rule.figures.rows_kept += end.kept
        if ends:
            log.info(
                "archive %s: finished %d slice(s) a stop left half-moved",
                rule.rule.key,
                len(ends),
            )
        self._take(rule, await rule.mover.mark())

    def start(self) -> None:
        """Run the passes in the background."""
        if self._rules:
            self._runner = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Let a slice that is moving finish, then stop."""
        self._stopping = True
        if self._runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._runner), STOP_WAIT_SECONDS)
            except TimeoutError:
                self._runner.cancel()
                await asyncio.gather(self._runner, return_exceptions=True)

    def release(self) -> None:
        """Drop the claims, once the databases are closed: until then a cancelled step may
        still commit and this process's group reads still run, so another process taking
        a claim over now could finish a slice under them."""
        for rule in self._rules:
            rule.mover.release()

    async def _run(self) -> None:
        while not self._stopping:
            for rule in self._rules:
                if self._stopping:
                    return
                try:
                    await self._step(rule)
                except Exception as exc:  # noqa: BLE001 - one rule's fault must not end archival
                    kind = f"unexpected failure: {type(exc).__name__}"
                    if kind != rule.logged:  # once per kind, whatever its text
                        log.exception("archive %s: %s", rule.rule.key, kind)
                        rule.logged = kind
                    rule.figures.last_error = f"unexpected failure: {exc!r}"
            await asyncio.sleep(min(0.2, *(r.rule.interval_seconds for r in self._rules)))

    async def _step(self, rule: _Rule) -> None:
        if self._unserved(rule):
            return
        if rule.refusal:
            async with rule.passing:
                await self._take_over(rule)
        elif time.monotonic() >= rule.due:
            rule.due = time.monotonic() + rule.rule.interval_seconds
            await self.run_pass(rule)

    def _unserved(self, rule: _Rule) -> str:
        """A member of the rule that cannot be served ("": both can)."""
        names = (rule.rule.source, rule.rule.target)
        return next((n for n in names if self._router.databases[n].failure is not None), "")

    async def run_pass(self, rule: _Rule) -> None:
        """Move the rule's rows below today's cutoff, a slice at a time."""
        async with rule.passing:
            if rule.refusal:
                await self._take_over(rule)
                if rule.refusal:
                    return
            if self._claimed(rule):
                await self._pass(rule)

    async def _pass(self, rule: _Rule) -> None:
        cutoff = cutoff_of(rule.rule, time.time())
        rule.figures.cutoff = cutoff
        try:
            async with rule.barrier.swapping():
                # A slice another process left half-moved when it died (it held the claim).
                await self._finish(rule)
                if rule.barrier.sealed:
                    raise errors.Unavailable(rule.barrier.sealed)
                mark = await rule.mover.begin_pass(cutoff)
                await self._paused("begin")
                self._take(rule, mark)
            while mark.moving_below is not None and not self._stopping:
                picked = await rule.mover.pick(cutoff)
                if picked is None:  # what was left went another way: the boundary is due
                    async with rule.barrier.swapping():
                        self._take(rule, await rule.mover.begin_pass(cutoff))
                    break
                if rule.barrier.sealed:
                    raise errors.Unavailable(rule.barrier.sealed)
                moved = rule.figures.rows_moved
                mark = await self._swap(rule, picked, cutoff)
                if rule.figures.rows_moved == moved:  # every row changed under it: next pass
                    break
        except StreamRunning as exc:
            # Not a failure: the pass is tried again shortly, not at the next interval.
            log.info("archive %s: pass put off: %s", rule.rule.key, exc.message)
            rule.due = min(rule.due, time.monotonic() + PUT_OFF_RETRY_SECONDS)
            return
        except errors.DataAccessError as exc:
            self._failed(rule, exc.message)
            return
        rule.figures.passes += 1
        rule.figures.last_pass = time.time()
        rule.figures.last_error = ""
        rule.logged = ""

    async def _swap(self, rule: _Rule, picked: ArchiveSlice, cutoff: SqlValue) -> ArchiveMark:
        """Copy, delete and finish one slice with the group's reads held."""
        async with rule.barrier.swapping():
            try:
                await rule.mover.copy(picked)
                await self._paused("copy")
                await rule.mover.delete(picked, cutoff)
                await self._paused("delete")
            except errors.DataAccessError:
                # The step's job has settled (its error is its answer): whatever committed
                # before it, the journals say how to leave each row in one member.
                await self._finish(rule)
                raise
            except BaseException:
                # Cancelled (a stop): a step's job may still commit after this, so finishing
                # now could drop the copies of rows its delete then takes. The slice is left
                # to the next start, and the group's reads here are refused until then.
                rule.barrier.seal(
                    f"{rule.group.name}: archival stopped while a slice of {rule.rule.table} "
                    "moved; the next start finishes it"
                )
                raise
            await self._finish(rule)
            await self._paused("finish")
            return await self._mark(rule)

    async def _paused(self, step: str) -> None:
        if step == self._pause_after:
            log.warning("archive: paused for good after the %s step (fault injection)", step)
            await asyncio.Event().wait()

    async def _mark(self, rule: _Rule) -> ArchiveMark:
        mark = await rule.mover.mark()
        self._take(rule, mark)
        return mark

    async def _finish(self, rule: _Rule) -> None:
        """Finish the half-moved slice before any read may see it; refuse the group's reads
        if that cannot be done (a restart finishes it)."""
        for attempt in range(FINISH_ATTEMPTS):
            try:
                for end in await rule.mover.finish():
                    rule.figures.slices += 1
                    rule.figures.rows_moved += end.moved
                    rule.figures.rows_kept += end.kept
                return
            except errors.DataAccessError as exc:
                log.warning("archive %s: finishing a slice failed: %s", rule.rule.key, exc.message)
                if attempt + 1 < FINISH_ATTEMPTS:
                    await asyncio.sleep(FINISH_RETRY_SECONDS)
        rule.barrier.seal(
            f"{rule.group.name}: an archive slice of {rule.rule.table} could not be finished; "
            "restart the service to finish it"
        )

    def _take(self, rule: _Rule, mark: ArchiveMark) -> None:
        rule.figures.boundary = mark.boundary
        rule.figures.moving_below = mark.moving_below
        self._router.set_mark(rule.group.name, mark)

    def _failed(self, rule: _Rule, message: str) -> None:
        rule.figures.last_error = message
        if message != rule.logged:
            log.error("archive %s: the pass stopped: %s", rule.rule.key, message)
            rule.logged = message
