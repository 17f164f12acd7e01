"""The gateway streams normalized chunks from an OpenAI-compatible server (the fake, over real HTTP)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from aria_engine.config import EngineConfig
from aria_engine.exceptions import UnknownModel
from aria_engine.llm_gateway import LLMGateway
from aria_engine.providers.base import (
    Chunk,
    ContentDelta,
    FinishChunk,
    ModelSelected,
    ThinkingDelta,
    ToolCallDelta,
    UsageChunk,
)
from aria_engine.testing.fake_llm import DEFAULT_TEXT, FakeLLM, Reply, ToolCall, Usage, write_fake_catalog

HELLO = [{"role": "user", "content": "Say hello"}]


async def collect(gateway: LLMGateway, model: str = "fake-model", **kwargs: object) -> list[Chunk]:
    return [chunk async for chunk in gateway.stream(model, HELLO, **kwargs)]  # type: ignore[arg-type]


def text_of(chunks: list[Chunk], kind: type[ContentDelta] | type[ThinkingDelta]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, kind))


async def test_text_streams_as_deltas_after_model_selected(
    fake_llm: FakeLLM, fake_gateway: LLMGateway
) -> None:
    fake_llm.enqueue(Reply("The quick brown fox"))

    chunks = await collect(fake_gateway)

    assert chunks[0] == ModelSelected("fake-model")
    deltas = [c.text for c in chunks if isinstance(c, ContentDelta)]
    assert deltas == ["The", " quick", " brown", " fox"]
    assert isinstance(chunks[-2], UsageChunk)
    assert chunks[-1] == FinishChunk("stop")


async def test_default_reply_when_nothing_is_queued(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    chunks = await collect(fake_gateway)
    assert text_of(chunks, ContentDelta) == DEFAULT_TEXT


async def test_alias_resolves_to_the_model_id(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    chunks = await collect(fake_gateway, "fake")
    assert chunks[0] == ModelSelected("fake-model")
    assert fake_llm.requests[0]["model"] == "fake-model"


async def test_request_asks_for_usage_and_streams(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    await collect(fake_gateway)
    body = fake_llm.requests[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == HELLO


async def test_reasoning_content_becomes_thinking(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    fake_llm.enqueue(Reply("Four.", thinking="Two plus two is four", thinking_style="reasoning_content"))
    chunks = await collect(fake_gateway)
    assert text_of(chunks, ThinkingDelta) == "Two plus two is four"
    assert text_of(chunks, ContentDelta) == "Four."


async def test_reasoning_field_becomes_thinking(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    fake_llm.enqueue(Reply("Yes.", thinking="Checking", thinking_style="reasoning"))
    chunks = await collect(fake_gateway)
    assert text_of(chunks, ThinkingDelta) == "Checking"
    assert text_of(chunks, ContentDelta) == "Yes."


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, None])
async def test_inline_think_tags_are_split_out_even_when_cut(
    fake_llm: FakeLLM, fake_gateway: LLMGateway, chunk_size: int | None
) -> None:
    fake_llm.enqueue(
        Reply(
            "The answer is 4.", thinking="2+2 < 5, so 4", thinking_style="think_tags", chunk_size=chunk_size
        )
    )
    chunks = await collect(fake_gateway)
    assert text_of(chunks, ThinkingDelta) == "2+2 < 5, so 4"
    assert text_of(chunks, ContentDelta) == "The answer is 4."


async def test_streamed_tool_calls_keep_their_index_and_split_arguments(
    fake_llm: FakeLLM, fake_gateway: LLMGateway
) -> None:
    fake_llm.enqueue(
        Reply(
            "",
            tool_calls=[
                ToolCall("calculate", {"expression": "6*7"}, id="call_a"),
                ToolCall("current_time", {"timezone": "UTC"}, id="call_b"),
            ],
            args_chunks=4,
        )
    )
    chunks = await collect(fake_gateway, tools=[{"type": "function", "function": {"name": "calculate"}}])

    calls = [c for c in chunks if isinstance(c, ToolCallDelta)]
    assert len([c for c in calls if c.index == 0 and c.arguments]) == 4  # arguments arrived in pieces
    assert "".join(c.arguments for c in calls if c.index == 0) == '{"expression":"6*7"}'
    assert "".join(c.arguments for c in calls if c.index == 1) == '{"timezone":"UTC"}'
    assert [(c.id, c.name) for c in calls if c.name] == [("call_a", "calculate"), ("call_b", "current_time")]
    assert chunks[-1] == FinishChunk("tool_calls")
    assert fake_llm.requests[0]["tools"][0]["function"]["name"] == "calculate"


async def test_complete_assembles_tool_calls_in_openai_shape(
    fake_llm: FakeLLM, fake_gateway: LLMGateway
) -> None:
    fake_llm.enqueue(Reply("Let me compute.", tool_calls=[ToolCall("calculate", {"expression": "1+1"})]))

    completion = await fake_gateway.complete("fake-model", HELLO)

    assert completion.content == "Let me compute."
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == [
        {
            "id": "call_fake_0",
            "type": "function",
            "function": {"name": "calculate", "arguments": '{"expression":"1+1"}'},
        }
    ]


async def test_reported_usage_is_passed_through_and_priced_exactly(
    fake_llm: FakeLLM, fake_gateway: LLMGateway
) -> None:
    fake_llm.enqueue(
        Reply("ok", thinking="hm", usage=Usage(1000, 200, reasoning_tokens=50, cached_tokens=400))
    )

    completion = await fake_gateway.complete("fake-model", HELLO)

    assert completion.usage == UsageChunk(
        input_tokens=1000, output_tokens=200, reasoning_tokens=50, cached_input_tokens=400
    )
    # fake-model: input 1.25, cached input 0.125, output 10 (USD per 1M tokens)
    expected = (600 * Decimal("1.25") + 400 * Decimal("0.125") + 200 * Decimal(10)) / Decimal(1_000_000)
    assert completion.cost == expected == Decimal("0.00280")


async def test_unpriced_model_costs_zero_and_says_so(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    fake_llm.enqueue(Reply("ok", usage=Usage(100, 10)))
    completion = await fake_gateway.complete("fake-unpriced", HELLO)
    assert completion.cost == Decimal(0)
    assert fake_gateway.resolve("fake-unpriced").priced is False
    assert fake_gateway.resolve("fake-model").priced is True


async def test_usage_is_estimated_when_the_server_reports_none(
    fake_llm: FakeLLM, fake_gateway: LLMGateway
) -> None:
    fake_llm.enqueue(Reply("one two three four", omit_usage=True))

    chunks = await collect(fake_gateway)

    usage = [c for c in chunks if isinstance(c, UsageChunk)]
    assert usage == [
        UsageChunk(
            input_tokens=fake_gateway.count_messages("fake-model", HELLO),
            output_tokens=fake_gateway.count_tokens("fake-model", "one two three four"),
        )
    ]
    assert usage[0].output_tokens == 4
    assert chunks[-1] == FinishChunk("stop")


async def test_caller_parameters_beat_catalog_defaults(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    await collect(fake_gateway, temperature=0.0, max_tokens=77)
    body = fake_llm.requests[0]
    assert body["temperature"] == 0.0  # zero is a value, not "unset"
    assert body["max_tokens"] == 77


async def test_max_tokens_defaults_to_the_catalog_output_limit(
    fake_llm: FakeLLM, fake_gateway: LLMGateway
) -> None:
    await collect(fake_gateway)
    assert fake_llm.requests[0]["max_tokens"] == 1024
    assert "temperature" not in fake_llm.requests[0]


async def test_thinking_switch_comes_from_the_catalog(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    await collect(fake_gateway, enable_thinking=True)
    await collect(fake_gateway, enable_thinking=False)
    await collect(fake_gateway, "fake-alt", enable_thinking=True)  # not a reasoning model: no switch

    on, off, plain = fake_llm.requests
    assert on["chat_template_kwargs"] == {"enable_thinking": True}
    assert off["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in plain


async def test_unknown_model_is_rejected_with_the_valid_ids(fake_gateway: LLMGateway) -> None:
    with pytest.raises(UnknownModel) as caught:
        await collect(fake_gateway, "gpt-nonexistent")
    assert caught.value.valid == ["fake-model", "fake-alt", "fake-unpriced", "fake-chain"]
    assert "fake-alt" in caught.value.message


async def test_list_models_describes_every_model(fake_gateway: LLMGateway) -> None:
    models = {m.id: m for m in fake_gateway.list_models()}
    fake = models["fake-model"]
    assert fake.aliases == ("fake",)
    assert (fake.input_price, fake.output_price, fake.cached_input_price) == (
        Decimal("1.25"),
        Decimal(10),
        Decimal("0.125"),
    )
    assert fake.reasoning and fake.available and fake.enabled and not fake.is_demo
    assert fake.to_dict()["input_price"] == "1.25"
    assert fake_gateway.default_model == "fake-model"


async def test_concurrent_streams_do_not_mix(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    fake_llm.enqueue(*[Reply(" ".join([f"a{n}"] * 30), delay=0.001) for n in range(20)])
    answers: list[str] = []

    async def ask() -> None:
        answers.append(text_of(await collect(fake_gateway, "fake-alt"), ContentDelta))

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(ask)

    # Each stream got exactly one whole scripted answer: no chunk went to the wrong consumer.
    assert sorted(answers) == sorted(" ".join([f"a{n}"] * 30) for n in range(20))
    assert fake_llm.completed == 20


@pytest.mark.parametrize("chunk_size", [1, 4, None])
async def test_thinking_opened_by_the_chat_template_ends_at_the_closing_tag(
    fake_llm: FakeLLM, tmp_path: Path, chunk_size: int | None
) -> None:
    # DeepSeek-R1 distills: the template writes "<think>", the model only writes "</think>".
    extra = "  r1-distill:\n    provider: fake\n    context_window: 4096\n    reasoning: true\n"
    extra += "    thinking: {opened_by_template: true}\n"
    catalog = write_fake_catalog(tmp_path / "models.yaml", fake_llm.base_url, extra_models=extra)
    gateway = LLMGateway.from_config(EngineConfig(models_path=catalog))
    fake_llm.enqueue(Reply("First, add.</think>It is 4.", chunk_size=chunk_size))
    try:
        chunks = [c async for c in gateway.stream("r1-distill", HELLO, enable_thinking=True)]
    finally:
        await gateway.aclose()
    assert text_of(chunks, ThinkingDelta) == "First, add."
    assert text_of(chunks, ContentDelta) == "It is 4."
    assert isinstance(chunks[-1], FinishChunk)


async def test_a_stream_closed_before_its_first_read_sends_no_request(
    fake_llm: FakeLLM, fake_gateway: LLMGateway
) -> None:
    stream = fake_gateway.stream("fake-model", HELLO)
    await stream.aclose()

    assert [chunk async for chunk in stream] == []
    assert fake_llm.requests == []


async def test_a_stream_that_failed_to_open_is_finished(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    stream = fake_gateway.stream("gpt-nonexistent", HELLO)
    with pytest.raises(UnknownModel):
        await anext(stream)

    # Like a generator that raised: nothing more, and no second attempt at the call.
    assert [chunk async for chunk in stream] == []
    assert fake_llm.requests == []


async def test_closing_a_stream_mid_answer_ends_it(fake_llm: FakeLLM, fake_gateway: LLMGateway) -> None:
    fake_llm.enqueue(Reply("one two three four five six", delay=0.05))
    stream = fake_gateway.stream("fake-model", HELLO)
    assert await anext(stream) == ModelSelected("fake-model")
    assert isinstance(await anext(stream), ContentDelta)

    await stream.aclose()

    assert [chunk async for chunk in stream] == []
    assert await anyio.to_thread.run_sync(fake_llm.wait_for_disconnects, 1)
