"""A fake OpenAI-compatible provider: a real HTTP server on a real port, with scripted replies.

Tests, benchmarks and demos talk to it over real HTTP exactly as they would talk to OpenAI or vLLM. It is
a small ASGI app served by uvicorn in a background thread.

    from aria_engine.testing.fake_llm import FakeLLM, Reply, ToolCall, HTTPError, Stall, Drop, Malformed

    with FakeLLM() as fake:                       # or the pytest fixture `fake_llm`
        fake.base_url                             # "http://127.0.0.1:PORT/v1"
        fake.enqueue(Reply("Hi there", thinking="Let me think", usage=Usage(12, 3)))
        fake.enqueue(HTTPError(503), Reply("after a retry"))         # FIFO, one script per request
        fake.enqueue(Reply("only for this model"), model="fake-alt")  # per-model queue, used first
        ...
        fake.requests          # list of received JSON bodies (dicts), in order
        fake.request_headers   # their headers (lower-case names)
        fake.disconnects       # streams the client closed before the end
        fake.wait_for_disconnects(1)   # block (bounded) until the server has seen it
        fake.wait_for_requests(2)      # block (bounded) until two requests have arrived
        fake.reset()           # empty queues, logs and counters

    path = write_fake_catalog(tmp_path / "models.yaml", fake.base_url)   # or fixture `fake_catalog_path`
    config = EngineConfig(models_path=path, default_model="fake-model")

When no script is queued, the default reply "Hello from the fake model." is streamed word by word.

Scripts (dataclasses):
- `Reply(text, thinking="", thinking_style="reasoning_content"|"reasoning"|"think_tags", tool_calls=[...],
  usage=None, chunk_size=None, args_chunks=3, delay=0.0, finish_reason=None, omit_usage=False)`:
  `chunk_size=None` streams word by word, an int streams that many characters per chunk (so `<think>`
  tags get cut across chunks). Tool-call arguments are streamed in `args_chunks` pieces. `delay` is
  slept before every chunk. `usage=None` computes one: prompt = words in the messages + 4 per message,
  completion = number of chunks streamed, reasoning = number of thinking chunks.
- `ToolCall(name, arguments={} | "raw json", id=None)`.
- `Usage(prompt_tokens, completion_tokens, reasoning_tokens=0, cached_tokens=0)`.
- `HTTPError(status=500, body=None, headers={})`: answers with that status (body: an OpenAI error JSON).
- `Stall(after=0, seconds=30.0, reply=Reply())`: sends `after` chunks, sends nothing for `seconds`, then
  the rest. `after=0` holds back the first token.
- `Drop(after=0, reply=Reply())`: sends `after` chunks, then kills the connection mid-body.
- `Malformed(after=0, data="{not json", reply=Reply())`: sends `after` chunks, then one bad `data:` line.

Streaming follows the OpenAI wire format: `data: {chunk}` SSE events, a final usage chunk with empty
`choices` when the request asks for `stream_options.include_usage`, then `data: [DONE]`. A request
with `"stream": false` gets one `chat.completion` JSON body. The command line `aria-engine fake-llm`
serves this app for benchmarks (replies are pre-serialized once, so the fake costs little per token).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import orjson

__all__ = [
    "DEFAULT_TEXT",
    "FAKE_MODELS",
    "Drop",
    "FakeLLM",
    "HTTPError",
    "Malformed",
    "Reply",
    "Script",
    "Stall",
    "ToolCall",
    "Usage",
    "write_fake_catalog",
]

DEFAULT_TEXT = "Hello from the fake model."

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class Reply:
    text: str = DEFAULT_TEXT
    thinking: str = ""
    thinking_style: Literal["reasoning_content", "reasoning", "think_tags"] = "reasoning_content"
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    chunk_size: int | None = None
    args_chunks: int = 3
    delay: float = 0.0
    finish_reason: str | None = None
    omit_usage: bool = False  # behave like a server that ignores stream_options.include_usage


@dataclass
class HTTPError:
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stall:
    after: int = 0
    seconds: float = 30.0
    reply: Reply = field(default_factory=Reply)


@dataclass
class Drop:
    after: int = 0
    reply: Reply = field(default_factory=Reply)


@dataclass
class Malformed:
    after: int = 0
    data: str = "{not json"
    reply: Reply = field(default_factory=Reply)


Script = Reply | HTTPError | Stall | Drop | Malformed


class _DropConnection(Exception):
    """Raised inside the app to make uvicorn abort the connection mid-response."""


# -- rendering a reply into wire chunks -----------------------------------------------------------------


def _split(text: str, size: int | None) -> list[str]:
    if not text:
        return []
    if size is None:  # word by word, keeping the spaces, like a tokenizer would
        words = text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]
    return [text[i : i + size] for i in range(0, len(text), size)]


def _pieces(text: str, parts: int) -> list[str]:
    if not text:
        return [""]
    size = max(1, -(-len(text) // max(1, parts)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _deltas(reply: Reply) -> tuple[list[dict[str, Any]], int]:
    """The `delta` objects of the stream, and how many of them carry thinking."""
    deltas: list[dict[str, Any]] = []
    thinking_chunks = 0
    if reply.thinking_style == "think_tags":
        inline = f"<think>{reply.thinking}</think>" if reply.thinking else ""
        deltas += [{"content": piece} for piece in _split(inline + reply.text, reply.chunk_size)]
    else:
        for piece in _split(reply.thinking, reply.chunk_size):
            deltas.append({reply.thinking_style: piece})
            thinking_chunks += 1
        deltas += [{"content": piece} for piece in _split(reply.text, reply.chunk_size)]
    for index, call in enumerate(reply.tool_calls):
        arguments = (
            call.arguments if isinstance(call.arguments, str) else orjson.dumps(call.arguments).decode()
        )
        head = {"index": index, "id": call.id or f"call_fake_{index}", "type": "function"}
        deltas.append({"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]})
        for piece in _pieces(arguments, reply.args_chunks):
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    if deltas:
        deltas[0] = {"role": "assistant", **deltas[0]}
    return deltas, thinking_chunks


def _finish(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _usage(reply: Reply, body: dict[str, Any], completion: int, reasoning: int) -> dict[str, Any]:
    if reply.usage is not None:
        u = reply.usage
        prompt, completion, reasoning, cached = (
            u.prompt_tokens,
            u.completion_tokens,
            u.reasoning_tokens,
            u.cached_tokens,
        )
    else:
        prompt, cached = _prompt_tokens(body), 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _prompt_tokens(body: dict[str, Any]) -> int:
    total = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        total += 4 + (len(content.split()) if isinstance(content, str) else 0)
    return total


def _chunk(model: str, delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": choices,
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@dataclass
class _Rendered:
    """A reply as pre-serialized SSE events; only the usage event depends on the request."""

    events: list[bytes]
    completion: int
    reasoning: int


def _render(reply: Reply, model: str) -> _Rendered:
    deltas, reasoning = _deltas(reply)
    events = [_chunk(model, delta) for delta in deltas]
    events.append(_chunk(model, {}, _finish(reply)))
    return _Rendered(events, completion=len(deltas), reasoning=reasoning)


def _completion_body(reply: Reply, body: dict[str, Any], model: str) -> bytes:
    deltas, reasoning = _deltas(reply)
    message: dict[str, Any] = {"role": "assistant", "content": None}
    content = "".join(d.get("content", "") for d in deltas)
    message["content"] = content or None
    if reply.thinking and reply.thinking_style != "think_tags":
        message[reply.thinking_style] = reply.thinking
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id or f"call_fake_{i}",
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": call.arguments
                    if isinstance(call.arguments, str)
                    else orjson.dumps(call.arguments).decode(),
                },
            }
            for i, call in enumerate(reply.tool_calls)
        ]
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply)}],
        "usage": _usage(reply, body, len(deltas), reasoning),
    }
    return orjson.dumps(payload)


# -- the server -----------------------------------------------------------------------------------------


class FakeLLM:
    """The fake provider. Start with `start()` (or `with FakeLLM() as fake:`), stop with `stop()`.

    Args:
        host, port: where to listen (port 0: a free port).
        default_reply: what to answer when no script is queued.
        record_requests: keep `requests` / `request_headers` (tests); off for benchmarks.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        default_reply: Reply | None = None,
        record_requests: bool = True,
    ) -> None:
        self.host = host
        self.record_requests = record_requests  # off for long benchmark runs: the log would grow forever
        self.port = port
        self.default_reply = default_reply or Reply()
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.request_clients: list[tuple[str, int]] = []  # (host, port) each request came from
        self.disconnects = 0
        self.completed = 0  # streams sent to the end
        self._queue: deque[Script] = deque()
        self._model_queues: dict[str, deque[Script]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._default_cache: dict[str, _Rendered] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- control (any thread) -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def enqueue(self, *scripts: Script, model: str | None = None) -> None:
        """Queue scripts, one per request, FIFO. With `model`, only requests for that model take them."""
        with self._lock:
            queue = self._queue if model is None else self._model_queues.setdefault(model, deque())
            queue.extend(scripts)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._model_queues.clear()
            self.requests.clear()
            self.request_headers.clear()
            self.request_clients.clear()
            self.disconnects = 0
            self.completed = 0

    def pending(self) -> int:
        """Scripts still queued (all queues)."""
        with self._lock:
            return len(self._queue) + sum(len(q) for q in self._model_queues.values())

    def wait_for_requests(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until the server has received `count` requests; False if it did not in `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= count, timeout)

    def wait_for_disconnects(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until the server has seen `count` client disconnects; False if it did not in `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: self.disconnects >= count, timeout)

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> FakeLLM:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="critical",
            access_log=False,
            lifespan="off",
            ws="none",
            interface="asgi3",
            timeout_graceful_shutdown=1,  # a stalled stream must not hold up the test run's end
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-llm", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def serve_forever(self) -> None:
        """Serve in the calling thread (the CLI)."""
        import uvicorn

        uvicorn.run(
            self.app,
            host=self.host,
            port=self.port,
            log_level="info",  # prints the bound address (useful with --port 0); no access log
            access_log=False,
            lifespan="off",
            ws="none",
            interface="asgi3",
        )

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- ASGI -------------------------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/")
        if scope["method"] == "GET" and path.endswith("/models"):
            await _respond(send, 200, orjson.dumps({"object": "list", "data": [{"id": "fake-model"}]}))
            return
        if scope["method"] != "POST" or not path.endswith("/chat/completions"):
            await _respond(send, 404, orjson.dumps({"error": {"message": "not found"}}))
            return
        raw = bytearray()
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await _respond(send, 400, orjson.dumps({"error": {"message": "invalid JSON"}}))
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        script = self._take(body, headers, scope.get("client"))
        if isinstance(script, HTTPError):
            await self._error(send, script)
        elif body.get("stream"):
            await self._stream(script, body, receive, send)
        else:
            await self._complete(script, body, send)

    def _take(self, body: dict[str, Any], headers: dict[str, str], client: Any) -> Script:
        with self._lock:
            if self.record_requests:
                self.requests.append(body)
                self.request_headers.append(headers)
                self.request_clients.append(tuple(client) if client else ("", 0))
                self._changed.notify_all()
            queue = self._model_queues.get(str(body.get("model")))
            if queue:
                return queue.popleft()
            return self._queue.popleft() if self._queue else self.default_reply

    async def _error(self, send: Send, script: HTTPError) -> None:
        body = script.body
        if body is None:
            body = {"error": {"message": f"fake error {script.status}", "type": "server_error"}}
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        await _respond(send, script.status, data, script.headers)

    async def _complete(self, script: Script, body: dict[str, Any], send: Send) -> None:
        model = str(body.get("model") or "fake-model")
        reply = script if isinstance(script, Reply) else script.reply
        if isinstance(script, Stall):
            await anyio.sleep(script.seconds)
        if isinstance(script, Drop):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"100000")],
                }
            )
            await send({"type": "http.response.body", "body": b"{", "more_body": True})
            raise _DropConnection
        if isinstance(script, Malformed):
            await _respond(send, 200, script.data.encode())
            return
        await _respond(send, 200, _completion_body(reply, body, model))
        self._count_completed()

    async def _stream(self, script: Script, body: dict[str, Any], receive: Receive, send: Send) -> None:
        model = str(body.get("model") or "fake-model")
        reply = script if isinstance(script, Reply) else script.reply
        rendered = self._rendered(reply, model)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        state = {"done": False, "counted": False}

        async def watch_disconnect(scope: anyio.CancelScope) -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["done"]:
                        self._count_disconnect(state)
                    scope.cancel()
                    return

        async with anyio.create_task_group() as group:
            group.start_soon(watch_disconnect, group.cancel_scope)
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                    }
                )
                for event in self._events(script, reply, rendered, body, include_usage):
                    if isinstance(event, float):
                        await anyio.sleep(event)
                    elif event is _DropConnection:
                        raise _DropConnection
                    else:
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                state["done"] = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                self._count_completed()
            except OSError:  # uvicorn raises ClientDisconnected (an OSError) on send after a disconnect
                self._count_disconnect(state)
            group.cancel_scope.cancel()

    def _events(
        self, script: Script, reply: Reply, rendered: _Rendered, body: dict[str, Any], include_usage: bool
    ) -> Iterator[bytes | float | type[_DropConnection]]:
        """The body as a sequence of: SSE bytes to send, float seconds to sleep, or the drop marker."""
        cut = getattr(script, "after", None)
        events = rendered.events
        for index, event in enumerate(events):
            if index == cut:
                if isinstance(script, Stall):
                    yield float(script.seconds)
                elif isinstance(script, Drop):
                    yield _DropConnection
                    return
                elif isinstance(script, Malformed):
                    yield b"data: " + script.data.encode() + b"\n\n"
                    return
            if reply.delay:
                yield float(reply.delay)
            yield event
        if include_usage and not reply.omit_usage:
            usage = _usage(reply, body, rendered.completion, rendered.reasoning)
            yield (
                b"data: "
                + orjson.dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": body.get("model"),
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        yield b"data: [DONE]\n\n"

    def _rendered(self, reply: Reply, model: str) -> _Rendered:
        if reply is not self.default_reply:
            return _render(reply, model)
        cached = self._default_cache.get(model)
        if cached is None:  # the default reply is serialized once per model name, then reused
            if len(self._default_cache) >= 64:  # bounded: arbitrary model names cannot grow it forever
                self._default_cache.clear()
            cached = self._default_cache[model] = _render(reply, model)
        return cached

    def _count_disconnect(self, state: dict[str, bool]) -> None:
        if state["counted"]:
            return
        state["counted"] = True
        with self._changed:
            self.disconnects += 1
            self._changed.notify_all()

    def _count_completed(self) -> None:
        with self._changed:
            self.completed += 1
            self._changed.notify_all()


async def _respond(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


# -- a catalog pointing at the fake ---------------------------------------------------------------------

FAKE_MODELS = ("fake-model", "fake-alt", "fake-unpriced", "fake-chain")
_CATALOG = """\
# Written by aria_engine.testing.fake_llm.write_fake_catalog: every model is served by the fake provider.
default_models: [fake-model]
providers:
  fake:
    kind: openai
    base_url: {base_url}
    api_key_env: {key_env}
models:
  fake-model:
    provider: fake
    aliases: [fake]
    description: Scripted replies from the fake provider.
    context_window: 8192
    max_output_tokens: 1024
    price: {{input: 1.25, output: 10, cached_input: 0.125}}
    reasoning: true
    thinking:
      enable: {{chat_template_kwargs: {{enable_thinking: true}}}}
      disable: {{chat_template_kwargs: {{enable_thinking: false}}}}
  fake-alt:
    provider: fake
    context_window: 4096
    max_output_tokens: 512
    price: {{input: 0.5, output: 1.5}}
  fake-unpriced:
    provider: fake
    context_window: 4096
  fake-chain:
    provider: fake
    context_window: 8192
    price: {{input: 1, output: 2}}
    fallbacks: [fake-alt]
{extra}"""


def write_fake_catalog(
    path: Path | str, base_url: str, *, api_key_env: str | None = None, extra_models: str = ""
) -> Path:
    """Write a `models.yaml` whose models (`FAKE_MODELS`) are all served by the fake at `base_url`.

    `fake-model` (alias `fake`) is priced at 1.25 / 10 / 0.125 (input / output / cached input, USD per 1M
    tokens) and is a reasoning model whose thinking switch is `chat_template_kwargs.enable_thinking`;
    `fake-alt` is priced 0.5 / 1.5; `fake-unpriced` has no prices; `fake-chain` falls back to `fake-alt`.
    `extra_models` is YAML appended under `models:` (indent it by two spaces).
    """
    path = Path(path)
    key_env = api_key_env or "null"
    path.write_text(_CATALOG.format(base_url=base_url, key_env=key_env, extra=extra_models), encoding="utf-8")
    return path
