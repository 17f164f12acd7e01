"""Shared fixtures.

`database_url` is parametrized over SQLite and PostgreSQL, so every database test runs on both. PostgreSQL
runs only when ARIA_TEST_POSTGRES_URL is set (CI sets it); the run then creates its own fresh database,
migrates it once, empties it before each test, and drops it at the end. SQLite gets a migrated file copied
per test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from aria_engine.db.engine import create_engine, create_session_factory
from aria_engine.db.migrate import upgrade_sync

# Fixture plugins, one module per area (fake LLM provider, live server, ...). Add yours to this list.
pytest_plugins: list[str] = [
    "tests.plugins.fake_llm",
    "tests.plugins.live_server",
    "tests.plugins.engine",
    "tests.plugins.tcp_proxy",
]

POSTGRES_URL = os.environ.get("ARIA_TEST_POSTGRES_URL", "")

# The tests never read a developer's .env or ambient settings.
for _name in [n for n in os.environ if n.startswith("ARIA_") and not n.startswith("ARIA_TEST_")]:
    del os.environ[_name]
for _name in ("DATABASE_URL", "REDIS_URL"):
    os.environ.pop(_name, None)

# Redis: the scale-out tests (resume/cancel across replicas, shared tickets and limits) use it.
REDIS_URL = os.environ.get("ARIA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


needs_redis = pytest.mark.skipif(not _redis_available(), reason=f"Redis not reachable at {REDIS_URL}")

NO_POSTGRES = "PostgreSQL not configured: set ARIA_TEST_POSTGRES_URL to run the PostgreSQL variants"
BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)),
]


def run_admin_sql(url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE need that)."""

    async def run() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    # A thread of its own: callers may be inside a running event loop (async tests).
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade_sync(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run; dropped at the end."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    name = f"aria_test_{uuid.uuid4().hex[:12]}"
    run_admin_sql(POSTGRES_URL, f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_sync(url)
        yield url
    finally:
        run_admin_sql(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "aria.db"
        shutil.copyfile(template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    run_admin_sql(url, "TRUNCATE chat_messages, chat_sessions, api_keys CASCADE")
    return url


@pytest.fixture
async def db_factory(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()
