"""The only write path for sessions and messages, and the read helpers the engine needs.

Functions take a connection (`Executor`: the turn pipeline's Core `AsyncConnection`, or an `AsyncSession`)
and never commit: the caller owns the transaction, so a message row and the session counters it moves
always land together.

Invariants:
- `append_message` takes `seq` from the session's `next_seq` with `UPDATE ... RETURNING` atomically with
  the INSERT (on PostgreSQL in one statement, `WITH advanced AS (UPDATE ...) INSERT ... SELECT`; on
  SQLite in the caller's transaction), so seq values are unique and gap-free per session, even across
  processes.
- Counters move only by `x = x + :delta`; `verify_totals` checks that they equal the sums over messages.
- The turn lock is a lease on the session row (`active_turn_id`, `turn_lease_until`): `start_turn` takes
  it with a conditional UPDATE that also reserves the user row's seq, and writes that row (on PostgreSQL
  in the same statement), the turn's final `append_message` releases it in its own UPDATE, and no
  connection is held for the length of a turn.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeAlias

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Insert,
    Select,
    String,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from aria_engine.db.models import ChatMessage, ChatSession, utcnow
from aria_engine.db.types import Money, format_money, to_money

__all__ = [
    "Executor",
    "MessageCounters",
    "StartedTurn",
    "TurnSession",
    "append_message",
    "as_utc",
    "clear_stale_lease",
    "insert_message",
    "message_to_dict",
    "renew_turn_lease",
    "session_to_dict",
    "single_statement_appends",
    "start_turn",
    "verify_totals",
]


# Every statement here is Core, so it runs the same on a plain connection and on an ORM session.
Executor: TypeAlias = AsyncConnection | AsyncSession


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
# The turn's last row also frees its lease, in the same statement (if the lease is still this turn's).
_OWN_LEASE = _SESSIONS.c.active_turn_id == bindparam("ends_turn")
_ADVANCE_AND_RELEASE = _ADVANCE_SESSION.values(
    active_turn_id=case((_OWN_LEASE, None), else_=_SESSIONS.c.active_turn_id),
    turn_lease_until=case((_OWN_LEASE, None), else_=_SESSIONS.c.turn_lease_until),
)
_MESSAGES = ChatMessage.__table__
_INSERT_MESSAGE = insert(_MESSAGES)


def _advance_and_insert(advance: Update) -> Insert:
    """PostgreSQL: the session UPDATE and the message INSERT as one statement (a data-modifying WITH), so
    a row costs one round trip, and outside a transaction still lands atomically with its counters."""
    advanced = advance.cte("advanced")
    values = [
        advanced.c.next_seq - 1 if column.name == "seq" else bindparam(f"m_{column.name}", type_=column.type)
        for column in _MESSAGES.columns
    ]
    return (
        insert(_MESSAGES)
        .from_select([column.name for column in _MESSAGES.columns], select(*values).select_from(advanced))
        .returning(_MESSAGES.c.seq)
    )


_APPEND = _advance_and_insert(_ADVANCE_SESSION)
_APPEND_AND_RELEASE = _advance_and_insert(_ADVANCE_AND_RELEASE)
_SET_TITLE_IF_UNSET = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("session_id"), _SESSIONS.c.title.is_(None))
    .values(title=bindparam("title"))
)


def single_statement_appends(db: Executor | AsyncEngine) -> bool:
    """Whether `append_message` is one statement on this database (PostgreSQL), so the caller may run
    it outside a transaction. SQLite has no data-modifying WITH: there it is two, in the caller's
    transaction."""
    bind = db.get_bind() if isinstance(db, AsyncSession) else db
    return bind.dialect.name == "postgresql"


async def append_message(
    db: Executor,
    session_id: uuid.UUID,
    *,
    role: str,
    content: str = "",
    turn_id: uuid.UUID | None = None,
    counters: MessageCounters = MessageCounters(),
    ends_turn: uuid.UUID | None = None,
    **fields: Any,
) -> ChatMessage:
    """Write one message row and move the session counters by its usage, atomically.

    `ends_turn`: this is the turn's final row; release that turn's lease in the same statement.
    Returns the written row as a detached `ChatMessage` (Core statements, no unit of work: this runs
    several times per turn).
    """
    cost = to_money(counters.cost)
    params: dict[str, Any] = {
        "session_id": session_id,
        "d_input": counters.input_tokens,
        "d_output": counters.output_tokens,
        "d_reasoning": counters.reasoning_tokens,
        "d_total": counters.input_tokens + counters.output_tokens,
        "d_cost": cost,
        "now": utcnow(),
    }
    statement, one_statement = _ADVANCE_SESSION, _APPEND
    if ends_turn is not None:
        statement, one_statement = _ADVANCE_AND_RELEASE, _APPEND_AND_RELEASE
        params["ends_turn"] = ends_turn
    if single_statement_appends(db):
        row = _new_message(session_id, 0, role, content, turn_id, counters, fields)
        for name, value in _column_values(row).items():
            params[f"m_{name}"] = value
        row.seq = (await db.execute(one_statement, params)).scalar_one()
        return row
    advanced = await db.execute(statement, params)
    seq = advanced.scalar_one() - 1
    return await insert_message(
        db, session_id, seq=seq, role=role, content=content, turn_id=turn_id, counters=counters, **fields
    )


async def insert_message(
    db: Executor,
    session_id: uuid.UUID,
    *,
    seq: int,
    role: str,
    content: str = "",
    turn_id: uuid.UUID | None = None,
    counters: MessageCounters = MessageCounters(),
    **fields: Any,
) -> ChatMessage:
    """Write one message row at a `seq` the caller already took from the session (with its counters)."""
    row = _new_message(session_id, seq, role, content, turn_id, counters, fields)
    await db.execute(_INSERT_MESSAGE, [_column_values(row)])
    return row


def _new_message(
    session_id: uuid.UUID,
    seq: int,
    role: str,
    content: str,
    turn_id: uuid.UUID | None,
    counters: MessageCounters,
    fields: dict[str, Any],
) -> ChatMessage:
    return ChatMessage(
        id=uuid.uuid4(),
        session_id=session_id,
        seq=seq,
        turn_id=turn_id,
        role=role,
        content=content,
        input_tokens=counters.input_tokens,
        output_tokens=counters.output_tokens,
        reasoning_tokens=counters.reasoning_tokens,
        cost=to_money(counters.cost),
        created_at=utcnow(),
        **fields,
    )


# (column name, attribute name) pairs: `metadata` is the column behind the `metadata_` attribute.
_MESSAGE_COLUMNS = tuple(
    (column.name, ChatMessage.__mapper__.get_property_by_column(column).key)
    for column in ChatMessage.__table__.columns
)


def _column_values(row: ChatMessage) -> dict[str, Any]:
    return {name: getattr(row, key) for name, key in _MESSAGE_COLUMNS}


_LEASE_UNTIL = DateTime(timezone=True)
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
_RELEASE_EXPIRED_LEASE = _RELEASE_LEASE.where(
    _SESSIONS.c.turn_lease_until < bindparam("now", type_=_LEASE_UNTIL)
)


# Starting a turn in one statement: take a free lease and reserve the user row's seq (message_count moves
# with it: the row is inserted in the same transaction), returning the session the turn needs.
_START_TURN_VALUES = {
    "active_turn_id": bindparam("turn_id"),
    "turn_lease_until": bindparam("until", type_=_LEASE_UNTIL),
    "next_seq": _SESSIONS.c.next_seq + 1,
    "message_count": _SESSIONS.c.message_count + 1,
    "updated_at": bindparam("now", type_=_LEASE_UNTIL),
}
# The conditions besides the primary key sit inside one CASE, which no index can serve, so the planner
# has only the primary key to choose. Without statistics (autovacuum off, or just after a bulk import)
# PostgreSQL otherwise served this UPDATE through the (owner, status) index and scanned every session of
# the owner: 60 ms per turn start at 100,000 sessions instead of 0.1 ms.
_FREE = and_(_SESSIONS.c.status == "active", _SESSIONS.c.active_turn_id.is_(None))
_FREE_AND_OWNED = and_(_FREE, _SESSIONS.c.owner == bindparam("b_owner"))


@dataclass(slots=True, frozen=True)
class TurnSession:
    """What a turn needs of its session, as `start_turn` left it: the user row's seq is `next_seq - 1`.

    A plain record rather than a `ChatSession`: building an ORM instance took 60 µs, on every turn start.
    """

    id: uuid.UUID
    agent_id: str
    model: str
    system_prompt: str | None
    temperature: float | None
    max_tokens: int | None
    context_window: int
    title: str | None
    next_seq: int


_TURN_SESSION_FIELDS = tuple(TurnSession.__dataclass_fields__)
_TURN_SESSION_COLUMNS = [_SESSIONS.c[name] for name in _TURN_SESSION_FIELDS]


def _start_turn_statement(condition: ColumnElement[bool]) -> Update:
    return (
        update(_SESSIONS)
        .where(_SESSIONS.c.id == bindparam("session_id"), case((condition, True), else_=False))
        .values(_START_TURN_VALUES)
        .returning(*_TURN_SESSION_COLUMNS)
    )


def _start_with_user_row(condition: ColumnElement[bool]) -> Select[Any]:
    """PostgreSQL: the lease UPDATE, the title if the session has none, and the user row's INSERT as one
    statement. It returns the session with the title it had before (a snapshot CTE: every part of the
    statement sees the rows as they were when it began)."""
    before = select(_SESSIONS.c.title).where(_SESSIONS.c.id == bindparam("session_id")).cte("before")
    started = (
        _start_turn_statement(condition)
        .values(title=func.coalesce(_SESSIONS.c.title, bindparam("title", type_=String)))
        .cte("started")
    )
    values = [
        started.c.next_seq - 1 if column.name == "seq" else bindparam(f"m_{column.name}", type_=column.type)
        for column in _MESSAGES.columns
    ]
    inserted = (
        insert(_MESSAGES)
        .from_select([column.name for column in _MESSAGES.columns], select(*values).select_from(started))
        .cte("inserted")
    )
    columns = [before.c.title if name == "title" else started.c[name] for name in _TURN_SESSION_FIELDS]
    return select(*columns).select_from(started.join(before, true())).add_cte(inserted)


_START_TURN = _start_turn_statement(_FREE)
_START_OWN_TURN = _start_turn_statement(_FREE_AND_OWNED)
_START_WITH_USER_ROW = _start_with_user_row(_FREE)
_START_OWN_WITH_USER_ROW = _start_with_user_row(_FREE_AND_OWNED)


@dataclass(slots=True, frozen=True)
class StartedTurn:
    """A started turn: its session as `start_turn` found it and the user row it wrote."""

    session: TurnSession
    user_row: ChatMessage


async def start_turn(
    db: Executor,
    session_id: uuid.UUID,
    owner: str | None,
    turn_id: uuid.UUID,
    lease_seconds: float,
    *,
    content: str,
    idempotency_key: str | None = None,
    title: str | None = None,
) -> StartedTurn | None:
    """Take the turn lease of an active, free session and write the user's row at the next seq.

    `title`: the session's title if it has none yet (its first message). On PostgreSQL all of it is one
    statement; on SQLite it is two or three. Either way in the caller's transaction: the turn's checks
    come after it, and a refusal rolls it back.
    Returns None when the session is missing, not the owner's, ended or busy: the caller reads the
    session to tell which (the slow path, never taken by a normal turn).
    """
    now = utcnow()
    params: dict[str, Any] = {
        "session_id": session_id,
        "turn_id": turn_id,
        "until": _after(now, lease_seconds),
        "now": now,
    }
    if owner is not None:
        params["b_owner"] = owner
    row = _new_message(
        session_id, 0, "user", content, turn_id, MessageCounters(), {"idempotency_key": idempotency_key}
    )
    one_statement = single_statement_appends(db)
    if one_statement:
        statement = _START_WITH_USER_ROW if owner is None else _START_OWN_WITH_USER_ROW
        params["title"] = title
        params.update((f"m_{name}", value) for name, value in _column_values(row).items())
    else:
        statement = _START_TURN if owner is None else _START_OWN_TURN
    started = (await db.execute(statement, params)).first()
    if started is None:
        return None
    session = TurnSession(*started)
    row.seq = session.next_seq - 1
    if not one_statement:  # the row and the title, written by the statement above on PostgreSQL
        await db.execute(_INSERT_MESSAGE, [_column_values(row)])
        if title is not None and session.title is None:
            await db.execute(_SET_TITLE_IF_UNSET, {"session_id": session_id, "title": title})
    return StartedTurn(session, row)


async def renew_turn_lease(
    db: Executor, session_id: uuid.UUID, turn_id: uuid.UUID, lease_seconds: float
) -> bool:
    params = {"session_id": session_id, "turn_id": turn_id, "until": _after(utcnow(), lease_seconds)}
    result = await db.execute(_RENEW_LEASE, params)
    return result.rowcount == 1  # type: ignore[attr-defined]


async def clear_stale_lease(
    db: Executor, session_id: uuid.UUID, turn_id: uuid.UUID, *, expired_before: datetime | None
) -> bool:
    """Free a lease left by a turn that will not finish (crashed holder). With `expired_before`, only if
    the lease ran out before that time (another replica may still be renewing it)."""
    statement = _RELEASE_LEASE
    params: dict[str, Any] = {"session_id": session_id, "turn_id": turn_id}
    if expired_before is not None:
        statement, params["now"] = _RELEASE_EXPIRED_LEASE, expired_before
    result = await db.execute(statement, params)
    return result.rowcount == 1  # type: ignore[attr-defined]


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
