"""Session import: our `jsonl` export and OpenClaw/pi session v3 transcripts become a new session.

Input is a stream of text lines (a file, an HTTP upload through `iter_text_lines`), never loaded whole:

1. Scan: each line is parsed once, bad lines are reported (line number and reason) and skipped, good
   lines are spooled to a temporary file (in memory up to `SPOOL_MEMORY` bytes, then on disk). For
   OpenClaw only the tree is indexed (entry id -> parent id), to find the active branch: the path from
   the last entry (the leaf) up to the root.
2. Write: the spool is read back and converted row by row; rows are inserted in batches of `BATCH_SIZE`
   in ONE transaction together with the new session and its counters, so an import lands whole or not
   at all. Reading the upload happens before the transaction, so a slow client never holds it open.

Counters are set from the rows written (message_count, tokens, total_cost, next_seq), so the session
totals equal the sums over its messages, as everywhere else. Imported sessions get a new id, the given
owner and fresh turn ids; the source's own ids are kept in the session metadata under `imported_from`.
"""

from __future__ import annotations

import codecs
import tempfile
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import IO, TYPE_CHECKING, Any

import orjson
from sqlalchemy import insert, update

from aria_engine.db.models import ChatMessage, ChatSession
from aria_engine.db.types import to_money
from aria_engine.exceptions import PayloadTooLarge, ValidationError
from aria_engine.export import OPENCLAW_SYSTEM_TYPE, validate_agent_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = [
    "BATCH_SIZE",
    "IMPORT_FORMATS",
    "MAX_LINE_CHARS",
    "ImportResult",
    "detect_format",
    "import_session",
    "iter_text_lines",
]

IMPORT_FORMATS = ("jsonl", "openclaw")
BATCH_SIZE = 500
MAX_LINE_CHARS = 8 * 1024 * 1024
MAX_PROBLEMS = 100  # problems listed in the result; every skipped line is still counted
MAX_TREE_ENTRIES = 2_000_000  # bounds the OpenClaw id index (a few dozen bytes per entry)
SPOOL_MEMORY = 8 * 1024 * 1024

_ROLES = frozenset({"user", "assistant", "tool", "system"})
_FINISH_REASONS = frozenset(
    {"stop", "length", "tool_calls", "cancelled", "error", "disconnected", "interrupted"}
)
_FROM_OPENCLAW_STOP = {
    "stop": "stop",
    "length": "length",
    "toolUse": "tool_calls",
    "error": "error",
    "aborted": "cancelled",
}
# OpenClaw entry types that carry no conversation message; they are read (model, title) or passed over.
_OPENCLAW_META = frozenset(
    {
        "model_change",
        "thinking_level_change",
        "session_info",
        "label",
        "custom",
        "compaction",
        "branch_summary",
    }
)
_INT32 = 2**31 - 1


@dataclass(slots=True)
class ImportResult:
    """What an import did: the new session, rows written, lines skipped and why (first MAX_PROBLEMS)."""

    session_id: str
    imported: int
    skipped: int
    problems: list[tuple[int, str]] = field(default_factory=list)
    off_branch: int = 0  # OpenClaw entries on branches other than the active one (not imported)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "imported": self.imported,
            "skipped": self.skipped,
            "off_branch": self.off_branch,
            "problems": [{"line": line, "reason": reason} for line, reason in self.problems],
        }


class _Skip(Exception):
    """A line that cannot be imported; the reason is safe to show (it never quotes the input)."""


@dataclass(slots=True)
class _Report:
    skipped: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, line: int, reason: str) -> None:
        self.skipped += 1
        self.note(line, reason)

    def note(self, line: int, reason: str) -> None:
        """A problem that did not cost a line (a header field replaced by its default, a broken chain)."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((line, reason))


# -- input -----------------------------------------------------------------------------------------------


async def iter_text_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Split a byte stream (an HTTP upload) into text lines, decoding UTF-8 incrementally.

    Memory is bounded: a line longer than MAX_LINE_CHARS is cut there and the rest of it dropped, so the
    importer reports it as too long instead of buffering it. The unfinished line is kept as a list of
    pieces, so a line spread over many chunks is joined once, not re-copied per chunk.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending: list[str] = []
    size = 0
    dropping = False
    async for chunk in chunks:
        pieces = decoder.decode(chunk).split("\n")
        if len(pieces) > 1:
            if not dropping:
                yield "".join([*pending, pieces[0]])
            dropping = False
            for line in pieces[1:-1]:
                yield line
            pending, size = [], 0
        if not dropping and pieces[-1]:
            pending.append(pieces[-1])
            size += len(pieces[-1])
            if size > MAX_LINE_CHARS:
                yield "".join(pending)[: MAX_LINE_CHARS + 1]
                pending, size, dropping = [], 0, True
    tail = "".join([*pending, decoder.decode(b"", final=True)])
    if tail and not dropping:
        yield tail


async def _aiter(lines: AsyncIterable[str] | Iterable[str]) -> AsyncIterator[str]:
    if isinstance(lines, AsyncIterable):
        async for line in lines:
            yield line
    else:
        for line in lines:
            yield line


async def _parsed(
    lines: AsyncIterable[str] | Iterable[str], report: _Report
) -> AsyncIterator[tuple[int, Any]]:
    """(line number, JSON object) for every good line; blank lines are ignored, bad ones reported."""
    number = 0
    async for raw in _aiter(lines):
        number += 1
        text = raw.strip().lstrip("\ufeff")
        if not text:
            continue
        if len(text) > MAX_LINE_CHARS:
            report.skip(number, "line too long")
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            report.skip(number, "not valid JSON")
            continue
        if not isinstance(value, dict):
            report.skip(number, "not a JSON object")
            continue
        yield number, value


def detect_format(first_line: str) -> str:
    """`openclaw` when the line is an OpenClaw/pi session header, else `jsonl`."""
    try:
        value = orjson.loads(first_line.strip().lstrip("\ufeff") or "null")
    except orjson.JSONDecodeError:
        return "jsonl"
    return "openclaw" if isinstance(value, dict) and value.get("type") == "session" else "jsonl"


class _Spool:
    """Good lines parked between the scan and the write: `[line, key]\\t<json>` records."""

    def __init__(self) -> None:
        # Closed by close(), which import_session calls in a finally block.
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115

    def put(self, line: int, key: str | None, value: dict[str, Any]) -> None:
        # orjson escapes tabs inside strings, so the first raw tab ends the prefix.
        self.file.write(orjson.dumps([line, key]) + b"\t" + orjson.dumps(value) + b"\n")

    def __iter__(self) -> Iterator[tuple[int, str | None, dict[str, Any]]]:
        self.file.seek(0)
        for record in self.file:
            prefix, _, data = record.partition(b"\t")
            line, key = orjson.loads(prefix)
            yield line, key, orjson.loads(data)

    def close(self) -> None:
        self.file.close()


# -- value checks (shared) -------------------------------------------------------------------------------


def _count(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT32:
        raise _Skip(f"{name} is not a token count")
    return value


def _cost(value: Any) -> Decimal:
    if value is None:
        return to_money(0)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Skip("cost is not a number")
    try:
        amount = to_money(value)
    except (InvalidOperation, ValueError):
        raise _Skip("cost is not a number") from None
    if not amount.is_finite() or amount < 0 or amount > 10**6:
        raise _Skip("cost is out of range")
    return amount


def _text(value: Any, name: str, limit: int | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or (limit is not None and len(value) > limit):
        raise _Skip(f"{name} is not valid")
    return _clean(value)


def _clean(value: str) -> str:
    # PostgreSQL text cannot hold NUL; replace it on both backends so an import means the same everywhere.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _millis_or_none(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT32:
        raise _Skip("a duration is not valid")
    return value


def _when(value: Any) -> datetime | None:
    """An ISO 8601 string or epoch milliseconds, as an aware UTC datetime; None when absent or unreadable."""
    try:
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _tool_calls(value: Any) -> list[dict[str, Any]] | None:
    """OpenAI-shaped tool calls with `arguments` as a JSON string."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Skip("tool_calls is not a list")
    calls = []
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _Skip("a tool call is not valid")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        call_id = call.get("id")
        calls.append(
            {
                "id": call_id if isinstance(call_id, str) else "",
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return calls or None


# -- our jsonl -------------------------------------------------------------------------------------------


class _JsonlSource:
    """Our own export: a `_`-prefixed header object, then one object per message in seq order."""

    format = "jsonl"

    def __init__(self) -> None:
        self.header: dict[str, Any] = {}
        self.agent_id: str | None = None
        self.title: str | None = None
        self.model: str | None = None

    async def scan(self, lines: AsyncIterable[str] | Iterable[str], spool: _Spool, report: _Report) -> None:
        async for number, value in _parsed(lines, report):
            if value and all(isinstance(key, str) and key.startswith("_") for key in value):
                if not self.header:
                    self.header = value
                    self.agent_id = _header_agent(value.get("_agent_id"), report, number)
                continue
            spool.put(number, None, value)

    def session_fields(self) -> dict[str, Any]:
        h = self.header
        fields: dict[str, Any] = {
            "title": _clip(h.get("_title"), 200),
            "model": _clip(h.get("_model"), 200),
            "session_type": _clip(h.get("_session_type"), 32) or "interactive",
            "system_prompt": _text(h.get("_system_prompt"), "system prompt")
            if isinstance(h.get("_system_prompt"), str)
            else None,
            "status": "ended" if h.get("_status") == "ended" else "active",
            "created_at": _when(h.get("_created_at")),
            "ended_at": _when(h.get("_ended_at")) if h.get("_status") == "ended" else None,
            "metadata_": h.get("_metadata") if isinstance(h.get("_metadata"), dict) else None,
        }
        temperature = h.get("_temperature")
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            fields["temperature"] = float(temperature)
        for key in ("max_tokens", "context_window"):
            value = h.get(f"_{key}")
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _INT32:
                fields[key] = value
        fields["agent_id"] = self.agent_id
        fields["source_id"] = h.get("_session_id") if isinstance(h.get("_session_id"), str) else None
        return fields

    def rows(self, spool: _Spool, report: _Report) -> Iterator[dict[str, Any]]:
        turns = _TurnIds()
        for number, _key, value in spool:
            try:
                row = self._row(value, turns)
            except _Skip as exc:
                report.skip(number, str(exc))
                continue
            if row["role"] == "assistant" and row["model"]:
                self.model = row["model"]
            yield row

    @staticmethod
    def _row(value: dict[str, Any], turns: _TurnIds) -> dict[str, Any]:
        role = value.get("role")
        if role not in _ROLES:
            raise _Skip("unknown role")
        tokens = value.get("tokens") or {}
        if not isinstance(tokens, dict):
            raise _Skip("tokens is not an object")
        finish = value.get("finish_reason")
        metadata = value.get("metadata")
        is_tool = role == "tool"
        return {
            "role": role,
            "turn_id": turns.map(value.get("turn_id")),
            "content": _text(value.get("content"), "content") or "",
            "thinking": _text(value.get("thinking"), "thinking"),
            "tool_calls": _tool_calls(value.get("tool_calls")),
            "tool_call_id": _text(value.get("tool_call_id"), "tool_call_id", 128) if is_tool else None,
            "tool_name": _text(value.get("tool_name"), "tool_name", 128) if is_tool else None,
            "model": _text(value.get("model"), "model", 200),
            "input_tokens": _count(tokens.get("input"), "tokens.input"),
            "output_tokens": _count(tokens.get("output"), "tokens.output"),
            "reasoning_tokens": _count(tokens.get("reasoning"), "tokens.reasoning"),
            "cost": _cost(value.get("cost")),
            "latency_ms": _millis_or_none(value.get("latency_ms")),
            "ttft_ms": _millis_or_none(value.get("ttft_ms")),
            "finish_reason": finish if finish in _FINISH_REASONS else None,
            "metadata_": metadata if isinstance(metadata, dict) else None,
            "created_at": _when(value.get("timestamp")),
        }


class _TurnIds:
    """Fresh turn ids for imported rows. A turn's rows are contiguous, so one mapping at a time is enough."""

    def __init__(self) -> None:
        self._source: Any = None
        self._current: uuid.UUID | None = None

    def map(self, source: Any) -> uuid.UUID | None:
        if source is None:
            return None
        if source != self._source:
            self._source, self._current = source, uuid.uuid4()
        return self._current


# -- OpenClaw / pi session v3 ----------------------------------------------------------------------------


class _OpenClawSource:
    """An OpenClaw/pi transcript: a `session` header, then entries forming a tree by `id`/`parentId`.

    Only the active branch is imported: the path from the last entry (the leaf) to the root, in file
    order. Entries without an `id` (version 1 files) are chained to the entry before them.
    """

    format = "openclaw"

    def __init__(self) -> None:
        self.header: dict[str, Any] = {}
        self.parents: dict[str, str | None] = {}
        self.leaf: str | None = None
        self.path: set[str] = set()
        self.title: str | None = None
        self.model: str | None = None
        self.off_branch = 0

    async def scan(self, lines: AsyncIterable[str] | Iterable[str], spool: _Spool, report: _Report) -> None:
        async for number, value in _parsed(lines, report):
            if value.get("type") == "session" and "parentId" not in value:
                if self.header:
                    report.skip(number, "a second session header")
                else:
                    self.header = value
                continue
            entry_id = value.get("id")
            if not isinstance(entry_id, str) or not entry_id:
                entry_id, parent = f"#{number}", self.leaf  # version 1: a linear list
            else:
                parent = value.get("parentId")
                if not isinstance(parent, str):
                    parent = None
            if entry_id in self.parents:
                report.skip(number, "duplicate entry id")
                continue
            if len(self.parents) >= MAX_TREE_ENTRIES:
                raise PayloadTooLarge("The transcript has too many entries to import.")
            self.parents[entry_id] = parent
            self.leaf = entry_id
            spool.put(number, entry_id, value)
        self._trace_path(report)

    def _trace_path(self, report: _Report) -> None:
        node = self.leaf
        while node is not None and node not in self.path:
            self.path.add(node)
            parent = self.parents.get(node)
            if parent is not None and parent not in self.parents:
                report.note(0, "the active branch refers to a missing parent entry; it starts after the gap")
                break
            node = parent
        self.off_branch = len(self.parents) - len(self.path)
        self.parents.clear()  # the index is no longer needed; free it before the write

    def session_fields(self) -> dict[str, Any]:
        h = self.header
        return {
            "created_at": _when(h.get("timestamp")),
            "source_id": h.get("id") if isinstance(h.get("id"), str) else None,
            "source_cwd": h.get("cwd") if isinstance(h.get("cwd"), str) else None,
            "source_version": h.get("version", 1),
        }

    def rows(self, spool: _Spool, report: _Report) -> Iterator[dict[str, Any]]:
        turn: uuid.UUID | None = None
        current_model: str | None = None
        for number, key, entry in spool:
            if key not in self.path:
                continue
            kind = entry.get("type")
            try:
                if kind in _OPENCLAW_META:
                    current_model = self._meta(kind, entry) or current_model
                    continue
                row = self._row(kind, entry, current_model)
            except _Skip as exc:
                report.skip(number, str(exc))
                continue
            if row["role"] == "user":
                turn = uuid.uuid4()  # OpenClaw has no turns: each user message opens one
            row["turn_id"] = turn
            row["created_at"] = _when(entry.get("timestamp"))
            yield row

    def _meta(self, kind: str, entry: dict[str, Any]) -> str | None:
        if kind == "session_info" and isinstance(entry.get("name"), str):
            self.title = _clean(entry["name"][:200])
        if kind == "model_change" and isinstance(entry.get("modelId"), str):
            self.model = _clean(entry["modelId"][:200])
            return self.model
        return None

    def _row(self, kind: Any, entry: dict[str, Any], current_model: str | None) -> dict[str, Any]:
        if kind == "custom_message" and entry.get("customType") == OPENCLAW_SYSTEM_TYPE:
            return _blank_row("system", content=_joined_text(entry.get("content")))
        if kind != "message":
            raise _Skip("unsupported entry type")
        message = entry.get("message")
        if not isinstance(message, dict):
            raise _Skip("message entry without a message")
        role = message.get("role")
        if role == "user":
            return _blank_row("user", content=_joined_text(message.get("content")))
        if role == "toolResult":
            row = _blank_row("tool", content=_joined_text(message.get("content")))
            row["tool_call_id"] = _text(message.get("toolCallId"), "toolCallId", 128)
            row["tool_name"] = _text(message.get("toolName"), "toolName", 128)
            if message.get("isError") is True:
                row["metadata_"] = {"is_error": True}
            return row
        if role == "assistant":
            return self._assistant(message, current_model)
        raise _Skip("unsupported message role")

    def _assistant(self, message: dict[str, Any], current_model: str | None) -> dict[str, Any]:
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise _Skip("assistant content is not valid")
        texts, thoughts, calls = [], [], []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                thoughts.append(block["thinking"])
            elif kind == "toolCall":
                calls.append(_openclaw_tool_call(block))
        usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
        cost = usage.get("cost") if isinstance(usage.get("cost"), dict) else {}
        model = _text(message.get("model"), "model", 200) or current_model
        if model:
            self.model = model
        row = _blank_row("assistant", content="".join(texts))
        row.update(
            thinking="\n\n".join(thoughts) or None,
            tool_calls=calls or None,
            model=model,
            # OpenAI counts cached prompt tokens inside the input; OpenClaw (like Anthropic) apart.
            input_tokens=_count(usage.get("input"), "usage.input")
            + _count(usage.get("cacheRead"), "usage.cacheRead")
            + _count(usage.get("cacheWrite"), "usage.cacheWrite"),
            output_tokens=_count(usage.get("output"), "usage.output"),
            cost=_cost(cost.get("total")),
            finish_reason=_FROM_OPENCLAW_STOP.get(message.get("stopReason")),
        )
        if row["input_tokens"] > _INT32:
            raise _Skip("usage.input is not a token count")
        return row


def _openclaw_tool_call(block: dict[str, Any]) -> dict[str, Any]:
    name, call_id, arguments = block.get("name"), block.get("id"), block.get("arguments")
    if not isinstance(name, str) or not isinstance(call_id, str):
        raise _Skip("a tool call is not valid")
    if isinstance(arguments, dict) and set(arguments) == {"_raw"} and isinstance(arguments["_raw"], str):
        text = arguments["_raw"]  # our own export kept non-object arguments whole
    else:
        text = orjson.dumps(arguments if arguments is not None else {}).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def _joined_text(content: Any) -> str:
    """User/tool content: a string, or blocks of which text is kept and images are named."""
    if isinstance(content, str):
        return _clean(content)
    if not isinstance(content, list):
        raise _Skip("message content is not valid")
    parts = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif kind == "image":
            parts.append("[image]")
    return _clean("\n".join(parts))


def _blank_row(role: str, *, content: str) -> dict[str, Any]:
    return {
        "role": role,
        "turn_id": None,
        "content": content,
        "thinking": None,
        "tool_calls": None,
        "tool_call_id": None,
        "tool_name": None,
        "model": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "cost": to_money(0),
        "latency_ms": None,
        "ttft_ms": None,
        "finish_reason": None,
        "metadata_": None,
        "created_at": None,
    }


def _clip(value: Any, limit: int) -> str | None:
    return _clean(value[:limit]) if isinstance(value, str) and value else None


def _header_agent(value: Any, report: _Report, line: int) -> str | None:
    if value is None:
        return None
    try:
        return validate_agent_id(value)
    except ValidationError:
        report.note(line, "agent id in the header is not a safe slug; using the default")
        return None


# -- the import ------------------------------------------------------------------------------------------


async def import_session(
    lines: AsyncIterable[str] | Iterable[str],
    db_session_factory: async_sessionmaker[AsyncSession],
    *,
    format: str,
    owner: str,
    agent_id: str | None = None,
) -> ImportResult:
    """Create a new session owned by `owner` from an exported transcript.

    Raises `ValidationError` for an unknown format, a bad owner or agent id, or input with nothing to
    import; corrupt or unsupported lines are skipped and listed in the result instead.
    """
    if format not in IMPORT_FORMATS:
        raise ValidationError(f"Unknown import format. Valid formats: {', '.join(IMPORT_FORMATS)}.")
    if not isinstance(owner, str) or not 0 < len(owner) <= 128:
        raise ValidationError("owner must be 1-128 characters.")
    if agent_id is not None:
        validate_agent_id(agent_id)
    source = _JsonlSource() if format == "jsonl" else _OpenClawSource()
    report = _Report()
    spool = _Spool()
    try:
        await source.scan(lines, spool, report)
        if not source.header and spool.file.tell() == 0:
            raise ValidationError("The file holds nothing to import.")
        fields = source.session_fields()
        session_id, imported = await _write(
            db_session_factory, source, spool, report, fields, owner, agent_id
        )
    finally:
        spool.close()
    return ImportResult(
        session_id=str(session_id),
        imported=imported,
        skipped=report.skipped,
        problems=report.problems,
        off_branch=getattr(source, "off_branch", 0),
    )


async def _write(
    db_factory: async_sessionmaker[AsyncSession],
    source: _JsonlSource | _OpenClawSource,
    spool: _Spool,
    report: _Report,
    fields: dict[str, Any],
    owner: str,
    agent_id: str | None,
) -> tuple[uuid.UUID, int]:
    session_id = uuid.uuid4()
    now = datetime.now(UTC)
    created = fields.pop("created_at", None) or now
    imported_from = {
        "format": source.format,
        **{key.removeprefix("source_"): fields.pop(key) for key in list(fields) if key.startswith("source_")},
    }
    metadata = {**(fields.pop("metadata_", None) or {}), "imported_from": imported_from}
    header_agent = fields.pop("agent_id", None)
    totals = _Totals()
    async with db_factory() as db, db.begin():
        db.add(
            ChatSession(
                id=session_id,
                owner=owner,
                agent_id=agent_id or header_agent or "main",
                model=fields.pop("model", None) or "imported",
                metadata_=metadata,
                created_at=created,
                updated_at=now,
                **fields,
            )
        )
        await db.flush()
        batch: list[dict[str, Any]] = []
        for row in source.rows(spool, report):
            totals.add(row)
            row.update(id=uuid.uuid4(), session_id=session_id, seq=totals.count)
            row["created_at"] = row["created_at"] or totals.last_time or created
            totals.last_time = row["created_at"]
            batch.append(row)
            if len(batch) >= BATCH_SIZE:
                await db.execute(insert(ChatMessage), batch)
                batch = []
        if batch:
            await db.execute(insert(ChatMessage), batch)
        await db.execute(
            update(ChatSession).where(ChatSession.id == session_id).values(**totals.values(source))
        )
    return session_id, totals.count


@dataclass(slots=True)
class _Totals:
    count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = field(default_factory=lambda: to_money(0))
    last_time: datetime | None = None

    def add(self, row: dict[str, Any]) -> None:
        self.count += 1
        self.input_tokens += row["input_tokens"]
        self.output_tokens += row["output_tokens"]
        self.reasoning_tokens += row["reasoning_tokens"]
        self.cost += row["cost"]

    def values(self, source: _JsonlSource | _OpenClawSource) -> dict[str, Any]:
        # Counters move by `x = x + :delta` like on every other write path.
        values: dict[str, Any] = {
            "message_count": ChatSession.message_count + self.count,
            "input_tokens": ChatSession.input_tokens + self.input_tokens,
            "output_tokens": ChatSession.output_tokens + self.output_tokens,
            "reasoning_tokens": ChatSession.reasoning_tokens + self.reasoning_tokens,
            "total_tokens": ChatSession.total_tokens + self.input_tokens + self.output_tokens,
            "total_cost": ChatSession.total_cost + self.cost,
            "next_seq": ChatSession.next_seq + self.count,
        }
        if self.last_time is not None:
            values["updated_at"] = self.last_time
        if source.title:
            values["title"] = source.title
        # The jsonl header names the session's model; without one, the last assistant model is used.
        if source.model and (source.format == "openclaw" or not source.header.get("_model")):
            values["model"] = source.model
        return values
