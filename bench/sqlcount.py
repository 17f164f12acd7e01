"""SQL statements per turn, counted in-process with a SQLAlchemy event listener.

The API exposes no statement counter (no debug endpoint, no env switch), so this builds the engine's own
object graph (gateway -> tools, prompts, context -> ChatEngine, as `src/api/main.py` does) against the
benchmark's database and fake provider, and counts every statement SQLAlchemy hands the driver during one
`send_message`. An executemany counts once (one round trip per batch); BEGIN/COMMIT are not counted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from sqlalchemy import event

from aria_engine.chat_engine import ChatEngine
from aria_engine.config import EngineConfig
from aria_engine.context_manager import ContextManager
from aria_engine.db.engine import create_engine, create_session_factory
from aria_engine.llm_gateway import LLMGateway
from aria_engine.prompts import PromptAssembler
from aria_engine.tool_registry import ToolRegistry
from bench.provider import MODEL

__all__ = ["count_turn_statements"]


class _Counter:
    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.kinds[statement.lstrip().split(None, 1)[0].upper()] += 1


def count_turn_statements(url: str, provider_v1: str, owner: str, sessions: dict[str, str]) -> dict[str, Any]:
    """{label: {"total": n, "SELECT": n, ...}} for one send in each session (after one uncounted send)."""
    return asyncio.run(_count(url, provider_v1, owner, sessions))


async def _count(url: str, provider_v1: str, owner: str, sessions: dict[str, str]) -> dict[str, Any]:
    config = EngineConfig(
        _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init-only switch
        database_url=url,
        llm_base_url=provider_v1,
        llm_model=MODEL,
        rate_limit_requests_per_minute=0,
    )
    gateway = LLMGateway.from_config(config, env={"ARIA_LLM_API_KEY": "bench-key"})
    db_engine = create_engine(url)
    counter = _Counter()
    event.listen(db_engine.sync_engine, "before_cursor_execute", counter)
    engine = ChatEngine(
        config,
        create_session_factory(db_engine),
        gateway,
        tools=ToolRegistry(config),
        context=ContextManager(config, gateway.count_tokens),
        prompts=PromptAssembler(config),
    )
    out: dict[str, Any] = {}
    try:
        for label, session_id in sessions.items():
            await engine.send_message(session_id, "warm-up", owner=owner)
            counter.kinds.clear()
            await engine.send_message(session_id, "hello", owner=owner)
            out[label] = {"total": sum(counter.kinds.values()), **dict(counter.kinds)}
    finally:
        await gateway.aclose()
        await db_engine.dispose()
    return out
