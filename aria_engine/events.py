"""Typed turn events: what one turn emits, in order, to every surface (WebSocket, REST, CLI).

A turn's events: StartEvent, then any of ThinkingEvent / TokenEvent / ToolCallEvent / ToolResultEvent /
UsageEvent / ErrorEvent, then exactly one DoneEvent. Each carries the `turn_id` and a per-turn `seq`
(1, 2, 3, ...), so a reconnecting client can resume after the last `seq` it saw.

Events are small frozen slotted dataclasses (no Pydantic per token); `to_dict()` gives the wire shape and
they are serialised once, with orjson, at the edge.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import cache
from typing import Any, ClassVar

__all__ = [
    "DoneEvent",
    "ErrorEvent",
    "FinishReason",
    "StartEvent",
    "ThinkingEvent",
    "TokenEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "TurnControl",
    "TurnEvent",
    "UsageEvent",
]


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CANCELLED = "cancelled"
    ERROR = "error"
    DISCONNECTED = "disconnected"
    INTERRUPTED = "interrupted"


@dataclass(slots=True, frozen=True)
class TurnEvent:
    type: ClassVar[str] = "event"
    turn_id: str
    seq: int

    def to_dict(self) -> dict[str, Any]:
        # Flat fields only: cheaper than dataclasses.asdict's recursive copy on the per-token path.
        data: dict[str, Any] = {"type": self.type}
        for name in _field_names(type(self)):
            data[name] = getattr(self, name)
        return data


@dataclass(slots=True, frozen=True)
class StartEvent(TurnEvent):
    type: ClassVar[str] = "start"
    message_id: str  # the user row
    session_id: str
    model: str


@dataclass(slots=True, frozen=True)
class ThinkingEvent(TurnEvent):
    type: ClassVar[str] = "thinking"
    content: str


@dataclass(slots=True, frozen=True)
class TokenEvent(TurnEvent):
    type: ClassVar[str] = "token"
    content: str


@dataclass(slots=True, frozen=True)
class ToolCallEvent(TurnEvent):
    type: ClassVar[str] = "tool_call"
    id: str
    name: str
    arguments: str  # the JSON text the model produced


@dataclass(slots=True, frozen=True)
class ToolResultEvent(TurnEvent):
    type: ClassVar[str] = "tool_result"
    id: str
    name: str
    content: str
    success: bool


@dataclass(slots=True, frozen=True)
class UsageEvent(TurnEvent):
    type: ClassVar[str] = "usage"
    input_tokens: int
    output_tokens: int
    cost: str  # exact decimal as a string


@dataclass(slots=True, frozen=True)
class ErrorEvent(TurnEvent):
    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(slots=True, frozen=True)
class DoneEvent(TurnEvent):
    type: ClassVar[str] = "done"
    message_id: str | None  # the final assistant row (None if nothing was persisted)
    finish_reason: str
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost: str = "0"
    latency_ms: int = 0
    ttft_ms: int | None = None


@dataclass(slots=True)
class TurnControl:
    """The caller's handle on a running turn.

    To stop a turn, set `reason` (cancelled | disconnected) and cancel the task iterating the turn (or
    `aclose()` the iterator). The engine persists the partial answer and leaves the turn's closing
    `DoneEvent` in `final_event`, since a cancelled async generator cannot yield it.
    """

    turn_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    reason: FinishReason = FinishReason.CANCELLED
    final_event: DoneEvent | None = None
    error: BaseException | None = None  # the failure behind a turn that finished with `error`
