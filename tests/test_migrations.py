"""Migrations: one history that upgrades and downgrades on SQLite and PostgreSQL, matching the models."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, inspect, select, text
from sqlalchemy.exc import IntegrityError

from aria_engine.db.engine import create_engine
from aria_engine.db.migrate import alembic_config, include_object
from aria_engine.db.models import Base, ChatMessage, ChatSession
from tests.conftest import POSTGRES_URL, run_admin_sql

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _fresh_url(kind: str, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL not configured: set ARIA_TEST_POSTGRES_URL")
    from sqlalchemy.engine import make_url

    name = f"aria_mig_{uuid.uuid4().hex[:10]}"
    run_admin_sql(POSTGRES_URL, f'CREATE DATABASE "{name}"')
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


async def _table_names(url: str) -> set[str]:
    engine = create_engine(url)
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    await engine.dispose()
    return names


async def _diff(url: str) -> list[object]:
    engine = create_engine(url)
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"compare_type": True, "include_object": include_object}),
                Base.metadata,
            )
        )
    await engine.dispose()
    return diff


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_upgrade_from_empty_matches_models_and_downgrades_to_empty(kind: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import anyio.to_thread

    url = _fresh_url(kind, tmp_path)
    try:
        config = alembic_config(url)
        await anyio.to_thread.run_sync(command.upgrade, config, "head")
        assert {"chat_sessions", "chat_messages", "api_keys"} <= await _table_names(url)
        assert await _diff(url) == []
        await anyio.to_thread.run_sync(command.downgrade, config, "base")
        assert await _table_names(url) <= {"alembic_version"}
    finally:
        if kind == "postgres":
            name = url.rsplit("/", 1)[1]
            run_admin_sql(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _new_session(db) -> uuid.UUID:  # type: ignore[no-untyped-def]
    async with db.begin() as s:
        row = ChatSession(owner="o", model="m")
        s.add(row)
    return row.id


async def test_counters_default_to_zero(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _new_session(db_factory)
    async with db_factory() as s:
        row = await s.get(ChatSession, sid)
        assert row is not None
        assert (row.message_count, row.total_tokens, row.total_cost, row.next_seq) == (0, 0, Decimal(0), 1)
        assert row.status == "active"


async def test_duplicate_session_seq_is_rejected(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _new_session(db_factory)
    async with db_factory.begin() as s:
        s.add(ChatMessage(session_id=sid, seq=1, role="user", content="a"))
    with pytest.raises(IntegrityError):
        async with db_factory.begin() as s:
            s.add(ChatMessage(session_id=sid, seq=1, role="user", content="b"))


async def test_deleting_a_session_cascades_to_its_messages(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _new_session(db_factory)
    async with db_factory.begin() as s:
        s.add(ChatMessage(session_id=sid, seq=1, role="user", content="a"))
    async with db_factory.begin() as s:
        await s.execute(delete(ChatSession).where(ChatSession.id == sid))
    async with db_factory() as s:
        assert (await s.execute(select(ChatMessage).where(ChatMessage.session_id == sid))).first() is None


async def test_money_is_exact(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _new_session(db_factory)
    async with db_factory.begin() as s:
        for seq in range(1, 11):
            s.add(ChatMessage(session_id=sid, seq=seq, role="assistant", cost=Decimal("0.000000150001")))
    async with db_factory() as s:
        total = (await s.execute(text("SELECT SUM(cost) FROM chat_messages"))).scalar_one()
        summed = (await s.execute(select(ChatMessage.cost))).scalars().all()
    assert sum(summed) == Decimal("0.00000150001")
    assert int(total) == 1500010  # pico-dollars


async def test_full_text_search_index_finds_message_content(db_factory, database_url: str) -> None:  # type: ignore[no-untyped-def]
    sid = await _new_session(db_factory)
    async with db_factory.begin() as s:
        s.add(ChatMessage(session_id=sid, seq=1, role="user", content="the quick brown aardvark"))
        s.add(ChatMessage(session_id=sid, seq=2, role="user", content="nothing here"))
    if database_url.startswith("sqlite"):
        query = text(
            "SELECT m.content FROM chat_messages_fts f JOIN chat_messages m ON m.rowid = f.rowid "
            "WHERE chat_messages_fts MATCH '\"aardvark\"'"
        )
    else:
        query = text(
            "SELECT content FROM chat_messages WHERE to_tsvector('simple', content) "
            "@@ plainto_tsquery('simple', 'aardvark')"
        )
    async with db_factory() as s:
        assert (await s.execute(query)).scalars().all() == ["the quick brown aardvark"]
