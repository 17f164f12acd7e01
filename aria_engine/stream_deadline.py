"""StreamDeadline: the idle and total timeouts of one provider stream, with one timer per stream.

A cancel scope (or `asyncio.timeout`) around every read costs a timer handle and its cancellation per
chunk: measured at 6-8 µs a chunk, and 10-18% of the engine's samples when streaming at full speed. Here a
read only records when it started; one timer, re-armed about once per idle period, checks whether the
current read has been waiting too long and, if so, cancels the reading task and turns that cancellation
into `ProviderTimeout` (the way `asyncio.timeout` does: `Task.uncancel` tells an expiry from a real
cancellation, which still propagates).

Only the time spent waiting for the provider counts as idle; time the consumer spends between reads
(a slow client) does not. The total deadline counts everything.

    deadline = StreamDeadline(idle=30.0, deadline=time.monotonic() + 600)
    try:
        while (chunk := await deadline.next(upstream)) is not END:
            ...
    finally:
        deadline.close()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from aria_engine.exceptions import ProviderTimeout

__all__ = ["END", "StreamDeadline"]

T = TypeVar("T")
END: Any = object()  # what `next` returns when the stream is exhausted


class StreamDeadline:
    def __init__(self, *, idle: float, deadline: float, phase: str = "idle") -> None:
        self._idle = idle
        self._phase = phase  # what an idle expiry is reported as ("first_token" for the first chunk)
        self._deadline = deadline  # time.monotonic() seconds
        self._waiting_since: float | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired: str | None = None

    async def next(self, stream: AsyncIterator[T]) -> T:
        """The stream's next item, or `END`; raises `ProviderTimeout(phase | "total")` on expiry."""
        now = time.monotonic()
        if now >= self._deadline:
            raise ProviderTimeout("total")
        self._waiting_since = now
        if self._reader is None:  # one reader task per stream: looked up once, not per chunk
            self._reader = asyncio.current_task()
        if self._timer is None:
            self._arm(now)
        try:
            # `__anext__` rather than `anext(stream, END)`: no wrapper object per read.
            return await stream.__anext__()
        except StopAsyncIteration:
            return END
        except asyncio.CancelledError:
            reader = self._reader
            if self._expired is not None and reader is not None and reader.uncancel() == 0:
                raise ProviderTimeout(self._expired) from None
            raise
        finally:
            self._waiting_since = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, since: float) -> None:
        fire_at = min(since + self._idle, self._deadline)
        delay = max(0.0, fire_at - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        self._timer = None
        now = time.monotonic()
        since = self._waiting_since
        if since is None:  # between reads: the consumer is busy, which is not the provider's silence
            if now < self._deadline:  # past it, the next read raises by itself
                self._arm(now)
            return
        if now >= self._deadline:
            self._expired = "total"
        elif now - since >= self._idle:
            self._expired = self._phase
        else:  # this read started after the last check: look again when it would expire
            self._arm(since)
            return
        assert self._reader is not None
        self._reader.cancel()
