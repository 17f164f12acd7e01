"""Fixtures for the fake OpenAI-compatible provider (`aria_engine.testing.fake_llm`).

- `fake_llm_server` (session): one real server on a free port for the whole run.
- `fake_llm` (function): that server, reset before and after the test (queues, request log, counters).
- `fake_catalog_path` (function): a `models.yaml` in tmp_path whose models all point at the fake
  (`fake-model`, `fake-alt`, `fake-unpriced`, `fake-chain`; see `write_fake_catalog`).
- `fake_gateway` (function, async): an `LLMGateway` over that catalog with fast retries, closed after.

    async def test_something(fake_llm, fake_catalog_path):
        fake_llm.enqueue(Reply("Hi"))
        config = EngineConfig(models_path=fake_catalog_path, default_model="fake-model")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aria_engine.config import EngineConfig
from aria_engine.llm_gateway import LLMGateway
from aria_engine.testing.fake_llm import FakeLLM, write_fake_catalog


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_llm(fake_llm_server: FakeLLM) -> Iterator[FakeLLM]:
    fake_llm_server.reset()
    try:
        yield fake_llm_server
    finally:
        fake_llm_server.reset()


@pytest.fixture
def fake_catalog_path(tmp_path: Path, fake_llm: FakeLLM) -> Path:
    return write_fake_catalog(tmp_path / "models.yaml", fake_llm.base_url)


@pytest.fixture
async def fake_gateway(fake_catalog_path: Path, tmp_path: Path) -> AsyncIterator[LLMGateway]:
    config = EngineConfig(
        models_path=fake_catalog_path,
        default_model="fake-model",
        data_dir=tmp_path,
        llm_retry_backoff=0.01,
    )
    gateway = LLMGateway.from_config(config)
    try:
        yield gateway
    finally:
        await gateway.aclose()
