"""The `openai` adapter: any OpenAI-compatible chat-completions server, read with a lean aiohttp SSE reader.

One `aiohttp.ClientSession` per provider (opened on the first call, inside the event loop; closed by
`aclose`). Every call streams with `stream_options.include_usage`; the SSE lines are decoded with orjson
into normalized chunks:

- `reasoning_content` / `reasoning` deltas become `ThinkingDelta`; inline `<think>...</think>` in content
  is split out by `ThinkTagSplitter`, also when a tag is cut across chunks;
- tool-call fragments become `ToolCallDelta` (assembled by index downstream);
- the usage report becomes one `UsageChunk`, and the stream always ends with one `FinishChunk`.

Why not the openai SDK, and why aiohttp rather than httpx: `bench/bench_provider_clients.py` measures the
client CPU per streamed chunk of the three. The SDK builds Pydantic objects for every chunk; httpx parses
HTTP in pure Python (h11) through about ten async layers per read. When many streams each deliver a token
at a time (the normal case for a chat service), aiohttp's C parser costs about a quarter of httpx's per
chunk (docs/MODELS.md has the numbers). Only `connect` (getting a connection, from the pool or new) is an
aiohttp timeout here: first-token, idle and total deadlines are enforced by the gateway for every adapter.

aiohttp errors never leave this module: they become `ProviderTimeout`, `ProviderUnavailable` or
`ProviderRejected` (`raise ... from exc`, so the cause reaches the log but never a client). Closing the
iterator leaves the `async with` before the body's end, which closes the upstream connection.
"""

from __future__ import annotations

import logging
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import aiohttp
import orjson

from aria_engine.exceptions import LLMError, ProviderRejected, ProviderTimeout, ProviderUnavailable
from aria_engine.providers.base import (
    Chunk,
    ContentDelta,
    FinishChunk,
    LLMRequest,
    ThinkingDelta,
    ToolCallDelta,
    UsageChunk,
)

__all__ = [
    "MAX_LINE_BYTES",
    "OpenAICompatibleProvider",
    "SSEDecoder",
    "SSELines",
    "ThinkTagSplitter",
    "environment_proxy",
    "status_error",
]

logger = logging.getLogger("aria.providers.openai")

_OPEN, _CLOSE = "<think>", "</think>"
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls"}
_RETRYABLE_STATUS = {408, 409, 425, 429}
_MAX_ERROR_BODY = 1024  # logged for operators; never sent to clients
# A provider's line longer than this is not an SSE event we can use; holding it longer would let one
# broken upstream take the engine's memory.
MAX_LINE_BYTES = 16 * 2**20


class ThinkTagSplitter:
    """Splits inline `<think>...</think>` out of streamed content with constant work per chunk.

    Only the tail that could be the start of a tag (at most len("</think>") - 1 characters) is held back
    between chunks, so a tag split as "<thi" + "nk>" is still recognised.
    """

    __slots__ = ("_held", "_inside")

    def __init__(self, *, inside: bool = False) -> None:
        self._inside = inside  # True when the prompt already opened the <think> block
        self._held = ""

    def feed(self, text: str) -> Sequence[ContentDelta | ThinkingDelta]:
        if not self._held and "<" not in text:  # nearly every chunk: nothing to split or hold back
            return (self._piece(text),) if text else ()
        pieces: list[ContentDelta | ThinkingDelta] = []
        text = self._held + text
        self._held = ""
        while text:
            tag = _CLOSE if self._inside else _OPEN
            at = text.find(tag)
            if at >= 0:
                if at:
                    pieces.append(self._piece(text[:at]))
                self._inside = not self._inside
                text = text[at + len(tag) :]
                continue
            keep = _partial_tag_suffix(text, tag)
            if keep:
                self._held = text[-keep:]
                text = text[:-keep]
            if text:
                pieces.append(self._piece(text))
            break
        return pieces

    def flush(self) -> Iterator[ContentDelta | ThinkingDelta]:
        if self._held:
            yield self._piece(self._held)
            self._held = ""

    def _piece(self, text: str) -> ContentDelta | ThinkingDelta:
        return ThinkingDelta(text) if self._inside else ContentDelta(text)


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def status_error(status: int, retry_after: str | None = None) -> LLMError:
    """The engine error for an upstream HTTP status. 5xx and 408/409/425/429 are worth retrying."""
    if status >= 500 or status in _RETRYABLE_STATUS:
        error = ProviderUnavailable(f"The model provider answered with an error (HTTP {status}).")
        if retry_after:
            try:
                error.retry_after = max(0.0, float(retry_after))
            except ValueError:
                error.retry_after = None
        return error
    return ProviderRejected(status, f"The model provider rejected the request (HTTP {status}).")


class OpenAICompatibleProvider:
    """An OpenAI-compatible endpoint.

    Args:
        name: the catalog's provider id.
        base_url: e.g. "https://api.openai.com/v1" or "http://127.0.0.1:11434/v1".
        api_key: sent as a Bearer token when given (read from the environment by the caller).
        headers: extra headers (e.g. OpenRouter's HTTP-Referer).
        connect_timeout: seconds to get a connection (pool or new) and send the request.
        max_connections: concurrent requests to this provider.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        connect_timeout: float = 10.0,
        max_connections: int = 1000,
    ) -> None:
        self.name = name
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Accept": "text/event-stream", "Content-Type": "application/json", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._proxy = environment_proxy(self._url)
        self._session: aiohttp.ClientSession | None = None
        self._unpooled: aiohttp.ClientSession | None = None  # for the retry of a stale connection

    def _client(self) -> aiohttp.ClientSession:
        """The provider's session, opened on first use (aiohttp binds it to the running event loop)."""
        if self._session is None:
            # A stream holds its connection for the whole answer: the pool must cover concurrent turns.
            self._session = self._new_session(aiohttp.TCPConnector(limit=self._max_connections))
        return self._session

    def _fresh_client(self) -> aiohttp.ClientSession:
        """A session whose every request opens a new connection (nothing pooled, so nothing stale)."""
        if self._unpooled is None:
            self._unpooled = self._new_session(
                aiohttp.TCPConnector(limit=self._max_connections, force_close=True)
            )
        return self._unpooled

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            headers=self._headers,
            connector=connector,
            # `connect` bounds waiting for a pooled connection and opening a new one alike. No read
            # timeout: the first-token/idle/total deadlines are the gateway's, for all adapters.
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout, sock_read=None),
        )

    async def aclose(self) -> None:
        for session in (self._session, self._unpooled):
            if session is not None:
                await session.close()
        self._session = self._unpooled = None

    async def _post(self, content: bytes) -> aiohttp.ClientResponse:
        """Send the request; one closed before any answer is sent again at once, on a new connection.

        Servers close idle keep-alive connections (uvicorn after 5 s), and a client that reuses one just
        then, before it has seen the close (a busy event loop is late to), fails before any answer: the
        provider never read the request. That says nothing about the provider's health, so it is not
        raised: the gateway neither waits a backoff nor counts it toward the circuit breaker (under a
        burst, a few such failures in a row opened the circuit of a healthy provider). A failure on the
        new connection is a real one. Failing to connect at all is not retried here.
        """
        try:
            return await self._client().post(self._url, data=content, proxy=self._proxy)
        except aiohttp.ClientConnectorError:
            raise
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            logger.info("provider closed a pooled connection; retrying on a new one")
            return await self._fresh_client().post(self._url, data=content, proxy=self._proxy)

    def body(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        body.update(request.params)  # catalog defaults and thinking switches; caller values below win
        if request.tools:
            body["tools"] = request.tools
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        return body

    async def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        try:
            # The body is not kept in this generator's frame, where it would live as long as the
            # stream (4 KB per stream in the bench's many-streams scenario, measured with tracemalloc).
            async with await self._post(orjson.dumps(self.body(request))) as response:
                try:
                    if response.status >= 400:
                        await _read_error_body(response)
                        raise status_error(response.status, response.headers.get("Retry-After"))
                    # One pass per read, not per line: the chunks of a read are decoded together,
                    # and only they cross this generator one by one. The reads are awaited here, not
                    # through another async iterator: every layer a waiting stream is suspended in is
                    # one more object per token that the collector's young collections traverse.
                    lines, decoder = SSELines(), SSEDecoder()
                    read = response.content.readany
                    while data := await read():
                        for chunk in decoder.feed(lines.feed(data)):
                            yield chunk
                    for chunk in decoder.feed(lines.end()):
                        yield chunk
                    for chunk in decoder.end():
                        yield chunk
                finally:
                    if not response.content.at_eof():
                        # Left before its end (closed, cancelled, failed): drop the connection, which
                        # also tells the provider to stop generating. aiohttp would keep it pooled.
                        response.close()
        except aiohttp.ConnectionTimeoutError as exc:
            raise ProviderTimeout("connect") from exc
        except aiohttp.ServerTimeoutError as exc:
            raise ProviderTimeout("idle") from exc
        except aiohttp.ClientError as exc:
            # Connection refused, reset, or closed before the stream ended (incomplete chunked body).
            raise ProviderUnavailable("The connection to the model provider failed.") from exc


def environment_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / ALL_PROXY and NO_PROXY give for `url`, as other HTTP clients read
    them. Read once per provider: aiohttp's own `trust_env` reads the environment and ~/.netrc on every
    request, in a thread."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(parts.scheme) or proxies.get("all")


async def _read_error_body(response: aiohttp.ClientResponse) -> None:
    """Log a bounded part of an error body: useful to operators, never shown to clients."""
    received = bytearray()
    async for part in response.content.iter_any():
        received += part
        if len(received) >= _MAX_ERROR_BODY:
            break
    logger.warning("provider HTTP %s: %s", response.status, bytes(received[:_MAX_ERROR_BODY]))


class SSELines:
    """The complete lines of a body's reads: `feed` gives those a read ends (CR, LF or CRLF ends; a CRLF
    cut between two reads gives one extra blank line, which SSE ignores). A partial line waits for the
    rest, bounded by MAX_LINE_BYTES; `end` gives a last line left without its end."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        end = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if end < 0:
            self._held += data
            if len(self._held) > MAX_LINE_BYTES:
                raise ProviderUnavailable("The model provider sent an invalid response.")
            return []
        # The usual read ends with its last line: no copy, and nothing held back.
        complete = data if end + 1 == len(data) else data[: end + 1]
        if self._held:
            complete = bytes(self._held) + complete
            self._held.clear()
        if end + 1 < len(data):
            self._held += data[end + 1 :]
        return complete.splitlines()

    def end(self) -> list[bytes]:
        return [bytes(self._held)] if self._held else []


class SSEDecoder:
    """SSE lines -> chunks. Usage and finish are held back, so a stream ends usage, then finish (`end`).

    After `[DONE]` the rest of the body is still read rather than abandoned: an unfinished response
    closes its connection, and every call would then pay for a new one.
    """

    __slots__ = ("_done", "_finish", "_splitter", "_usage")

    def __init__(self) -> None:
        self._splitter = ThinkTagSplitter()
        self._usage: UsageChunk | None = None
        self._finish = "stop"
        self._done = False

    def feed(self, lines: Iterable[bytes]) -> Iterator[Chunk]:
        """The chunks of these lines, in order; a bad event raises where it stands, after the output
        before it (a plain generator: crossing it costs a fraction of an async generator's hop)."""
        for line in lines:
            if self._done or not line.startswith(b"data:"):
                continue  # blank separators, `event:` lines and `: keep-alive` comments
            data = line[5:].strip()
            if data == b"[DONE]":
                self._done = True
                continue
            payload = _payload(data)
            if payload.get("error"):
                logger.warning("provider stream error: %s", str(payload["error"])[:_MAX_ERROR_BODY])
                raise ProviderUnavailable("The model provider failed while answering.")
            if payload.get("usage"):
                self._usage = _usage(payload["usage"])
            for choice in payload.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if type(text) is str and not _has_more_than_content(delta):
                    yield from self._splitter.feed(text)  # the common chunk: content only
                else:
                    yield from _delta_chunks(delta, self._splitter)
                if choice.get("finish_reason"):
                    self._finish = _FINISH.get(choice["finish_reason"], "stop")

    def end(self) -> list[Chunk]:
        chunks: list[Chunk] = list(self._splitter.flush())
        if self._usage is not None:
            chunks.append(self._usage)
        chunks.append(FinishChunk(self._finish))
        return chunks


def _has_more_than_content(delta: dict[str, Any]) -> bool:
    return bool(delta.get("tool_calls") or delta.get("reasoning_content") or delta.get("reasoning"))


def _payload(data: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProviderUnavailable("The model provider sent an invalid response.") from exc
    if not isinstance(payload, dict):
        raise ProviderUnavailable("The model provider sent an invalid response.")
    return payload


def _delta_chunks(delta: dict[str, Any], splitter: ThinkTagSplitter) -> Iterator[Chunk]:
    thinking = delta.get("reasoning_content") or delta.get("reasoning")
    if thinking and isinstance(thinking, str):
        yield ThinkingDelta(thinking)
    text = delta.get("content")
    if text and isinstance(text, str):
        yield from splitter.feed(text)
    for call in delta.get("tool_calls") or ():
        function = call.get("function") or {}
        yield ToolCallDelta(
            index=int(call.get("index") or 0),
            id=call.get("id") or None,
            name=function.get("name") or None,
            arguments=function.get("arguments") or "",
        )


def _usage(raw: dict[str, Any]) -> UsageChunk:
    completion_details = raw.get("completion_tokens_details") or {}
    prompt_details = raw.get("prompt_tokens_details") or {}
    return UsageChunk(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
    )
