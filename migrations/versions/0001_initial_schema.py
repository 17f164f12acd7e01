"""Initial schema: chat sessions, chat messages, API keys, full-text search.

Why: the engine's first schema (SPEC section 3). Full-text search is dialect-specific: PostgreSQL gets a
GIN index over to_tsvector('simple', content); SQLite gets an FTS5 external-content table kept in sync by
triggers. Both are created here only, not in the ORM metadata.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from aria_engine.db.types import Money

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "chat_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("session_type", sa.String(32), nullable=False),
        sa.Column("title", sa.String(200), nullable=True),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("max_tokens", sa.Integer(), nullable=True),
        sa.Column("context_window", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_cost", Money(), server_default="0", nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_seq", sa.Integer(), server_default="1", nullable=False),
        sa.Column("active_turn_id", sa.Uuid(), nullable=True),
        sa.Column("turn_lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_sessions")),
    )
    op.create_index("ix_chat_sessions_owner_updated_at", "chat_sessions", ["owner", "updated_at"])
    op.create_index("ix_chat_sessions_owner_agent_id", "chat_sessions", ["owner", "agent_id"])
    op.create_index("ix_chat_sessions_owner_status", "chat_sessions", ["owner", "status"])
    op.create_index("ix_chat_sessions_active_turn_id", "chat_sessions", ["active_turn_id"])
    op.create_table(
        "chat_messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("turn_id", sa.Uuid(), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("thinking", sa.Text(), nullable=True),
        sa.Column("tool_calls", sa.JSON(), nullable=True),
        sa.Column("tool_call_id", sa.String(128), nullable=True),
        sa.Column("tool_name", sa.String(128), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("input_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cost", Money(), server_default="0", nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("finish_reason", sa.String(16), nullable=True),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["chat_sessions.id"],
            name=op.f("fk_chat_messages_session_id_chat_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_messages")),
        sa.UniqueConstraint("session_id", "seq", name=op.f("uq_chat_messages_session_id_seq")),
        sa.UniqueConstraint(
            "session_id", "idempotency_key", name=op.f("uq_chat_messages_session_id_idempotency_key")
        ),
    )
    op.create_index("ix_chat_messages_turn_id", "chat_messages", ["turn_id"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_chat_messages_content_fts ON chat_messages "
            "USING gin (to_tsvector('simple', content))"
        )
    else:
        op.execute(
            "CREATE VIRTUAL TABLE chat_messages_fts USING fts5("
            "content, content='chat_messages', content_rowid='rowid', tokenize='unicode61')"
        )
        op.execute(
            "CREATE TRIGGER chat_messages_fts_insert AFTER INSERT ON chat_messages BEGIN "
            "INSERT INTO chat_messages_fts(rowid, content) VALUES (new.rowid, new.content); END"
        )
        op.execute(
            "CREATE TRIGGER chat_messages_fts_delete AFTER DELETE ON chat_messages BEGIN "
            "INSERT INTO chat_messages_fts(chat_messages_fts, rowid, content) "
            "VALUES ('delete', old.rowid, old.content); END"
        )
        op.execute(
            "CREATE TRIGGER chat_messages_fts_update AFTER UPDATE OF content ON chat_messages BEGIN "
            "INSERT INTO chat_messages_fts(chat_messages_fts, rowid, content) "
            "VALUES ('delete', old.rowid, old.content); "
            "INSERT INTO chat_messages_fts(rowid, content) VALUES (new.rowid, new.content); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_chat_messages_content_fts")
    else:
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS chat_messages_fts_{trigger}")
        op.execute("DROP TABLE IF EXISTS chat_messages_fts")
    op.drop_index("ix_chat_messages_turn_id", table_name="chat_messages")
    op.drop_table("chat_messages")
    op.drop_index("ix_chat_sessions_active_turn_id", table_name="chat_sessions")
    op.drop_index("ix_chat_sessions_owner_status", table_name="chat_sessions")
    op.drop_index("ix_chat_sessions_owner_agent_id", table_name="chat_sessions")
    op.drop_index("ix_chat_sessions_owner_updated_at", table_name="chat_sessions")
    op.drop_table("chat_sessions")
    op.drop_table("api_keys")
