"""`eager.finish`: a coroutine stepped by hand is completed in a task exactly as a task would have run it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from aria_engine import eager


def _step(coro: Coroutine[Any, Any, Any]) -> Any:
    """The hand step: what the coroutine waits for (it must not have completed)."""
    return coro.send(None)


async def test_a_coroutine_that_completes_in_its_first_step_needs_no_task() -> None:
    async def at_once() -> str:
        return "sent"

    with pytest.raises(StopIteration) as done:
        _step(at_once())
    assert done.value.value == "sent"


async def test_finish_resumes_it_after_each_wait_and_returns_its_value() -> None:
    gate, second = asyncio.Event(), asyncio.get_running_loop().create_future()
    trail: list[str] = []

    async def waits_three_times() -> str:
        trail.append("start")
        await gate.wait()  # a future, as a full socket buffer makes a send wait
        trail.append("gate")
        await asyncio.sleep(0)  # a bare yield
        trail.append("yield")
        trail.append(await second)
        return "done"

    coro = waits_three_times()
    task = asyncio.create_task(eager.finish(coro, _step(coro)))
    await asyncio.sleep(0.01)
    assert trail == ["start"] and not task.done()
    gate.set()
    await asyncio.sleep(0.01)
    assert trail == ["start", "gate", "yield"]
    second.set_result("value")
    assert await task == "done"
    assert trail == ["start", "gate", "yield", "value"]


async def test_a_failed_wait_is_raised_inside_the_coroutine() -> None:
    waiting = asyncio.get_running_loop().create_future()

    async def handles_it() -> str:
        try:
            await waiting
        except ConnectionResetError:
            return "handled"
        return "not raised"

    coro = handles_it()
    task = asyncio.create_task(eager.finish(coro, _step(coro)))
    await asyncio.sleep(0)
    waiting.set_exception(ConnectionResetError())
    assert await task == "handled"


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    lock = asyncio.Lock()
    await lock.acquire()
    cleaned_up: list[bool] = []

    async def waits_for_the_lock() -> None:
        try:
            async with lock:
                pass
        finally:
            cleaned_up.append(True)

    coro = waits_for_the_lock()
    task = asyncio.create_task(eager.finish(coro, _step(coro)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned_up == [True]
    lock.release()
    # The cancelled waiter left the lock's queue: the next acquirer gets it at once.
    async with asyncio.timeout(1):
        await lock.acquire()
