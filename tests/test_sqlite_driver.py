"""SQLite through `aria_engine.db.sqlite_driver`: one hop to aiosqlite's thread per statement, none to hand
a connection back, with SQLAlchemy's results, errors and transactions as they were."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite.core
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from aria_engine.db.engine import create_engine, transaction

_ITEMS = Table("items", MetaData(), Column("id", Integer, primary_key=True), Column("name", String))


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as db:
        await db.run_sync(_ITEMS.metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


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
