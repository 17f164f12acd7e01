"""Databases for a benchmark run: a fresh PostgreSQL database (dropped afterwards) or a SQLite file,
migrated with the engine's own Alembic history, and bulk seeding of sessions and messages.

Seeding writes rows that keep the engine's invariants (per-session `seq` 1..n, `next_seq = n + 1`,
`message_count = n`, token and cost counters equal to the sums of the rows), with multi-row INSERTs of
a few thousand rows per statement, so 100,000 sessions take seconds rather than 100,000 API calls, and
ends with VACUUM (ANALYZE) of the seeded table, as autovacuum would do (see `_insert`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import make_url

from aria_engine.db.engine import create_engine
from aria_engine.db.migrate import upgrade_sync
from aria_engine.db.models import ChatMessage, ChatSession

__all__ = ["BenchDatabase", "assistant_timings", "seed_messages", "seed_sessions", "session_owner"]

_BATCH = 2000


@dataclass
class BenchDatabase:
    """One database for one run: `create()` makes and migrates it, `drop()` removes it."""

    backend: str  # "postgres" | "sqlite"
    url: str = ""
    admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    sqlite_dir: Path | None = None
    name: str = ""

    def create(self) -> str:
        if self.backend == "postgres":
            self.name = f"aria_bench_{uuid.uuid4().hex[:10]}"
            asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
            dsn = make_url(self.admin_dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
            self.url = dsn.set(database=self.name).render_as_string(hide_password=False)
        else:
            assert self.sqlite_dir is not None
            self.sqlite_dir.mkdir(parents=True, exist_ok=True)
            path = self.sqlite_dir / f"bench-{uuid.uuid4().hex[:8]}.db"
            self.url = f"sqlite+aiosqlite:///{path}"
        upgrade_sync(self.url)
        return self.url

    def drop(self) -> None:
        if self.backend == "postgres" and self.name:
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        elif self.url:
            path = Path(make_url(self.url).database or "")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.name = ""

    async def _admin(self, statement: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    def server_version(self) -> str:
        async def read() -> str:
            engine = create_engine(self.url)
            try:
                async with engine.connect() as conn:
                    query = "select version()" if self.backend == "postgres" else "select sqlite_version()"
                    return str((await conn.execute(text(query))).scalar_one())
            finally:
                await engine.dispose()

        return asyncio.run(read())


def _batches(rows: Iterator[dict[str, Any]], size: int = _BATCH) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def session_owner(url: str, session_id: str) -> str:
    """The owner of a session the API created: seeded sessions must belong to the same principal."""

    async def read() -> str:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                query = text("select owner from chat_sessions where id = :id")
                value = (await conn.execute(query, {"id": _db_uuid(url, session_id)})).scalar_one()
                return str(value)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _db_uuid(url: str, session_id: str) -> Any:
    # SQLAlchemy's Uuid stores 32 hex digits on SQLite and a native uuid on PostgreSQL.
    parsed = uuid.UUID(session_id)
    return parsed.hex if url.startswith("sqlite") else parsed


def assistant_timings(url: str, since: datetime) -> list[tuple[int, int]]:
    """(ttft_ms, latency_ms) the engine itself stored for the assistant rows written since `since`.

    These are the engine's own clocks (from the start of the turn's LLM call), so comparing them with the
    client's TTFT splits time spent before the call from time spent delivering it.
    """

    async def read() -> list[tuple[int, int]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                query = (
                    select(ChatMessage.ttft_ms, ChatMessage.latency_ms)
                    .where(ChatMessage.role == "assistant", ChatMessage.created_at >= since)
                    .where(ChatMessage.ttft_ms.is_not(None))
                )
                return [(int(a), int(b or 0)) for a, b in (await conn.execute(query)).all()]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def seed_sessions(url: str, owner: str, count: int, model: str) -> None:
    """`count` empty sessions for `owner`, with distinct `updated_at` values (all in the past)."""
    now = datetime.now(UTC)

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(count):
            stamp = now - timedelta(seconds=count - i + 60)
            yield {
                "id": uuid.uuid4(),
                "owner": owner,
                "agent_id": "main",
                "session_type": "interactive",
                "title": f"seeded session {i}",
                "model": model,
                "context_window": 50,
                "status": "active",
                "created_at": stamp,
                "updated_at": stamp,
            }

    asyncio.run(_insert(url, ChatSession, rows()))


def seed_messages(url: str, session_id: str, count: int, model: str) -> None:
    """`count` alternating user/assistant rows (about 200 characters each) in an existing empty session."""
    sid = uuid.UUID(session_id)
    now = datetime.now(UTC) - timedelta(days=1)
    body = "This is a seeded message for the history scaling benchmark. " * 3

    def rows() -> Iterator[dict[str, Any]]:
        for seq in range(1, count + 1):
            role = "user" if seq % 2 else "assistant"
            yield {
                "id": uuid.uuid4(),
                "session_id": sid,
                "seq": seq,
                "turn_id": None,
                "role": role,
                "content": f"{seq}: {body}",
                "model": model if role == "assistant" else None,
                "finish_reason": "stop" if role == "assistant" else None,
                "created_at": now + timedelta(milliseconds=seq),
            }

    async def run() -> None:
        await _insert(url, ChatMessage, rows())
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    update(ChatSession)
                    .where(ChatSession.id == sid)
                    .values(message_count=ChatSession.message_count + count, next_seq=count + 1)
                )
        finally:
            await engine.dispose()

    asyncio.run(run())


async def _insert(url: str, model: type[Any], rows: Iterator[dict[str, Any]]) -> None:
    engine = create_engine(url)
    try:
        for batch in _batches(rows):
            async with engine.begin() as conn:
                await conn.execute(insert(model), batch)
        # What autovacuum does after a bulk load, done at once (this project's PostgreSQL runs with
        # autovacuum off, so it would never happen): statistics for the planner, and on PostgreSQL a
        # visibility map, without which counting an owner's sessions cannot be an index-only scan.
        vacuum = "ANALYZE" if engine.dialect.name == "sqlite" else "VACUUM (ANALYZE)"
        async with engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text(f"{vacuum} {model.__tablename__}"))
    finally:
        await engine.dispose()
