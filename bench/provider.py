"""The benchmark's fake OpenAI-compatible provider: a raw ASGI app that streams pre-serialized chunks.

It runs in a process of its own (`python -m bench.provider --port N`) so that its CPU is not the engine's.
Every byte it sends is built once per configuration, not per request: a token costs the provider one
`send` and, with a per-token delay, one sleep to an absolute deadline (so the schedule does not drift).
The configuration (tokens per answer, per-token delay, delay before the first token) is changed between
scenarios with `POST /_bench/config {"tokens": 64, "delay": 0.0, "first_delay": 0.0}`, which keeps one
provider process for the engine, the relay, LiteLLM and the direct client alike.

Wire: `POST /v1/chat/completions` with `stream: true` answers SSE (`data: {chunk}\\n\\n` ... a usage chunk
when `stream_options.include_usage` is set ... `data: [DONE]\\n\\n`); without it, one JSON completion.
`GET /v1/models`, `GET /health`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["MODEL", "FakeProvider", "ProviderConfig", "token_text"]

MODEL = "bench-model"
_WORDS = ("alpha", "bravo", "delta", "gamma", "kilo", "lima", "oscar", "sierra", "tango", "zulu")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def token_text(index: int) -> str:
    """The i-th token of every answer: a space and a short word, about one real token's size."""
    return " " + _WORDS[index % len(_WORDS)]


@dataclass(slots=True)
class ProviderConfig:
    tokens: int = 64
    delay: float = 0.0  # seconds between two tokens
    first_delay: float = 0.0  # seconds before the first token


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


@dataclass(slots=True)
class _Prepared:
    """All the bytes of one answer, serialized once for the current configuration."""

    head: bytes
    tokens: list[bytes]
    finish: bytes
    text: str
    completion_prefix: bytes = field(default=b"")


def _prepare(config: ProviderConfig) -> _Prepared:
    texts = [token_text(i) for i in range(config.tokens)]
    full_text = "".join(texts)
    completion = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": full_text},
                "finish_reason": "stop",
            }
        ],
    }
    # The usage differs per request (prompt size), so the non-streamed body is a prefix plus usage.
    prefix = orjson.dumps(completion)[:-1] + b',"usage":'
    return _Prepared(
        head=_sse(_chunk({"role": "assistant", "content": ""})),
        tokens=[_sse(_chunk({"content": text})) for text in texts],
        finish=_sse(_chunk({}, "stop")),
        text=full_text,
        completion_prefix=prefix,
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _prompt_tokens(body: dict[str, Any]) -> int:
    chars = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
    return chars // 4 + 1


_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FakeProvider:
    """The ASGI app. `config` may be changed at any time; the next request uses the new one."""

    def __init__(self, config: ProviderConfig | None = None) -> None:
        self.config = config or ProviderConfig()
        self._prepared = _prepare(self.config)
        self.requests = 0

    def configure(self, **values: Any) -> None:
        for name in ("tokens", "delay", "first_delay"):
            if name in values:
                setattr(self.config, name, type(getattr(self.config, name))(values[name]))
        self._prepared = _prepare(self.config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/v1/chat/completions" and method == "POST":
            await self._completions(await _read_body(receive), send)
        elif path == "/_bench/config" and method == "POST":
            self.configure(**orjson.loads(await _read_body(receive)))
            await _respond(send, 200, orjson.dumps(self._config_dict()))
        elif path == "/_bench/config":
            await _respond(send, 200, orjson.dumps(self._config_dict()))
        elif path in ("/health", "/v1/health"):
            await _respond(send, 200, b'{"status":"ok"}')
        elif path == "/v1/models":
            body = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
            await _respond(send, 200, orjson.dumps(body))
        else:
            await _respond(send, 404, b'{"error":{"message":"not found","type":"invalid_request_error"}}')

    def _config_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.config.tokens,
            "delay": self.config.delay,
            "first_delay": self.config.first_delay,
            "requests": self.requests,
        }

    async def _completions(self, raw: bytes, send: Send) -> None:
        self.requests += 1
        body = orjson.loads(raw) if raw else {}
        prepared, config = self._prepared, self.config
        prompt_tokens = _prompt_tokens(body)
        if not body.get("stream"):
            await asyncio.sleep(config.first_delay + config.delay * len(prepared.tokens))
            usage = orjson.dumps(_usage(prompt_tokens, len(prepared.tokens)))
            await _respond(send, 200, prepared.completion_prefix + usage + b"}")
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        await _stream(send, prepared, config, prompt_tokens, include_usage)


async def _stream(
    send: Send, prepared: _Prepared, config: ProviderConfig, prompt_tokens: int, include_usage: bool
) -> None:
    start = time.perf_counter()
    if config.first_delay:
        await asyncio.sleep(config.first_delay)
    await send({"type": "http.response.body", "body": prepared.head, "more_body": True})
    delay = config.delay
    first_at = start + config.first_delay
    for index, chunk in enumerate(prepared.tokens):
        if delay and index:
            # Sleep to the absolute deadline of token i, so slow wake-ups do not accumulate.
            wait = first_at + index * delay - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    tail = prepared.finish
    if include_usage:
        usage_chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [],
            "usage": _usage(prompt_tokens, len(prepared.tokens)),
        }
        tail += _sse(usage_chunk)
    await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible provider for the benchmarks.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    app = FakeProvider(ProviderConfig(tokens=args.tokens, delay=args.delay))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
