"""Session export: our `jsonl`, readable `markdown`, OpenClaw/pi session v3 and OpenAI fine-tuning JSONL.

Every format is streamed. Messages are read in pages of `PAGE_SIZE` rows by keyset pagination on `seq`,
each page in its own short database session, and each page becomes one chunk of bytes: memory stays flat
whatever the length of the session, and no connection is held while a slow client downloads. The export
covers the messages that existed when it began (`seq < next_seq` of that snapshot), so its header counts
and its lines agree even while a turn is running.

    stream = stream_export(session_id, db_factory, config, "openclaw", owner=principal)
    await stream.open()                 # SessionNotFound here, before any byte is sent
    async for chunk in stream.chunks():
        ...

`export_session(...)` (the seed's call) collects the same stream into a string and can save it under
`<exports_dir>/<agent_id>/<session_id>.<ext>`. Names on disk come only from validated ids: an agent id
must be a safe slug and a session id a canonical UUID, and the resolved path must lie inside the exports
directory. The file is written to a temporary file beside it and renamed into place.

The formats are described in docs/EXPORT.md.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio.to_thread
import orjson
from sqlalchemy import select

from aria_engine import __version__
from aria_engine.db.models import ChatMessage, ChatSession
from aria_engine.db.store import as_utc
from aria_engine.db.types import format_money
from aria_engine.exceptions import SessionNotFound, ValidationError
from aria_engine.ids import parse_session_id, validate_agent_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from aria_engine.config import EngineConfig

__all__ = [
    "FORMATS",
    "PAGE_SIZE",
    "ExportStream",
    "export_path",
    "export_session",
    "parse_session_id",
    "stream_export",
    "validate_agent_id",
]

# format -> (media type, file extension). The OpenClaw and OpenAI exports are JSON lines too; their
# extensions keep the three JSONL flavours of one session apart on disk.
FORMATS: dict[str, tuple[str, str]] = {
    "jsonl": ("application/x-ndjson", "jsonl"),
    "markdown": ("text/markdown; charset=utf-8", "md"),
    "md": ("text/markdown; charset=utf-8", "md"),
    "openclaw": ("application/x-ndjson", "openclaw.jsonl"),
    "openai": ("application/x-ndjson", "openai.jsonl"),
}
PAGE_SIZE = 500
OPENCLAW_PROVIDER = "aria-engine"
OPENCLAW_SYSTEM_TYPE = "aria-engine.system"  # customType of system rows in an OpenClaw export
MAX_OPENAI_TOOLS = 128

_OPENCLAW_STOP = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "toolUse",
    "error": "error",
    "cancelled": "aborted",
    "disconnected": "aborted",
    "interrupted": "aborted",
}


class _Message(NamedTuple):
    """One exported row. A plain tuple: attribute access on SQLAlchemy rows costs far more per row."""

    seq: int
    turn_id: uuid.UUID | None
    role: str
    content: str
    thinking: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    tool_name: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost: Decimal
    latency_ms: int | None
    ttft_ms: int | None
    finish_reason: str | None
    metadata_: dict[str, Any] | None
    created_at: datetime


_TABLE = ChatMessage.__table__.c
# Core columns in _Message's order ("metadata" is the column behind the ORM's `metadata_`).
_MESSAGE_COLUMNS = [_TABLE["metadata" if name == "metadata_" else name] for name in _Message._fields]


# -- ids and paths ---------------------------------------------------------------------------------------


def export_path(exports_dir: Path, agent_id: str, session_id: uuid.UUID, fmt: str) -> Path:
    """The file an export of `session_id` is saved to, checked to lie inside `exports_dir`.

    The directory is created if needed. A symlinked agent directory that leads elsewhere is refused.
    """
    validate_agent_id(agent_id)
    extension = _format(fmt)[1]
    base = Path(exports_dir).resolve()
    folder = base / agent_id
    folder.mkdir(parents=True, exist_ok=True)
    target = (folder / f"{session_id}.{extension}").resolve()
    if target.parent != folder.resolve() or not target.is_relative_to(base):
        raise ValidationError("The export path is outside the exports directory.")
    return target


def _write_atomically(target: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".export-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# -- the stream ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ExportStream:
    """One export in progress: headers for the HTTP response, and the body as chunks of bytes.

    `open()` loads the session and checks its owner (raising `SessionNotFound`); `chunks()` calls it
    itself, so the error comes before the first chunk either way. Call `open()` first where a status code
    must still be chosen (an HTTP handler).
    """

    session_id: uuid.UUID
    format: str
    media_type: str
    filename: str
    _db_factory: async_sessionmaker[AsyncSession] = field(repr=False)
    _owner: str | None = field(default=None, repr=False)
    _session: ChatSession | None = field(default=None, repr=False)

    @property
    def agent_id(self) -> str | None:
        return self._session.agent_id if self._session is not None else None

    async def open(self) -> ExportStream:
        if self._session is None:
            async with self._db_factory() as db:
                session = await db.get(ChatSession, self.session_id)
            if session is None or (self._owner is not None and session.owner != self._owner):
                raise SessionNotFound()
            self._session = session
        return self

    async def chunks(self) -> AsyncIterator[bytes]:
        await self.open()
        assert self._session is not None
        writer = _WRITERS[self.format](self._session)
        yield writer.header()
        async for rows in _pages(self._db_factory, self.session_id, self._session.next_seq):
            chunk = writer.rows(rows)
            if chunk:
                yield chunk
        tail = writer.footer()
        if tail:
            yield tail


def stream_export(
    session_id: str | uuid.UUID,
    db_session_factory: async_sessionmaker[AsyncSession],
    config: EngineConfig | None = None,
    format: str = "jsonl",
    *,
    owner: str | None = None,
) -> ExportStream:
    """Prepare a streamed export. Raises `ValidationError` for an unknown format, `SessionNotFound` for a
    malformed id; an unknown or foreign session raises `SessionNotFound` from `open()`/`chunks()`."""
    media_type, extension = _format(format)
    sid = parse_session_id(session_id)
    return ExportStream(
        session_id=sid,
        format=format,
        media_type=media_type,
        filename=f"{sid}.{extension}",
        _db_factory=db_session_factory,
        _owner=owner,
    )


async def export_session(
    session_id: str | uuid.UUID,
    db_session_factory: async_sessionmaker[AsyncSession],
    config: EngineConfig,
    format: str = "jsonl",
    save_to_disk: bool = False,
    *,
    owner: str | None = None,
) -> str:
    """Export a session and return the whole text (the seed's call; for small sessions and the CLI).

    With `save_to_disk`, the text is also written to `<config.exports_dir>/<agent_id>/<session_id>.<ext>`.
    """
    stream = await stream_export(session_id, db_session_factory, config, format, owner=owner).open()
    data = b"".join([chunk async for chunk in stream.chunks()])
    if save_to_disk:
        assert stream.agent_id is not None
        target = export_path(config.exports_dir, stream.agent_id, stream.session_id, format)
        await anyio.to_thread.run_sync(_write_atomically, target, data)
    return data.decode("utf-8")


def _format(fmt: str) -> tuple[str, str]:
    try:
        return FORMATS[fmt]
    except (KeyError, TypeError):
        raise ValidationError(f"Unknown export format. Valid formats: {', '.join(FORMATS)}.") from None


async def _pages(
    db_factory: async_sessionmaker[AsyncSession], session_id: uuid.UUID, end_seq: int
) -> AsyncIterator[list[_Message]]:
    after = 0
    while after < end_seq - 1:
        query = (
            select(*_MESSAGE_COLUMNS)
            .where(_TABLE.session_id == session_id, _TABLE.seq > after, _TABLE.seq < end_seq)
            .order_by(_TABLE.seq)
            .limit(PAGE_SIZE)
        )
        async with db_factory() as db:
            # A Core query on the connection: no ORM loading machinery per row.
            result = await (await db.connection()).execute(query)
            rows = [_Message._make(row) for row in result]
        if not rows:
            return
        yield rows
        after = rows[-1].seq


# -- shared value formatting -----------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


def _millis(value: datetime | None) -> int:
    value = as_utc(value)
    return int(value.timestamp() * 1000) if value else 0


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def _openai_tool_calls(value: Any) -> list[dict[str, Any]]:
    """Our stored tool calls in OpenAI's shape, with `arguments` always a JSON string."""
    calls: list[dict[str, Any]] = []
    for call in value or []:
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        calls.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {"name": str(function.get("name") or ""), "arguments": arguments},
            }
        )
    return calls


def _arguments_object(arguments: str) -> dict[str, Any]:
    # OpenClaw wants an object. A model can emit arguments that are not a JSON object; keep them whole.
    try:
        parsed = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": arguments}
    return parsed if isinstance(parsed, dict) else {"_raw": arguments}


# -- writers: one per format. header() once, rows(page) per page, footer() once. ------------------------


class _Writer(ABC):
    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.session_id = str(session.id)

    def header(self) -> bytes:
        return b""

    def rows(self, rows: Sequence[_Message]) -> bytes:
        return b"".join(self.row(row) for row in rows)

    @abstractmethod
    def row(self, row: _Message) -> bytes: ...

    def footer(self) -> bytes:
        return b""


class _JsonlWriter(_Writer):
    def header(self) -> bytes:
        s = self.session
        return _dumps(
            {
                "_format": "aria-engine.session",
                "_format_version": 1,
                "_session_id": self.session_id,
                "_agent_id": s.agent_id,
                "_title": s.title,
                "_model": s.model,
                "_session_type": s.session_type,
                "_status": s.status,
                "_system_prompt": s.system_prompt,
                "_temperature": s.temperature,
                "_max_tokens": s.max_tokens,
                "_context_window": s.context_window,
                "_message_count": s.message_count,
                "_total_tokens": s.total_tokens,
                "_input_tokens": s.input_tokens,
                "_output_tokens": s.output_tokens,
                "_reasoning_tokens": s.reasoning_tokens,
                "_total_cost": format_money(s.total_cost),
                "_metadata": s.metadata_,
                "_created_at": _iso(s.created_at),
                "_updated_at": _iso(s.updated_at),
                "_ended_at": _iso(s.ended_at),
                "_exported_at": _iso(datetime.now(UTC)),
                "_engine_version": __version__,
            }
        )

    def row(self, row: _Message) -> bytes:
        line: dict[str, Any] = {
            "role": row.role,
            "content": row.content,
            "thinking": row.thinking,
            "timestamp": _iso(row.created_at),
            "session_id": self.session_id,
            "seq": row.seq,
            "turn_id": str(row.turn_id) if row.turn_id else None,
            "model": row.model,
            "tokens": {
                "input": row.input_tokens,
                "output": row.output_tokens,
                "reasoning": row.reasoning_tokens,
            },
            "cost": format_money(row.cost),
            "latency_ms": row.latency_ms,
            "ttft_ms": row.ttft_ms,
            "finish_reason": row.finish_reason,
            "tool_calls": _openai_tool_calls(row.tool_calls) or None,
        }
        if row.role == "tool":
            line["tool_call_id"] = row.tool_call_id
            line["tool_name"] = row.tool_name
        if row.metadata_:
            line["metadata"] = row.metadata_
        return _dumps(line)


def _escape(text: str | None) -> str:
    """Markdown text that renders as the literal characters: no HTML, no links or images."""
    escaped = html.escape(text or "", quote=False)
    return escaped.replace("[", "\\[").replace("]", "\\]")


def _fenced(text: str, info: str = "") -> str:
    # A fence longer than any backtick run inside cannot be closed by the content. Code blocks are shown
    # verbatim by Markdown renderers, so their content needs no HTML escaping.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}\n"


class _MarkdownWriter(_Writer):
    def header(self) -> bytes:
        s = self.session
        lines = [
            f"# {_escape(s.title or 'Chat session')}",
            "",
            f"- Session: `{self.session_id}`",
            f"- Agent: {_escape(s.agent_id)}",
            f"- Model: {_escape(s.model)}",
            f"- Status: {_escape(s.status)}",
            f"- Created: {_iso(s.created_at)}",
        ]
        if s.ended_at:
            lines.append(f"- Ended: {_iso(s.ended_at)}")
        lines.append(f"- Exported: {_iso(datetime.now(UTC))}")
        if s.system_prompt:
            lines += ["", "**System prompt**", "", _fenced(s.system_prompt).rstrip("\n")]
        return ("\n".join(lines) + "\n\n---\n\n").encode()

    def row(self, row: _Message) -> bytes:
        parts = [f"### {row.role.capitalize()} · {_iso(row.created_at)}\n\n"]
        if row.thinking:
            parts.append(f"<details><summary>Thinking</summary>\n\n{_escape(row.thinking)}\n\n</details>\n\n")
        if row.role == "tool":
            parts.append(
                f"Result of `{_escape(row.tool_name or 'tool')}` (call {_escape(row.tool_call_id)}):\n\n"
            )
            parts.append(_fenced(row.content or "") + "\n")
        elif row.content:
            parts.append(_escape(row.content) + "\n\n")
        for call in _openai_tool_calls(row.tool_calls):
            function = call["function"]
            parts.append(f"Tool call `{_escape(function['name'])}` ({_escape(call['id'])}):\n\n")
            parts.append(_fenced(function["arguments"], "json") + "\n")
        usage = f"tokens in {row.input_tokens} · out {row.output_tokens}"
        if row.reasoning_tokens:
            usage += f" · reasoning {row.reasoning_tokens}"
        usage += f" · cost ${format_money(row.cost)}"
        if row.model:
            usage += f" · {_escape(row.model)}"
        if row.finish_reason:
            usage += f" · {row.finish_reason}"
        parts.append(f"<sub>{usage}</sub>\n\n")
        return "".join(parts).encode()

    def footer(self) -> bytes:
        s = self.session
        return (
            "---\n\n"
            f"**Totals:** {s.message_count} messages · {s.total_tokens} tokens "
            f"(input {s.input_tokens}, output {s.output_tokens}, reasoning {s.reasoning_tokens}) · "
            f"cost ${format_money(s.total_cost)}\n"
        ).encode()


class _OpenClawWriter(_Writer):
    """OpenClaw/pi session v3: a header line, then a chain of entries linked by 8-hex `id`/`parentId`."""

    def __init__(self, session: ChatSession) -> None:
        super().__init__(session)
        self._count = 0
        self._parent: str | None = None
        self._model = session.model

    def _entry(self, kind: str, when: datetime | None, **fields: Any) -> bytes:
        self._count += 1
        entry_id = f"{self._count:08x}"
        entry = {"type": kind, "id": entry_id, "parentId": self._parent, "timestamp": _iso(when), **fields}
        self._parent = entry_id
        return _dumps(entry)

    def header(self) -> bytes:
        s = self.session
        first = _dumps(
            {
                "type": "session",
                "version": 3,
                "id": self.session_id,
                "timestamp": _iso(s.created_at),
                "cwd": "",
            }
        )
        model = self._entry("model_change", s.created_at, provider=OPENCLAW_PROVIDER, modelId=s.model)
        name = self._entry("session_info", s.created_at, name=s.title) if s.title else b""
        return first + model + name

    def row(self, row: _Message) -> bytes:
        prefix = b""
        if row.role == "assistant" and row.model and row.model != self._model:
            self._model = row.model
            prefix = self._entry(
                "model_change", row.created_at, provider=OPENCLAW_PROVIDER, modelId=row.model
            )
        if row.role == "system":
            return prefix + self._entry(
                "custom_message",
                row.created_at,
                customType=OPENCLAW_SYSTEM_TYPE,
                content=row.content or "",
                display=False,
            )
        return prefix + self._entry("message", row.created_at, message=self._message(row))

    def _message(self, row: _Message) -> dict[str, Any]:
        when = _millis(row.created_at)
        text = [{"type": "text", "text": row.content}] if row.content else []
        if row.role == "tool":
            is_error = (
                bool((row.metadata_ or {}).get("is_error")) or (row.metadata_ or {}).get("success") is False
            )
            return {
                "role": "toolResult",
                "toolCallId": row.tool_call_id or "",
                "toolName": row.tool_name or "",
                "content": text,
                "isError": is_error,
                "timestamp": when,
            }
        if row.role != "assistant":
            return {"role": "user", "content": text, "timestamp": when}
        blocks: list[dict[str, Any]] = []
        if row.thinking:
            blocks.append({"type": "thinking", "thinking": row.thinking})
        blocks += text
        for call in _openai_tool_calls(row.tool_calls):
            blocks.append(
                {
                    "type": "toolCall",
                    "id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": _arguments_object(call["function"]["arguments"]),
                }
            )
        cost = float(row.cost or 0)
        return {
            "role": "assistant",
            "content": blocks,
            "api": "openai-completions",
            "provider": OPENCLAW_PROVIDER,
            "model": row.model or self._model,
            "usage": {
                "input": row.input_tokens,
                "output": row.output_tokens,
                "cacheRead": 0,
                "cacheWrite": 0,
                "totalTokens": row.input_tokens + row.output_tokens,
                # Only the total is stored per message; the split by kind is not known here.
                "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "total": cost},
            },
            "stopReason": _OPENCLAW_STOP.get(row.finish_reason or "stop", "stop"),
            "timestamp": when,
        }


class _OpenAIWriter(_Writer):
    """One line per session: {"messages": [...], "tools": [...]}, written a page at a time.

    `tools` goes after `messages` (JSON objects are unordered) so the tool names can be gathered while
    the messages stream; their real schemas are not stored, so each gets a permissive object schema.
    """

    def __init__(self, session: ChatSession) -> None:
        super().__init__(session)
        self._first = True
        self._tools: dict[str, None] = {}

    def _item(self, message: dict[str, Any]) -> bytes:
        data = orjson.dumps(message)
        if self._first:
            self._first = False
            return data
        return b"," + data

    def header(self) -> bytes:
        start = b'{"messages":['
        if self.session.system_prompt:
            start += self._item({"role": "system", "content": self.session.system_prompt})
        return start

    def row(self, row: _Message) -> bytes:
        if row.role == "tool":
            return self._item(
                {"role": "tool", "tool_call_id": row.tool_call_id or "", "content": row.content}
            )
        message: dict[str, Any] = {"role": row.role, "content": row.content}
        calls = _openai_tool_calls(row.tool_calls) if row.role == "assistant" else []
        if calls:
            message["tool_calls"] = calls
            message["content"] = row.content or None
            for call in calls:
                if len(self._tools) < MAX_OPENAI_TOOLS:
                    self._tools.setdefault(call["function"]["name"], None)
        return self._item(message)

    def footer(self) -> bytes:
        end = b"]"
        if self._tools:
            tools = [
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": "",
                        "parameters": {"type": "object", "properties": {}, "additionalProperties": True},
                    },
                }
                for name in self._tools
            ]
            end += b',"tools":' + orjson.dumps(tools)
        return end + b"}\n"


_WRITERS: dict[str, type[_Writer]] = {
    "jsonl": _JsonlWriter,
    "markdown": _MarkdownWriter,
    "md": _MarkdownWriter,
    "openclaw": _OpenClawWriter,
    "openai": _OpenAIWriter,
}
