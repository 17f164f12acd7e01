"""Imports: round trips through our jsonl and OpenClaw v3, a hand-made OpenClaw tree with branches and a
corrupt line, skipped-line reporting, and 10,000+ line inputs streamed from byte chunks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from aria_engine.db.models import ChatMessage, ChatSession
from aria_engine.exceptions import ValidationError
from aria_engine.export import stream_export
from aria_engine.importers import MAX_LINE_CHARS, import_session, iter_text_lines
from tests.test_export import Factory, Msg, collect, make_session, tool_conversation

FIXTURE = Path(__file__).parent / "fixtures" / "openclaw_branches.jsonl"


async def load(db_factory: Factory, session_id: str | uuid.UUID) -> tuple[ChatSession, list[ChatMessage]]:
    sid = uuid.UUID(str(session_id))
    async with db_factory() as db:
        session = await db.get(ChatSession, sid)
        rows = (
            (
                await db.execute(
                    select(ChatMessage).where(ChatMessage.session_id == sid).order_by(ChatMessage.seq)
                )
            )
            .scalars()
            .all()
        )
    assert session is not None
    return session, list(rows)


def assert_totals_match(session: ChatSession, rows: list[ChatMessage]) -> None:
    """The invariant every write path keeps: session counters equal the sums over its messages."""
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    assert session.next_seq == len(rows) + 1
    assert session.message_count == len(rows)
    assert session.input_tokens == sum(row.input_tokens for row in rows)
    assert session.output_tokens == sum(row.output_tokens for row in rows)
    assert session.reasoning_tokens == sum(row.reasoning_tokens for row in rows)
    assert session.total_tokens == session.input_tokens + session.output_tokens
    assert session.total_cost == sum((row.cost for row in rows), Decimal(0))


def parsed_calls(calls: list[dict[str, Any]] | None) -> list[Any] | None:
    """Tool calls with their arguments parsed: OpenClaw stores arguments as an object, so the JSON text
    that comes back may differ in spacing while meaning the same."""
    if calls is None:
        return None
    return [
        {**call, "function": {**call["function"], "arguments": orjson.loads(call["function"]["arguments"])}}
        for call in calls
    ]


def essence(row: ChatMessage, *, exact: bool = True) -> dict[str, Any]:
    return {
        "role": row.role,
        "content": row.content,
        "thinking": row.thinking,
        "tool_calls": row.tool_calls if exact else parsed_calls(row.tool_calls),
        "tool_call_id": row.tool_call_id,
        "tool_name": row.tool_name,
        "model": row.model,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "reasoning_tokens": row.reasoning_tokens if exact else None,
        "cost": row.cost,
        "finish_reason": row.finish_reason,
        "created_at": row.created_at.replace(tzinfo=None),
    }


def export_lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


# -- round trips -----------------------------------------------------------------------------------------


async def test_jsonl_round_trip_keeps_messages_tokens_cost_and_tool_calls(db_factory: Factory) -> None:
    messages = tool_conversation()
    messages[2].reasoning_tokens = 7
    sid = await make_session(db_factory, messages, agent_id="helper", system_prompt="Be exact.")
    data = await collect(stream_export(sid, db_factory, None, "jsonl"))

    result = await import_session(export_lines(data), db_factory, format="jsonl", owner="bob")

    assert (result.imported, result.skipped, result.problems) == (7, 0, [])
    original, original_rows = await load(db_factory, sid)
    copy, rows = await load(db_factory, result.session_id)
    assert copy.id != original.id and copy.owner == "bob"
    assert (copy.agent_id, copy.title, copy.model, copy.system_prompt) == (
        "helper",
        "Arithmetic",
        "gpt-test",
        "Be exact.",
    )
    assert [essence(row) for row in rows] == [essence(row) for row in original_rows]
    for field in (
        "message_count",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "total_cost",
    ):
        assert getattr(copy, field) == getattr(original, field), field
    assert_totals_match(copy, rows)
    assert copy.metadata_ == {"imported_from": {"format": "jsonl", "id": str(sid)}}
    # Turns stay grouped but get ids of their own.
    assert len({row.turn_id for row in rows}) == len({row.turn_id for row in original_rows})
    assert not {row.turn_id for row in rows} & {row.turn_id for row in original_rows}


async def test_openclaw_round_trip_keeps_messages_tokens_cost_and_tool_calls(db_factory: Factory) -> None:
    sid = await make_session(db_factory, tool_conversation())
    data = await collect(stream_export(sid, db_factory, None, "openclaw"))

    result = await import_session(export_lines(data), db_factory, format="openclaw", owner="bob")

    assert (result.imported, result.skipped, result.off_branch) == (7, 0, 0)
    original, original_rows = await load(db_factory, sid)
    copy, rows = await load(db_factory, result.session_id)
    assert [essence(row, exact=False) for row in rows] == [essence(row, exact=False) for row in original_rows]
    assert (copy.total_cost, copy.total_tokens) == (original.total_cost, original.total_tokens)
    assert (copy.title, copy.model) == ("Arithmetic", "other-model")  # the model in use at the end
    assert_totals_match(copy, rows)


async def test_openclaw_round_trip_keeps_arguments_that_are_not_an_object(db_factory: Factory) -> None:
    odd = [
        Msg("user", "go"),
        Msg(
            "assistant",
            "",
            tool_calls=[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2"}}],
        ),
    ]
    sid = await make_session(db_factory, odd)
    data = await collect(stream_export(sid, db_factory, None, "openclaw"))
    result = await import_session(export_lines(data), db_factory, format="openclaw", owner="bob")
    _, rows = await load(db_factory, result.session_id)
    assert rows[1].tool_calls == odd[1].tool_calls


# -- the hand-made OpenClaw transcript -------------------------------------------------------------------


async def test_openclaw_fixture_imports_the_active_branch_only(db_factory: Factory) -> None:
    with FIXTURE.open() as handle:
        result = await import_session(handle, db_factory, format="openclaw", owner="carol", agent_id="coder")

    assert result.imported == 8
    assert result.off_branch == 2  # "Delete them" and its answer, on the abandoned branch
    assert result.skipped == 2
    assert result.problems == [(8, "not valid JSON"), (14, "unsupported entry type")]
    session, rows = await load(db_factory, result.session_id)
    assert (session.owner, session.agent_id, session.title, session.model) == (
        "carol",
        "coder",
        "File listing",
        "gpt-5",
    )
    assert session.metadata_ == {
        "imported_from": {
            "format": "openclaw",
            "id": "7c1d7e5e-3a52-4a55-9d0e-0f3f4c1a2b3c",
            "cwd": "/home/user/project",
            "version": 3,
        }
    }
    assert [(row.role, row.content) for row in rows] == [
        ("user", "List the files"),
        ("assistant", "Let me look."),
        ("tool", "README.md\nsrc"),
        ("assistant", "There are two entries: README.md and src."),
        ("user", "Show README instead\n[image]"),
        ("assistant", ""),
        ("tool", "ENOENT: no such file"),
        ("assistant", "README.md could not be read."),
    ]
    first = rows[1]
    assert first.thinking == "The user wants a listing; run ls."
    assert first.tool_calls == [
        {"id": "toolu_01", "type": "function", "function": {"name": "bash", "arguments": '{"command":"ls"}'}}
    ]
    assert (first.input_tokens, first.output_tokens) == (150, 20)  # cached prompt tokens count as input
    assert (first.cost, first.finish_reason, first.model) == (
        Decimal("0.0021"),
        "tool_calls",
        "claude-sonnet-4-5",
    )
    assert (rows[2].tool_call_id, rows[2].tool_name, rows[2].metadata_) == ("toolu_01", "bash", None)
    assert (rows[6].tool_call_id, rows[6].metadata_) == ("call_9", {"is_error": True})
    assert rows[5].model == "gpt-5"
    assert session.total_cost == Decimal("0.0047")
    assert (session.input_tokens, session.output_tokens) == (700, 47)
    assert rows[0].turn_id == rows[3].turn_id != rows[4].turn_id == rows[7].turn_id
    assert str(rows[0].created_at.replace(tzinfo=None)) == "2026-02-01 10:00:01"
    assert_totals_match(session, rows)


async def test_version_1_transcripts_without_ids_are_read_as_a_list(db_factory: Factory) -> None:
    lines = [
        '{"type":"session","id":"old","timestamp":"2025-01-01T00:00:00Z","cwd":"/"}',
        '{"type":"message","timestamp":"2025-01-01T00:00:01Z","message":{"role":"user","content":"hi"}}',
        '{"type":"message","timestamp":"2025-01-01T00:00:02Z","message":{"role":"assistant","content":[{"type":"text","text":"hello"}],"model":"m","usage":{"input":3,"output":1,"cost":{"total":0.5}},"stopReason":"stop"}}',
    ]
    result = await import_session(lines, db_factory, format="openclaw", owner="o")
    session, rows = await load(db_factory, result.session_id)
    assert [(row.role, row.content) for row in rows] == [("user", "hi"), ("assistant", "hello")]
    assert session.total_cost == Decimal("0.5")
    assert_totals_match(session, rows)


# -- bad input -------------------------------------------------------------------------------------------


async def test_corrupt_jsonl_lines_are_skipped_and_reported(db_factory: Factory) -> None:
    lines = [
        '{"_session_id": "x", "_agent_id": "../evil", "_model": "m", "_title": "t"}',
        '{"role": "user", "content": "one"}',
        "{not json",
        "[1, 2]",
        '{"role": "wizard", "content": "?"}',
        '{"role": "assistant", "content": "two", "tokens": {"input": -5}}',
        '{"role": "assistant", "content": "three", "cost": "lots"}',
        "",
        '{"role": "assistant", "content": "four", "tokens": {"input": 2, "output": 3}, "cost": 0.25}',
    ]
    result = await import_session(iter(lines), db_factory, format="jsonl", owner="o")

    assert result.imported == 2
    assert result.skipped == 5  # the header's bad agent id is a note, not a skipped line
    assert result.problems == [
        (1, "agent id in the header is not a safe slug; using the default"),
        (3, "not valid JSON"),
        (4, "not a JSON object"),
        (5, "unknown role"),
        (6, "tokens.input is not a token count"),
        (7, "cost is not a number"),
    ]
    session, rows = await load(db_factory, result.session_id)
    assert session.agent_id == "main"
    assert [row.content for row in rows] == ["one", "four"]
    assert session.total_cost == Decimal("0.25")
    assert_totals_match(session, rows)


@pytest.mark.parametrize(
    ("kwargs", "lines"),
    [
        ({"format": "csv", "owner": "o"}, ['{"role": "user"}']),
        ({"format": "jsonl", "owner": ""}, ['{"role": "user"}']),
        ({"format": "jsonl", "owner": "o", "agent_id": "../x"}, ['{"role": "user"}']),
        ({"format": "jsonl", "owner": "o"}, []),
        ({"format": "openclaw", "owner": "o"}, ["garbage", ""]),
    ],
)
async def test_invalid_requests_are_refused_without_writing(
    db_factory: Factory, kwargs: dict[str, Any], lines: list[str]
) -> None:
    with pytest.raises(ValidationError):
        await import_session(lines, db_factory, **kwargs)
    async with db_factory() as db:
        assert (await db.execute(select(func.count()).select_from(ChatSession))).scalar() == 0


# -- large inputs, streamed ------------------------------------------------------------------------------


async def byte_chunks(lines: AsyncIterator[str] | list[str], size: int) -> AsyncIterator[bytes]:
    """Re-cut a text into chunks of `size` bytes, splitting lines and multi-byte characters anywhere."""
    pending = b""
    for line in lines:  # type: ignore[union-attr]
        pending += (line + "\n").encode()
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


async def test_a_12000_line_upload_streams_in_and_counts_its_corrupt_lines(db_factory: Factory) -> None:
    def source() -> Any:
        yield orjson.dumps({"_session_id": "big", "_model": "m", "_agent_id": "bulk"}).decode()
        for n in range(12_000):
            if n % 1000 == 999:
                yield '{"role": "user", "content": "cut off'
                continue
            role = "user" if n % 2 == 0 else "assistant"
            yield orjson.dumps(
                {
                    "role": role,
                    "content": f"message {n} ✓ ünïcödé",
                    "tokens": {"input": 2, "output": 1},
                    "cost": "0.001",
                }
            ).decode()

    result = await import_session(
        iter_text_lines(byte_chunks(source(), 4093)), db_factory, format="jsonl", owner="o"
    )

    assert result.imported == 11_988
    assert result.skipped == 12
    assert all(reason == "not valid JSON" for _, reason in result.problems)
    session, rows = await load(db_factory, result.session_id)
    assert rows[-1].content == "message 11998 ✓ ünïcödé"
    assert session.total_cost == Decimal("11.988")
    assert session.agent_id == "bulk"
    assert_totals_match(session, rows)


async def test_iter_text_lines_cuts_an_endless_line_instead_of_buffering_it() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a": 1}\n'
        for _ in range(MAX_LINE_CHARS // 65536 + 2):
            yield b"x" * 65536
        yield b'tail\n{"b": 2}'

    lines = [line async for line in iter_text_lines(chunks())]

    assert lines[0] == '{"a": 1}'
    assert len(lines[1]) == MAX_LINE_CHARS + 1  # reported as too long by the importer
    assert lines[2:] == ['{"b": 2}']


async def test_nul_characters_are_replaced_so_both_backends_accept_them(db_factory: Factory) -> None:
    lines = ['{"_title": "a\\u0000b"}', '{"role": "user", "content": "x\\u0000y", "thinking": "\\u0000"}']
    result = await import_session(lines, db_factory, format="jsonl", owner="o")
    session, rows = await load(db_factory, result.session_id)
    assert (session.title, rows[0].content, rows[0].thinking) == ("a\ufffdb", "x\ufffdy", "\ufffd")
