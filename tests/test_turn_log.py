"""Turn event logs: ordered replay from any seq, exactly once, then live; bounded retention; Redis sharing
between replicas and cross-replica cancel signals."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NamedTuple

import orjson
import pytest
from redis.asyncio import Redis

from aria_engine.turn_log import (
    MAX_BATCH,
    MemoryTurnEventLog,
    RedisTurnEventLog,
    TurnEventLog,
    TurnNotFound,
)
from tests.conftest import REDIS_URL, needs_redis


class Event(NamedTuple):
    seq: int
    data: str


def _seq(data: str) -> int:
    return int(orjson.loads(data)["seq"])


async def _collect(log: TurnEventLog, turn_id: str, after_seq: int) -> list[Event]:
    """Every event followed, until the iteration ends (after the final one)."""
    return [Event(_seq(data), data) async for batch in log.follow(turn_id, after_seq) for data in batch]


async def _write_turn(log: TurnEventLog, turn_id: str, count: int, *, final: bool = True) -> None:
    for seq in range(1, count + 1):
        await log.append(turn_id, seq, f'{{"seq": {seq}}}', final=final and seq == count)


async def _bytes_kept_per_turn(turns: int, log_turn: Callable[[str], Awaitable[None]]) -> float:
    """The memory that logging a turn (`log_turn(turn_id)`) leaves allocated, per turn."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for turn in range(turns):
            await log_turn(f"turn-{turn}")
        return (tracemalloc.get_traced_memory()[0] - before) / turns
    finally:
        tracemalloc.stop()


async def test_logging_an_event_adds_nothing_the_garbage_collector_tracks() -> None:
    # Every object the collector tracks counts towards the next young collection, and kept events stay
    # for resume: with a tuple per logged token, 1,000 streams made 1,100 young collections per bench
    # run against 917 without, and tracked kept events once made full collections traverse 200,000 of
    # them (60-175 ms pauses).
    log = MemoryTurnEventLog()
    await log.open_turn("t1", "s1")
    texts = [f'{{"seq": {seq}}}' for seq in range(1, 1001)]
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for seq, text in enumerate(texts, start=1):
            await log.append("t1", seq, text, final=seq == 1000)
        added = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert added < 50  # a tracked object per event would add 1,000
    assert [event.seq for event in await _collect(log, "t1", 0)] == list(range(1, 1001))


async def test_memory_log_replays_after_any_seq_then_follows_live() -> None:
    log = MemoryTurnEventLog()
    await log.open_turn("t1", "s1")
    await _write_turn(log, "t1", 3, final=False)
    follower = asyncio.create_task(_collect(log, "t1", 1))
    await asyncio.sleep(0)  # usually replayed 2-3 by now; either way it must see 2-5 exactly once
    for seq in (4, 5):
        await log.append("t1", seq, f'{{"seq": {seq}}}', final=seq == 5)
    events = await follower  # ended after the final event
    assert [e.seq for e in events] == [2, 3, 4, 5]
    assert await _collect(log, "t1", 5) == []
    assert await log.session_of("t1") == "s1"


async def test_a_finished_turn_is_kept_compactly_and_still_resumes_from_any_seq() -> None:
    # A finished turn stays `ttl` seconds for a late resume. Once no socket follows it, it must cost far
    # less than a string per event (about 150 bytes a token event), and still give back every event's
    # own text, byte for byte, from any seq.
    log = MemoryTurnEventLog()
    texts = {
        seq: orjson.dumps({"type": "token", "turn_id": "t1", "seq": seq, "content": "é" * (seq % 7)}).decode()
        for seq in range(1, 201)
    }
    await log.open_turn("t1", "s1")
    follower = log.follow("t1", 0)
    for seq in range(1, 201):
        await log.append("t1", seq, texts[seq], final=seq == 200)
    # A socket that follows the turn as it is packed gets every event, from the blocks and after them.
    assert [data for batch in [await anext(follower)] for data in batch] == list(texts.values())
    await follower.aclose()
    for after in range(201):
        assert [e.data for e in await _collect(log, "t1", after)] == [
            texts[seq] for seq in range(after + 1, 201)
        ]

    async def finished_turn(turn_id: str) -> None:
        await log.open_turn(turn_id, "s1")
        for seq, text in texts.items():
            await log.append(turn_id, seq, text.replace('"t1"', f'"{turn_id}"'), final=seq == 200)

    kept = await _bytes_kept_per_turn(100, finished_turn)
    assert kept < 5_000  # bytes per finished 200-event turn; about 30,000 as a string per event
    assert len(await _collect(log, "turn-99", 0)) == 200


async def _take(follow: AsyncIterator[Sequence[str]], count: int) -> list[str]:
    """The first `count` texts a follower gets (of a turn still running, whose iteration goes on)."""
    texts: list[str] = []
    while len(texts) < count:
        texts += await anext(follow)
    await follow.aclose()  # type: ignore[attr-defined]
    return texts


async def test_a_running_turn_keeps_its_older_events_compactly_and_resumes_from_any_seq() -> None:
    # With 1,000 streams running at once, their logs were a quarter of their memory (bench scenario 3):
    # a running turn's older events are kept compressed, and every follower still gets every event's
    # own text, byte for byte, whether it keeps up, falls behind or resumes from any seq.
    def text(turn_id: str, seq: int) -> str:
        content = "é" * (seq % 7) + str(seq)
        return orjson.dumps({"type": "token", "turn_id": turn_id, "seq": seq, "content": content}).decode()

    log = MemoryTurnEventLog()
    await log.open_turn("t1", "s1")
    behind = log.follow("t1", 0)  # a socket that reads nothing while the turn goes on
    for seq in range(1, 1001):
        await log.append("t1", seq, text("t1", seq), final=False)
    expected = [text("t1", seq) for seq in range(1, 1001)]
    assert await _take(behind, 1000) == expected
    for after in (0, 1, 31, 32, 33, 47, 48, 500, 959, 960, 975, 999):
        assert await _take(log.follow("t1", after), 1000 - after) == expected[after:]

    async def running_turn(turn_id: str) -> None:
        await log.open_turn(turn_id, "s1")
        for seq in range(1, 1001):
            await log.append(turn_id, seq, text(turn_id, seq), final=False)

    kept = await _bytes_kept_per_turn(50, running_turn)
    assert kept < 40_000  # bytes per running 1,000-event turn (31,000 measured); about 150,000 as strings


async def test_a_resume_finds_its_place_by_seq_even_past_a_gap() -> None:
    # A seq the log never got (an event produced as its turn was cancelled) must not shift a resume.
    log = MemoryTurnEventLog()
    await log.open_turn("t1", "s1")
    for seq in (1, 2, 4, 5):
        await log.append("t1", seq, f'{{"seq": {seq}}}', final=seq == 5)
    assert [e.seq for e in await _collect(log, "t1", 2)] == [4, 5]
    assert [e.seq for e in await _collect(log, "t1", 3)] == [4, 5]
    assert [e.seq for e in await _collect(log, "t1", 4)] == [5]


async def test_a_waiting_follower_has_each_event_after_one_loop_pass() -> None:
    # The turn task yields once after `start` and once after the first token for the sockets to send
    # them (streaming.py); that works only if one pass of the loop is enough to wake a follower.
    log = MemoryTurnEventLog()
    await log.open_turn("t1", "s1")
    seen: list[int] = []

    async def follow() -> None:
        async for batch in log.follow("t1", 0):
            seen.extend(_seq(data) for data in batch)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0)  # the follower is now waiting for the first event
    for seq in (1, 2, 3):
        await log.append("t1", seq, f'{{"seq": {seq}}}', final=seq == 3)
        await asyncio.sleep(0)
        assert seen == list(range(1, seq + 1))
    await follower


async def test_a_burst_logged_while_the_follower_is_away_comes_as_one_batch() -> None:
    # One wake-up and one send-lock per burst, not per event: what makes a fast stream cheap to follow.
    log = MemoryTurnEventLog()
    await log.open_turn("t1", "s1")
    batches: list[list[int]] = []

    async def follow() -> None:
        async for batch in log.follow("t1", 0):
            batches.append([_seq(data) for data in batch])

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0)
    for seq in range(1, 5):  # logged without a pause: the follower cannot run in between
        await log.append("t1", seq, f'{{"seq": {seq}}}', final=False)
    await asyncio.sleep(0)
    await log.append("t1", 5, '{"seq": 5}', final=True)
    await follower
    assert batches == [[1, 2, 3, 4], [5]]


async def test_batches_are_bounded_and_a_trim_between_them_refuses_the_gap() -> None:
    log = MemoryTurnEventLog(max_events=4 * MAX_BATCH)
    await log.open_turn("t1", "s1")
    await _write_turn(log, "t1", 3 * MAX_BATCH, final=False)
    follow = log.follow("t1", 0)
    first = await anext(follow)
    assert [_seq(data) for data in first] == list(range(1, MAX_BATCH + 1))
    # While that batch is sent, the turn goes on and the log drops its older half.
    for seq in range(3 * MAX_BATCH + 1, 4 * MAX_BATCH + 2):
        await log.append("t1", seq, "{}", final=False)
    with pytest.raises(TurnNotFound):
        await anext(follow)


async def test_followers_that_leave_do_not_stay_registered() -> None:
    log = MemoryTurnEventLog()
    await log.open_turn("t1", "s1")
    followers = [asyncio.create_task(_collect(log, "t1", 0)) for _ in range(100)]
    await asyncio.sleep(0)
    assert len(log._turns["t1"].waiters) == 100
    for task in followers:
        task.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    assert log._turns["t1"].waiters == []  # bounded by the sockets following now, not ever


async def test_memory_log_refuses_unknown_turns_and_trimmed_ranges() -> None:
    log = MemoryTurnEventLog(max_events=10)
    with pytest.raises(TurnNotFound):
        await _collect(log, "missing", 0)
    await log.open_turn("big", "s1")
    await _write_turn(log, "big", 25)
    with pytest.raises(TurnNotFound):
        await _collect(log, "big", 0)  # the oldest events were dropped: no silent gap
    assert [e.seq for e in await _collect(log, "big", 20)] == [21, 22, 23, 24, 25]


async def test_memory_log_keeps_at_most_max_turns_finished_turns_and_expires_them() -> None:
    log = MemoryTurnEventLog(max_turns=2)
    for turn in ("a", "b", "c"):
        await log.open_turn(turn, "s")
        await _write_turn(log, turn, 1)
    assert await log.session_of("a") is None
    assert await log.session_of("c") == "s"
    expired = MemoryTurnEventLog(ttl=-1)  # finished turns are past their TTL at once
    await expired.open_turn("t", "s")
    await _write_turn(expired, "t", 2)
    assert await expired.session_of("t") is None


async def test_a_long_running_turn_does_not_keep_finished_turns_from_being_dropped() -> None:
    log = MemoryTurnEventLog(max_turns=2)
    await log.open_turn("running", "s")  # the oldest turn, still streaming
    for turn in ("a", "b", "c"):
        await log.open_turn(turn, "s")
        await _write_turn(log, turn, 1)
    assert await log.session_of("running") == "s"
    assert [await log.session_of(turn) for turn in ("a", "b", "c")] == [None, None, "s"]


async def test_a_replayed_turn_is_not_pruned_as_the_finished_turn_it_replaces() -> None:
    log = MemoryTurnEventLog(max_turns=2)
    await log.open_turn("t", "s")
    await _write_turn(log, "t", 1)
    await log.open_turn("t", "s")  # an idempotent replay: running again
    await log.open_turn("u", "s")
    await log.open_turn("v", "s")  # at the cap: only finished turns may be dropped, and "t" runs
    assert [await log.session_of(turn) for turn in ("t", "u", "v")] == ["s", "s", "s"]


async def test_a_replayed_turn_is_logged_afresh() -> None:
    log = MemoryTurnEventLog()
    await log.open_turn("t", "s")
    await _write_turn(log, "t", 3)
    await log.open_turn("t", "s")  # an idempotent replay of the same turn
    await _write_turn(log, "t", 3)
    assert [e.seq for e in await _collect(log, "t", 0)] == [1, 2, 3]


async def test_cancel_requests_reach_the_registered_handler_once_registered() -> None:
    log = MemoryTurnEventLog()
    seen: list[str] = []
    assert await log.request_cancel("t", "cancelled") is False
    unregister = log.on_cancel("t", seen.append)
    assert await log.request_cancel("t", "cancelled") is True
    unregister()
    assert await log.request_cancel("t", "cancelled") is False
    assert seen == ["cancelled"]


@pytest.fixture
async def redis_logs() -> AsyncIterator[tuple[RedisTurnEventLog, RedisTurnEventLog]]:
    client_a, client_b = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
    replica_a, replica_b = RedisTurnEventLog(client_a), RedisTurnEventLog(client_b)
    await replica_a.start()
    await replica_b.start()
    try:
        yield replica_a, replica_b
    finally:
        await replica_a.aclose()
        await replica_b.aclose()
        await client_a.aclose()
        await client_b.aclose()


@needs_redis
async def test_redis_log_lets_another_replica_replay_and_follow(
    redis_logs: tuple[RedisTurnEventLog, RedisTurnEventLog],
) -> None:
    replica_a, replica_b = redis_logs
    turn_id = str(uuid.uuid4())
    await replica_a.open_turn(turn_id, "s1")
    await _write_turn(replica_a, turn_id, 3, final=False)
    assert await replica_b.session_of(turn_id) == "s1"
    follower = asyncio.create_task(_collect(replica_b, turn_id, 2))
    for seq in (4, 5):
        await replica_a.append(turn_id, seq, f'{{"seq": {seq}}}', final=seq == 5)
    events = await asyncio.wait_for(follower, 30)
    assert [(e.seq, e.data) for e in events] == [(3, '{"seq": 3}'), (4, '{"seq": 4}'), (5, '{"seq": 5}')]
    with pytest.raises(TurnNotFound):
        await _collect(replica_b, str(uuid.uuid4()), 0)


@needs_redis
async def test_redis_cancel_signal_reaches_the_replica_running_the_turn(
    redis_logs: tuple[RedisTurnEventLog, RedisTurnEventLog],
) -> None:
    replica_a, replica_b = redis_logs
    turn_id = str(uuid.uuid4())
    received: asyncio.Queue[str] = asyncio.Queue()
    replica_a.on_cancel(turn_id, received.put_nowait)
    assert await replica_b.request_cancel(turn_id, "cancelled") is False  # not running on B: published
    assert await asyncio.wait_for(received.get(), 30) == "cancelled"
