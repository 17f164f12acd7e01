"""ContextManager: the token-budgeted message list (rules, properties) and its bounded reads (both DBs)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aria_engine.config import EngineConfig
from aria_engine.context_manager import (
    MESSAGE_OVERHEAD_TOKENS,
    ContextManager,
    MessageView,
    message_tokens,
)
from aria_engine.db.models import ChatMessage, ChatSession
from aria_engine.exceptions import PayloadTooLarge, ValidationError

SYSTEM = {"role": "system", "content": "You are a test."}


def chars(text: str) -> int:
    """A stand-in tokenizer: one token per 4 characters, rounded up."""
    return (len(text) + 3) // 4


def words(text: str) -> int:
    return len(text.split())


def call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "calculate", "arguments": "{}"}}


def user(seq: int, text: str = "") -> MessageView:
    return MessageView(seq, "user", text or f"user {seq}")


def assistant(seq: int, text: str = "", **kwargs: Any) -> MessageView:
    return MessageView(seq, "assistant", text or f"assistant {seq}", **kwargs)


def tool_calls(seq: int, *ids: str, text: str = "") -> MessageView:
    return MessageView(seq, "assistant", text, tool_calls=[call(i) for i in ids], finish_reason="tool_calls")


def result(seq: int, call_id: str, text: str = "") -> MessageView:
    return MessageView(seq, "tool", text or f"result {call_id}", tool_call_id=call_id, tool_name="calculate")


def fit(rows: list[MessageView], budget: int = 100_000, count: Callable[[str], int] = chars) -> list[dict]:
    return ContextManager.fit(SYSTEM, rows, budget, count)


def cost(messages: list[dict], count: Callable[[str], int] = chars) -> int:
    return sum(message_tokens(m, count) for m in messages)


# -- mapping rows to messages -------------------------------------------------------------------------


def test_rows_map_to_openai_messages() -> None:
    rows = [
        user(1, "what is 2+2?"),
        tool_calls(2, "c1", text="Let me compute."),
        result(3, "c1", "4"),
        assistant(4, "It is 4."),
        MessageView(5, "system", "A note from the operator."),
        user(6, "thanks"),
    ]
    assert fit(rows) == [
        SYSTEM,
        {"role": "user", "content": "what is 2+2?"},
        {"role": "assistant", "content": "Let me compute.", "tool_calls": [call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "system", "content": "A note from the operator."},
        {"role": "user", "content": "thanks"},
    ]


def test_unfinished_rows_are_skipped_only_when_empty() -> None:
    rows = [user(1)]
    rows += [MessageView(2, "assistant", "", finish_reason=reason) for reason in ("cancelled", "error")]
    rows += [MessageView(3, "assistant", "", finish_reason="interrupted"), user(4)]
    rows += [MessageView(5, "assistant", "half an ans", finish_reason="disconnected"), user(6)]
    assert [m["content"] for m in fit(rows)[1:]] == ["user 1", "user 4", "half an ans", "user 6"]


def test_incomplete_groups_and_orphan_results_are_dropped() -> None:
    rows = [
        result(1, "gone"),  # its call is outside the window
        user(2),
        tool_calls(3, "a", "b"),
        result(4, "a"),  # "b" never came back (crash): the whole group goes
        user(5),
        tool_calls(6, "c"),
        result(7, "c"),
        result(8, "c", "duplicate"),  # a second result for one id is never sent
        result(9, "stray"),
        assistant(10),
        tool_calls(11, "d", "d"),  # duplicate ids in one message: unusable
        result(12, "d"),
        user(13),
        tool_calls(14, "e"),  # this turn's call, results still missing
    ]
    assert fit(rows)[1:] == [
        {"role": "user", "content": "user 2"},
        {"role": "user", "content": "user 5"},
        {"role": "assistant", "content": "", "tool_calls": [call("c")]},
        {"role": "tool", "tool_call_id": "c", "content": "result c"},
        {"role": "assistant", "content": "assistant 10"},
        {"role": "user", "content": "user 13"},
    ]


def test_stored_tool_calls_are_replayed_in_the_exact_openai_shape() -> None:
    loose = {"id": "c1", "function": {"name": "calculate", "arguments": {"expression": "1+1"}}}
    nameless = {"id": "c2", "type": "function", "function": {"arguments": "{}"}}
    rows = [
        user(1),
        MessageView(2, "assistant", "", tool_calls=[loose]),
        result(3, "c1", "2"),
        MessageView(4, "assistant", "", tool_calls=[nameless]),
        result(5, "c2"),
        user(6),
    ]
    assert fit(rows)[1:] == [
        {"role": "user", "content": "user 1"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "calculate", "arguments": '{"expression":"1+1"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
        {"role": "user", "content": "user 6"},
    ]


def test_message_tokens_counts_overhead_content_calls_and_ids() -> None:
    message = {"role": "assistant", "content": "abcdefgh", "tool_calls": [call("c1")]}
    assert message_tokens(message, chars) == MESSAGE_OVERHEAD_TOKENS + 2 + chars(
        '[{"id":"c1","type":"function","function":{"name":"calculate","arguments":"{}"}}]'
    )
    assert message_tokens({"role": "tool", "tool_call_id": "c1", "content": ""}, chars) == 4 + 1


# -- budget rules ---------------------------------------------------------------------------------------


def test_newest_first_fill_stops_at_the_first_unit_that_does_not_fit() -> None:
    rows = [user(1), assistant(2, "x" * 400), user(3), assistant(4, "y" * 40), user(5)]
    # system 8, user1 6, user3 6, a4 14, user5 6 -> 40; the 104-token a2 does not fit.
    out = fit(rows, budget=45)
    assert [m["content"][:6] for m in out[1:]] == ["user 1", "user 3", "yyyyyy", "user 5"]
    assert cost(out) <= 45


def test_first_user_message_is_kept_when_it_fits_before_older_history() -> None:
    rows = [user(1, "I am Ada. " * 10), assistant(2), user(3), assistant(4), user(5)]
    out = fit(rows, budget=52)  # system 8 + user5 6 + user1 29 leaves room for a4 (7) but not user3 too
    assert out[1]["content"].startswith("I am Ada.")
    assert [m["content"] for m in out[2:]] == ["assistant 4", "user 5"]
    assert cost(out) <= 52
    dropped = fit(rows, budget=8 + 6 + 28)  # the first user message no longer fits: newest history instead
    assert [m["content"] for m in dropped[1:]] == ["assistant 2", "user 3", "assistant 4", "user 5"]


def test_oversized_tool_result_is_truncated_not_dropped() -> None:
    rows = [user(1), tool_calls(2, "big", "small"), result(3, "big", "z" * 8000), result(4, "small", "ok")]
    out = fit(rows, budget=300)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "tool"]
    big = out[3]
    assert big["tool_call_id"] == "big"
    assert big["content"].startswith("z" * 100)
    assert re.search(r"\[truncated: \d+ of 8000 characters shown to fit the context\]$", big["content"])
    assert out[4] == {"role": "tool", "tool_call_id": "small", "content": "ok"}
    assert cost(out) <= 300


def test_group_is_dropped_when_even_truncated_results_cannot_fit() -> None:
    rows = [user(1), user(2), tool_calls(3, "a"), result(4, "a", "z" * 8000)]
    out = fit(rows, budget=30)  # no room for the call message plus a minimal result
    assert [m["content"] for m in out[1:]] == ["user 1", "user 2"]


def test_system_plus_newest_user_over_budget_raises_payload_too_large() -> None:
    rows = [user(1), user(2, "w" * 4000)]
    with pytest.raises(PayloadTooLarge) as caught:
        fit(rows, budget=500)
    assert isinstance(caught.value, ValidationError)
    assert "too long" in caught.value.message
    with pytest.raises(PayloadTooLarge):
        ContextManager.fit({"role": "system", "content": "s" * 4000}, [], 100, chars)


def test_budget_for_subtracts_output_tools_and_margin() -> None:
    manager = ContextManager(EngineConfig(context_safety_margin=256), lambda _model, text: chars(text))
    assert manager.budget_for(context_window_tokens=8192, max_output_tokens=1024, tool_schema_tokens=300) == (
        8192 - 1024 - 300 - 256
    )
    assert manager.budget_for(context_window_tokens=1000, max_output_tokens=1024, tool_schema_tokens=0) == 0


def test_token_counts_are_cached_per_model_and_bounded() -> None:
    seen: list[tuple[str, str]] = []

    def count_tokens(model_id: str, text: str) -> int:
        seen.append((model_id, text))
        return chars(text)

    manager = ContextManager(EngineConfig(), count_tokens)
    long_text = "a long history message " * 20
    count = manager.counter("model-a")
    assert count(long_text) == count(long_text) == chars(long_text)
    assert count("short") == count("short") == 2
    assert manager.counter("model-b")(long_text) == chars(long_text)
    assert count("") == 0
    assert seen == [("model-a", long_text), ("model-a", "short"), ("model-b", long_text)]
    for i in range(10_000):
        count(f"{i:08d}" + "x" * 100)
    assert len(manager._counts) <= 8192


# -- properties -----------------------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> list[MessageView]:
    """Sessions with tool rounds, crashed groups, stray results and cancelled rows, seen through a window."""
    rows: list[MessageView] = []
    calls = 0

    def add(role: str, content: str, **kwargs: Any) -> None:
        rows.append(MessageView(len(rows) + 1, role, content, **kwargs))

    def text(label: str, size: int) -> str:
        return f"m{len(rows) + 1} {label} " + "w " * draw(st.integers(0, size))

    for _ in range(draw(st.integers(1, 7))):
        add("user", text("user", 150))
        for _ in range(draw(st.integers(0, 2))):
            ids = [f"call{calls + i}" for i in range(draw(st.integers(1, 3)))]
            calls += len(ids)
            add("assistant", draw(st.sampled_from(["", text("pre", 20)])), tool_calls=[call(i) for i in ids])
            fate = draw(st.sampled_from(["complete", "complete", "missing", "stray", "duplicate"]))
            for call_id in ids[:-1] if fate == "missing" else ids:
                add("tool", "r " * draw(st.integers(0, 600)), tool_call_id=call_id)
            if fate == "duplicate":
                add("tool", "dup", tool_call_id=ids[0])
            if fate == "stray":
                add("tool", "stray", tool_call_id=f"ghost{len(rows)}")
        ending = draw(st.sampled_from(["answer", "answer", "cancelled", "partial", "none"]))
        if ending == "answer":
            add("assistant", text("answer", 150), finish_reason="stop")
        elif ending == "cancelled":
            add("assistant", "", finish_reason="cancelled")
        elif ending == "partial":
            add("assistant", text("partial", 30), finish_reason="disconnected")
    # The database hands over a window of the newest rows plus the first user row, like read_rows does.
    start = draw(st.integers(0, len(rows) - 1))
    return rows[:1] + rows[max(1, start) :]


def origin(message: dict[str, Any], rows: list[MessageView]) -> int:
    """The seq of the row a message came from."""
    if message["role"] == "tool":
        return next(r.seq for r in rows if r.tool_call_id == message["tool_call_id"])
    if message.get("tool_calls"):
        first_id = message["tool_calls"][0]["id"]
        return next(r.seq for r in rows if r.tool_calls and r.tool_calls[0]["id"] == first_id)
    return int(message["content"].split(" ", 1)[0][1:])


def assert_tool_groups_whole(messages: list[dict[str, Any]], rows: list[MessageView]) -> None:
    results = {r.tool_call_id: r.content for r in rows if r.role == "tool" and r.content != "dup"}
    seen: set[str] = set()
    i = 0
    while i < len(messages):
        message = messages[i]
        assert message["role"] != "tool", f"orphan tool message at {i}"
        i += 1
        if not message.get("tool_calls"):
            continue
        expected = [c["id"] for c in message["tool_calls"]]
        got = []
        while i < len(messages) and messages[i]["role"] == "tool":
            got.append(messages[i]["tool_call_id"])
            original = results[messages[i]["tool_call_id"]]
            content = messages[i]["content"]
            assert content == original or (
                content.endswith("to fit the context]") and original.startswith(content.split("\n[trunc")[0])
            )
            i += 1
        assert got == expected, "a tool group was split"
        assert not seen & set(got), "a tool_call id was sent twice"
        seen |= set(got)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(0, 3000), st.sampled_from([chars, words]))
def test_fit_properties(rows: list[MessageView], budget: int, count: Callable[[str], int]) -> None:
    newest_user = next(r for r in reversed(rows) if r.role == "user")
    pinned = message_tokens(SYSTEM, count) + message_tokens(
        {"role": "user", "content": newest_user.content}, count
    )
    try:
        out = ContextManager.fit(SYSTEM, rows, budget, count)
    except PayloadTooLarge:
        assert pinned > budget
        return
    assert pinned <= budget
    # never over budget
    assert cost(out, count) <= budget
    # system first, newest user message always kept, unchanged
    assert out[0] == SYSTEM
    assert {"role": "user", "content": newest_user.content} in out
    # order preserved, nothing repeated
    seqs = [origin(m, rows) for m in out[1:]]
    assert seqs == sorted(set(seqs))
    # tool groups whole, no orphans, no duplicate ids
    assert_tool_groups_whole(out[1:], rows)


@settings(max_examples=150, deadline=None)
@given(histories())
def test_with_room_for_everything_every_complete_group_and_message_is_kept(rows: list[MessageView]) -> None:
    out = ContextManager.fit(SYSTEM, rows, 10**9, chars)
    kept = {origin(m, rows) for m in out[1:]}
    for row in rows:
        if row.role in ("user", "system") or (row.role == "assistant" and not row.tool_calls and row.content):
            assert row.seq in kept
    assert_tool_groups_whole(out[1:], rows)


# -- reading from the database (both backends) ------------------------------------------------------------


async def make_session(db: AsyncSession, messages: list[dict[str, Any]]) -> uuid.UUID:
    session_id = uuid.uuid4()
    db.add(ChatSession(id=session_id, owner="tester", model="fake", next_seq=len(messages) + 1))
    await db.flush()
    if messages:
        rows = [
            {"id": uuid.uuid4(), "session_id": session_id, "seq": i + 1, **m} for i, m in enumerate(messages)
        ]
        await db.execute(insert(ChatMessage), rows)
    await db.commit()
    return session_id


def conversation(n: int) -> list[dict[str, Any]]:
    """n rows: user/assistant pairs; the assistant rows carry thinking, which is never replayed."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i % 2 == 0:
            out.append({"role": "user", "content": f"question {i + 1}"})
        else:
            out.append({"role": "assistant", "content": f"answer {i + 1}", "thinking": "secret reasoning"})
    return out


def manager() -> ContextManager:
    return ContextManager(EngineConfig(), lambda _model, text: chars(text))


async def build(
    factory: async_sessionmaker[AsyncSession], session_id: uuid.UUID, **kwargs: Any
) -> list[dict]:
    kwargs.setdefault("context_window", 50)
    kwargs.setdefault("budget_tokens", 100_000)
    async with factory() as db:
        return await manager().build(
            db, session_id=session_id, model_id="fake", system_prompt="You are a test.", **kwargs
        )


@pytest.fixture
async def statements(db_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[list[str]]:
    """Every SQL statement the engine sends while the test runs."""
    seen: list[str] = []
    engine = db_factory.kw["bind"].sync_engine

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


async def test_build_reads_the_window_plus_the_first_user_message(
    db_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with db_factory() as db:
        session_id = await make_session(db, conversation(30))
        other = await make_session(db, conversation(4))
    messages = await build(db_factory, session_id, context_window=10)
    assert messages[0] == {"role": "system", "content": "You are a test."}
    assert [m["content"] for m in messages[1:]] == ["question 1"] + [
        f"{'question' if i % 2 else 'answer'} {i}" for i in range(21, 31)
    ]
    assert all("thinking" not in m and "secret" not in m["content"] for m in messages)
    assert [m["content"] for m in (await build(db_factory, other))[1:]] == [
        "question 1",
        "answer 2",
        "question 3",
        "answer 4",
    ]


async def test_build_replays_tool_turns_well_formed(db_factory: async_sessionmaker[AsyncSession]) -> None:
    rows = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "", "tool_calls": [call("c1")], "finish_reason": "tool_calls"},
        {"role": "tool", "content": "4", "tool_call_id": "c1", "tool_name": "calculate"},
        {"role": "assistant", "content": "4.", "finish_reason": "stop"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "", "tool_calls": [call("c2")], "finish_reason": "tool_calls"},
        {"role": "assistant", "content": "", "finish_reason": "interrupted"},
        {"role": "user", "content": "hello?"},
    ]
    async with db_factory() as db:
        session_id = await make_session(db, rows)
    messages = await build(db_factory, session_id)
    assert messages[1:] == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "", "tool_calls": [call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "and 3+3?"},
        {"role": "user", "content": "hello?"},
    ]


async def test_build_keeps_the_current_turn_even_beyond_a_small_window(
    db_factory: async_sessionmaker[AsyncSession], statements: list[str]
) -> None:
    rows = [*conversation(6), {"role": "user", "content": "what is 2+2 and 3+3?"}]
    rows.append({"role": "assistant", "content": "", "tool_calls": [call("a"), call("b")]})
    rows.append({"role": "tool", "content": "4", "tool_call_id": "a", "tool_name": "calculate"})
    rows.append({"role": "tool", "content": "6", "tool_call_id": "b", "tool_name": "calculate"})
    async with db_factory() as db:
        session_id = await make_session(db, rows)
    statements.clear()
    messages = await build(db_factory, session_id, context_window=2)
    assert len(statements) == 1
    assert [m["role"] for m in messages] == ["system", "user", "user", "assistant", "tool", "tool"]
    assert messages[1]["content"] == "question 1"
    assert messages[2]["content"] == "what is 2+2 and 3+3?"
    assert [m["content"] for m in messages[4:]] == ["4", "6"]


@pytest.mark.parametrize("window", [1, 2, 5, 50])
@pytest.mark.parametrize("history", [0, 1, 6, 9])
async def test_a_user_message_not_yet_written_gets_the_context_it_will_have_once_written(
    db_factory: async_sessionmaker[AsyncSession], window: int, history: int
) -> None:
    """The turn reads its first context before inserting the user row (the insert overlaps the LLM
    request); that context must be exactly the one read after the insert."""
    rows = conversation(history)
    if history == 9:  # the last turn ended in a tool round
        rows = conversation(7)
        rows.append({"role": "assistant", "content": "", "tool_calls": [call("t")]})
        rows.append({"role": "tool", "content": "42", "tool_call_id": "t", "tool_name": "calculate"})
    async with db_factory() as db:
        session_id = await make_session(db, rows)
        session = await db.get(ChatSession, session_id)
        assert session is not None
        seq = session.next_seq
        session.next_seq += 1  # the seq `start_turn` reserves
        await db.commit()
    pending = MessageView(seq, "user", "and now?")
    before = await build(db_factory, session_id, context_window=window, new_user_message=pending)
    async with db_factory() as db:
        db.add(ChatMessage(id=uuid.uuid4(), session_id=session_id, seq=seq, role="user", content="and now?"))
        await db.commit()
    after = await build(db_factory, session_id, context_window=window)
    assert before == after
    assert after[-1] == {"role": "user", "content": "and now?"}


async def test_build_respects_the_token_budget(db_factory: async_sessionmaker[AsyncSession]) -> None:
    async with db_factory() as db:
        session_id = await make_session(db, conversation(39))
    messages = await build(db_factory, session_id, budget_tokens=60)
    assert cost(messages) <= 60
    assert messages[-1] == {"role": "user", "content": "question 39"}


@pytest.mark.parametrize("history", [10, 2000])
async def test_build_sends_one_bounded_statement_whatever_the_history(
    db_factory: async_sessionmaker[AsyncSession], statements: list[str], history: int
) -> None:
    async with db_factory() as db:
        session_id = await make_session(db, conversation(history))
    statements.clear()
    messages = await build(db_factory, session_id, context_window=8)
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "(SELECT"))]
    assert len(reads) == 1, statements
    assert re.search(r"\bLIMIT\b", reads[0], re.IGNORECASE)
    assert "thinking" not in reads[0]
    assert len(messages) == 1 + 1 + 8  # system, the first question, the 8-row window
    assert messages[1]["content"] == "question 1"
    assert messages[-1]["content"] == f"answer {history}"
