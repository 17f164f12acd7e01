"""The history cache: whatever it serves is exactly what the database read would return.

A model of a session's rows stands in for the database in the property test; the engine tests run the
same conversations with the cache on and off, on two engines sharing one database (two replicas), and
compare every request the provider received.
"""

from __future__ import annotations

import contextlib
import gc
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aria_engine.context_manager import MessageView
from aria_engine.exceptions import ProviderRejected
from aria_engine.history_cache import HistoryCache
from aria_engine.testing.fake_llm import FakeLLM, HTTPError, Reply, ToolCall
from tests.plugins.engine import MakeEngine

SESSION = uuid.UUID(int=1)


def row(seq: int, role: str = "assistant", content: str = "") -> MessageView:
    return MessageView(seq, role, content or f"row {seq}")


def database_read(rows: list[MessageView], user_seq: int, limit: int) -> list[MessageView]:
    """What `read_rows(before_seq=user_seq)` returns: seq in [user_seq + 1 - limit, user_seq - 1], plus the
    first user row, oldest first."""
    low = user_seq + 1 - limit
    picked = {r.seq: r for r in rows if low <= r.seq < user_seq}
    first_user = next((r for r in rows if r.role == "user"), None)
    if first_user is not None:
        picked[first_user.seq] = first_user
    return [picked[seq] for seq in sorted(picked)]


def test_a_window_is_served_only_once_the_user_row_after_it_committed() -> None:
    cache = HistoryCache(max_bytes=2**20, max_rows=500)
    history = [row(1, "user"), row(2)]
    cache.store(SESSION, 3, 50, history)
    assert cache.history(SESSION, 3, 50) is None  # the turn's start has not committed
    cache.extend(SESSION, [row(3, "user"), row(4)])
    assert cache.history(SESSION, 5, 50) == [*history, row(3, "user"), row(4)]


def test_rows_written_elsewhere_make_a_miss() -> None:
    cache = HistoryCache(max_bytes=2**20, max_rows=500)
    cache.store(SESSION, 1, 50, [])
    cache.extend(SESSION, [row(1, "user"), row(2)])
    assert cache.history(SESSION, 3, 50) == [row(1, "user"), row(2)]
    # Another replica ran a turn (seq 3 and 4): the next user row here takes 5.
    assert cache.history(SESSION, 5, 50) is None


def test_a_gap_drops_the_window() -> None:
    cache = HistoryCache(max_bytes=2**20, max_rows=500)
    cache.store(SESSION, 1, 50, [])
    cache.extend(SESSION, [row(1, "user"), row(3)])
    assert len(cache) == 0
    assert cache.size_bytes == 0  # what it held, and what it took in before the gap, is let go
    assert cache.history(SESSION, 4, 50) is None


def test_a_wider_window_than_was_read_is_a_miss() -> None:
    cache = HistoryCache(max_bytes=2**20, max_rows=500)
    rows = [row(seq, "user" if seq % 2 else "assistant") for seq in range(1, 21)]
    cache.store(SESSION, 21, 5, database_read(rows, 21, 5))
    cache.extend(SESSION, [row(21, "user")])
    assert cache.history(SESSION, 22, 5) == database_read([*rows, row(21, "user")], 22, 5)
    assert cache.history(SESSION, 22, 10) is None


def test_the_first_user_row_outlives_trimming() -> None:
    cache = HistoryCache(max_bytes=2**20, max_rows=4)
    cache.store(SESSION, 1, 4, [])
    rows = [row(1, "user", "my name is Ada"), *(row(seq) for seq in range(2, 11))]
    cache.extend(SESSION, rows)
    assert cache.history(SESSION, 11, 4) == database_read(rows, 11, 4)
    assert cache.history(SESSION, 11, 4)[0].content == "my name is Ada"  # type: ignore[index]


def test_the_byte_bound_evicts_the_least_recently_used_session() -> None:
    cache = HistoryCache(max_bytes=2500, max_rows=500)  # 1,000 bytes per session here
    sessions = [uuid.UUID(int=n) for n in range(1, 4)]
    for session_id in sessions:
        cache.store(session_id, 1, 50, [])
        cache.extend(session_id, [row(1, "user", "x" * 800)])
    assert cache.size_bytes <= 2500
    assert cache.history(sessions[0], 2, 50) is None  # the oldest went first
    assert cache.history(sessions[2], 2, 50) == [row(1, "user", "x" * 800)]


def test_held_rows_cost_full_collections_nothing_and_are_served_as_views() -> None:
    """A full cache must not make every full garbage collection walk its rows: they are held as exact
    tuples, which the collector stops tracking (it never untracks a named tuple)."""

    def tracked_views() -> int:
        return sum(1 for obj in gc.get_objects() if type(obj) is MessageView)

    cache = HistoryCache(max_bytes=2**30, max_rows=5_000)
    gc.collect()
    before = tracked_views()
    cache.store(SESSION, 1, 5_000, [])
    cache.extend(SESSION, (row(seq, "user" if seq % 2 else "assistant") for seq in range(1, 3_001)))
    gc.collect()
    assert tracked_views() == before
    served = cache.history(SESSION, 3_001, 5_000)
    assert served is not None and len(served) == 3_000
    assert all(type(r) is MessageView for r in served)
    assert served[0] == row(1, "user") and served[-1].seq == 3_000 and served[-1].role == "assistant"


def test_zero_bytes_keeps_nothing() -> None:
    cache = HistoryCache(max_bytes=0, max_rows=500)
    cache.store(SESSION, 1, 50, [])
    cache.extend(SESSION, [row(1, "user")])
    assert len(cache) == 0 and cache.history(SESSION, 2, 50) is None


# Steps: ("turn", rows the turn writes after its user row, limit, commits?, takes over a crashed turn?)
# run on this process; ("elsewhere", rows) written by another replica. A takeover writes the crashed
# turn's closing row in the turn's own transaction, before the history read sees it.
STEP = st.one_of(
    st.tuples(
        st.just("turn"),
        st.lists(st.sampled_from(["assistant", "tool"]), min_size=0, max_size=3),
        st.sampled_from([1, 2, 3, 5, 50]),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(st.just("elsewhere"), st.lists(st.sampled_from(["user", "assistant"]), min_size=1, max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(STEP, max_size=25), max_rows=st.sampled_from([3, 6, 500]))
def test_whatever_it_serves_is_what_the_database_read_returns(steps: list[Any], max_rows: int) -> None:
    cache = HistoryCache(max_bytes=2**20, max_rows=max_rows)
    database: list[MessageView] = []
    for number, step in enumerate(steps):
        if step[0] == "elsewhere":
            database.extend(row(len(database) + 1, role) for role in step[1])
            continue
        _, roles, limit, commits, takeover = step
        limit = min(limit, max_rows)
        in_transaction = [row(len(database) + 1, "assistant", f"closed by turn {number}")] if takeover else []
        visible = database + in_transaction  # what the turn's own transaction reads
        user_seq = len(visible) + 1
        served = cache.history(SESSION, user_seq, limit)
        expected = database_read(visible, user_seq, limit)
        if served is None:
            cache.store(SESSION, user_seq, limit, expected)
        else:
            assert served == expected
        if not commits:  # the turn's start failed: nothing of its transaction exists
            continue
        database.extend(in_transaction)
        user = row(user_seq, "user")
        database.append(user)
        cache.extend(SESSION, [user])
        for role in roles:
            written = row(len(database) + 1, role)
            database.append(written)
            cache.extend(SESSION, [written])


# -- the engine, with the cache on and off -----------------------------------------------------------


CALCULATE = ToolCall("calculate", {"expression": "6*7"})


async def _conversation(make_engine: MakeEngine, fake_llm: FakeLLM, cache_mb: float, window: int) -> Any:
    """One session's turns on two engines over one database; returns the provider's requests' messages
    and the first engine's cache hits."""
    settings = {"history_cache_mb": cache_mb, "max_tool_rounds": 2, "llm_max_retries": 0}
    here, there = [await make_engine(**settings) for _ in range(2)]
    # A fixed system prompt: the assembled one carries the time to the minute, and the two conversations
    # compared may run either side of a minute's turn.
    session = await here.create_session(owner="o", context_window=window, system_prompt="Answer briefly.")
    sid = session["id"]
    fake_llm.reset()
    plan: list[tuple[Any, str, list[Any]]] = [
        (here, "hello", [Reply("hi there")]),
        (here, "what is 6*7?", [Reply("", tool_calls=[CALCULATE]), Reply("42")]),
        (here, "thanks", [Reply("welcome")]),
        (there, "another replica", [Reply("served elsewhere")]),
        (here, "back here", [Reply("hello again")]),
        (here, "fail please", [HTTPError(400)]),
        (here, "after the failure", [Reply("still here")]),
        *((here, f"turn {n}", [Reply(f"answer {n}")]) for n in range(6)),
    ]
    for engine, content, replies in plan:
        fake_llm.enqueue(*replies)
        # The rejected call raises; its turn still ends with an error row, which is history too.
        with contextlib.suppress(ProviderRejected):
            await engine.send_message(sid, content, owner="o")
    return [request["messages"] for request in fake_llm.requests], here.context.history.hits


async def test_the_engine_sends_the_same_requests_with_and_without_the_cache(
    make_engine: MakeEngine, fake_llm: FakeLLM
) -> None:
    for window in (3, 50):
        without, _ = await _conversation(make_engine, fake_llm, 0, window)
        cached, hits = await _conversation(make_engine, fake_llm, 64, window)
        assert cached == without
        assert hits >= 8  # consecutive turns here were served from the cache


async def test_deleting_a_session_drops_its_cached_history(
    make_engine: MakeEngine, fake_llm: FakeLLM
) -> None:
    # A deleted conversation must not stay in the process's memory until the cache's bound pushes it out.
    engine = await make_engine(history_cache_mb=64)
    kept, deleted = (await engine.create_session(owner="o"), await engine.create_session(owner="o"))
    for session in (kept, deleted):
        fake_llm.enqueue(Reply("an answer"))
        await engine.send_message(session["id"], "a question", owner="o")
    cached = engine.context.history.size_bytes
    assert len(engine.context.history) == 2 and cached > 0
    await engine.delete_session(deleted["id"], owner="o")
    assert len(engine.context.history) == 1 and engine.context.history.size_bytes < cached
