"""Database engine and session factory, built once per process (in the app's lifespan or the CLI).

SQLite gets WAL mode, foreign keys and a busy timeout on every connection, so cascades work and a reader
never blocks the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from aria_engine.db import sqlite_driver

__all__ = [
    "DEFAULT_WAIT_SECONDS",
    "create_engine",
    "create_session_factory",
    "is_transient_database_error",
    "shielded",
    "transaction",
]

T = TypeVar("T")

DEFAULT_WAIT_SECONDS = 30.0


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return on_connect


def create_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    """`kwargs` go to SQLAlchemy; pool sizes apply to PostgreSQL only (SQLite keeps its own pool).

    `pool_timeout` (seconds, default 30) is how long a request waits for the database: on PostgreSQL for
    a pooled connection, on SQLite for its turn to write (behind the process's other writers, then for
    the file's lock: its busy timeout). Then it fails with a transient error, answered with 503
    (`is_transient_database_error`).
    """
    if database_url.startswith("sqlite"):
        _ensure_sqlite_dir(database_url)
        kwargs.pop("pool_size", None)
        kwargs.pop("max_overflow", None)
        busy_timeout_ms = round(kwargs.pop("pool_timeout", DEFAULT_WAIT_SECONDS) * 1000)
        # One hop to aiosqlite's thread per statement, none to hand a connection back (sqlite_driver.py).
        kwargs.setdefault("module", sqlite_driver.dbapi)
        kwargs.setdefault("pool_reset_on_return", None)
        # The engine's writers take turns in the event loop rather than in SQLite's busy handler.
        write_lock = sqlite_driver.WriteLock(busy_timeout_ms / 1000)
        kwargs["connect_args"] = {"write_lock": write_lock, **kwargs.get("connect_args", {})}
        engine = create_async_engine(database_url, **kwargs)
        event.listen(engine.sync_engine, "reset", sqlite_driver.reset_if_in_transaction)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_timeout_ms))
        return engine
    kwargs.setdefault("pool_timeout", DEFAULT_WAIT_SECONDS)
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 10)
    # No pre-ping: it costs a round trip on every checkout (measured at 8-15% of a REST request). A
    # connection the server dropped fails its statement once; SQLAlchemy then invalidates the pool, the
    # request gets a 503 with Retry-After (`is_transient_database_error`), and the next one reconnects.
    # Recycling bounds connection age.
    kwargs.setdefault("pool_recycle", 1800)
    return create_async_engine(database_url, **kwargs)


def is_transient_database_error(exc: BaseException) -> bool:
    """A database failure worth retrying: no pooled connection became free within the pool timeout
    (the process is overloaded), the server could not be reached, or it dropped the connection (SQLite:
    the file stayed locked past its busy timeout). The API answers these with 503 engine_unavailable and
    Retry-After instead of a 500.

    A refused or reset connection comes through as the builtin `ConnectionError`: the driver raises it
    unwrapped while connecting. Nothing else on a request's path raises that type (httpx and redis raise
    their own), so it is taken as the database's.
    """
    if isinstance(exc, ConnectionError | sa_exc.TimeoutError):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = str(getattr(exc.orig, "pgcode", None) or "")
    sqlite_code = getattr(exc.orig, "sqlite_errorcode", None)
    # Not every OperationalError: SQLite raises that class for a missing table or bad SQL too (bugs).
    return sqlstate.startswith(_UNAVAILABLE_SQLSTATES) or (
        sqlite_code is not None and sqlite_code & 0xFF in _SQLITE_BUSY
    )


# PostgreSQL error codes of a server that cannot serve now (asyncpg's errors reach SQLAlchemy as plain
# DBAPIError): 08 connection exceptions, 53 insufficient resources (too many connections), 57P operator
# intervention (shutting down, cannot connect now), 55000 as raised for a database that does not accept
# connections.
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P", "55000")
# SQLite's primary result codes SQLITE_BUSY and SQLITE_LOCKED: the file stayed locked past busy_timeout.
_SQLITE_BUSY = (5, 6)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _ensure_sqlite_dir(database_url: str) -> None:
    from pathlib import Path

    from sqlalchemy.engine import make_url

    database = make_url(database_url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.begin()` for the turn pipeline: a connection in a transaction, committed at the end of the
    block (a no-op on an AUTOCOMMIT engine), that goes back to the pool without a pass of the event loop.

    SQLAlchemy's own context managers close the connection in a task of its own, shielded from
    cancellation, and that costs three passes of the loop. With a thousand streams running, a pass
    takes tens of milliseconds: every turn start waited 90-150 ms for it. Once the transaction is over,
    handing the connection back does no I/O (on SQLite the pool's reset skips a connection with no open
    transaction, see sqlite_driver.py), so there is nothing a cancellation could cut short. After an
    error the rollback is I/O, and the connection closes the shielded way.
    """
    db = await engine.connect()
    clean = False
    try:
        async with db.begin():
            yield db
        clean = True
    finally:
        await (db.close() if clean else shielded(db.close()))


async def shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion even if the caller is cancelled (again) meanwhile.

    For writes and clean-ups that must land, such as a turn's end after a cancellation; the caller
    re-raises its own cancellation afterwards.
    """
    task = asyncio.ensure_future(coro)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    return task.result()
