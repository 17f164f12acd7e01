"""The write path: seq allocation, atomic counters, the turn lease, and the totals invariant."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

from sqlalchemy import select

from aria_engine.db import store
from aria_engine.db.models import ChatMessage, ChatSession
from aria_engine.db.store import MessageCounters


async def _session(db_factory) -> uuid.UUID:  # type: ignore[no-untyped-def]
    async with db_factory.begin() as db:
        row = ChatSession(owner="o", model="m")
        db.add(row)
    return row.id


async def test_append_message_allocates_consecutive_seq_and_moves_counters(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _session(db_factory)
    async with db_factory.begin() as db:
        first = await store.append_message(db, sid, role="user", content="hi")
        second = await store.append_message(
            db,
            sid,
            role="assistant",
            content="hello",
            counters=MessageCounters(
                input_tokens=10, output_tokens=5, reasoning_tokens=2, cost=Decimal("0.0015")
            ),
        )
    assert (first.seq, second.seq) == (1, 2)
    async with db_factory() as db:
        assert await store.verify_totals(db, sid) == {}
        row = await db.get(ChatSession, sid)
        assert (row.message_count, row.total_tokens, row.reasoning_tokens) == (2, 15, 2)
        assert row.total_cost == Decimal("0.0015")


async def test_concurrent_appends_never_collide_on_seq(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _session(db_factory)

    async def write(i: int) -> None:
        async with db_factory.begin() as db:
            await store.append_message(
                db,
                sid,
                role="user",
                content=str(i),
                counters=MessageCounters(input_tokens=1, cost=Decimal("0.1")),
            )

    await asyncio.gather(*(write(i) for i in range(20)))
    async with db_factory() as db:
        seqs = sorted(
            (await db.execute(select(ChatMessage.seq).where(ChatMessage.session_id == sid))).scalars()
        )
        assert seqs == list(range(1, 21))
        assert await store.verify_totals(db, sid) == {}


async def test_rolled_back_append_leaves_no_trace(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _session(db_factory)
    try:
        async with db_factory.begin() as db:
            await store.append_message(
                db, sid, role="user", content="x", counters=MessageCounters(input_tokens=3)
            )
            raise RuntimeError("crash before commit")
    except RuntimeError:
        pass
    async with db_factory() as db:
        row = await db.get(ChatSession, sid)
        assert (row.next_seq, row.message_count, row.input_tokens) == (1, 0, 0)
        assert await store.verify_totals(db, sid) == {}


async def test_turn_lease_is_exclusive_until_released_or_expired(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _session(db_factory)
    first, second = uuid.uuid4(), uuid.uuid4()
    async with db_factory.begin() as db:
        assert await store.acquire_turn_lease(db, sid, first, 60)
    async with db_factory.begin() as db:
        assert not await store.acquire_turn_lease(db, sid, second, 60)
        assert await store.renew_turn_lease(db, sid, first, 60)
        assert not await store.renew_turn_lease(db, sid, second, 60)
    async with db_factory.begin() as db:
        await store.release_turn_lease(db, sid, first)
    async with db_factory.begin() as db:
        assert await store.acquire_turn_lease(db, sid, second, -1)  # already expired
    async with db_factory.begin() as db:
        assert await store.acquire_turn_lease(db, sid, first, 60)  # an expired lease can be taken over


async def test_verify_totals_reports_a_drifted_counter(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _session(db_factory)
    async with db_factory.begin() as db:
        await store.append_message(
            db, sid, role="user", content="x", counters=MessageCounters(output_tokens=4)
        )
        row = await db.get(ChatSession, sid)
        row.output_tokens = 99  # a read-modify-write bug would look like this
    async with db_factory() as db:
        problems = await store.verify_totals(db, sid)
    assert problems["output_tokens"] == (99, 4)
