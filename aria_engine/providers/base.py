"""The provider interface and the normalized chunks every adapter streams.

An adapter turns one wire format (OpenAI-compatible HTTP, the embedded llama.cpp model, ...) into a stream
of `Chunk`s. Retries, fallback, breakers, usage accounting and cost live in `llm_gateway.py`, not here.
Adapters translate their foreign exceptions into `aria_engine.exceptions` LLM errors at this boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Chunk",
    "ContentDelta",
    "FinishChunk",
    "LLMRequest",
    "ModelSelected",
    "Provider",
    "ThinkingDelta",
    "ToolCallDelta",
    "UsageChunk",
]


@dataclass(slots=True, frozen=True)
class ContentDelta:
    text: str


@dataclass(slots=True, frozen=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """A fragment of a streamed tool call. Fragments with the same `index` belong to one call."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True, frozen=True)
class UsageChunk:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_input_tokens: int = 0


@dataclass(slots=True, frozen=True)
class FinishChunk:
    reason: str  # stop | length | tool_calls | error (provider's word, normalized)


@dataclass(slots=True, frozen=True)
class ModelSelected:
    """Emitted by the gateway before any output: the catalog model that serves this call (after fallback)."""

    model_id: str


Chunk = ContentDelta | ThinkingDelta | ToolCallDelta | UsageChunk | FinishChunk | ModelSelected


@dataclass(slots=True)
class LLMRequest:
    """One chat-completion request, already resolved to the provider's upstream model name."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    enable_thinking: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # catalog defaults + thinking switches


class Provider(Protocol):
    """One provider endpoint. `stream` must close the upstream request when the iterator is closed."""

    name: str

    def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...
