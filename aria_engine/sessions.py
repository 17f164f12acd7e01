"""Session lifecycle: create, read, list and search, history pages, update, end/reopen, delete.

`SessionManager` is the part of `ChatEngine` that is not the turn; `ChatEngine` extends it, so the seed's
surface (`create_session`, `resume_session`, `end_session`, ...) stays on one object. Reads are bounded
pages; writes go through `aria_engine.db.store` or single UPDATE/DELETE statements.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aria_engine.db import store
from aria_engine.db.models import ChatMessage, ChatSession, utcnow
from aria_engine.exceptions import SessionBusy, SessionNotFound
from aria_engine.ids import parse_session_id as parse_id
from aria_engine.ids import validate_agent_id

if TYPE_CHECKING:
    from aria_engine.config import EngineConfig
    from aria_engine.llm_gateway import LLMGateway

__all__ = ["TITLE_CHARS", "SessionManager", "clean_title", "load_session", "parse_id"]

TITLE_CHARS = 80


class SessionManager:
    """Sessions of one database, checked against one gateway's catalog."""

    def __init__(
        self, config: EngineConfig, db_factory: async_sessionmaker[AsyncSession], gateway: LLMGateway
    ) -> None:
        self.config = config
        self._db_factory = db_factory
        self.gateway = gateway

    @property
    def db_factory(self) -> async_sessionmaker[AsyncSession]:
        return self._db_factory

    async def create_session(
        self,
        *,
        owner: str,
        agent_id: str = "main",
        model: str | None = None,
        session_type: str = "interactive",
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        context_window: int = 50,
        metadata: dict[str, Any] | None = None,
        title: str | None = None,
    ) -> dict[str, Any]:
        validate_agent_id(agent_id)
        info = self.gateway.resolve(model or self.gateway.default_model)
        row = ChatSession(
            id=uuid.uuid4(),
            owner=owner,
            agent_id=agent_id,
            session_type=session_type,
            title=clean_title(title) if title else None,
            system_prompt=system_prompt,
            model=info.id,
            temperature=temperature,
            max_tokens=max_tokens,
            context_window=context_window,
            status="active",
            metadata_=metadata,
        )
        async with self._db_factory.begin() as db:
            db.add(row)
        return store.session_to_dict(row)

    async def get_session(self, session_id: str | uuid.UUID, *, owner: str | None) -> dict[str, Any]:
        async with self._db_factory() as db:
            return store.session_to_dict(await load_session(db, session_id, owner))

    async def resume_session(
        self, session_id: str | uuid.UUID, *, owner: str | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """The session with its newest page of messages (oldest first) and whether older ones exist."""
        async with self._db_factory() as db:
            row = await load_session(db, session_id, owner)
            result = await db.execute(
                select(ChatMessage)
                .where(ChatMessage.session_id == row.id)
                .order_by(ChatMessage.seq.desc())
                .limit(limit + 1)
            )
            rows = list(result.scalars())
        data = store.session_to_dict(row)
        data["has_more"] = len(rows) > limit
        data["messages"] = [store.message_to_dict(m) for m in reversed(rows[:limit])]
        return data

    async def list_messages(
        self, session_id: str | uuid.UUID, *, owner: str | None, after_seq: int = 0, limit: int = 100
    ) -> tuple[list[dict[str, Any]], bool]:
        async with self._db_factory() as db:
            row = await load_session(db, session_id, owner)
            result = await db.execute(
                select(ChatMessage)
                .where(ChatMessage.session_id == row.id, ChatMessage.seq > after_seq)
                .order_by(ChatMessage.seq)
                .limit(limit + 1)
            )
            rows = list(result.scalars())
        return [store.message_to_dict(m) for m in rows[:limit]], len(rows) > limit

    async def list_sessions(
        self,
        *,
        owner: str | None,
        page: int = 1,
        page_size: int = 20,
        agent_id: str | None = None,
        status: str | None = None,
        q: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        query = select(ChatSession)
        if owner is not None:
            query = query.where(ChatSession.owner == owner)
        if agent_id:
            query = query.where(ChatSession.agent_id == agent_id)
        if status:
            query = query.where(ChatSession.status == status)
        if q and q.strip():
            query = query.where(self._search_clause(q.strip()))
        async with self._db_factory() as db:
            total = (await db.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
            result = await db.execute(
                query.order_by(ChatSession.updated_at.desc(), ChatSession.id)
                .offset((page - 1) * page_size)
                .limit(page_size)
            )
            return [store.session_to_dict(row) for row in result.scalars()], total

    def _search_clause(self, q: str) -> Any:
        title_match = ChatSession.title.ilike(f"%{_escape_like(q)}%", escape="\\")
        if self.config.is_sqlite:
            # FTS5 query syntax is not for users: quote every word so input is always a plain phrase search.
            fts_query = " ".join('"' + word.replace('"', '""') + '"' for word in q.split())
            matches = text(
                "SELECT m.session_id FROM chat_messages_fts f JOIN chat_messages m ON m.rowid = f.rowid "
                "WHERE chat_messages_fts MATCH :fts_query"
            ).bindparams(fts_query=fts_query)
        else:
            matches = text(
                "SELECT m.session_id FROM chat_messages m WHERE to_tsvector('simple', m.content) "
                "@@ plainto_tsquery('simple', :fts_query)"
            ).bindparams(fts_query=q)
        return or_(title_match, ChatSession.id.in_(matches.columns(session_id=ChatSession.id.type)))

    async def update_session(
        self,
        session_id: str | uuid.UUID,
        *,
        owner: str | None,
        title: str | None = None,
        model: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if title is not None:
            values["title"] = clean_title(title) or None
        if model is not None:
            values["model"] = self.gateway.resolve(model).id
        if metadata is not None:
            values["metadata_"] = metadata
        async with self._db_factory.begin() as db:
            row = await load_session(db, session_id, owner)
            await db.execute(update(ChatSession).where(ChatSession.id == row.id).values(**values))
            await db.refresh(row)
            return store.session_to_dict(row)

    async def end_session(self, session_id: str | uuid.UUID, *, owner: str | None = None) -> dict[str, Any]:
        return await self._set_status(session_id, owner, "ended")

    async def reopen_session(
        self, session_id: str | uuid.UUID, *, owner: str | None = None
    ) -> dict[str, Any]:
        return await self._set_status(session_id, owner, "active")

    async def _set_status(
        self, session_id: str | uuid.UUID, owner: str | None, status: str
    ) -> dict[str, Any]:
        now = utcnow()
        async with self._db_factory.begin() as db:
            row = await load_session(db, session_id, owner)
            await db.execute(
                update(ChatSession)
                .where(ChatSession.id == row.id)
                .values(status=status, ended_at=now if status == "ended" else None, updated_at=now)
            )
            await db.refresh(row)
            return store.session_to_dict(row)

    async def delete_session(self, session_id: str | uuid.UUID, *, owner: str | None = None) -> None:
        async with self._db_factory.begin() as db:
            row = await load_session(db, session_id, owner)
            if row.active_turn_id is not None and store.as_utc(row.turn_lease_until) > utcnow():  # type: ignore[operator]
                raise SessionBusy()
            await db.execute(delete(ChatSession).where(ChatSession.id == row.id))

    async def verify_totals(self, session_id: str | uuid.UUID) -> dict[str, Any]:
        """Invariant check: the session counters equal the sums over its messages ({} when they do)."""
        async with self._db_factory() as db:
            return await store.verify_totals(db, parse_id(session_id))


async def load_session(db: AsyncSession, session_id: str | uuid.UUID, owner: str | None) -> ChatSession:
    query = select(ChatSession).where(ChatSession.id == parse_id(session_id))
    if owner is not None:
        query = query.where(ChatSession.owner == owner)  # another owner's session is simply not found
    row = (await db.execute(query)).scalar_one_or_none()
    if row is None:
        raise SessionNotFound()
    return row


def clean_title(text_: str) -> str:
    """`text_` with its whitespace runs collapsed to one space, trimmed, cut to TITLE_CHARS.

    Every turn start computes it (the first message's becomes the title), so it reads only the words
    the title can hold, not a 100,000-character message."""
    words: list[str] = []
    length = -1  # the separators come between words
    for word in _WORD.finditer(text_):
        words.append(word.group())
        length += len(words[-1]) + 1
        if length >= TITLE_CHARS:
            break
    return " ".join(words)[:TITLE_CHARS]


_WORD = re.compile(r"\S+")


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
