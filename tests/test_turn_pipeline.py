"""The turn pipeline: rows, seq, usage, cost, tools, history replay, errors, idempotency."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from aria_engine.db.models import ChatMessage, ChatSession
from aria_engine.events import DoneEvent, ErrorEvent, StartEvent, TokenEvent, ToolCallEvent, ToolResultEvent
from aria_engine.exceptions import (
    PayloadTooLarge,
    ProviderRejected,
    SessionEnded,
    SessionNotFound,
    UnknownModel,
    ValidationError,
)
from aria_engine.testing.fake_llm import Drop, HTTPError, Reply, ToolCall, Usage


async def _rows(engine, session_id: str) -> list[ChatMessage]:  # type: ignore[no-untyped-def]
    async with engine.db_factory() as db:
        result = await db.execute(
            select(ChatMessage)
            .where(ChatMessage.session_id == ChatSession.id.type.python_type(session_id))
            .order_by(ChatMessage.seq)
        )
        return list(result.scalars())


async def test_a_turn_writes_user_and_assistant_rows_with_exact_usage_and_cost(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="alice")
    fake_llm.enqueue(Reply("Hi there friend", usage=Usage(1000, 200)))

    response = await engine.send_message(session["id"], "Hello", owner="alice")

    assert response.content == "Hi there friend"
    assert (response.input_tokens, response.output_tokens, response.total_tokens) == (1000, 200, 1200)
    # fake-model: 1.25 USD / 1M input, 10 USD / 1M output
    assert response.cost == Decimal("0.00325")
    assert response.finish_reason == "stop"
    rows = await _rows(engine, session["id"])
    assert [(r.seq, r.role) for r in rows] == [(1, "user"), (2, "assistant")]
    assert rows[1].content == "Hi there friend" and rows[1].cost == Decimal("0.00325")
    assert rows[0].turn_id == rows[1].turn_id
    assert rows[1].latency_ms is not None and rows[1].ttft_ms is not None
    detail = await engine.get_session(session["id"], owner="alice")
    assert (detail["message_count"], detail["total_tokens"], detail["total_cost"]) == (2, 1200, "0.00325")
    assert detail["title"] == "Hello"
    # The provider was asked for usage in the stream.
    assert fake_llm.requests[-1]["stream_options"] == {"include_usage": True}


async def test_events_are_deltas_with_per_turn_seq_and_one_done(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Reply("one two three"))
    events = [e async for e in engine.stream_turn(session["id"], "count", owner="o")]

    assert isinstance(events[0], StartEvent) and isinstance(events[-1], DoneEvent)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.turn_id for e in events}) == 1
    tokens = [e.content for e in events if isinstance(e, TokenEvent)]
    assert len(tokens) == 3 and "".join(tokens) == "one two three"
    assert sum(isinstance(e, DoneEvent) for e in events) == 1


async def test_a_tool_turn_writes_call_results_and_final_rows(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(
        Reply(
            "", tool_calls=[ToolCall("calculate", {"expression": "6*7"}, id="call_a")], usage=Usage(50, 10)
        ),
        Reply("The answer is 42.", usage=Usage(80, 6)),
    )
    events = [e async for e in engine.stream_turn(session["id"], "What is 6*7?", owner="o")]

    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert [(c.id, c.name) for c in calls] == [("call_a", "calculate")]
    assert results[0].success and results[0].content.strip() == "42"
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "stop"
    assert (done.input_tokens, done.output_tokens) == (130, 16)

    rows = await _rows(engine, session["id"])
    assert [(r.role, r.finish_reason) for r in rows] == [
        ("user", None),
        ("assistant", "tool_calls"),
        ("tool", None),
        ("assistant", "stop"),
    ]
    assert rows[1].tool_calls[0]["type"] == "function" and rows[1].tool_calls[0]["id"] == "call_a"
    assert rows[2].tool_call_id == "call_a" and rows[2].tool_name == "calculate"

    # The second request replayed the tool exchange in the OpenAI shape, once.
    replay = fake_llm.requests[1]["messages"]
    assert [m["role"] for m in replay][-3:] == ["user", "assistant", "tool"]
    assert replay[-1]["tool_call_id"] == "call_a"

    # A later turn's context is well-formed: each tool_call id appears once and has its result.
    fake_llm.enqueue(Reply("ok"))
    await engine.send_message(session["id"], "thanks", owner="o")
    history = fake_llm.requests[-1]["messages"]
    ids = [c["id"] for m in history for c in m.get("tool_calls") or []]
    assert ids == ["call_a"]
    assert [m.get("tool_call_id") for m in history if m["role"] == "tool"] == ["call_a"]


async def test_tool_rounds_are_capped_and_the_last_round_offers_no_tools(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine(max_tool_rounds=1)
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(
        Reply("", tool_calls=[ToolCall("current_time", {})]),
        Reply("Done without more tools."),
    )
    response = await engine.send_message(session["id"], "time?", owner="o")
    assert response.content == "Done without more tools."
    assert "tools" in fake_llm.requests[0] and "tools" not in fake_llm.requests[1]


async def test_turn_cost_cap_stops_with_length(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine(max_turn_cost_usd=Decimal("0.001"))
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Reply("", tool_calls=[ToolCall("current_time", {})], usage=Usage(1_000_000, 0)))
    events = [e async for e in engine.stream_turn(session["id"], "loop", owner="o")]
    assert any(isinstance(e, ErrorEvent) and e.code == "turn_limit" for e in events)
    assert isinstance(events[-1], DoneEvent) and events[-1].finish_reason == "length"
    assert len(fake_llm.requests) == 1


async def test_provider_error_before_output_is_an_error_for_rest(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine(llm_max_retries=0)
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(HTTPError(400))
    with pytest.raises(ProviderRejected):
        await engine.send_message(session["id"], "hi", owner="o")
    rows = await _rows(engine, session["id"])
    assert [(r.role, r.finish_reason, r.input_tokens) for r in rows] == [
        ("user", None, 0),
        ("assistant", "error", 0),
    ]
    # The lease was released: the next turn runs.
    fake_llm.enqueue(Reply("back"))
    assert (await engine.send_message(session["id"], "again", owner="o")).content == "back"


async def test_a_long_answer_is_stored_exactly_as_streamed(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    # The answer is collected in joined blocks of deltas: the stored text and thinking must be the
    # deltas' exact concatenation across block edges, and so must a partial cut mid-block.
    engine = await make_engine(llm_max_retries=0)
    session = await engine.create_session(owner="o")
    text = " ".join(f"w{n}" for n in range(300))
    thinking = "".join(f"t{n}." for n in range(150))
    fake_llm.enqueue(Reply(text, thinking=thinking, chunk_size=3))
    response = await engine.send_message(session["id"], "hi", owner="o")
    assert (response.content, response.thinking) == (text, thinking)
    rows = await _rows(engine, session["id"])
    assert (rows[-1].content, rows[-1].thinking) == (text, thinking)

    fake_llm.enqueue(Drop(after=150, reply=Reply(text, chunk_size=3)))
    events = [e async for e in engine.stream_turn(session["id"], "again", owner="o")]
    streamed = "".join(e.content for e in events if isinstance(e, TokenEvent))
    assert len(streamed) > 64 * 3 and text.startswith(streamed)
    assert (await _rows(engine, session["id"]))[-1].content == streamed


async def test_provider_drop_mid_stream_persists_the_partial_answer(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine(llm_max_retries=0)
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Drop(after=2, reply=Reply("alpha beta gamma delta")))
    events = [e async for e in engine.stream_turn(session["id"], "hi", owner="o")]
    assert isinstance(events[-2], ErrorEvent) and isinstance(events[-1], DoneEvent)
    assert events[-1].finish_reason == "error"
    rows = await _rows(engine, session["id"])
    assert rows[-1].finish_reason == "error" and rows[-1].content == "alpha beta"
    assert rows[-1].output_tokens > 0  # what streamed before the drop is counted
    assert rows[-1].metadata_ == {"usage_estimated": True}


async def test_repeated_idempotency_key_returns_the_first_result_without_a_second_call(
    make_engine, fake_llm
) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Reply("first answer"))
    first = await engine.send_message(session["id"], "hi", owner="o", idempotency_key="k-1")
    second = await engine.send_message(session["id"], "hi", owner="o", idempotency_key="k-1")
    assert len(fake_llm.requests) == 1
    assert (second.content, second.message_id, second.turn_id) == (
        first.content,
        first.message_id,
        first.turn_id,
    )
    assert second.cost == first.cost
    assert len(await _rows(engine, session["id"])) == 2


async def test_checks_fail_before_anything_starts(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="alice")
    with pytest.raises(SessionNotFound):
        await engine.send_message(session["id"], "hi", owner="mallory")
    with pytest.raises(SessionNotFound):
        await engine.send_message("not-a-uuid", "hi", owner="alice")
    with pytest.raises(ValidationError):
        await engine.send_message(session["id"], "   ", owner="alice")
    with pytest.raises(PayloadTooLarge):
        await engine.send_message(session["id"], "x" * 100_001, owner="alice")
    with pytest.raises(PayloadTooLarge):  # fits the length limit, not the model's context window
        await engine.send_message(session["id"], "word " * 20_000, owner="alice")
    await engine.end_session(session["id"], owner="alice")
    with pytest.raises(SessionEnded):
        await engine.send_message(session["id"], "hi", owner="alice")
    assert fake_llm.requests == []
    assert await _rows(engine, session["id"]) == []
    refused = await engine.get_session(session["id"], owner="alice")
    assert (refused["title"], refused["message_count"]) == (None, 0)  # no title from a refused message
    await engine.reopen_session(session["id"], owner="alice")
    assert (await engine.send_message(session["id"], "hi", owner="alice")).finish_reason == "stop"
    assert [row.seq for row in await _rows(engine, session["id"])] == [1, 2]
    assert (await engine.get_session(session["id"], owner="alice"))["title"] == "hi"


async def test_a_refused_message_leaves_the_session_as_it_was(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    # The start writes the user row before the checks that need the session; a refusal rolls it back.
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    await engine.send_message(session["id"], "hello", owner="o")
    before = await engine.get_session(session["id"], owner="o")
    with pytest.raises(PayloadTooLarge):
        await engine.send_message(session["id"], "word " * 20_000, owner="o")
    after = await engine.get_session(session["id"], owner="o")
    assert {key: after[key] for key in before if key != "updated_at"} == {
        key: value for key, value in before.items() if key != "updated_at"
    }
    assert (await engine.send_message(session["id"], "again", owner="o")).finish_reason == "stop"
    rows = await _rows(engine, session["id"])
    assert [(row.seq, row.content) for row in rows if row.role == "user"] == [(1, "hello"), (3, "again")]
    assert [row.seq for row in rows] == [1, 2, 3, 4]


async def test_a_user_row_that_cannot_be_written_leaves_the_session_as_it_was(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    # The user row's INSERT (on PostgreSQL part of the lease's statement) fails: nothing of the turn is
    # emitted, and the lease and the reserved seq go back with the transaction.
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    sid = ChatSession.id.type.python_type(session["id"])
    await engine.send_message(session["id"], "hello", owner="o")
    before = await engine.get_session(session["id"], owner="o")
    # A row at the seq the next turn reserves, written around the store (no engine path can do this).
    async with engine.db_factory.begin() as db:
        await db.execute(
            insert(ChatMessage).values(session_id=sid, seq=3, role="assistant", content="squatter")
        )
    events = []
    with pytest.raises(IntegrityError):
        async for event in engine.stream_turn(session["id"], "again", owner="o"):
            events.append(event)
    assert events == []
    after = await engine.get_session(session["id"], owner="o")
    assert {key: after[key] for key in before if key != "updated_at"} == {
        key: value for key, value in before.items() if key != "updated_at"
    }
    async with engine.db_factory.begin() as db:
        await db.execute(delete(ChatMessage).where(ChatMessage.content == "squatter"))
    # The lease was not left behind: the next message starts at once, at the seq the failed one reserved.
    assert (await engine.send_message(session["id"], "again", owner="o")).finish_reason == "stop"
    rows = await _rows(engine, session["id"])
    assert [(row.seq, row.role, row.content) for row in rows if row.role == "user"] == [
        (1, "user", "hello"),
        (3, "user", "again"),
    ]


async def test_unknown_model_is_rejected_with_the_valid_ids(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    with pytest.raises(UnknownModel) as info:
        await engine.create_session(owner="o", model="gpt-nonexistent")
    assert "fake-model" in info.value.message
    session = await engine.create_session(owner="o", model="fake")  # an alias resolves to its id
    assert session["model"] == "fake-model"
    with pytest.raises(UnknownModel):
        await engine.update_session(session["id"], owner="o", model="nope")


async def test_caller_parameters_beat_catalog_defaults(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(
        owner="o", temperature=0.0, max_tokens=77, system_prompt="Be brief."
    )
    await engine.send_message(session["id"], "hi", owner="o")
    request = fake_llm.requests[-1]
    assert request["temperature"] == 0.0
    assert request.get("max_tokens", request.get("max_completion_tokens")) == 77
    assert request["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_turn_starts_are_admitted_a_few_at_a_time(make_engine, fake_llm, database_url: str) -> None:  # type: ignore[no-untyped-def]
    # A burst of new turns waits for its start instead of making the running streams wait behind it.
    # On SQLite the database's single writer is the queue: the engine adds none in front of it.
    engine = await make_engine(max_concurrent_turn_starts=2)
    sessions = [await engine.create_session(owner="o") for _ in range(6)]
    starting = most = 0
    begin = engine._begin_turn

    async def counted(*args):  # type: ignore[no-untyped-def]
        nonlocal starting, most
        starting += 1
        most = max(most, starting)
        try:
            await asyncio.sleep(0.01)  # a start that takes a while, as under load
            return await begin(*args)
        finally:
            starting -= 1

    engine._begin_turn = counted
    responses = await asyncio.gather(*(engine.send_message(s["id"], "hi", owner="o") for s in sessions))

    assert [response.finish_reason for response in responses] == ["stop"] * 6
    assert most == (6 if database_url.startswith("sqlite") else 2)
