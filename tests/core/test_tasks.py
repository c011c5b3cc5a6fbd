"""stop_task ends a task that swallowed a cancellation, as redis-py can on Python 3.11."""

from __future__ import annotations

import asyncio

from service.tasks import stop_task


async def _swallows_one_cancel(rounds: list[int]) -> None:
    swallowed = False
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True  # as asyncio.wait_for does when the send completes as it is cancelled
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        rounds.append(1)


async def test_one_cancel_leaves_a_task_that_swallowed_it_running() -> None:
    rounds: list[int] = []
    task = asyncio.ensure_future(_swallows_one_cancel(rounds))
    await asyncio.sleep(0.02)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done  # what hung server shutdown: gather(task) would wait forever
    await stop_task(task)


async def test_stop_task_ends_it_and_returns() -> None:
    rounds: list[int] = []
    task = asyncio.ensure_future(_swallows_one_cancel(rounds))
    await asyncio.sleep(0.02)
    await asyncio.wait_for(stop_task(task), timeout=2.0)
    assert task.cancelled()


async def test_stop_task_takes_a_task_that_already_failed() -> None:
    async def fails() -> None:
        raise RuntimeError("gone")

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    await stop_task(task)  # its error is retrieved, not raised or logged as never retrieved
    assert task.done()
