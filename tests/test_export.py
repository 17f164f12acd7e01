"""Exports: the four formats, ownership, safe file names, and flat memory on a 100,000-message session.

Sessions are written straight through the ORM (the engine is not needed to read them back), with the
counters equal to the sums over the rows, as the store keeps them.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aria_engine.config import EngineConfig
from aria_engine.db.models import ChatMessage, ChatSession
from aria_engine.exceptions import SessionNotFound, ValidationError
from aria_engine.export import FORMATS, export_path, export_session, stream_export

Factory = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class Msg:
    role: str
    content: str = ""
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)
    finish_reason: str | None = None
    metadata: dict[str, Any] | None = field(default=None)


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_conversation() -> list[Msg]:
    """A turn with thinking, a tool call and its result, then a second turn on another model."""
    return [
        Msg("system", "Be brief."),
        Msg("user", "What is 6*7? <script>alert('x')</script>"),
        Msg(
            "assistant",
            "",
            thinking="I should use the calculator.",
            tool_calls=[call("call_1", "calculate", '{"expression": "6*7"}')],
            model="gpt-test",
            input_tokens=40,
            output_tokens=12,
            cost=Decimal("0.000123"),
            finish_reason="tool_calls",
        ),
        Msg("tool", "42", tool_call_id="call_1", tool_name="calculate"),
        Msg(
            "assistant",
            "It is **42**.",
            model="gpt-test",
            input_tokens=60,
            output_tokens=5,
            cost=Decimal("0.0000456"),
            finish_reason="stop",
        ),
        Msg("user", "Thanks"),
        Msg(
            "assistant",
            "You're welcome",
            model="other-model",
            input_tokens=70,
            output_tokens=3,
            cost=Decimal("0.00001"),
            finish_reason="cancelled",
        ),
    ]


async def make_session(
    db_factory: Factory,
    messages: list[Msg],
    *,
    owner: str = "alice",
    agent_id: str = "main",
    title: str | None = "Arithmetic",
    model: str = "gpt-test",
    system_prompt: str | None = None,
) -> uuid.UUID:
    session_id = uuid.uuid4()
    turn = uuid.uuid4()
    async with db_factory() as db, db.begin():
        db.add(
            ChatSession(
                id=session_id,
                owner=owner,
                agent_id=agent_id,
                title=title,
                model=model,
                system_prompt=system_prompt,
                created_at=T0,
                updated_at=T0,
                message_count=len(messages),
                input_tokens=sum(m.input_tokens for m in messages),
                output_tokens=sum(m.output_tokens for m in messages),
                reasoning_tokens=sum(m.reasoning_tokens for m in messages),
                total_tokens=sum(m.input_tokens + m.output_tokens for m in messages),
                total_cost=sum((m.cost for m in messages), Decimal(0)),
                next_seq=len(messages) + 1,
            )
        )
        await db.flush()
        for seq, m in enumerate(messages, start=1):
            if m.role == "user":
                turn = uuid.uuid4()
            db.add(
                ChatMessage(
                    session_id=session_id,
                    seq=seq,
                    turn_id=turn,
                    role=m.role,
                    content=m.content,
                    thinking=m.thinking,
                    tool_calls=m.tool_calls,
                    tool_call_id=m.tool_call_id,
                    tool_name=m.tool_name,
                    model=m.model,
                    input_tokens=m.input_tokens,
                    output_tokens=m.output_tokens,
                    reasoning_tokens=m.reasoning_tokens,
                    cost=m.cost,
                    finish_reason=m.finish_reason,
                    metadata_=m.metadata,
                    created_at=T0 + timedelta(seconds=seq),
                )
            )
    return session_id


async def collect(stream: Any) -> bytes:
    return b"".join([chunk async for chunk in stream.chunks()])


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


# -- formats ---------------------------------------------------------------------------------------------


async def test_jsonl_has_an_underscore_header_then_one_object_per_message(db_factory: Factory) -> None:
    sid = await make_session(db_factory, tool_conversation())
    stream = stream_export(str(sid), db_factory, None, "jsonl")
    assert (stream.media_type, stream.filename) == ("application/x-ndjson", f"{sid}.jsonl")

    header, *rows = lines_of(await collect(stream))

    assert all(key.startswith("_") for key in header)
    assert header["_session_id"] == str(sid)
    assert header["_message_count"] == 7
    assert header["_total_tokens"] == 190
    assert Decimal(header["_total_cost"]) == Decimal("0.0001786")
    assert header["_created_at"] == "2026-01-02T03:04:05Z"
    assert [row["seq"] for row in rows] == [1, 2, 3, 4, 5, 6, 7]
    first_call = rows[2]
    assert first_call["thinking"] == "I should use the calculator."
    assert first_call["tool_calls"] == [call("call_1", "calculate", '{"expression": "6*7"}')]
    assert first_call["tokens"] == {"input": 40, "output": 12, "reasoning": 0}
    assert first_call["cost"] == "0.000123"
    assert first_call["timestamp"] == "2026-01-02T03:04:08Z"
    assert (rows[3]["tool_call_id"], rows[3]["tool_name"]) == ("call_1", "calculate")
    assert "tool_call_id" not in rows[1]


async def test_markdown_escapes_message_text_so_html_stays_inert(db_factory: Factory) -> None:
    messages = tool_conversation()
    messages.append(Msg("user", "[click](javascript:alert(1)) <img src=x onerror=alert(1)> ``` fence"))
    sid = await make_session(db_factory, messages, title="<b>Title</b>")

    text = (await collect(stream_export(sid, db_factory, None, "md"))).decode()

    assert "<script>" not in text and "&lt;script&gt;alert('x')&lt;/script&gt;" in text
    assert "<img" not in text and "<b>" not in text
    assert "\\[click\\](javascript:alert(1))" in text
    assert "<details><summary>Thinking</summary>" in text
    assert "Tool call `calculate` (call_1)" in text
    assert "**Totals:** 8 messages · 190 tokens" in text


async def test_openclaw_export_is_a_v3_session_tree(db_factory: Factory) -> None:
    sid = await make_session(db_factory, tool_conversation())

    header, *entries = lines_of(await collect(stream_export(sid, db_factory, None, "openclaw")))

    assert header == {
        "type": "session",
        "version": 3,
        "id": str(sid),
        "timestamp": "2026-01-02T03:04:05Z",
        "cwd": "",
    }
    parents = [None] + [entry["id"] for entry in entries[:-1]]
    assert [entry["parentId"] for entry in entries] == parents
    assert all(len(entry["id"]) == 8 and int(entry["id"], 16) >= 0 for entry in entries)
    kinds = [entry["type"] for entry in entries]
    assert kinds[:3] == ["model_change", "session_info", "custom_message"]
    assert kinds.count("model_change") == 2  # the session's model, then the switch to other-model
    messages = [entry["message"] for entry in entries if entry["type"] == "message"]
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "toolResult",
        "assistant",
        "user",
        "assistant",
    ]
    first = messages[1]
    assert first["content"] == [
        {"type": "thinking", "thinking": "I should use the calculator."},
        {"type": "toolCall", "id": "call_1", "name": "calculate", "arguments": {"expression": "6*7"}},
    ]
    assert first["stopReason"] == "toolUse"
    assert first["usage"]["input"] == 40 and first["usage"]["totalTokens"] == 52
    assert first["usage"]["cost"]["total"] == pytest.approx(0.000123)
    assert messages[2] == {
        "role": "toolResult",
        "toolCallId": "call_1",
        "toolName": "calculate",
        "content": [{"type": "text", "text": "42"}],
        "isError": False,
        "timestamp": messages[2]["timestamp"],
    }
    assert messages[5]["stopReason"] == "aborted" and messages[5]["model"] == "other-model"


async def test_openai_export_is_one_fine_tuning_line_with_tools(db_factory: Factory) -> None:
    sid = await make_session(db_factory, tool_conversation(), system_prompt="You are Aria.")

    data = await collect(stream_export(sid, db_factory, None, "openai"))

    assert data.count(b"\n") == 1
    line = orjson.loads(data)
    roles = [m["role"] for m in line["messages"]]
    assert roles == ["system", "system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert line["messages"][3]["tool_calls"] == [call("call_1", "calculate", '{"expression": "6*7"}')]
    assert line["messages"][3]["content"] is None
    assert line["messages"][4] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    assert [tool["function"]["name"] for tool in line["tools"]] == ["calculate"]
    assert line["tools"][0]["function"]["parameters"]["type"] == "object"


async def test_openai_export_without_tool_use_has_no_tools_key(db_factory: Factory) -> None:
    sid = await make_session(db_factory, [Msg("user", "hi"), Msg("assistant", "hello")])
    line = orjson.loads(await collect(stream_export(sid, db_factory, None, "openai")))
    assert "tools" not in line
    assert line["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
async def test_every_format_exports_an_empty_session(db_factory: Factory, fmt: str) -> None:
    sid = await make_session(db_factory, [])
    assert await collect(stream_export(sid, db_factory, None, fmt))


# -- ownership and errors --------------------------------------------------------------------------------


async def test_unknown_and_foreign_sessions_fail_before_the_first_chunk(db_factory: Factory) -> None:
    sid = await make_session(db_factory, [Msg("user", "secret")], owner="alice")

    with pytest.raises(SessionNotFound):
        await stream_export(sid, db_factory, None, "jsonl", owner="mallory").open()
    chunks = stream_export(uuid.uuid4(), db_factory, None, "jsonl").chunks()
    with pytest.raises(SessionNotFound):
        await anext(chunks)
    with pytest.raises(SessionNotFound):
        await export_session(str(sid), db_factory, EngineConfig(), "jsonl", owner="mallory")
    assert b"secret" in await collect(stream_export(sid, db_factory, None, "jsonl", owner="alice"))


@pytest.mark.parametrize("fmt", ["pdf", "JSONL", "", "../jsonl"])
def test_unknown_format_is_a_validation_error(fmt: str) -> None:
    with pytest.raises(ValidationError):
        stream_export(uuid.uuid4(), None, None, fmt)  # type: ignore[arg-type]


# -- saving to disk --------------------------------------------------------------------------------------


async def test_save_to_disk_writes_the_export_atomically_under_the_agent(
    db_factory: Factory, tmp_path: Path
) -> None:
    config = EngineConfig(memories_path=tmp_path / "memories")
    sid = await make_session(db_factory, tool_conversation(), agent_id="helper-2")

    content = await export_session(str(sid), db_factory, config, format="openclaw", save_to_disk=True)

    target = config.exports_dir / "helper-2" / f"{sid}.openclaw.jsonl"
    assert target.read_text() == content
    assert os.listdir(target.parent) == [target.name]  # no temporary file left behind


ATTACKS = [
    "../../etc/passwd",
    "..",
    "a/b",
    "x\x00y",
    "/tmp/evil",
    "urn:uuid:12345678-1234-5678-1234-567812345678",
    "{12345678-1234-5678-1234-567812345678}",
    "12345678123456781234567812345678",
    "12345678-1234-5678-1234-567812345678/../../x",
    " 12345678-1234-5678-1234-567812345678",
]


@pytest.mark.parametrize("session_id", ATTACKS)
async def test_hostile_session_ids_are_refused(db_factory: Factory, tmp_path: Path, session_id: str) -> None:
    config = EngineConfig(memories_path=tmp_path / "memories")
    with pytest.raises(SessionNotFound):
        await export_session(session_id, db_factory, config, "jsonl", save_to_disk=True)
    assert not config.exports_dir.exists()


UNSAFE_AGENTS = ["..", "../escape", "a/b", "/abs", ".hidden", "", "-x", "a b", "dir\\..\\x"]


@pytest.mark.parametrize("agent_id", UNSAFE_AGENTS)
async def test_unsafe_agent_ids_never_write_outside_the_exports_dir(
    db_factory: Factory, tmp_path: Path, agent_id: str
) -> None:
    config = EngineConfig(memories_path=tmp_path / "memories")
    # Session creation refuses such ids; a row written past that check must still not escape on export.
    sid = await make_session(db_factory, [Msg("user", "hi")], agent_id=agent_id)
    before = tree(tmp_path)

    with pytest.raises(ValidationError):
        await export_session(sid, db_factory, config, "jsonl", save_to_disk=True)

    assert tree(tmp_path) == before


@pytest.mark.parametrize("agent_id", [*UNSAFE_AGENTS, "x\x00", "main\x00/../..", "a" * 65])
def test_export_path_refuses_unsafe_agent_ids(tmp_path: Path, agent_id: str) -> None:
    # NUL and over-long ids cannot even be stored by PostgreSQL: checked here, without a database.
    with pytest.raises(ValidationError):
        export_path(tmp_path / "exports", agent_id, uuid.uuid4(), "jsonl")
    assert not (tmp_path / "exports").exists() or tree(tmp_path / "exports") == []


def test_a_symlinked_agent_directory_leading_outside_is_refused(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    outside = tmp_path / "outside"
    outside.mkdir()
    exports.mkdir()
    (exports / "main").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ValidationError):
        export_path(exports, "main", uuid.uuid4(), "jsonl")
    assert export_path(exports, "other", uuid.UUID(int=1), "md") == (
        exports.resolve() / "other" / "00000000-0000-0000-0000-000000000001.md"
    )


# -- memory ----------------------------------------------------------------------------------------------

BIG = 100_000
# 540 characters per message, one word: the full-text indexes (GIN / FTS5) then cost little to fill.
BODY = "x" * 540

# The rows are generated by the database itself: 100,000 ORM inserts would dominate the test's time.
_GENERATE = {
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
        "INSERT INTO chat_messages (id, session_id, seq, role, content, input_tokens, output_tokens, "
        "reasoning_tokens, cost, created_at) "
        "SELECT lower(hex(randomblob(16))), :sid, i, CASE i % 2 WHEN 1 THEN 'user' ELSE 'assistant' END, "
        ":body, 1, 0, 0, 0, '2026-01-02 03:04:05.000000' FROM n"
    ),
    "postgresql": (
        "INSERT INTO chat_messages (id, session_id, seq, role, content, input_tokens, output_tokens, "
        "reasoning_tokens, cost, created_at) "
        "SELECT gen_random_uuid(), CAST(:sid AS uuid), i, "
        "CASE i % 2 WHEN 1 THEN 'user' ELSE 'assistant' END, :body, 1, 0, 0, 0, now() "
        "FROM generate_series(1, :count) AS i"
    ),
}


async def test_a_100k_message_export_streams_in_flat_memory(db_factory: Factory) -> None:
    sid = await make_session(db_factory, [])
    async with db_factory() as db, db.begin():
        dialect = db.bind.dialect.name
        # SQLite keeps UUIDs as 32 hex digits, PostgreSQL as its uuid type.
        sid_param = sid.hex if dialect == "sqlite" else str(sid)
        await db.execute(text(_GENERATE[dialect]), {"count": BIG, "sid": sid_param, "body": BODY})
        await db.execute(
            ChatSession.__table__.update()
            .where(ChatSession.id == sid)
            .values(next_seq=BIG + 1, message_count=BIG, input_tokens=BIG, total_tokens=BIG)
        )
        assert (await db.execute(select(func.count()).where(ChatMessage.session_id == sid))).scalar() == BIG

    gc.collect()
    tracemalloc.start()
    try:
        total = lines = 0
        async for chunk in stream_export(sid, db_factory, None, "jsonl").chunks():
            total += len(chunk)
            lines += chunk.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert lines == BIG + 1
    assert total > 60_000_000  # the whole text would need this much memory at least
    assert peak < 16_000_000, f"peak {peak} bytes while streaming {total} bytes"


async def test_pages_follow_seq_and_stop_at_the_snapshot_taken_on_open(db_factory: Factory) -> None:
    messages = [Msg("user" if n % 2 else "assistant", f"m{n}") for n in range(1, 1203)]
    sid = await make_session(db_factory, messages)
    stream = await stream_export(sid, db_factory, None, "jsonl").open()
    # A turn that lands after the export began is not half-included: the header's counts and the lines agree.
    async with db_factory() as db, db.begin():
        db.add(ChatMessage(session_id=sid, seq=1203, role="user", content="late", created_at=T0))

    header, *rows = lines_of(await collect(stream))

    assert header["_message_count"] == len(rows) == 1202
    assert [row["content"] for row in rows] == [f"m{n}" for n in range(1, 1203)]
