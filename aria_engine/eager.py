"""Run a coroutine's first step in the caller's task, and hand it to a task only if it has to wait.

A WebSocket send almost never waits: the frame goes into the socket's buffer at once. Only a full buffer
(a client that stopped reading) or another sender holding the socket makes it wait. The turn's task sends
its own socket's frames with `step`, so a token costs no task switch; when a send does have to wait,
`finish` completes it in a task of its own and the turn's task goes on. Python 3.12's eager tasks do the
same; this project supports Python 3.11, which has none.

    sending = websocket.send_text(frame)
    try:
        waiting_on = sending.send(None)   # step: runs until it completes or has to wait
    except StopIteration:
        return                            # sent, without a task
    task = asyncio.create_task(finish(sending, waiting_on))
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["finish"]

T = TypeVar("T")


async def finish(coro: Coroutine[Any, Any, T], waiting_on: Any) -> T:
    """Drive `coro` to its end, as a task would have, after its first step (`coro.send(None)`) returned
    `waiting_on`: the future it waits for, or None for a bare yield (`asyncio.sleep(0)`).

    A cancellation of the task running this is passed into `coro` where it waits, as a task does.
    """
    while True:
        try:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                # What a task does with a future its coroutine yields: clear the flag saying "a coroutine
                # waits for this" before waiting for it (awaiting it with the flag set is an error).
                waiting_on._asyncio_future_blocking = False
                await waiting_on
        except (Exception, asyncio.CancelledError) as exc:  # its wait failed or this task was cancelled
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            continue
        try:
            waiting_on = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
