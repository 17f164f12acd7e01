"""Index (session_id, role, seq) for the context read.

Why: the context manager looks up a session's first and newest user messages on every turn. With only
(session_id, seq) and (session_id, idempotency_key) indexes, PostgreSQL answered those lookups (and the
newest-rows part) with a bitmap scan of the whole session plus a sort, so a turn in a 10,000-message
session cost ~15 ms more than in a short one. This index makes each lookup one probe.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_chat_messages_session_id_role_seq", "chat_messages", ["session_id", "role", "seq"])


def downgrade() -> None:
    op.drop_index("ix_chat_messages_session_id_role_seq", table_name="chat_messages")
