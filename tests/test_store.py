"""The write path: seq allocation, atomic counters, the turn lease, and the totals invariant."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from aria_engine.db import store
from aria_engine.db.engine import create_engine, is_transient_database_error
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


async def test_turn_lease_is_exclusive_until_released(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _session(db_factory)
    first, second = uuid.uuid4(), uuid.uuid4()
    async with db_factory.begin() as db:
        assert await store.start_turn(db, sid, "o", first, 60, content="hi") is not None
        assert (await db.get(ChatSession, sid)).active_turn_id == first
    async with db_factory.begin() as db:
        assert await store.start_turn(db, sid, "o", second, 60, content="hi") is None
        assert await store.renew_turn_lease(db, sid, first, 60)
        assert not await store.renew_turn_lease(db, sid, second, 60)
    async with db_factory.begin() as db:
        await store.append_message(db, sid, role="assistant", turn_id=second, ends_turn=second)
        assert (await db.get(ChatSession, sid)).active_turn_id == first  # not that turn's lease to free
    async with db_factory.begin() as db:
        await store.append_message(db, sid, role="assistant", turn_id=first, ends_turn=first)
    async with db_factory.begin() as db:
        row = await db.get(ChatSession, sid, populate_existing=True)
        assert (row.active_turn_id, row.turn_lease_until) == (None, None)
        assert await store.start_turn(db, sid, "o", second, 60, content="hi") is not None


async def test_start_turn_writes_the_user_row_and_returns_the_session_as_it_was(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _session(db_factory)
    turn = uuid.uuid4()
    async with db_factory.begin() as db:
        await store.append_message(db, sid, role="user", content="earlier")
        started = await store.start_turn(db, sid, None, turn, 60, content="now", title="Now")
        assert started is not None
        session = started.session
        # The title it had: None tells the turn this is the first message that titles the session.
        assert (session.id, session.model, session.next_seq, session.title) == (sid, "m", 3, None)
        assert (started.user_row.seq, started.user_row.turn_id, started.user_row.role) == (2, turn, "user")
    async with db_factory() as db:
        rows = (await db.execute(select(ChatMessage).order_by(ChatMessage.seq))).scalars().all()
        assert [(row.seq, row.content, row.turn_id) for row in rows] == [
            (1, "earlier", None),
            (2, "now", turn),
        ]
        stored = await db.get(ChatSession, sid)
        assert (stored.title, stored.active_turn_id) == ("Now", turn)  # type: ignore[union-attr]
        assert await store.verify_totals(db, sid) == {}


async def test_start_turn_refuses_another_owner_and_an_ended_session(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _session(db_factory)
    async with db_factory.begin() as db:
        assert await store.start_turn(db, sid, "someone-else", uuid.uuid4(), 60, content="hi") is None
        assert await store.start_turn(db, uuid.uuid4(), None, uuid.uuid4(), 60, content="hi") is None
        (await db.get(ChatSession, sid)).status = "ended"
    async with db_factory.begin() as db:
        assert await store.start_turn(db, sid, "o", uuid.uuid4(), 60, content="hi") is None
        row = await db.get(ChatSession, sid)
        assert (row.active_turn_id, row.next_seq, row.message_count) == (None, 1, 0)  # nothing moved


async def test_a_stale_lease_is_cleared_only_once_it_has_expired(db_factory) -> None:  # type: ignore[no-untyped-def]
    sid = await _session(db_factory)
    crashed = uuid.uuid4()
    async with db_factory.begin() as db:
        assert await store.start_turn(db, sid, "o", crashed, 60, content="hi") is not None
    async with db_factory.begin() as db:
        now = store.utcnow()
        assert not await store.clear_stale_lease(db, sid, crashed, expired_before=now)  # still held
        assert not await store.clear_stale_lease(db, sid, uuid.uuid4(), expired_before=None)  # not its lease
        later = now + timedelta(seconds=120)
        assert await store.clear_stale_lease(db, sid, crashed, expired_before=later)
    async with db_factory.begin() as db:
        assert await store.start_turn(db, sid, "o", uuid.uuid4(), 60, content="hi") is not None


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


async def test_an_exhausted_pool_and_a_refused_connection_count_as_transient(database_url: str) -> None:
    # What the API answers with 503 engine_unavailable (retry) rather than a 500 (a bug).
    engine = create_async_engine(
        database_url, poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    try:
        async with engine.connect() as held:
            await held.execute(select(1))
            with pytest.raises(sa_exc.TimeoutError) as exhausted:
                async with engine.connect():
                    pass
    finally:
        await engine.dispose()
    assert is_transient_database_error(exhausted.value)
    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:1/none"  # nothing listens on port 1
    refused = create_async_engine(unreachable)
    try:
        with pytest.raises((sa_exc.SQLAlchemyError, ConnectionError)) as failed:
            async with refused.connect():
                pass
    finally:
        await refused.dispose()
    assert is_transient_database_error(failed.value)
    assert not is_transient_database_error(sa_exc.IntegrityError("INSERT", {}, Exception("duplicate")))
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5  # type: ignore[attr-defined]  # SQLITE_BUSY, as sqlite3 sets it
    assert is_transient_database_error(sa_exc.OperationalError("UPDATE", {}, locked))
    missing = sqlite3.OperationalError("no such table: chat_sessions")
    missing.sqlite_errorcode = 1  # type: ignore[attr-defined]  # SQLITE_ERROR: a bug, not a retry
    assert not is_transient_database_error(sa_exc.OperationalError("SELECT", {}, missing))


async def test_the_turn_start_finds_its_session_by_primary_key_even_without_statistics(
    db_factory: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    # With no statistics (autovacuum off, or just after a bulk import) PostgreSQL served this UPDATE
    # through the (owner, status) index and scanned every session of the owner.
    async with db_factory.begin() as db:
        await db.execute(
            insert(ChatSession),
            [{"id": uuid.uuid4(), "owner": "o", "model": "m"} for _ in range(3000)],
        )
        sid = (await db.execute(select(ChatSession.id).limit(1))).scalar_one()
    sqlite = database_url.startswith("sqlite")
    async with db_factory() as db:
        conn = await db.connection()
        compiled = store._START_OWN_TURN.compile(dialect=conn.dialect)
        # The driver gets the values as they are stored: SQLite keeps UUIDs as 32 hex characters.
        ids = (sid.hex, uuid.uuid4().hex) if sqlite else (sid, uuid.uuid4())
        values = {"session_id": ids[0], "turn_id": ids[1], "until": None, "now": None, "b_owner": "o"}
        params = compiled.construct_params(values)
        args = tuple(params[name] for name in compiled.positiontup or ())
        explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
        plan = "\n".join(str(row[-1]) for row in await conn.exec_driver_sql(explain + compiled.string, args))
    by_key = "sqlite_autoindex_chat_sessions_1 (id=?)" if sqlite else "Index Scan using pk_chat_sessions "
    assert by_key in plan, plan


async def test_sqlite_waits_for_the_write_lock_up_to_the_pool_timeout_then_fails_transiently(
    tmp_path: Path,
) -> None:
    # SQLite's busy timeout is the same setting as PostgreSQL's wait for a pooled connection; past it the
    # request gets a retryable 503, not a 500.
    url = f"sqlite+aiosqlite:///{tmp_path / 'locked.db'}"
    engine = create_engine(url, pool_timeout=0.3)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() == 300
        async with engine.connect() as holder, engine.connect() as waiter:
            await holder.exec_driver_sql("BEGIN IMMEDIATE")  # takes the write lock and keeps it
            with pytest.raises(sa_exc.OperationalError) as locked:
                await waiter.exec_driver_sql("INSERT INTO t VALUES (1)")
            await holder.rollback()
    finally:
        await engine.dispose()
    assert is_transient_database_error(locked.value)
    default = create_engine(url)
    try:
        async with default.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() == 30_000
    finally:
        await default.dispose()


async def test_transaction_commits_rolls_back_and_hands_the_connection_back_without_a_loop_pass(
    db_factory,
) -> None:  # type: ignore[no-untyped-def]
    from aria_engine.db.engine import transaction

    engine = db_factory.kw["bind"]
    sid = await _session(db_factory)
    rename = ChatSession.__table__.update().where(ChatSession.id == sid)
    passes = 0

    async def count_passes() -> None:
        nonlocal passes
        while True:
            passes += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_passes())
    try:
        async with transaction(engine) as db:
            await db.execute(rename.values(title="kept"))
            await db.commit()
            before_exit = passes
        after_exit = passes
        with pytest.raises(RuntimeError):
            async with transaction(engine) as db:
                await db.execute(rename.values(title="rolled back"))
                raise RuntimeError("boom")
    finally:
        counter.cancel()

    async with db_factory() as db:
        assert (await db.get(ChatSession, sid)).title == "kept"  # type: ignore[union-attr]
    # Nothing left to do on the wire (on SQLite the pool's reset skips a connection with no transaction
    # open): a turn start does not wait for the loop to come round (three times, with SQLAlchemy's own
    # context manager) before it can go on.
    assert after_exit == before_exit
    assert engine.pool.checkedout() == 0
