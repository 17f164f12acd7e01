"""The `openai` adapter's wire details, and the fake provider it is tested against (incl. its CLI)."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aria_engine.config import EngineConfig
from aria_engine.exceptions import ProviderRejected, ProviderUnavailable
from aria_engine.llm_gateway import LLMGateway
from aria_engine.providers import openai_compatible
from aria_engine.providers.base import ContentDelta, LLMRequest, ThinkingDelta
from aria_engine.providers.openai_compatible import (
    OpenAICompatibleProvider,
    SSELines,
    ThinkTagSplitter,
    environment_proxy,
    status_error,
)
from aria_engine.testing.fake_llm import FakeLLM, Reply, ToolCall, Usage, write_fake_catalog

HELLO = [{"role": "user", "content": "hi"}]


# -- SSE lines ------------------------------------------------------------------------------------------


async def lines_of(pieces: list[bytes]) -> list[bytes]:
    lines = SSELines()
    return [*(line for piece in pieces for line in lines.feed(piece)), *lines.end()]


LINE = st.binary(max_size=12).map(lambda line: line.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(LINE, max_size=8),
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=10),
)
async def test_sse_lines_survive_any_cut_between_reads(
    lines: list[bytes], ending: bytes, cuts: list[int]
) -> None:
    body = b"".join(line + ending for line in lines)
    bounds = sorted({0, len(body), *(min(cut, len(body)) for cut in cuts)})
    pieces = [body[start:end] for start, end in itertools.pairwise(bounds)]
    # A CRLF cut between two reads may add a blank line; SSE skips blank lines, so only those may differ.
    assert [line for line in await lines_of(pieces) if line] == [line for line in lines if line]


async def test_sse_lines_keep_a_last_line_without_its_end() -> None:
    assert await lines_of([b"data: 1\n\nda", b"ta: 2"]) == [b"data: 1", b"", b"data: 2"]


async def test_an_endless_line_is_refused_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_compatible, "MAX_LINE_BYTES", 64)
    with pytest.raises(ProviderUnavailable):
        await lines_of([b"x" * 40] * 3)


# -- <think> tags ----------------------------------------------------------------------------------------


def split_all(pieces: list[str]) -> tuple[str, str]:
    splitter = ThinkTagSplitter()
    out = [chunk for piece in pieces for chunk in splitter.feed(piece)] + list(splitter.flush())
    thinking = "".join(c.text for c in out if isinstance(c, ThinkingDelta))
    content = "".join(c.text for c in out if isinstance(c, ContentDelta))
    return thinking, content


@settings(max_examples=200, deadline=None)
@given(
    thinking=st.text(alphabet="ab <>/thinkx", max_size=30).filter(lambda t: "</think>" not in t),
    answer=st.text(alphabet="ab <>/thinkx", max_size=30).filter(lambda t: "<think>" not in t),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=12),
)
def test_think_tags_split_at_any_cut(thinking: str, answer: str, cuts: list[int]) -> None:
    stream = f"<think>{thinking}</think>{answer}"
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(points)]
    assert split_all(pieces) == (thinking, answer)


def test_text_without_tags_passes_through_unchanged() -> None:
    assert split_all(["a < b", " and c <", "thin", "g"]) == ("", "a < b and c <thing")


def test_unterminated_think_is_all_thinking() -> None:
    assert split_all(["<think>still going"]) == ("still going", "")


# -- HTTP status mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
def test_server_side_statuses_are_retryable(status: int) -> None:
    error = status_error(status)
    assert isinstance(error, ProviderUnavailable) and error.retryable


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_side_statuses_are_rejections(status: int) -> None:
    error = status_error(status)
    assert isinstance(error, ProviderRejected) and not error.retryable
    assert error.status_code == status


def test_retry_after_is_kept() -> None:
    assert status_error(429, "2.5").retry_after == 2.5
    assert status_error(429, "Wed, 21 Oct 2015 07:28:00 GMT").retry_after is None


# -- request details ---------------------------------------------------------------------------------------


async def test_api_key_and_catalog_headers_are_sent(fake_llm: FakeLLM, tmp_path: Path) -> None:
    catalog = write_fake_catalog(tmp_path / "models.yaml", fake_llm.base_url, api_key_env="FAKE_KEY")
    catalog.write_text(
        catalog.read_text().replace("    api_key_env:", "    headers: {X-Title: Aria}\n    api_key_env:")
    )
    gateway = LLMGateway.from_config(EngineConfig(models_path=catalog), env={"FAKE_KEY": "sk-123"})
    try:
        await gateway.complete("fake-model", HELLO)
    finally:
        await gateway.aclose()
    headers = fake_llm.request_headers[0]
    assert headers["authorization"] == "Bearer sk-123"
    assert headers["x-title"] == "Aria"


async def test_no_key_sends_no_authorization(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    await fake_gateway.complete("fake-model", HELLO)
    assert "authorization" not in fake_llm.request_headers[0]


async def test_the_environment_proxy_carries_the_request(
    fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake provider plays the proxy: it gets the absolute-form request for a host that does not
    # resolve, so the answer can only have come through the proxy.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", fake_llm.base_url.removesuffix("/v1"))
    provider = OpenAICompatibleProvider("proxied", "http://provider.invalid/v1")
    fake_llm.enqueue(Reply("through the proxy"))
    try:
        chunks = [chunk async for chunk in provider.stream(LLMRequest(model="fake-model", messages=HELLO))]
    finally:
        await provider.aclose()
    assert "".join(chunk.text for chunk in chunks if isinstance(chunk, ContentDelta)) == "through the proxy"


def test_no_proxy_bypasses_the_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "all_proxy", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.corp.example")
    assert environment_proxy("https://api.openai.com/v1/chat/completions") == "http://proxy.internal:3128"
    assert environment_proxy("https://llm.corp.example/v1/chat/completions") is None
    assert environment_proxy("http://127.0.0.1:11434/v1/chat/completions") is None


async def test_calls_reuse_one_provider_connection(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    # A stream read to [DONE] must leave its connection in the pool: a new TCP connection per call
    # costs every turn a connect (and, under load, ephemeral ports).
    for _ in range(3):
        await fake_gateway.complete("fake-model", [{"role": "user", "content": "hi"}])
    assert len(fake_llm.request_clients) == 3
    assert len(set(fake_llm.request_clients)) == 1


async def test_models_can_use_max_completion_tokens(fake_llm: FakeLLM, tmp_path: Path) -> None:
    extra = "  o-style:\n    provider: fake\n    context_window: 1000\n    max_output_tokens: 300\n"
    extra += "    max_tokens_field: max_completion_tokens\n"
    catalog = write_fake_catalog(tmp_path / "models.yaml", fake_llm.base_url, extra_models=extra)
    gateway = LLMGateway.from_config(EngineConfig(models_path=catalog))
    try:
        await gateway.complete("o-style", HELLO)
        await gateway.complete("o-style", HELLO, max_tokens=20)
    finally:
        await gateway.aclose()
    assert [r.get("max_completion_tokens") for r in fake_llm.requests] == [300, 20]
    assert all("max_tokens" not in r for r in fake_llm.requests)


async def test_tools_are_not_sent_to_models_without_tool_support(fake_llm: FakeLLM, tmp_path: Path) -> None:
    extra = "  no-tools:\n    provider: fake\n    context_window: 1000\n    supports_tools: false\n"
    catalog = write_fake_catalog(tmp_path / "models.yaml", fake_llm.base_url, extra_models=extra)
    gateway = LLMGateway.from_config(EngineConfig(models_path=catalog))
    tools = [{"type": "function", "function": {"name": "calculate", "parameters": {"type": "object"}}}]
    try:
        await gateway.complete("no-tools", HELLO, tools=tools)
        await gateway.complete("fake-model", HELLO, tools=tools)
    finally:
        await gateway.aclose()
    assert "tools" not in fake_llm.requests[0]
    assert fake_llm.requests[1]["tools"] == tools


# -- the fake provider itself --------------------------------------------------------------------------


def test_fake_answers_non_streaming_requests(fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(
        Reply("Done.", thinking="plan", tool_calls=[ToolCall("calculate", {"x": 1})], usage=Usage(9, 4, 1))
    )
    body = {"model": "fake-model", "messages": HELLO, "stream": False}
    response = httpx.post(f"{fake_llm.base_url}/chat/completions", json=body, timeout=10)

    assert response.status_code == 200
    data = response.json()
    message = data["choices"][0]["message"]
    assert message["content"] == "Done."
    assert message["reasoning_content"] == "plan"
    assert message["tool_calls"][0]["function"] == {"name": "calculate", "arguments": '{"x":1}'}
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    assert data["usage"]["prompt_tokens"] == 9 and data["usage"]["completion_tokens"] == 4


def test_fake_streams_sse_with_a_final_usage_chunk(fake_llm: FakeLLM) -> None:
    body = {"model": "m", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{fake_llm.base_url}/chat/completions", json=body, timeout=10) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert '"choices":[]' in lines[-2] and '"usage"' in lines[-2]
    assert fake_llm.completed == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_fake_llm_command_serves_replies(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "aria_engine", "fake-llm", "--port", str(port), "--tokens", "5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "fake-model", "messages": HELLO},
                    timeout=5,
                )
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        assert response.json()["choices"][0]["message"]["content"] == "the engine streams every token"
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- a pooled connection the provider closed --------------------------------------------------------------


class _HangingUpProvider:
    """A real HTTP/1.1 server speaking just enough of the wire format, which closes a keep-alive
    connection when a request arrives on it after `answers_per_connection` answers: what a server that
    closed an idle connection looks like to a client that reused it before seeing the close."""

    def __init__(self, answers_per_connection: int) -> None:
        self.answers_per_connection = answers_per_connection
        self.connections = 0
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _HangingUpProvider:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                if answered == self.answers_per_connection:
                    return  # closed without an answer
                chunk = {"choices": [{"index": 0, "delta": {"content": "pong"}, "finish_reason": None}]}
                body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
                head = f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {len(body)}"
                writer.write(head.encode() + b"\r\n\r\n" + body)
                await writer.drain()
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def _text(provider: OpenAICompatibleProvider) -> str:
    chunks = [chunk async for chunk in provider.stream(LLMRequest(model="m", messages=HELLO))]
    return "".join(chunk.text for chunk in chunks if isinstance(chunk, ContentDelta))


async def test_a_pooled_connection_the_provider_closed_is_retried_at_once_on_a_new_one() -> None:
    async with _HangingUpProvider(answers_per_connection=1) as server:
        provider = OpenAICompatibleProvider("hangs-up", server.url)
        try:
            assert await _text(provider) == "pong"
            # The next request goes out on the pooled connection, which the server closes: the call
            # still succeeds, on a new connection, and no error reaches the gateway (so no backoff, and
            # nothing counted toward the circuit breaker).
            assert await _text(provider) == "pong"
        finally:
            await provider.aclose()
    assert (server.connections, server.requests) == (2, 3)


async def test_a_new_connection_closed_without_an_answer_is_a_failure() -> None:
    async with _HangingUpProvider(answers_per_connection=0) as server:
        provider = OpenAICompatibleProvider("hangs-up", server.url)
        try:
            with pytest.raises(ProviderUnavailable):
                await _text(provider)
        finally:
            await provider.aclose()
    # One retry on a new connection, then the failure is the provider's: the gateway retries and
    # counts it.
    assert (server.connections, server.requests) == (2, 2)
