"""SQLite through `aria_engine.db.sqlite_driver`: one hop to aiosqlite's thread per statement, none to hand
a connection back, with SQLAlchemy's results, errors and transactions as they were."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite.core
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from aria_engine.db.engine import create_engine, is_transient_database_error, transaction

_ITEMS = Table("items", MetaData(), Column("id", Integer, primary_key=True), Column("name", String))


@contextlib.asynccontextmanager
async def _items_engine(path: Path, **kwargs: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{path}", **kwargs)
    async with engine.begin() as db:
        await db.run_sync(_ITEMS.metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with _items_engine(tmp_path / "driver.db") as engine:
        yield engine


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The calls queued to aiosqlite's thread and awaited: each is a wake of that thread and of the loop."""
    calls: list[str] = []
    original: Callable[..., Any] = aiosqlite.core.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
    return calls


async def test_a_statement_is_one_hop_and_a_clean_hand_back_is_none(
    sqlite_engine: AsyncEngine, hops: list[str]
) -> None:
    async with sqlite_engine.connect():  # the pool's connection is open before counting
        pass
    hops.clear()
    async with transaction(sqlite_engine) as db:
        added = (
            await db.execute(insert(_ITEMS).values([{"name": "a"}, {"name": "b"}]).returning(_ITEMS.c.id))
        ).all()
        renamed = await db.execute(update(_ITEMS).where(_ITEMS.c.id == 1).values(name="c"))
    # Two statements and the commit. SQLAlchemy's adapter over plain aiosqlite took nine: a cursor, the
    # statement, its rows and the cursor's close for each statement, then the commit and the pool's
    # rollback when the connection went back.
    assert len(hops) == 3, hops
    assert [row.id for row in added] == [1, 2]
    assert renamed.rowcount == 1
    async with sqlite_engine.connect() as db:
        assert (await db.execute(select(_ITEMS.c.name).order_by(_ITEMS.c.id))).scalars().all() == ["c", "b"]


async def test_results_read_as_with_plain_aiosqlite(sqlite_engine: AsyncEngine) -> None:
    async with sqlite_engine.begin() as db:
        await db.execute(insert(_ITEMS), [{"name": f"item {i}"} for i in range(10)])  # executemany
        moved = await db.execute(update(_ITEMS).where(_ITEMS.c.id > 5).values(name="late"))
        assert moved.rowcount == 5
        single = await db.execute(insert(_ITEMS).values(name="last"))
        assert single.inserted_primary_key == (11,)
    async with sqlite_engine.connect() as db:
        result = await db.execute(select(_ITEMS.c.id).order_by(_ITEMS.c.id))
        assert result.fetchone() == (1,)
        assert result.fetchmany(3) == [(2,), (3,), (4,)]
        assert [row.id for row in result.fetchall()] == list(range(5, 12))
        assert (await db.execute(select(_ITEMS).where(_ITEMS.c.id > 99))).all() == []
        names = await db.stream_scalars(select(_ITEMS.c.name).order_by(_ITEMS.c.id))
        assert [name async for name in names][-2:] == ["late", "last"]


async def test_errors_keep_their_types_and_leave_the_connection_usable(sqlite_engine: AsyncEngine) -> None:
    async with sqlite_engine.connect() as db:
        await db.execute(insert(_ITEMS).values(id=1, name="first"))
        with pytest.raises(sa_exc.IntegrityError):
            await db.execute(insert(_ITEMS).values(id=1, name="again"))
        await db.rollback()
        with pytest.raises(sa_exc.OperationalError):
            await db.exec_driver_sql("SELECT * FROM no_such_table")
        await db.rollback()
        await db.execute(insert(_ITEMS).values(id=2, name="second"))
        await db.commit()
    async with sqlite_engine.connect() as db:
        assert (await db.execute(select(_ITEMS.c.name))).scalars().all() == ["second"]


async def test_a_connection_handed_back_inside_a_transaction_is_rolled_back(
    sqlite_engine: AsyncEngine,
) -> None:
    # SQLAlchemy does not see a transaction begun by hand on an AUTOCOMMIT connection: the pool's reset
    # finds it open and rolls it back, so the write lock is not kept by a pooled connection.
    async with sqlite_engine.connect() as db:
        raw = await db.execution_options(isolation_level="AUTOCOMMIT")
        await raw.exec_driver_sql("BEGIN IMMEDIATE")
        await raw.execute(insert(_ITEMS).values(name="never committed"))
    async with sqlite_engine.connect() as first, sqlite_engine.connect() as second:
        await first.execute(insert(_ITEMS).values(name="first"))
        await first.commit()
        await second.execute(insert(_ITEMS).values(name="second"))
        await second.commit()
        names = (await first.execute(select(_ITEMS.c.name).order_by(_ITEMS.c.id))).scalars().all()
    assert names == ["first", "second"]


# -- writers take turns in the event loop (WriteLock) ------------------------------------------------------


async def _write(engine: AsyncEngine, name: str) -> None:
    async with transaction(engine) as db:
        await db.execute(insert(_ITEMS).values(name=name))


async def test_waiting_writers_queue_in_the_loop_and_go_in_arrival_order(
    sqlite_engine: AsyncEngine, hops: list[str]
) -> None:
    async with contextlib.AsyncExitStack() as stack:  # four connections open in the pool before counting
        for _ in range(4):
            await stack.enter_async_context(sqlite_engine.connect())
    async with sqlite_engine.connect() as holder:
        await holder.execute(insert(_ITEMS).values(name="holder"))  # the write transaction stays open
        hops.clear()
        waiting = []
        for name in ("second", "third", "fourth"):
            waiting.append(asyncio.create_task(_write(sqlite_engine, name)))
            await asyncio.sleep(0.01)  # each arrives after the one before
        # None of them reached SQLite (where its busy handler would sleep and retry on their threads).
        assert hops == []
        assert not any(task.done() for task in waiting)
        await holder.commit()
        await asyncio.gather(*waiting)
    async with sqlite_engine.connect() as db:
        names = (await db.execute(select(_ITEMS.c.name).order_by(_ITEMS.c.id))).scalars().all()
    assert names == ["holder", "second", "third", "fourth"]


async def test_reads_do_not_wait_for_a_write_transaction(sqlite_engine: AsyncEngine) -> None:
    await _write(sqlite_engine, "committed")
    async with sqlite_engine.connect() as holder, sqlite_engine.connect() as reader:
        await holder.execute(insert(_ITEMS).values(name="pending"))
        names = (await reader.execute(select(_ITEMS.c.name))).scalars().all()
        assert names == ["committed"]  # read at once, from the last committed state
        await holder.rollback()


@pytest.fixture
async def impatient_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """Writers wait at most 0.3 s for their turn; a turn that never ends shows as OperationalError."""
    async with _items_engine(tmp_path / "impatient.db", pool_timeout=0.3) as engine:
        yield engine


async def test_a_writer_kept_waiting_past_the_timeout_gets_a_transient_error(
    impatient_engine: AsyncEngine,
) -> None:
    async with impatient_engine.connect() as holder:
        await holder.execute(insert(_ITEMS).values(name="holder"))
        with pytest.raises(sa_exc.OperationalError) as raised:
            await _write(impatient_engine, "late")
        assert is_transient_database_error(raised.value)  # answered with 503 and Retry-After
        await holder.commit()
    await _write(impatient_engine, "after")  # the queue still works


async def test_the_turn_to_write_ends_with_the_transaction_however_it_ends(
    impatient_engine: AsyncEngine,
) -> None:
    # Each block below ends a write transaction one way; the next writer must get its turn (a turn that
    # stayed taken would fail it with "database is locked" after 0.3 s).
    async with impatient_engine.connect() as db:  # rollback
        await db.execute(insert(_ITEMS).values(name="rolled back"))
        await db.rollback()
    await _write(impatient_engine, "after rollback")

    async with impatient_engine.connect() as db:  # a failed statement, then the rollback
        await db.execute(insert(_ITEMS).values(id=100, name="first"))
        with pytest.raises(sa_exc.IntegrityError):
            await db.execute(insert(_ITEMS).values(id=100, name="duplicate"))
        await db.rollback()
    await _write(impatient_engine, "after failure")

    async with impatient_engine.connect() as db:  # handed back to the pool without commit or rollback
        await db.execute(insert(_ITEMS).values(name="abandoned"))
    await _write(impatient_engine, "after hand-back")

    async with impatient_engine.connect() as db:  # the connection invalidated (closed) mid-transaction
        await db.execute(insert(_ITEMS).values(name="invalidated"))
        await db.invalidate()
    await _write(impatient_engine, "after invalidation")

    async with impatient_engine.connect() as db:  # autocommit: each write is its own transaction
        autocommit = await db.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(insert(_ITEMS).values(name="autocommitted"))
        await _write(impatient_engine, "beside autocommit")  # while that connection is still checked out

    async with impatient_engine.connect() as db:
        names = (await db.execute(select(_ITEMS.c.name).order_by(_ITEMS.c.id))).scalars().all()
    assert names == [
        "after rollback",
        "after failure",
        "after hand-back",
        "after invalidation",
        "autocommitted",
        "beside autocommit",
    ]
