"""LLMGateway: one entry point to every model in the catalog.

It owns model resolution, the provider adapters (one HTTP client each, built once), the resilience rules
and the money:

- **Timeouts** per phase (`config.timeouts`): connect (the adapter's HTTP client), first token, idle gap
  between chunks, and a total deadline, enforced here the same way for every adapter.
- **Retries** with jittered exponential backoff, for retryable errors only (5xx, 429, timeouts, dropped
  connections) and only before the first chunk: once anything was yielded, an error is raised as is.
- **Fallback** along the model's `fallbacks` chain under the same rule: only before any output.
- **Circuit breakers**, one per provider: closed -> open after N consecutive retryable failures ->
  half-open after `breaker_reset_seconds`, when exactly one probe call goes through; its outcome closes
  or re-opens the circuit. Rejections (4xx) and cancellations do not count.
- **Cost** as an exact `Decimal` from catalog prices (USD per 1M tokens); unpriced models cost 0 and say so.
- **Token counts** offline (`aria_engine.tokens`, or the local model's own tokenizer).

    gateway = LLMGateway.from_config(config)
    async with contextlib.aclosing(gateway.stream("gpt-4o-mini", messages)) as chunks:
        async for chunk in chunks:          # ModelSelected first, then deltas, usage, finish
            ...
    completion = await gateway.complete("gpt-4o-mini", messages)
    await gateway.aclose()

Closing the stream (aclose, or cancelling the task that iterates it) closes the upstream request at once.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anyio

from aria_engine import tokens
from aria_engine.catalog import Catalog, ModelSpec, ProviderSpec, load_catalog
from aria_engine.config import EngineConfig
from aria_engine.exceptions import (
    CircuitOpen,
    ConfigError,
    LLMError,
    ProviderUnavailable,
    UnknownModel,
)
from aria_engine.providers.base import (
    Chunk,
    ContentDelta,
    FinishChunk,
    LLMRequest,
    ModelSelected,
    Provider,
    ThinkingDelta,
    ToolCallDelta,
    UsageChunk,
)
from aria_engine.providers.openai_compatible import OpenAICompatibleProvider, ThinkTagSplitter
from aria_engine.stream_deadline import END, StreamDeadline

__all__ = [
    "ChunkStream",
    "CircuitBreaker",
    "Completion",
    "LLMGateway",
    "ModelInfo",
    "ToolCallAssembler",
]

logger = logging.getLogger("aria.llm_gateway")

SHORTCUT_PROVIDER = "custom"  # the provider ARIA_LLM_BASE_URL / ARIA_LLM_MODEL add
SHORTCUT_KEY_ENV = "ARIA_LLM_API_KEY"
_MILLION = Decimal(1_000_000)
_MAX_BACKOFF = 10.0  # even when a Retry-After asks for more: a chat user is waiting


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A catalog model as callers see it. Prices are USD per 1M tokens; None means unknown."""

    id: str
    provider: str
    upstream: str
    aliases: tuple[str, ...]
    enabled: bool
    available: bool
    context_window: int
    max_output_tokens: int
    input_price: Decimal | None
    output_price: Decimal | None
    cached_input_price: Decimal | None
    supports_tools: bool
    reasoning: bool
    is_demo: bool
    description: str
    unavailable_reason: str = ""
    tokenizer: str = "cl100k_base"
    fallbacks: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    thinking_on: Mapping[str, Any] = field(default_factory=dict)
    thinking_off: Mapping[str, Any] = field(default_factory=dict)
    thinking_opened_by_template: bool = False
    max_tokens_field: str = "max_tokens"

    @property
    def priced(self) -> bool:
        """False when the catalog gives no input or output price: such a model is billed 0, flagged."""
        return self.input_price is not None and self.output_price is not None

    def to_dict(self) -> dict[str, Any]:
        """The public view (`GET /api/engine/models`): no request params, prices as strings."""

        def money(value: Decimal | None) -> str | None:
            return None if value is None else str(value)

        return {
            "id": self.id,
            "provider": self.provider,
            "aliases": list(self.aliases),
            "enabled": self.enabled,
            "available": self.available,
            "unavailable_reason": self.unavailable_reason or None,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "input_price": money(self.input_price),
            "output_price": money(self.output_price),
            "cached_input_price": money(self.cached_input_price),
            "priced": self.priced,
            "supports_tools": self.supports_tools,
            "reasoning": self.reasoning,
            "is_demo": self.is_demo,
            "description": self.description,
        }


@dataclass(slots=True)
class Completion:
    """A whole answer: the same stream as `stream()`, collected."""

    model_id: str
    content: str
    thinking: str
    tool_calls: list[dict[str, Any]]
    usage: UsageChunk
    finish_reason: str
    cost: Decimal


class ToolCallAssembler:
    """Joins streamed `ToolCallDelta` fragments by index into OpenAI-shaped tool calls.

    Fragments are kept in lists and joined once in `calls()`: constant work per chunk.
    """

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, delta: ToolCallDelta) -> None:
        call = self._calls.setdefault(delta.index, {"id": None, "name": [], "arguments": []})
        if delta.id:
            call["id"] = delta.id
        if delta.name:
            call["name"].append(delta.name)
        if delta.arguments:
            call["arguments"].append(delta.arguments)

    def __bool__(self) -> bool:
        return bool(self._calls)

    def calls(self) -> list[dict[str, Any]]:
        return [
            {
                "id": call["id"] or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": "".join(call["name"]), "arguments": "".join(call["arguments"]) or "{}"},
            }
            for _, call in sorted(self._calls.items())
        ]


class CircuitBreaker:
    """closed -> open (after `threshold` consecutive failures) -> half_open (after `reset_seconds`).

    In half-open exactly one caller (the probe) passes `acquire()`; the others get `CircuitOpen` until the
    probe reports `success()` (closed), `failure()` (open again) or `release()` (no verdict: next probe).
    """

    def __init__(
        self, threshold: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_seconds:
            return "half_open"
        return "open"

    def acquire(self) -> None:
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self._probing:
            self._probing = True
            return
        assert self._opened_at is not None
        wait = max(0.0, self.reset_seconds - (self._clock() - self._opened_at))
        raise CircuitOpen(retry_after=round(wait, 3) or self.reset_seconds)

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        self._probing = False


class ChunkStream:
    """What `LLMGateway.stream` returns: an async iterator of chunks, closed with `aclose`.

    The first `__anext__` opens the call (fallback chain, retries, first chunk); every later one is the
    relay generator's own. Not a generator wrapping the relay: a waiting stream is then suspended in one
    layer fewer, and every layer is an object per token that the collector's young collections traverse
    (with a thousand streams waiting, those objects are most of what the collections see).
    """

    __slots__ = ("_open", "_relay", "_started")

    def __init__(self, open_relay: Callable[[], Awaitable[AsyncGenerator[Chunk, None]]]) -> None:
        self._open = open_relay
        self._relay: AsyncGenerator[Chunk, None] | None = None
        self._started = False

    def __aiter__(self) -> ChunkStream:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        if self._relay is not None:
            return self._relay.__anext__()
        return self._first()

    async def _first(self) -> Chunk:
        if self._started:  # closed, or the opening failed: like a finished generator
            raise StopAsyncIteration
        self._started = True
        self._relay = await self._open()
        return await self._relay.__anext__()

    async def aclose(self) -> None:
        """Close the relay, and with it the upstream request, at once."""
        self._started = True
        if self._relay is not None:
            await self._relay.aclose()


class LLMGateway:
    """Resolves catalog models and serves them through provider adapters with the resilience rules.

    Args:
        config: timeouts, retry, breaker and default-model settings.
        catalog: the validated catalog (see `aria_engine.catalog`).
        env: where API keys are read from (default: `os.environ`).
    """

    def __init__(self, config: EngineConfig, catalog: Catalog, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self._env = os.environ if env is None else env
        self._providers: dict[str, Provider] = {}
        self._unavailable: dict[str, str] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        for name, spec in catalog.providers.items():
            self._add_provider(name, spec)
        self._models = {model_id: self._info(model_id, spec) for model_id, spec in catalog.models.items()}
        self._names = {alias: m.id for m in self._models.values() for alias in m.aliases}
        self._names.update({m.id: m.id for m in self._models.values()})
        self.default_model = self._choose_default()
        # Load the tokenizers now (start-up) rather than inside the first turn's event-loop tick.
        for name in {m.tokenizer for m in self._models.values() if m.available} & set(tokens.ENCODINGS):
            tokens.get_encoding(name)

    @classmethod
    def from_config(cls, config: EngineConfig, env: Mapping[str, str] | None = None) -> LLMGateway:
        """Load `config.models_path` and add the ARIA_LLM_BASE_URL / ARIA_LLM_MODEL shortcut model."""
        catalog = load_catalog(config.models_path, env)
        return cls(config, _with_shortcut(catalog, config, os.environ if env is None else env), env)

    # -- models ------------------------------------------------------------------------------------------

    def resolve(self, model: str) -> ModelInfo:
        """The model for an id or alias; unknown, disabled or unavailable ones raise `UnknownModel`."""
        info = self._models.get(self._names.get(model, ""))
        if info is None or not info.enabled or not info.available:
            raise UnknownModel(model, self._valid_ids())
        return info

    def list_models(self) -> list[ModelInfo]:
        """Every catalog model, in catalog order, with `enabled` / `available` flags."""
        return list(self._models.values())

    def _valid_ids(self) -> list[str]:
        return [m.id for m in self._models.values() if m.enabled and m.available]

    def _lookup(self, model: str) -> ModelInfo | None:
        return self._models.get(self._names.get(model, ""))

    # -- streaming ---------------------------------------------------------------------------------------

    def stream(
        self,
        model_id: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        enable_thinking: bool = False,
    ) -> ChunkStream:
        """Stream one answer: `ModelSelected`, then deltas, at most one `UsageChunk`, one `FinishChunk`.

        Nothing happens until the first `__anext__`, which raises `UnknownModel` before anything else,
        and `LLMError` subclasses when the chain fails.
        """
        return ChunkStream(
            lambda: self._open_relay(model_id, messages, tools, temperature, max_tokens, enable_thinking)
        )

    async def _open_relay(
        self,
        model_id: str,
        messages: Sequence[Mapping[str, Any]],
        tools: list[dict[str, Any]] | None,
        temperature: float | None,
        max_tokens: int | None,
        enable_thinking: bool,
    ) -> AsyncGenerator[Chunk, None]:
        """Open the call along the fallback chain; the relay of the model that answered."""
        first = self.resolve(model_id)
        message_list = [dict(m) for m in messages]
        error: LLMError | None = None
        for info in self._chain(first):
            request = self._request(info, message_list, tools, temperature, max_tokens, enable_thinking)
            try:
                upstream, chunk, deadline = await self._open(info, request)
            except LLMError as exc:
                error = exc
                logger.warning("model %s failed before any output (%s)", info.id, _why(exc))
                continue
            opened = enable_thinking and info.reasoning and info.thinking_opened_by_template
            return self._relay(info, message_list, upstream, chunk, deadline, opened)
        raise error or ProviderUnavailable()

    async def complete(
        self,
        model_id: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        enable_thinking: bool = False,
    ) -> Completion:
        """The same stream, collected into one `Completion`."""
        content: list[str] = []
        thinking: list[str] = []
        calls = ToolCallAssembler()
        usage, finish, served = UsageChunk(), "stop", model_id
        chunks = self.stream(
            model_id,
            messages,
            tools=tools,
            temperature=temperature,
            max_tokens=max_tokens,
            enable_thinking=enable_thinking,
        )
        async for chunk in chunks:
            if isinstance(chunk, ContentDelta):
                content.append(chunk.text)
            elif isinstance(chunk, ThinkingDelta):
                thinking.append(chunk.text)
            elif isinstance(chunk, ToolCallDelta):
                calls.add(chunk)
            elif isinstance(chunk, UsageChunk):
                usage = chunk
            elif isinstance(chunk, FinishChunk):
                finish = chunk.reason
            elif isinstance(chunk, ModelSelected):
                served = chunk.model_id
        return Completion(
            model_id=served,
            content="".join(content),
            thinking="".join(thinking),
            tool_calls=calls.calls(),
            usage=usage,
            finish_reason=finish,
            cost=self.cost(served, usage),
        )

    def _chain(self, first: ModelInfo) -> list[ModelInfo]:
        chain, seen = [first], {first.id}
        for name in first.fallbacks:
            info = self._lookup(name)
            if info is not None and info.id not in seen and info.enabled and info.available:
                chain.append(info)
                seen.add(info.id)
        return chain

    async def _open(self, info: ModelInfo, request: LLMRequest) -> tuple[AsyncIterator[Chunk], Any, float]:
        """Start the call and wait for its first chunk, retrying retryable failures with backoff."""
        provider = self._providers[info.provider]
        breaker = self._breakers[info.provider]
        timeouts = self.config.timeouts
        attempts = self.config.llm_max_retries + 1
        for attempt in range(attempts):
            breaker.acquire()
            deadline = time.monotonic() + timeouts.total
            upstream = provider.stream(request)
            try:
                chunk = await _first_chunk(upstream, timeouts.first_token, deadline)
            except LLMError as exc:
                await _close(upstream)
                if not exc.retryable:
                    breaker.release()
                    raise
                breaker.failure()
                if attempt + 1 == attempts:
                    raise
                delay = self._backoff(attempt, exc)
                logger.info("retrying %s in %.2fs after %s", info.id, delay, _why(exc))
                await anyio.sleep(delay)
                continue
            except BaseException:
                await _close(upstream)
                breaker.release()
                raise
            breaker.success()
            return upstream, chunk, deadline
        raise ProviderUnavailable()  # unreachable: the loop returns or raises

    async def _relay(
        self,
        info: ModelInfo,
        messages: list[dict[str, Any]],
        upstream: AsyncIterator[Chunk],
        chunk: Any,
        deadline: float,
        thinking_opened: bool = False,
    ) -> AsyncGenerator[Chunk, None]:
        """Yield the committed stream; estimate usage if the provider reported none.

        `thinking_opened`: the model's chat template already opened `<think>`, so its content is
        thinking until a `</think>` (which the adapter, never having seen `<think>`, passed through).
        """
        timer = StreamDeadline(idle=self.config.timeouts.idle, deadline=deadline)
        produced: list[str] = []  # only for the usage estimate; references, no copying
        saw_usage = False
        reopen = ThinkTagSplitter(inside=True) if thinking_opened else None
        try:
            yield ModelSelected(info.id)
            while chunk is not END:
                for out in _reclassified(chunk, reopen):
                    if isinstance(out, UsageChunk):
                        saw_usage = True
                    elif isinstance(out, FinishChunk) and not saw_usage:
                        saw_usage = True
                        yield self._estimate_usage(info, messages, produced)
                    elif isinstance(out, ContentDelta | ThinkingDelta):
                        produced.append(out.text)
                    elif isinstance(out, ToolCallDelta):
                        produced.append(out.arguments)
                    yield out
                chunk = await timer.next(upstream)
        except LLMError as exc:
            if exc.retryable:
                self._breakers[info.provider].failure()
            raise
        finally:
            timer.close()
            await _close(upstream)

    def _estimate_usage(
        self, info: ModelInfo, messages: list[dict[str, Any]], produced: list[str]
    ) -> UsageChunk:
        return UsageChunk(
            input_tokens=self.count_messages(info.id, messages),
            output_tokens=self.count_tokens(info.id, "".join(produced)),
        )

    def _backoff(self, attempt: int, error: LLMError) -> float:
        base = self.config.llm_retry_backoff * (2**attempt)
        delay = base * random.uniform(0.5, 1.5)  # jitter: retries from many turns do not line up
        if error.retry_after:
            delay = max(delay, error.retry_after)
        return min(delay, _MAX_BACKOFF)

    def _request(
        self,
        info: ModelInfo,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        temperature: float | None,
        max_tokens: int | None,
        enable_thinking: bool,
    ) -> LLMRequest:
        params = dict(info.params)
        if info.reasoning:
            params.update(info.thinking_on if enable_thinking else info.thinking_off)
        if temperature is None and "temperature" in params:
            temperature = params.pop("temperature")
        limit = max_tokens or params.pop(info.max_tokens_field, None) or info.max_output_tokens
        if info.max_tokens_field != "max_tokens":
            params[info.max_tokens_field] = limit
            limit = None
        return LLMRequest(
            model=info.upstream,
            messages=messages,
            tools=tools if tools and info.supports_tools else None,
            temperature=temperature,
            max_tokens=limit,
            enable_thinking=enable_thinking and info.reasoning,
            params=params,
        )

    # -- money and tokens --------------------------------------------------------------------------------

    def cost(self, model_id: str, usage: UsageChunk) -> Decimal:
        """Exact USD for `usage`. Cached input uses its own price when the catalog gives one."""
        info = self._lookup(model_id)
        if info is None or not info.priced:
            return Decimal(0)
        assert info.input_price is not None and info.output_price is not None
        cached = min(max(usage.cached_input_tokens, 0), usage.input_tokens)
        cached_price = info.cached_input_price if info.cached_input_price is not None else info.input_price
        total = (
            (usage.input_tokens - cached) * info.input_price
            + cached * cached_price
            + usage.output_tokens * info.output_price
        )
        return total / _MILLION

    def count_tokens(self, model_id: str, text: str) -> int:
        """Tokens of `text` for the model's tokenizer, offline. Unknown models use cl100k_base."""
        if not text:
            return 0
        info = self._lookup(model_id)
        tokenizer = info.tokenizer if info else "cl100k_base"
        if tokenizer == "local" and info is not None:
            counter = getattr(self._providers.get(info.provider), "count_tokens", None)
            return int(counter(text)) if counter else tokens.estimate_tokens(text)
        if tokenizer == "estimate":
            return tokens.estimate_tokens(text)
        return tokens.count_tokens(text, tokenizer)

    def count_messages(self, model_id: str, messages: Iterable[Mapping[str, Any]]) -> int:
        return tokens.count_message_tokens(messages, lambda text: self.count_tokens(model_id, text))

    # -- lifecycle and health ----------------------------------------------------------------------------

    def breaker_states(self) -> dict[str, str]:
        return {name: breaker.state for name, breaker in self._breakers.items()}

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()

    # -- construction ------------------------------------------------------------------------------------

    def _add_provider(self, name: str, spec: ProviderSpec) -> None:
        if spec.missing_env:
            self._unavailable[name] = f"{', '.join(spec.missing_env)} not set"
            return
        if spec.kind == "local":
            from aria_engine.providers import local

            model_path, reason = local.locate_model(spec.model_path)
            if model_path is None:
                self._unavailable[name] = reason
                return
            provider: Provider = local.LocalProvider(name, model_path, n_ctx=spec.n_ctx)
        else:
            api_key = None
            if spec.api_key_env:
                api_key = self._env.get(spec.api_key_env)
                if not api_key:
                    self._unavailable[name] = f"{spec.api_key_env} not set"
                    return
            assert spec.base_url is not None
            provider = OpenAICompatibleProvider(
                name,
                spec.base_url,
                api_key=api_key,
                headers=spec.headers,
                connect_timeout=self.config.timeouts.connect,
            )
        self._providers[name] = provider
        self._breakers[name] = CircuitBreaker(
            self.config.breaker_failure_threshold, self.config.breaker_reset_seconds
        )

    def _info(self, model_id: str, spec: ModelSpec) -> ModelInfo:
        provider_kind = self.catalog.providers[spec.provider].kind
        tokenizer = spec.tokenizer or ("local" if provider_kind == "local" else "cl100k_base")
        return ModelInfo(
            id=model_id,
            provider=spec.provider,
            upstream=spec.upstream or model_id,
            aliases=spec.aliases,
            enabled=spec.enabled,
            available=spec.provider in self._providers,
            unavailable_reason=self._unavailable.get(spec.provider, ""),
            context_window=spec.context_window,
            max_output_tokens=spec.max_output_tokens,
            input_price=spec.price.input,
            output_price=spec.price.output,
            cached_input_price=spec.price.cached_input,
            supports_tools=spec.supports_tools,
            reasoning=spec.reasoning,
            is_demo=spec.demo,
            description=spec.description,
            tokenizer=tokenizer,
            fallbacks=spec.fallbacks,
            params=dict(spec.params),
            thinking_on=dict(spec.thinking.enable),
            thinking_off=dict(spec.thinking.disable),
            thinking_opened_by_template=spec.thinking.opened_by_template,
            max_tokens_field=spec.max_tokens_field,
        )

    def _choose_default(self) -> str:
        wanted = self.config.default_model
        if wanted:
            info = self._lookup(wanted)
            if info is None or not info.enabled:
                raise ConfigError(
                    f"ARIA_DEFAULT_MODEL={wanted!r} is not an enabled model in {self.catalog.source}"
                )
            if not info.available:
                raise ConfigError(f"ARIA_DEFAULT_MODEL={wanted!r} is unavailable: {info.unavailable_reason}")
            return info.id
        preferred = [self._models[m] for m in self.catalog.default_models] + list(self._models.values())
        for info in preferred:
            if info.enabled and info.available:
                return info.id
        # Nothing can serve: name the demo model (what "no provider configured" means), so errors and
        # /ready say which model is missing rather than failing start-up.
        for info in sorted(preferred, key=lambda m: not m.is_demo):
            if info.enabled:
                logger.warning("no model is available; default %s will fail until configured", info.id)
                return info.id
        raise ConfigError(f"{self.catalog.source}: no enabled model")


def _with_shortcut(catalog: Catalog, config: EngineConfig, env: Mapping[str, str]) -> Catalog:
    """ARIA_LLM_BASE_URL + ARIA_LLM_MODEL: any OpenAI-compatible server, no catalog edit, the default."""
    if not config.llm_base_url and not config.llm_model:
        return catalog
    if not (config.llm_base_url and config.llm_model):
        raise ConfigError("ARIA_LLM_BASE_URL and ARIA_LLM_MODEL must be set together")
    has_key = bool(env.get(SHORTCUT_KEY_ENV))
    provider = ProviderSpec(
        kind="openai", base_url=config.llm_base_url, api_key_env=SHORTCUT_KEY_ENV if has_key else None
    )
    known = catalog.models.get(config.llm_model)
    if known is not None:  # same name as a catalog model (e.g. via a proxy): keep its prices and limits
        model = known.model_copy(update={"provider": SHORTCUT_PROVIDER, "upstream": config.llm_model})
    else:
        model = ModelSpec(
            provider=SHORTCUT_PROVIDER,
            upstream=config.llm_model,
            context_window=config.llm_context_window,
            max_output_tokens=min(4096, config.llm_context_window),
            description="Configured with ARIA_LLM_BASE_URL / ARIA_LLM_MODEL.",
        )
    return catalog.with_model(config.llm_model, model, SHORTCUT_PROVIDER, provider)


async def _first_chunk(upstream: AsyncIterator[Chunk], first_token_seconds: float, deadline: float) -> Any:
    timer = StreamDeadline(idle=first_token_seconds, deadline=deadline, phase="first_token")
    try:
        return await timer.next(upstream)
    finally:
        timer.close()


def _reclassified(chunk: Chunk, splitter: ThinkTagSplitter | None) -> Iterable[Chunk]:
    """The chunk as is, or (for template-opened thinking) its content split at `</think>`."""
    if splitter is None:
        return (chunk,)
    if isinstance(chunk, ContentDelta):
        return splitter.feed(chunk.text)
    if isinstance(chunk, FinishChunk | UsageChunk):
        return [*splitter.flush(), chunk]
    return (chunk,)


def _why(exc: LLMError) -> str:
    """The error's code, and the low-level failure behind it (its class name only: no message text,
    which can carry a URL or a provider's body), for operators reading the logs."""
    cause = exc.__cause__
    return f"{exc.code}: {type(cause).__name__}" if cause is not None else exc.code


async def _close(upstream: AsyncIterator[Chunk]) -> None:
    """Close an adapter stream even while being cancelled: the HTTP response must not leak."""
    closer = getattr(upstream, "aclose", None)
    if closer is not None:
        with anyio.CancelScope(shield=True):
            await closer()
