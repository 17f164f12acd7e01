"""HistoryCache: this process's copy of each session's newest context rows, so a turn that follows a turn
served here starts its LLM call without reading the history from the database.

Why it is exact, not approximately fresh. Messages are written once and never changed (db/models.py),
and a session's seqs are gap-free: every row takes its seq from the session's `next_seq` in the same
transaction. When a turn starts, `start_turn` returns `next_seq` with the user row's seq reserved, so the
newest row the history can hold is `next_seq - 2`. A cached window whose newest row is exactly that seq,
and which reaches back as far as the read would, holds what the database would return: nothing newer
exists, and nothing in it can have changed. Any other case (another replica wrote turns, a write
failed, a session's window grew) is a miss, and the turn reads the database as before.

What enters. A window read from the database at a turn's start, held back until that turn's user row
is committed after it (the read ran in the turn's transaction, which may have written rows of its own,
such as closing a crashed turn: they count only once committed); then each row a turn of this process
writes, once its transaction has committed, in seq order. A row that would leave a gap drops the window.

How it is held. Each row is kept as an exact tuple of `MessageView`'s fields and turned back into a view
when served: the garbage collector stops tracking a tuple that holds only strings, numbers and None, but
never a named tuple's, so a full cache would make every full collection walk its rows (tens of
milliseconds under load, in the middle of streams).

Bounds. At most `max_rows` rows per session (the longest window a context reads), plus its first user
row, which every context keeps; and `max_bytes` in all, by an estimate of the rows' size, the least
recently used sessions going first. A `max_bytes` of 0 turns the cache off.
"""

from __future__ import annotations

import bisect
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from aria_engine.context_manager import MessageView

__all__ = ["HistoryCache"]

_ROW_OVERHEAD_BYTES = 200  # the tuple, its small fields and the list slot, roughly

_Row = tuple[Any, ...]  # a MessageView's fields, as an exact tuple (see "How it is held")
_SEQ, _ROLE, _CONTENT, _TOOL_CALLS = 0, 1, 2, 3  # MessageView's field order


def _size(row: _Row) -> int:
    size = _ROW_OVERHEAD_BYTES + len(row[_CONTENT])
    if row[_TOOL_CALLS]:
        size += len(orjson.dumps(row[_TOOL_CALLS]))
    return size


@dataclass(slots=True)
class _Window:
    low: int  # every row with seq >= low (and <= newest) is in `rows`
    newest: int  # seq of the session's newest row; `low - 1` when there is none
    rows: list[_Row]  # by seq
    first_user: _Row | None  # the session's first user row, kept whatever its age
    seqs: list[int] = field(default_factory=list)  # rows' seqs, for bisect
    size: int = 0
    committed: bool = False  # served only once the row after the read has been committed


class HistoryCache:
    def __init__(self, max_bytes: int, max_rows: int) -> None:
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._windows: OrderedDict[uuid.UUID, _Window] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._windows)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def history(self, session_id: uuid.UUID, user_seq: int, limit: int) -> list[MessageView] | None:
        """The rows `ContextManager.read_rows(before_seq=user_seq)` gives a turn whose user row takes
        `user_seq`, oldest first, in a new list; None when this process does not hold them all."""
        window = self._windows.get(session_id)
        low = user_seq + 1 - limit  # the read's range: seq >= next_seq - limit
        if window is None or not window.committed or window.newest != user_seq - 1 or low < window.low:
            self.misses += 1
            return None
        self._windows.move_to_end(session_id)
        self.hits += 1
        from aria_engine.context_manager import MessageView  # here: that module imports this one

        view = MessageView._make
        rows = [view(row) for row in window.rows[bisect.bisect_left(window.seqs, low) :]]
        first_user = window.first_user
        if first_user is not None and first_user[_SEQ] < low:
            rows.insert(0, view(first_user))
        return rows

    def store(self, session_id: uuid.UUID, user_seq: int, limit: int, rows: Sequence[MessageView]) -> None:
        """Keep a history just read for a turn whose user row takes `user_seq` (the same arguments as
        `history`). It is served once `extend` brings the user row, after the turn's start committed."""
        if not self.max_bytes:
            return
        low = user_seq + 1 - limit
        window = _Window(low=low, newest=user_seq - 1, rows=[], first_user=None)
        for view in rows:  # oldest first; the read adds the first user row even below `low`
            row = tuple(view)
            if row[_SEQ] >= low:
                self._append_row(window, row)
            elif row[_ROLE] == "user" and window.first_user is None:
                window.first_user = row
                window.size += _size(row)
        self._trim(window)
        self.discard(session_id)
        self._windows[session_id] = window
        self._bytes += window.size
        self._evict()

    def extend(self, session_id: uuid.UUID, rows: Iterable[MessageView]) -> None:
        """Add rows a turn wrote, after their transaction committed. A row that does not directly
        follow the newest cached one drops the session's window (it cannot be known complete)."""
        window = self._windows.get(session_id)
        if window is None:
            return
        before = window.size
        for view in rows:
            if view.seq != window.newest + 1:
                self._bytes += window.size - before  # what this call appended, before it all goes
                self.discard(session_id)
                return
            window.newest = view.seq
            window.committed = True
            self._append_row(window, tuple(view))
        self._trim(window)
        self._bytes += window.size - before
        self._windows.move_to_end(session_id)
        self._evict()

    def discard(self, session_id: uuid.UUID) -> None:
        window = self._windows.pop(session_id, None)
        if window is not None:
            self._bytes -= window.size

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _append_row(window: _Window, row: _Row) -> None:
        window.rows.append(row)
        window.seqs.append(row[_SEQ])
        window.size += _size(row)
        if row[_ROLE] == "user" and window.first_user is None:
            # The read returns the session's first user row whenever one exists, so a window without
            # one belongs to a session that had none: this row is it.
            window.first_user = row

    def _trim(self, window: _Window) -> None:
        excess = len(window.rows) - self.max_rows
        if excess <= 0:
            return
        for row in window.rows[:excess]:
            if row is not window.first_user:  # the first user row stays, and so does its size
                window.size -= _size(row)
        del window.rows[:excess]
        del window.seqs[:excess]
        window.low = window.seqs[0]

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._windows:
            _, window = self._windows.popitem(last=False)
            self._bytes -= window.size
