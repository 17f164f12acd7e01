"""Run the Alembic migrations programmatically (CLI `aria-engine migrate`, and start-up for SQLite)."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from alembic import command
from alembic.config import Config

from aria_engine.config import REPO_ROOT

__all__ = ["alembic_config", "downgrade", "include_object", "upgrade", "upgrade_sync"]

# Full-text search objects are dialect-specific and live only in the migrations, not in the models.
_MIGRATION_ONLY = ("chat_messages_fts", "ix_chat_messages_content_fts")


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic autogenerate filter: compare everything but the migration-only search objects."""
    return not (name or "").startswith(_MIGRATION_ONLY)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    # %-signs in passwords would be read as interpolation by ConfigParser.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_sync(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


async def upgrade(database_url: str, revision: str = "head") -> None:
    # env.py runs its own event loop for the async driver, so it must run in a worker thread.
    await anyio.to_thread.run_sync(upgrade_sync, database_url, revision)


async def downgrade(database_url: str, revision: str = "base") -> None:
    await anyio.to_thread.run_sync(command.downgrade, alembic_config(database_url), revision)
