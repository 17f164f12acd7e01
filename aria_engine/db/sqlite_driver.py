"""aiosqlite with one hop to its thread per statement, for SQLAlchemy's `sqlite+aiosqlite` dialect.

aiosqlite runs every call on the connection's own thread, and each call is a hop: a queue put, a wake of
that thread, and a wake of the event loop through its self-pipe when the result comes back. SQLAlchemy's
adapter makes four of them per statement that returns rows (create the cursor, execute, fetch all rows,
close the cursor) and three per write; a turn start (take the lease, insert the user row, commit) made
nine, counting the pool's rollback when the connection went back. A hop costs a tenth of a millisecond
or more on a busy two-core machine, and the turn start is on the way to the first token: the engine's
TTFT overhead on SQLite was 1.7 ms above PostgreSQL's before, and is within about half a millisecond
of it now, on either side from run to run (bench/ANALYSIS.md).

Here a statement is one hop: the thread creates the cursor, executes and fetches the rows together, and
the close is queued behind it without being awaited (the thread runs it before anything else on that
connection). Every sqlite3 call still happens on the connection's thread, as aiosqlite guarantees.
Rows come back with their statement, so a server-side cursor (`AsyncConnection.stream`) holds its whole
result in memory here: the engine reads large tables in keyset pages instead.
`reset_if_in_transaction` is the pool's reset: a rollback only when a transaction is open, so a connection
handed back after a commit costs no hop at all.

Write transactions of one engine take turns through its `WriteLock` (see there): SQLite's own wait for a
writer is a sleep-and-retry loop, which under concurrent writes gave a few requests waits of seconds.

The module is passed to SQLAlchemy as the dialect's DBAPI (`create_async_engine(module=...)`), wrapped by
SQLAlchemy's own aiosqlite adapter, which stays in charge of everything else.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import sys
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite
from aiosqlite import (  # noqa: F401  (the DBAPI names SQLAlchemy's adapter reads from this module)
    DatabaseError,
    Error,
    IntegrityError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    sqlite_version,
    sqlite_version_info,
)
from aiosqlite.context import contextmanager
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi
from sqlalchemy.pool import PoolResetState

__all__ = ["WriteLock", "dbapi", "reset_if_in_transaction"]

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _writes(sql: str) -> bool:
    """Whether a statement writes (and so opens a write transaction, unless in autocommit).

    By its first word: the engine's SQLite writes all begin with one of these (its `WITH ... INSERT`
    forms are PostgreSQL's). A write that began otherwise would still be correct, only waiting in
    SQLite's busy handler instead of in turn."""
    return sql.lstrip()[:7].upper().startswith(_WRITES)


class WriteLock:
    """One write transaction at a time among an engine's connections, taken in the event loop.

    SQLite lets one connection write at a time. Another writer waits in SQLite's busy handler, which
    sleeps and retries (after 1, 2, 5, 10, ... up to 100 ms) on the connection's thread, so whoever
    retries at the right moment goes first: under 16 concurrent REST sends the p99 was 1.6-1.9 s for a
    p50 of 45 ms. Waiting here instead, writers go in arrival order, each the moment the previous one
    ends (bench/ANALYSIS.md has the A/B). Readers never wait for it. Between processes the file lock and
    its busy timeout still apply.

    `timeout`: seconds a writer waits before failing the way SQLite does past its busy timeout
    (`OperationalError`, SQLITE_BUSY: a transient error, answered with 503).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # An asyncio lock belongs to one event loop: one per loop that uses the engine.
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def acquire(self) -> asyncio.Lock:
        """Wait for the turn to write; returns the lock to release when the transaction ends."""
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        try:
            async with asyncio.timeout(self.timeout):  # a free lock is taken without a loop pass
                await lock.acquire()
        except TimeoutError:
            error = OperationalError("database is locked")
            error.sqlite_errorcode = sqlite3.SQLITE_BUSY
            error.sqlite_errorname = "SQLITE_BUSY"
            raise error from None
        return lock


def _execute_and_fetch(
    connection: sqlite3.Connection, sql: str, parameters: Iterable[Any]
) -> tuple[sqlite3.Cursor, list[Any]]:
    """On the connection's thread: a cursor, the statement, and every row it returns."""
    cursor = connection.cursor()
    try:
        cursor.execute(sql, parameters)
        return cursor, cursor.fetchall() if cursor.description else []
    except BaseException:
        cursor.close()
        raise


class Cursor(aiosqlite.Cursor):
    """A cursor whose sqlite3 cursor is made by its first statement, with the rows fetched alongside."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._cursor: sqlite3.Cursor | None = None  # type: ignore[assignment]
        self._rows: list[Any] = []
        self._read = 0  # rows of `_rows` already handed out
        self.iter_chunk_size = conn._iter_chunk_size

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> Cursor:
        self._close_sqlite_cursor()
        await self._conn.before_statement(sql)
        try:
            self._cursor, self._rows = await self._conn._execute(
                _execute_and_fetch, self._conn._conn, sql, [] if parameters is None else parameters
            )
        finally:
            self._conn.release_unless_in_transaction()
        self._read = 0
        return self

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> Cursor:
        self._close_sqlite_cursor()
        await self._conn.before_statement(sql)
        try:
            self._cursor = await self._conn._execute(self._conn._conn.executemany, sql, parameters)
        finally:
            self._conn.release_unless_in_transaction()
        return self

    async def fetchone(self) -> Any:
        rows = await self.fetchmany(1)
        return rows[0] if rows else None

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        start = self._read
        self._read = min(len(self._rows), start + (self.arraysize if size is None else size))
        return self._rows[start : self._read]

    async def fetchall(self) -> Sequence[Any]:
        rows = self._rows[self._read :] if self._read else self._rows
        self._rows, self._read = [], 0
        return rows

    async def close(self) -> None:
        self._close_sqlite_cursor()

    def _close_sqlite_cursor(self) -> None:
        if self._cursor is not None and self._conn._connection is not None:
            # Queued, not awaited: the connection's thread runs it before the next statement.
            self._conn._tx.put_nowait((None, self._cursor.close))
        self._cursor = None  # type: ignore[assignment]
        self._rows, self._read = [], 0

    @property
    def rowcount(self) -> int:
        return -1 if self._cursor is None else self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return None if self._cursor is None else self._cursor.lastrowid

    @property
    def description(self) -> Any:
        return None if self._cursor is None else self._cursor.description

    @property
    def arraysize(self) -> int:
        return 1 if self._cursor is None else self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        if self._cursor is not None:
            self._cursor.arraysize = value


class Connection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors cost no hop of their own, and whose write transactions
    hold the engine's `WriteLock` from their first write to their end."""

    def __init__(self, connector: Any, iter_chunk_size: int, write_lock: WriteLock | None) -> None:
        super().__init__(connector, iter_chunk_size)
        self._write_lock = write_lock
        self._held: asyncio.Lock | None = None

    @contextmanager
    async def cursor(self) -> Cursor:  # type: ignore[override]
        return Cursor(self)

    async def before_statement(self, sql: str) -> None:
        if self._held is None and self._write_lock is not None and _writes(sql):
            self._held = await self._write_lock.acquire()

    async def commit(self) -> None:
        try:
            await super().commit()
        finally:
            self.release_unless_in_transaction()

    async def rollback(self) -> None:
        try:
            await super().rollback()
        finally:
            self.release_unless_in_transaction()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._release()

    def stop(self) -> Any:  # SQLAlchemy's terminate
        self._release()
        return super().stop()

    def release_unless_in_transaction(self) -> None:
        """After a statement, commit or rollback: the transaction ended, or a write ran in autocommit,
        or failed before opening one. A commit that failed leaves the transaction (and the lock) open
        until the rollback."""
        if self._held is not None and not (self._connection is not None and self._connection.in_transaction):
            self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release()


def connect(
    database: str, *, iter_chunk_size: int = 64, write_lock: WriteLock | None = None, **kwargs: Any
) -> Connection:
    """`aiosqlite.connect` (SQLAlchemy passes the file name as a string), with this module's cursors.
    `write_lock` comes from the engine's `connect_args`, one for all its connections."""
    return Connection(functools.partial(sqlite3.connect, database, **kwargs), iter_chunk_size, write_lock)


def reset_if_in_transaction(dbapi_connection: Any, _record: Any, reset_state: PoolResetState) -> None:
    """The pool's reset on return (with `pool_reset_on_return=None`): roll back only a transaction that
    is still open. `in_transaction` is read off the sqlite3 connection without a hop."""
    if reset_state.terminate_only or not reset_state.asyncio_safe or reset_state.transaction_was_reset:
        return  # being closed anyway, outside the event loop (garbage collection), or rolled back already
    try:
        still_open = dbapi_connection.driver_connection.in_transaction
    except ValueError:  # aiosqlite's connection is closed
        return
    if still_open:
        dbapi_connection.rollback()


dbapi = AsyncAdapt_aiosqlite_dbapi(sys.modules[__name__], sqlite3)  # type: ignore[arg-type]
