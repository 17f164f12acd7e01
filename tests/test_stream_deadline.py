"""StreamDeadline: idle and total timeouts of a provider stream, one timer per stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from aria_engine.exceptions import ProviderTimeout
from aria_engine.stream_deadline import END, StreamDeadline


async def _chunks(gaps: list[float]) -> AsyncIterator[int]:
    """Yield 0, 1, ... after sleeping each gap (the provider's silence before that chunk)."""
    for index, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield index


async def _read_all(timer: StreamDeadline, stream: AsyncIterator[int], pause: float = 0.0) -> list[int]:
    items = []
    try:
        while (item := await timer.next(stream)) is not END:
            items.append(item)
            await asyncio.sleep(pause)  # the consumer's own work between reads
    finally:
        timer.close()
    return items


async def test_a_stream_within_its_timeouts_is_read_to_the_end() -> None:
    timer = StreamDeadline(idle=0.5, deadline=time.monotonic() + 10)
    assert await _read_all(timer, _chunks([0.0, 0.05, 0.0, 0.05])) == [0, 1, 2, 3]


async def test_a_silent_provider_times_out_as_idle_and_the_task_is_not_left_cancelled() -> None:
    timer = StreamDeadline(idle=0.2, deadline=time.monotonic() + 10)
    stream = _chunks([0.0, 0.0, 5.0])
    with pytest.raises(ProviderTimeout) as caught:
        await _read_all(timer, stream)
    assert caught.value.phase == "idle"
    await asyncio.sleep(0.01)  # the expiry's cancellation was absorbed: this task goes on normally
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_the_idle_timeout_is_per_gap_not_for_the_whole_stream() -> None:
    # Ten gaps of 0.1 s: 1 s in all, far over the 0.3 s idle limit, but no single gap reaches it.
    timer = StreamDeadline(idle=0.3, deadline=time.monotonic() + 10)
    assert len(await _read_all(timer, _chunks([0.1] * 10))) == 10


async def test_a_slow_consumer_is_not_mistaken_for_a_silent_provider() -> None:
    timer = StreamDeadline(idle=0.2, deadline=time.monotonic() + 10)
    assert await _read_all(timer, _chunks([0.0, 0.0, 0.0]), pause=0.5) == [0, 1, 2]


async def test_the_total_deadline_counts_everything() -> None:
    timer = StreamDeadline(idle=5.0, deadline=time.monotonic() + 0.3)
    with pytest.raises(ProviderTimeout) as caught:
        await _read_all(timer, _chunks([0.1] * 10))
    assert caught.value.phase == "total"


async def test_the_first_chunk_reports_its_own_phase() -> None:
    timer = StreamDeadline(idle=0.1, deadline=time.monotonic() + 10, phase="first_token")
    with pytest.raises(ProviderTimeout) as caught:
        await _read_all(timer, _chunks([5.0]))
    assert caught.value.phase == "first_token"


async def test_a_real_cancellation_during_a_read_is_not_turned_into_a_timeout() -> None:
    timer = StreamDeadline(idle=5.0, deadline=time.monotonic() + 10)
    reader = asyncio.create_task(_read_all(timer, _chunks([0.0, 5.0])))
    await asyncio.sleep(0.1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader

