"""The only write path for sessions and messages, and the read helpers the engine needs.

Functions take an `AsyncSession` and never commit: the caller (the turn pipeline) owns the transaction, so
a message row and the session counters it moves always land together.

Invariants:
- `append_message` takes `seq` from the session's `next_seq` with `UPDATE ... RETURNING` in the same
  transaction as the INSERT, so seq values are unique and gap-free per session, even across processes.
- Counters move only by `x = x + :delta`; `verify_totals` checks that they equal the sums over messages.
- The turn lock is a lease on the session row (`active_turn_id`, `turn_lease_until`), taken and released
  by conditional UPDATEs: no connection is held for the length of a turn.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aria_engine.db.models import ChatMessage, ChatSession, utcnow
from aria_engine.db.types import Money, format_money, to_money

__all__ = [
    "MessageCounters",
    "acquire_turn_lease",
    "append_message",
    "as_utc",
    "message_to_dict",
    "release_turn_lease",
    "renew_turn_lease",
    "session_to_dict",
    "verify_totals",
]


@dataclass(slots=True, frozen=True)
class MessageCounters:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)


# Built once: constructing SQL expressions costs more than executing them on the send path.
_SESSIONS = ChatSession.__table__
_ADVANCE_SESSION = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("session_id"))
    .values(
        next_seq=_SESSIONS.c.next_seq + 1,
        message_count=_SESSIONS.c.message_count + 1,
        input_tokens=_SESSIONS.c.input_tokens + bindparam("d_input", type_=BigInteger),
        output_tokens=_SESSIONS.c.output_tokens + bindparam("d_output", type_=BigInteger),
        reasoning_tokens=_SESSIONS.c.reasoning_tokens + bindparam("d_reasoning", type_=BigInteger),
        total_tokens=_SESSIONS.c.total_tokens + bindparam("d_total", type_=BigInteger),
        total_cost=_SESSIONS.c.total_cost + bindparam("d_cost", type_=Money),
        updated_at=bindparam("now", type_=DateTime(timezone=True)),
    )
    .returning(_SESSIONS.c.next_seq)
)
_INSERT_MESSAGE = insert(ChatMessage.__table__)


async def append_message(
    db: AsyncSession,
    session_id: uuid.UUID,
    *,
    role: str,
    content: str = "",
    turn_id: uuid.UUID | None = None,
    counters: MessageCounters = MessageCounters(),
    **fields: Any,
) -> ChatMessage:
    """Write one message row and move the session counters by its usage, atomically.

    Returns the written row as a detached `ChatMessage` (Core statements, no unit of work: this runs
    several times per turn).
    """
    cost = to_money(counters.cost)
    now = utcnow()
    advanced = await db.execute(
        _ADVANCE_SESSION,
        {
            "session_id": session_id,
            "d_input": counters.input_tokens,
            "d_output": counters.output_tokens,
            "d_reasoning": counters.reasoning_tokens,
            "d_total": counters.input_tokens + counters.output_tokens,
            "d_cost": cost,
            "now": now,
        },
    )
    seq = advanced.scalar_one() - 1
    row = ChatMessage(
        id=uuid.uuid4(),
        session_id=session_id,
        seq=seq,
        turn_id=turn_id,
        role=role,
        content=content,
        input_tokens=counters.input_tokens,
        output_tokens=counters.output_tokens,
        reasoning_tokens=counters.reasoning_tokens,
        cost=cost,
        created_at=now,
        **fields,
    )
    await db.execute(_INSERT_MESSAGE, [_column_values(row)])
    return row


# (column name, attribute name) pairs: `metadata` is the column behind the `metadata_` attribute.
_MESSAGE_COLUMNS = tuple(
    (column.name, ChatMessage.__mapper__.get_property_by_column(column).key)
    for column in ChatMessage.__table__.columns
)


def _column_values(row: ChatMessage) -> dict[str, Any]:
    return {name: getattr(row, key) for name, key in _MESSAGE_COLUMNS}


_LEASE_UNTIL = DateTime(timezone=True)
_ACQUIRE_LEASE = (
    update(_SESSIONS)
    .where(
        _SESSIONS.c.id == bindparam("session_id"),
        or_(
            _SESSIONS.c.active_turn_id.is_(None),
            _SESSIONS.c.turn_lease_until < bindparam("now", type_=_LEASE_UNTIL),
        ),
    )
    .values(active_turn_id=bindparam("turn_id"), turn_lease_until=bindparam("until", type_=_LEASE_UNTIL))
)
_RENEW_LEASE = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("session_id"), _SESSIONS.c.active_turn_id == bindparam("turn_id"))
    .values(turn_lease_until=bindparam("until", type_=_LEASE_UNTIL))
)
_RELEASE_LEASE = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("session_id"), _SESSIONS.c.active_turn_id == bindparam("turn_id"))
    .values(active_turn_id=None, turn_lease_until=None)
)


async def acquire_turn_lease(
    db: AsyncSession, session_id: uuid.UUID, turn_id: uuid.UUID, lease_seconds: float
) -> bool:
    """Take the session's turn lock if it is free or its holder's lease ran out."""
    now = utcnow()
    params = {"session_id": session_id, "turn_id": turn_id, "now": now, "until": _after(now, lease_seconds)}
    result = await db.execute(_ACQUIRE_LEASE, params)
    return result.rowcount == 1  # type: ignore[attr-defined]


async def renew_turn_lease(
    db: AsyncSession, session_id: uuid.UUID, turn_id: uuid.UUID, lease_seconds: float
) -> bool:
    params = {"session_id": session_id, "turn_id": turn_id, "until": _after(utcnow(), lease_seconds)}
    result = await db.execute(_RENEW_LEASE, params)
    return result.rowcount == 1  # type: ignore[attr-defined]


async def release_turn_lease(db: AsyncSession, session_id: uuid.UUID, turn_id: uuid.UUID) -> None:
    await db.execute(_RELEASE_LEASE, {"session_id": session_id, "turn_id": turn_id})


def _after(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


async def verify_totals(db: AsyncSession, session_id: uuid.UUID) -> dict[str, tuple[Any, Any]]:
    """Compare the session counters with the sums over its messages. Returns the mismatches (empty = ok)."""
    session = await db.get(ChatSession, session_id, populate_existing=True)
    if session is None:
        return {"session": (None, session_id)}
    sums = (
        await db.execute(
            select(
                func.count(ChatMessage.id),
                func.coalesce(func.sum(ChatMessage.input_tokens), 0),
                func.coalesce(func.sum(ChatMessage.output_tokens), 0),
                func.coalesce(func.sum(ChatMessage.reasoning_tokens), 0),
                func.coalesce(func.sum(ChatMessage.cost), 0),
                func.coalesce(func.max(ChatMessage.seq), 0),
            ).where(ChatMessage.session_id == session_id)
        )
    ).one()
    count, input_tokens, output_tokens, reasoning_tokens, cost, max_seq = sums
    expected = {
        "message_count": (session.message_count, count),
        "input_tokens": (session.input_tokens, input_tokens),
        "output_tokens": (session.output_tokens, output_tokens),
        "reasoning_tokens": (session.reasoning_tokens, reasoning_tokens),
        "total_tokens": (session.total_tokens, input_tokens + output_tokens),
        "total_cost": (session.total_cost, to_money(cost)),
        "next_seq": (session.next_seq, max_seq + 1),
        "seq_count": (count, max_seq),  # seq is gap-free from 1
    }
    return {name: pair for name, pair in expected.items() if pair[0] != pair[1]}


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


def session_to_dict(row: ChatSession) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "owner": row.owner,
        "agent_id": row.agent_id,
        "session_type": row.session_type,
        "title": row.title,
        "system_prompt": row.system_prompt,
        "model": row.model,
        "temperature": row.temperature,
        "max_tokens": row.max_tokens,
        "context_window": row.context_window,
        "status": row.status,
        "message_count": row.message_count,
        "total_tokens": row.total_tokens,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "total_cost": format_money(row.total_cost),
        "metadata": row.metadata_,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "ended_at": _iso(row.ended_at),
        "active_turn_id": str(row.active_turn_id) if row.active_turn_id else None,
    }


def message_to_dict(row: ChatMessage) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "session_id": str(row.session_id),
        "seq": row.seq,
        "turn_id": str(row.turn_id) if row.turn_id else None,
        "role": row.role,
        "content": row.content,
        "thinking": row.thinking,
        "tool_calls": row.tool_calls,
        "tool_call_id": row.tool_call_id,
        "tool_name": row.tool_name,
        "model": row.model,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "cost": format_money(row.cost),
        "latency_ms": row.latency_ms,
        "ttft_ms": row.ttft_ms,
        "finish_reason": row.finish_reason,
        "metadata": row.metadata_,
        "created_at": _iso(row.created_at),
    }
