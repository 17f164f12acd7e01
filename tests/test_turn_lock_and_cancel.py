"""One active turn per session (also across engines), cancellation, and crash recovery."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from aria_engine.db import store
from aria_engine.db.models import ChatMessage, ChatSession
from aria_engine.events import DoneEvent, FinishReason, TokenEvent, TurnControl
from aria_engine.exceptions import SessionBusy
from aria_engine.testing.fake_llm import Reply, Stall, ToolCall
from tests.plugins.engine import wait_for


async def _rows(engine, session_id: str) -> list[ChatMessage]:  # type: ignore[no-untyped-def]
    async with engine.db_factory() as db:
        result = await db.execute(
            select(ChatMessage)
            .where(ChatMessage.session_id == uuid.UUID(session_id))
            .order_by(ChatMessage.seq)
        )
        return list(result.scalars())


async def _assert_session_is_free(engine, session_id: str, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """The turn lease was released: the next turn on the session runs to completion."""
    fake_llm.enqueue(Reply("after"))
    assert (await engine.send_message(session_id, "again", owner="o")).content == "after"


async def _consume_until_tokens(stream, n: int, seen: list) -> None:  # type: ignore[no-untyped-def]
    # The documented way to consume a turn: aclosing() closes it even when the cancel lands out here.
    async with contextlib.aclosing(stream):
        async for event in stream:
            seen.append(event)
            if sum(isinstance(e, TokenEvent) for e in seen) >= n:
                await asyncio.sleep(3600)  # hold the turn open mid-stream until cancelled


async def test_second_send_while_busy_gets_session_busy_and_rows_never_interleave(
    make_engine, fake_llm
) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Reply("slow words come one by one", delay=0.05))
    first = asyncio.create_task(engine.send_message(session["id"], "first", owner="o"))
    await wait_for(lambda: len(fake_llm.requests) >= 1)
    with pytest.raises(SessionBusy):
        await engine.send_message(session["id"], "second", owner="o")
    response = await first
    assert response.content == "slow words come one by one"
    rows = await _rows(engine, session["id"])
    assert [(r.seq, r.role, r.content) for r in rows] == [
        (1, "user", "first"),
        (2, "assistant", "slow words come one by one"),
    ]


async def test_two_engines_on_one_database_share_the_turn_lock(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    first_engine = await make_engine()
    second_engine = await make_engine()  # its own connection pool, as another replica would have
    session = await first_engine.create_session(owner="o")
    fake_llm.enqueue(Reply("a b c d e f", delay=0.05))
    running = asyncio.create_task(first_engine.send_message(session["id"], "one", owner="o"))
    await wait_for(lambda: len(fake_llm.requests) >= 1)
    with pytest.raises(SessionBusy):
        await second_engine.send_message(session["id"], "two", owner="o")
    await running
    fake_llm.enqueue(Reply("now me"))
    assert (await second_engine.send_message(session["id"], "two", owner="o")).content == "now me"
    assert [r.seq for r in await _rows(first_engine, session["id"])] == [1, 2, 3, 4]


@pytest.mark.parametrize("reason", [FinishReason.CANCELLED, FinishReason.DISCONNECTED])
async def test_cancel_mid_stream_persists_partial_answer_and_closes_upstream(
    make_engine, fake_llm, reason
) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Reply("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", delay=0.05))
    control = TurnControl()
    seen: list = []
    task = asyncio.create_task(
        _consume_until_tokens(engine.stream_turn(session["id"], "go", owner="o", control=control), 3, seen)
    )
    await wait_for(lambda: sum(isinstance(e, TokenEvent) for e in seen) >= 3)
    control.reason = reason
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    done = control.final_event
    assert isinstance(done, DoneEvent) and done.finish_reason == reason.value
    assert done.seq == seen[-1].seq + 1  # the closing event continues the turn's numbering
    assert done.output_tokens > 0  # the tokens streamed so far are counted
    assert await asyncio.to_thread(fake_llm.wait_for_disconnects, 1)
    rows = await _rows(engine, session["id"])
    assert rows[-1].finish_reason == reason.value
    assert rows[-1].content.startswith("w1 w2 w3")
    assert rows[-1].output_tokens == done.output_tokens
    await _assert_session_is_free(engine, session["id"], fake_llm)


async def test_closing_the_stream_instead_of_cancelling_also_finishes_the_turn(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Stall(after=1, seconds=30, reply=Reply("first then nothing")))
    control = TurnControl()
    stream = engine.stream_turn(session["id"], "go", owner="o", control=control)
    async for event in stream:
        if isinstance(event, TokenEvent):
            break
    await stream.aclose()
    assert control.final_event is not None and control.final_event.finish_reason == "cancelled"
    rows = await _rows(engine, session["id"])
    assert (rows[-1].role, rows[-1].content, rows[-1].finish_reason) == ("assistant", "first", "cancelled")


async def test_a_turn_closed_at_start_closes_the_already_opened_request(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    # The first LLM request goes out while the user row commits, before `start` is seen: a turn that
    # ends right there must still close that request and finish cleanly.
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Stall(after=0, seconds=30, reply=Reply("never seen")))
    control = TurnControl()
    stream = engine.stream_turn(session["id"], "go", owner="o", control=control)
    assert (await anext(stream)).type == "start"
    await stream.aclose()
    assert await asyncio.to_thread(fake_llm.wait_for_disconnects, 1)
    assert control.final_event is not None and control.final_event.finish_reason == "cancelled"
    rows = await _rows(engine, session["id"])
    assert [(r.role, r.finish_reason) for r in rows] == [("user", None), ("assistant", "cancelled")]
    await _assert_session_is_free(engine, session["id"], fake_llm)


async def test_a_user_row_that_fails_to_write_closes_the_request_and_leaves_no_trace(
    make_engine, fake_llm
) -> None:  # type: ignore[no-untyped-def]
    # The first request goes out before the user row is inserted; a failed insert (here a row already
    # holding the seq the turn reserves) must close it, write nothing and keep the session free.
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    sid = uuid.UUID(session["id"])
    async with engine.db_factory.begin() as db:
        next_seq = (await db.get(ChatSession, sid)).next_seq
        db.add(ChatMessage(id=uuid.uuid4(), session_id=sid, seq=next_seq, role="user", content="squatter"))
    fake_llm.enqueue(Stall(after=0, seconds=30, reply=Reply("never seen")))
    with pytest.raises(IntegrityError):
        await anext(engine.stream_turn(session["id"], "go", owner="o"))
    if await asyncio.to_thread(fake_llm.wait_for_requests, 1, 2.0):  # it may not have been sent yet
        assert await asyncio.to_thread(fake_llm.wait_for_disconnects, 1)
    assert [r.content for r in await _rows(engine, session["id"])] == ["squatter"]
    async with engine.db_factory.begin() as db:
        stored = await db.get(ChatSession, sid)
        assert (stored.next_seq, stored.active_turn_id, stored.title) == (next_seq, None, None)
        await db.execute(delete(ChatMessage).where(ChatMessage.session_id == sid))
    fake_llm.reset()
    await _assert_session_is_free(engine, session["id"], fake_llm)


async def test_cancel_while_waiting_for_the_first_token_closes_the_request(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Stall(after=0, seconds=30, reply=Reply("never seen")))
    control = TurnControl()
    seen: list = []

    async def consume() -> None:
        turn = engine.stream_turn(session["id"], "go", owner="o", control=control)
        async with contextlib.aclosing(turn):
            async for event in turn:  # after `start`, this waits inside the turn for the first chunk
                seen.append(event)

    task = asyncio.create_task(consume())
    await wait_for(lambda: len(seen) == 1)
    assert await asyncio.to_thread(fake_llm.wait_for_requests, 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(fake_llm.wait_for_disconnects, 1)
    assert control.final_event is not None and control.final_event.finish_reason == "cancelled"
    await _assert_session_is_free(engine, session["id"], fake_llm)


async def test_cancel_while_a_tool_runs_keeps_the_history_well_formed(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(
        Reply("", tool_calls=[ToolCall("current_time", {}, id="c1"), ToolCall("current_time", {}, id="c2")])
    )
    control = TurnControl()
    stream = engine.stream_turn(session["id"], "go", owner="o", control=control)
    async for event in stream:
        if event.type == "tool_result":
            break  # the first tool finished, the second has not run
    await stream.aclose()
    rows = await _rows(engine, session["id"])
    assert [(r.role, r.tool_call_id, r.finish_reason) for r in rows] == [
        ("user", None, None),
        ("assistant", None, "tool_calls"),
        ("tool", "c1", None),
        ("tool", "c2", None),
        ("assistant", None, "cancelled"),
    ]
    assert rows[3].metadata_ == {"success": False}


async def test_startup_recovery_marks_unfinished_turns_interrupted(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    sid = uuid.UUID(session["id"])
    crashed_turn = uuid.uuid4()
    # What a crash leaves behind: a held lease and a user row with no answer.
    async with engine.db_factory.begin() as db:
        assert await store.start_turn(db, sid, "o", crashed_turn, 600, content="lost") is not None
    with pytest.raises(SessionBusy):
        await engine.send_message(session["id"], "blocked", owner="o")

    # A PostgreSQL replica only takes over expired leases; SQLite (one process) takes all at start-up.
    assert await engine.recover_interrupted(all_leases=False) == 0
    assert await engine.recover_interrupted(all_leases=True) == 1
    rows = await _rows(engine, session["id"])
    assert [(r.role, r.finish_reason, r.turn_id) for r in rows] == [
        ("user", None, crashed_turn),
        ("assistant", "interrupted", crashed_turn),
    ]
    assert (await engine.send_message(session["id"], "works", owner="o")).finish_reason == "stop"


async def test_an_expired_lease_is_taken_over_and_its_turn_marked_interrupted(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    sid = uuid.UUID(session["id"])
    crashed_turn = uuid.uuid4()
    async with engine.db_factory.begin() as db:
        assert await store.start_turn(db, sid, "o", crashed_turn, 600, content="lost") is not None
        await db.execute(
            update(ChatSession).where(ChatSession.id == sid).values(turn_lease_until=store.utcnow())
        )
    response = await engine.send_message(session["id"], "next", owner="o")
    assert response.finish_reason == "stop"
    rows = await _rows(engine, session["id"])
    assert [(r.role, r.finish_reason) for r in rows] == [
        ("user", None),
        ("assistant", "interrupted"),
        ("user", None),
        ("assistant", "stop"),
    ]
