"""Timeouts, retries, fallback, circuit breakers and cancellation, against the fake provider (real HTTP)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from aria_engine.config import EngineConfig, ProviderTimeouts
from aria_engine.exceptions import (
    CircuitOpen,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from aria_engine.llm_gateway import LLMGateway
from aria_engine.providers.base import Chunk, ContentDelta, FinishChunk, ModelSelected
from aria_engine.testing.fake_llm import Drop, FakeLLM, HTTPError, Malformed, Reply, Stall, write_fake_catalog

HELLO = [{"role": "user", "content": "Say hello"}]
LONG_TEXT = " ".join(f"word{i}" for i in range(200))


@pytest.fixture
async def make_gateway(fake_catalog_path: Path, tmp_path: Path) -> AsyncIterator[Any]:
    """Build gateways with test-sized settings; every one is closed at the end."""
    built: list[LLMGateway] = []

    def make(catalog: Path | None = None, **overrides: Any) -> LLMGateway:
        settings: dict[str, Any] = {
            "models_path": catalog or fake_catalog_path,
            "default_model": "fake-model",
            "data_dir": tmp_path,
            "llm_retry_backoff": 0.01,
            "llm_max_retries": 0,
            **overrides,
        }
        gateway = LLMGateway.from_config(EngineConfig(**settings))
        built.append(gateway)
        return gateway

    yield make
    for gateway in built:
        await gateway.aclose()


async def collect(gateway: LLMGateway, model: str = "fake-model") -> list[Chunk]:
    return [chunk async for chunk in gateway.stream(model, HELLO)]


def content(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, ContentDelta))


# -- retries --------------------------------------------------------------------------------------------


async def test_retryable_error_is_retried_then_succeeds(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(llm_max_retries=2)
    fake_llm.enqueue(HTTPError(503), HTTPError(502), Reply("third time lucky"))

    chunks = await collect(gateway)

    assert content(chunks) == "third time lucky"
    assert len(fake_llm.requests) == 3


async def test_rate_limit_is_retried(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(llm_max_retries=1)
    fake_llm.enqueue(HTTPError(429, headers={"Retry-After": "0"}), Reply("ok"))
    assert content(await collect(gateway)) == "ok"
    assert len(fake_llm.requests) == 2


async def test_retries_stop_after_the_configured_count(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(llm_max_retries=2)
    fake_llm.enqueue(HTTPError(500), HTTPError(500), HTTPError(500), Reply("never reached"))

    with pytest.raises(ProviderUnavailable):
        await collect(gateway)
    assert len(fake_llm.requests) == 3


async def test_client_errors_are_not_retried(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(llm_max_retries=3)
    fake_llm.enqueue(HTTPError(400, body={"error": {"message": "secret upstream detail"}}))

    with pytest.raises(ProviderRejected) as caught:
        await collect(gateway)
    assert len(fake_llm.requests) == 1
    assert caught.value.status_code == 400
    assert "secret" not in caught.value.message  # upstream text never reaches a client


async def test_no_retry_once_output_began(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(llm_max_retries=3)
    fake_llm.enqueue(Drop(after=2, reply=Reply(LONG_TEXT)))
    received: list[Chunk] = []

    with pytest.raises(ProviderUnavailable):
        async for chunk in gateway.stream("fake-model", HELLO):
            received.append(chunk)

    assert content(received) == "word0 word1"
    assert len(fake_llm.requests) == 1


async def test_drop_before_output_is_retried(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(llm_max_retries=1)
    fake_llm.enqueue(Drop(after=0), Reply("second try"))
    assert content(await collect(gateway)) == "second try"
    assert len(fake_llm.requests) == 2


async def test_malformed_chunk_fails_as_unavailable(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(llm_max_retries=1)
    fake_llm.enqueue(Malformed(after=0), Reply("clean"))
    assert content(await collect(gateway)) == "clean"

    fake_llm.enqueue(Malformed(after=1, reply=Reply("a b c")))
    with pytest.raises(ProviderUnavailable):
        await collect(gateway)


# -- timeouts -------------------------------------------------------------------------------------------


async def test_first_token_timeout(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(timeouts=ProviderTimeouts(first_token=0.3))
    fake_llm.enqueue(Stall(after=0, seconds=30))

    with pytest.raises(ProviderTimeout) as caught:
        await collect(gateway)

    assert caught.value.phase == "first_token"
    # The abandoned request was closed, not left hanging.
    assert await anyio.to_thread.run_sync(fake_llm.wait_for_disconnects, 1)


async def test_idle_timeout_between_chunks(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(timeouts=ProviderTimeouts(idle=0.3), llm_max_retries=2)
    fake_llm.enqueue(Stall(after=2, seconds=30, reply=Reply(LONG_TEXT)))
    received: list[Chunk] = []

    with pytest.raises(ProviderTimeout) as caught:
        async for chunk in gateway.stream("fake-model", HELLO):
            received.append(chunk)

    assert caught.value.phase == "idle"
    assert content(received) == "word0 word1"
    assert len(fake_llm.requests) == 1  # output had begun: no retry
    assert await anyio.to_thread.run_sync(fake_llm.wait_for_disconnects, 1)


async def test_total_timeout(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(timeouts=ProviderTimeouts(total=0.5, idle=5, first_token=5))
    fake_llm.enqueue(Reply(LONG_TEXT, delay=0.05))  # 200 chunks x 50 ms: far beyond the total

    with pytest.raises(ProviderTimeout) as caught:
        await collect(gateway)
    assert caught.value.phase == "total"


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listen queue is full: new connections hang in SYN, like a black-holed host."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    try:
        yield server.getsockname()[1]
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_connect_timeout(unanswered_port: int, make_gateway: Any, tmp_path: Path) -> None:
    catalog = write_fake_catalog(tmp_path / "blackhole.yaml", f"http://127.0.0.1:{unanswered_port}/v1")
    gateway = make_gateway(catalog, timeouts=ProviderTimeouts(connect=0.3))

    with pytest.raises(ProviderTimeout) as caught:
        await collect(gateway)
    assert caught.value.phase == "connect"


async def test_connection_refused_is_unavailable(make_gateway: Any, tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    gateway = make_gateway(write_fake_catalog(tmp_path / "refused.yaml", f"http://127.0.0.1:{port}/v1"))

    with pytest.raises(ProviderUnavailable):
        await collect(gateway)


# -- fallback -------------------------------------------------------------------------------------------


async def test_fallback_serves_when_the_primary_fails_before_output(
    fake_llm: FakeLLM, make_gateway: Any
) -> None:
    gateway = make_gateway(llm_max_retries=1)
    fake_llm.enqueue(HTTPError(503), HTTPError(503), model="fake-chain")
    fake_llm.enqueue(Reply("from the fallback"), model="fake-alt")

    chunks = await collect(gateway, "fake-chain")

    assert chunks[0] == ModelSelected("fake-alt")
    assert content(chunks) == "from the fallback"
    assert [r["model"] for r in fake_llm.requests] == ["fake-chain", "fake-chain", "fake-alt"]


async def test_no_fallback_once_output_began(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway()
    fake_llm.enqueue(Drop(after=1, reply=Reply(LONG_TEXT)), model="fake-chain")

    with pytest.raises(ProviderUnavailable):
        await collect(gateway, "fake-chain")
    assert [r["model"] for r in fake_llm.requests] == ["fake-chain"]


async def test_the_last_error_is_raised_when_the_chain_is_exhausted(
    fake_llm: FakeLLM, make_gateway: Any
) -> None:
    gateway = make_gateway()
    fake_llm.enqueue(HTTPError(503), model="fake-chain")
    fake_llm.enqueue(HTTPError(401), model="fake-alt")

    with pytest.raises(ProviderRejected):
        await collect(gateway, "fake-chain")


# -- circuit breaker ------------------------------------------------------------------------------------


async def test_breaker_opens_after_consecutive_failures(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(breaker_failure_threshold=2, breaker_reset_seconds=60)
    fake_llm.enqueue(HTTPError(503), HTTPError(503))

    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            await collect(gateway)
    assert gateway.breaker_states() == {"fake": "open"}

    with pytest.raises(CircuitOpen) as caught:
        await collect(gateway)
    assert len(fake_llm.requests) == 2  # the open circuit sent nothing upstream
    assert caught.value.retry_after is not None and caught.value.retry_after > 0


async def test_rejections_do_not_count_towards_the_breaker(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(breaker_failure_threshold=1)
    fake_llm.enqueue(HTTPError(400), HTTPError(404))
    for _ in range(2):
        with pytest.raises(ProviderRejected):
            await collect(gateway)
    assert gateway.breaker_states() == {"fake": "closed"}


async def test_half_open_lets_one_probe_through_and_closes_on_success(
    fake_llm: FakeLLM, make_gateway: Any
) -> None:
    gateway = make_gateway(breaker_failure_threshold=1, breaker_reset_seconds=0.2)
    fake_llm.enqueue(HTTPError(503))
    with pytest.raises(ProviderUnavailable):
        await collect(gateway)
    assert gateway.breaker_states() == {"fake": "open"}
    await anyio.sleep(0.25)
    assert gateway.breaker_states() == {"fake": "half_open"}

    fake_llm.enqueue(Stall(after=0, seconds=0.5, reply=Reply("probe answer")))
    probe_result: list[Chunk] = []

    async def probe() -> None:
        probe_result.extend(await collect(gateway))

    async with anyio.create_task_group() as group:
        group.start_soon(probe)
        # Wait (bounded) until the probe has reached the server and is waiting for its first token.
        assert await anyio.to_thread.run_sync(fake_llm.wait_for_requests, 2)
        with pytest.raises(CircuitOpen):
            await collect(gateway)  # a second caller while the probe is in flight

    assert content(probe_result) == "probe answer"
    assert gateway.breaker_states() == {"fake": "closed"}
    assert len(fake_llm.requests) == 2


async def test_failed_probe_opens_the_circuit_again(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway(breaker_failure_threshold=3, breaker_reset_seconds=0.2)
    fake_llm.enqueue(HTTPError(503), HTTPError(503), HTTPError(503), HTTPError(503))
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):
            await collect(gateway)
    await anyio.sleep(0.25)

    with pytest.raises(ProviderUnavailable):
        await collect(gateway)  # the probe fails: one failure is enough in half-open
    assert gateway.breaker_states() == {"fake": "open"}


async def test_open_breaker_falls_back_to_another_provider_model(
    fake_llm: FakeLLM, make_gateway: Any, tmp_path: Path
) -> None:
    # fake-chain's fallback on a second provider (same fake server, separate breaker).
    extra = """\
  other-model:
    provider: other
    context_window: 4096
"""
    catalog = write_fake_catalog(tmp_path / "two.yaml", fake_llm.base_url, extra_models=extra)
    text = catalog.read_text().replace(
        "models:\n", f"  other:\n    kind: openai\n    base_url: {fake_llm.base_url}\nmodels:\n", 1
    )
    text = text.replace("fallbacks: [fake-alt]", "fallbacks: [other-model]")
    catalog.write_text(text)
    gateway = make_gateway(catalog, breaker_failure_threshold=1, breaker_reset_seconds=60)
    fake_llm.enqueue(HTTPError(503), model="fake-model")
    with pytest.raises(ProviderUnavailable):
        await collect(gateway, "fake-model")
    assert gateway.breaker_states()["fake"] == "open"

    chunks = await collect(gateway, "fake-chain")

    assert chunks[0] == ModelSelected("other-model")
    assert [r["model"] for r in fake_llm.requests][-1] == "other-model"


# -- cancellation ---------------------------------------------------------------------------------------


async def test_closing_the_stream_closes_the_upstream_connection(
    fake_llm: FakeLLM, make_gateway: Any
) -> None:
    gateway = make_gateway()
    fake_llm.enqueue(Reply(LONG_TEXT, delay=0.02))

    async with aclosing(gateway.stream("fake-model", HELLO)) as chunks:
        async for chunk in chunks:
            if isinstance(chunk, ContentDelta):
                break

    assert await anyio.to_thread.run_sync(fake_llm.wait_for_disconnects, 1)
    assert fake_llm.completed == 0


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    fake_llm: FakeLLM, make_gateway: Any
) -> None:
    gateway = make_gateway()
    fake_llm.enqueue(Reply(LONG_TEXT, delay=0.02))
    first_token = anyio.Event()

    async def consume() -> None:
        async with aclosing(gateway.stream("fake-model", HELLO)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, ContentDelta):
                    first_token.set()

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await first_token.wait()
        group.cancel_scope.cancel()

    assert await anyio.to_thread.run_sync(fake_llm.wait_for_disconnects, 1)
    assert fake_llm.completed == 0
    assert gateway.breaker_states() == {"fake": "closed"}


async def test_a_finished_stream_is_not_a_disconnect(fake_llm: FakeLLM, make_gateway: Any) -> None:
    gateway = make_gateway()
    chunks = await collect(gateway)
    assert chunks[-1] == FinishChunk("stop")
    assert fake_llm.completed == 1
    assert fake_llm.disconnects == 0
