"""A ChatEngine on the test's database and the fake provider, built the way the app's lifespan builds it.

    async def test_turn(make_engine, fake_llm):
        engine = await make_engine(max_tool_rounds=2)     # EngineConfig overrides
        session = await engine.create_session(owner="alice")
        fake_llm.enqueue(Reply("Hi"))
        response = await engine.send_message(session["id"], "Hello", owner="alice")

Every engine made here is closed after the test, and the totals invariant is checked for every session
it touched: session counters equal the sums over their messages, and seq is gap-free.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from aria_engine.chat_engine import ChatEngine
from aria_engine.config import EngineConfig
from aria_engine.context_manager import ContextManager
from aria_engine.db.engine import create_engine, create_session_factory
from aria_engine.db.models import ChatSession
from aria_engine.llm_gateway import LLMGateway
from aria_engine.prompts import PromptAssembler
from aria_engine.tool_registry import ToolRegistry

MakeEngine = Callable[..., Awaitable[ChatEngine]]


def build_engine(config: EngineConfig, db_factory: Any) -> ChatEngine:
    gateway = LLMGateway.from_config(config)
    return ChatEngine(
        config,
        db_factory,
        gateway,
        tools=ToolRegistry(config, load_entry_points=False),
        context=ContextManager(config, gateway.count_tokens),
        prompts=PromptAssembler(config),
    )


@pytest.fixture
async def make_engine(
    database_url: str, fake_catalog_path: Path, tmp_path: Path
) -> AsyncIterator[MakeEngine]:
    made: list[tuple[ChatEngine, Any]] = []

    async def make(**overrides: Any) -> ChatEngine:
        settings: dict[str, Any] = {
            "database_url": database_url,
            "models_path": fake_catalog_path,
            "default_model": "fake-model",
            "data_dir": tmp_path,
            "llm_retry_backoff": 0.01,
        }
        settings.update(overrides)
        config = EngineConfig(**settings)
        db_engine = create_engine(config.database_url)
        engine = build_engine(config, create_session_factory(db_engine))
        made.append((engine, db_engine))
        return engine

    yield make

    for engine, db_engine in made:
        async with engine.db_factory() as db:
            session_ids = list((await db.execute(select(ChatSession.id))).scalars())
        for session_id in session_ids:
            assert await engine.verify_totals(session_id) == {}, f"totals drifted in session {session_id}"
        await engine.gateway.aclose()
        await db_engine.dispose()


async def wait_for(predicate: Callable[[], bool], *, seconds: float = 30.0) -> None:
    """Wait (bounded) until `predicate()` holds; polling, since the condition lives in another thread."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")
