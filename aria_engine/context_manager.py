"""ContextManager: the message list sent to the model on each LLM call (SPEC section 6).

Two parts:
- `build` reads the rows it needs and nothing more: the newest `context_window` rows of the session
  (`ORDER BY seq DESC LIMIT n`, served by the (session_id, seq) unique index), the first user message
  and the current turn, in one `UNION ALL` statement whatever the length of the history. The `thinking`
  column is never read.
- `fit` is the pure core, property-tested: given the system message, the rows (oldest first) and a token
  budget, it returns OpenAI chat messages that are within the budget and well-formed.

Rules `fit` keeps, in priority order:
1. the system message and the newest user message are always kept. If those two alone exceed the budget,
   `PayloadTooLarge` is raised (the user's text is never silently cut: the client is told to shorten it);
2. the messages after the newest user message (this turn's tool rounds), newest first;
3. the first user message (it often sets the task or identity), when it fits;
4. the rest of the history, newest first, stopping at the first unit that does not fit.

An assistant message with `tool_calls` and its tool results form one unit: kept together or dropped
together. A unit whose results are incomplete, and a tool message whose call is not in view, are dropped,
so the provider never sees an orphan. When a unit is too big only because of a tool result, the largest
results are truncated (with a marker) to make it fit rather than dropping the unit.

Token cost of a message = `MESSAGE_OVERHEAD_TOKENS` + tokens of its content + tokens of its tool_calls JSON
(see `message_tokens`); the budget bounds the sum.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from sqlalchemy import CompoundSelect, Integer, bindparam, select, union_all

from aria_engine.db.models import FIRST_SEQ, ChatMessage, ChatSession
from aria_engine.exceptions import PayloadTooLarge
from aria_engine.history_cache import HistoryCache

if TYPE_CHECKING:
    from aria_engine.config import EngineConfig
    from aria_engine.db.store import Executor

__all__ = [
    "MAX_CONTEXT_MESSAGES",
    "MESSAGE_OVERHEAD_TOKENS",
    "SKIPPED_FINISH_REASONS",
    "ContextManager",
    "MessageView",
    "message_tokens",
]

# Role markers and separators each chat message costs (OpenAI's published accounting uses 3-4).
MESSAGE_OVERHEAD_TOKENS = 4
# The API caps a session's context_window at 500; this guards the read even if a row says otherwise.
MAX_CONTEXT_MESSAGES = 500
# Rows of turns that ended without an answer: replayed only when they carry some text.
SKIPPED_FINISH_REASONS = frozenset({"cancelled", "disconnected", "error", "interrupted"})
# A truncated tool result keeps at least this many tokens of its text; below that the unit is dropped.
MIN_TOOL_RESULT_TOKENS = 16
# Token counts kept (a lookup costs about 0.4 µs, tokenizing even a short message about 5 µs).
_COUNT_CACHE_SIZE = 8192
TRUNCATION_MARKER = "\n[truncated: {kept} of {total} characters shown to fit the context]"

Count = Callable[[str], int]

# Only the columns the context needs: never `thinking`, never usage or metadata.
_COLUMNS = (
    ChatMessage.seq,
    ChatMessage.role,
    ChatMessage.content,
    ChatMessage.tool_calls,
    ChatMessage.tool_call_id,
    ChatMessage.tool_name,
    ChatMessage.finish_reason,
)


def _context_rows_statement(*, this_turn_rows: bool) -> CompoundSelect:
    """The statements behind `ContextManager.read_rows`, built once (constructing one costs more than
    running it). Parameters: `session_id`, `limit`. Without `this_turn_rows`, the history before the
    user row at `user_seq`."""
    in_session = ChatMessage.session_id == bindparam("session_id")
    is_user = ChatMessage.role == "user"
    limit = bindparam("limit", type_=Integer)
    # A seq range, not only ORDER BY ... LIMIT: the rows touched stay `limit` whatever the planner
    # estimates for this session (next_seq comes from the session row, by primary key).
    next_seq = select(ChatSession.next_seq).where(ChatSession.id == bindparam("session_id")).scalar_subquery()
    newest_rows = [in_session, ChatMessage.seq >= next_seq - limit]
    first_user_rows = [in_session, is_user]
    if not this_turn_rows:  # the turn start has written its user row already
        before = ChatMessage.seq < bindparam("user_seq", type_=Integer)
        newest_rows.append(before)
        first_user_rows.append(before)
    newest = select(*_COLUMNS).where(*newest_rows).order_by(ChatMessage.seq.desc()).limit(limit)
    first_user = select(*_COLUMNS).where(*first_user_rows).order_by(ChatMessage.seq).limit(1)
    newest_user_seq = (
        select(ChatMessage.seq).where(in_session, is_user).order_by(ChatMessage.seq.desc()).limit(1)
    ).scalar_subquery()
    this_turn = (
        select(*_COLUMNS)
        .where(in_session, ChatMessage.seq >= newest_user_seq)
        .order_by(ChatMessage.seq)
        .limit(MAX_CONTEXT_MESSAGES)
    )
    parts = (newest, first_user, this_turn) if this_turn_rows else (newest, first_user)
    return union_all(*(select(part.subquery()) for part in parts))


_CONTEXT_ROWS = _context_rows_statement(this_turn_rows=True)
_HISTORY_ROWS = _context_rows_statement(this_turn_rows=False)


def _window_rows(context_window: int) -> int:
    """The newest rows a context reads for a session's `context_window`."""
    return min(max(1, context_window), MAX_CONTEXT_MESSAGES)


class MessageView(NamedTuple):
    """The part of a `chat_messages` row the context needs (a named tuple: a turn builds one per row of
    its window, and a tuple is built several times faster than a frozen dataclass)."""

    seq: int
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    finish_reason: str | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> MessageView:
        """From a row of `_COLUMNS`, in that order."""
        seq, role, content, tool_calls, tool_call_id, tool_name, finish_reason = row
        return cls(seq, role, content or "", tool_calls or None, tool_call_id, tool_name, finish_reason)

    @classmethod
    def from_message(cls, message: ChatMessage) -> MessageView:
        """From a row just written (the same view a read of it would give)."""
        return cls.from_row(tuple(getattr(message, column.key) for column in _COLUMNS))


def message_tokens(message: dict[str, Any], count: Count) -> int:
    """The token cost of one chat message under the context budget."""
    tokens = MESSAGE_OVERHEAD_TOKENS + count(message.get("content") or "")
    if message.get("tool_calls"):
        tokens += count(orjson.dumps(message["tool_calls"]).decode())
    if message.get("tool_call_id"):
        tokens += count(message["tool_call_id"])
    return tokens


class ContextManager:
    """Token-budgeted context for one LLM call.

    Parameters:
    - config: `context_safety_margin` is read.
    - count_tokens: `count_tokens(model_id, text) -> int` (the gateway's offline counter).
    """

    def __init__(self, config: EngineConfig, count_tokens: Callable[[str, str], int]) -> None:
        self._config = config
        self._count_tokens = count_tokens
        # Histories of sessions whose turns ran here, so the next turn's first call skips the read.
        self.history = HistoryCache(round(config.history_cache_mb * 2**20), MAX_CONTEXT_MESSAGES)
        # Token counts of texts seen before: each turn re-reads the same history, and tokenizing it
        # again every round would cost time proportional to the whole window. Keyed by the text's hash
        # and length (the text itself is not kept) and bounded.
        self._counts: OrderedDict[tuple[str, int, int], int] = OrderedDict()

    def budget_for(
        self, *, context_window_tokens: int, max_output_tokens: int, tool_schema_tokens: int
    ) -> int:
        """Tokens available for messages: window - reserved output - tool schemas - safety margin."""
        budget = (
            context_window_tokens
            - max_output_tokens
            - tool_schema_tokens
            - self._config.context_safety_margin
        )
        return max(0, budget)

    async def build(
        self,
        db: Executor,
        *,
        session_id: uuid.UUID,
        model_id: str,
        context_window: int,
        budget_tokens: int,
        system_prompt: str,
        new_user_message: MessageView | None = None,
    ) -> list[dict[str, Any]]:
        """System message first, then the kept history oldest to newest. One SQL statement, or none when
        the history cache holds a new user message's history.

        `new_user_message` is a turn's user row before it is written (its seq already reserved): the
        context is then the one the database would give once it is, so the row's INSERT can wait.
        """
        if new_user_message is None:
            rows = await self.read_rows(db, session_id=session_id, context_window=context_window)
        else:
            rows = await self._history_before(db, session_id, new_user_message.seq, context_window)
            rows.append(new_user_message)
        return self.fit(
            {"role": "system", "content": system_prompt}, rows, budget_tokens, self.counter(model_id)
        )

    def counter(self, model_id: str) -> Count:
        """`count(text)` for one model, through the bounded cache."""
        cache, count_tokens = self._counts, self._count_tokens

        def count(text: str) -> int:
            if not text:
                return 0
            key = (model_id, hash(text), len(text))
            tokens = cache.get(key)
            if tokens is None:
                tokens = cache[key] = count_tokens(model_id, text)
                if len(cache) > _COUNT_CACHE_SIZE:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(key)
            return tokens

        return count

    async def _history_before(
        self, db: Executor, session_id: uuid.UUID, user_seq: int, context_window: int
    ) -> list[MessageView]:
        """The rows before the user row at `user_seq`: from the history cache when it holds them all."""
        limit = _window_rows(context_window)
        rows = self.history.history(session_id, user_seq, limit)
        if rows is None:
            if user_seq == FIRST_SEQ:  # seqs start at FIRST_SEQ without gaps: nothing comes before it
                rows = []
            else:
                rows = await self.read_rows(
                    db, session_id=session_id, context_window=context_window, before_seq=user_seq
                )
            self.history.store(session_id, user_seq, limit, rows)
        return rows  # a fresh list either way: the cache keeps copies of its rows, never this list

    @staticmethod
    async def read_rows(
        db: Executor, *, session_id: uuid.UUID, context_window: int, before_seq: int | None = None
    ) -> list[MessageView]:
        """The rows a context can use, oldest first, in one statement whatever the history holds.

        Three index range scans on (session_id, seq), each with its own LIMIT, `UNION ALL`ed (one
        statement, so a turn's SQL count never depends on the history): the newest `context_window` rows,
        the first user row, and the current turn (the newest user row and everything after it, so a
        small window cannot push this turn's question out from under its own tool rounds). With
        `before_seq`, the first two only, of the rows before that seq: the history before a turn's user
        row, whose seq `next_seq` already counts.
        """
        params = {"session_id": session_id, "limit": _window_rows(context_window)}
        statement = _CONTEXT_ROWS
        if before_seq is not None:
            statement, params["user_seq"] = _HISTORY_ROWS, before_seq
        rows = await db.execute(statement, params)
        by_seq = {row[0]: row for row in rows}  # the parts overlap; row[0] is the seq
        return [MessageView.from_row(by_seq[seq]) for seq in sorted(by_seq)]

    @staticmethod
    def fit(
        system: dict[str, Any], rows: Sequence[MessageView], budget: int, count: Count
    ) -> list[dict[str, Any]]:
        """Choose and shape the messages (see the module docstring). Pure; raises PayloadTooLarge."""
        return _Fitter(system, rows, budget, count).run()


# -- the pure core ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    """One message, or an assistant tool-call message with all its results."""

    index: int  # position in the history, to restore order
    messages: list[dict[str, Any]]
    is_user: bool = False


def _to_message(row: MessageView) -> dict[str, Any] | None:
    if row.finish_reason in SKIPPED_FINISH_REASONS and not row.content:
        return None
    if row.role == "tool":
        if not row.tool_call_id:
            return None
        return {"role": "tool", "tool_call_id": row.tool_call_id, "content": row.content}
    if row.role == "assistant" and row.tool_calls:
        # An unusable call list ([] here) makes the unit, and so its results, drop out in `_units`.
        return {"role": "assistant", "content": row.content, "tool_calls": _normalize_calls(row.tool_calls)}
    if row.role in ("user", "assistant", "system"):
        return {"role": row.role, "content": row.content}
    return None


def _normalize_calls(raw: object) -> list[dict[str, Any]]:
    """Stored calls in the exact OpenAI shape (imports may lack `type` or hold arguments as objects).

    Returns [] when any call lacks an id or a function name, or when ids repeat: such a message cannot
    be replayed without the provider rejecting the request.
    """
    calls: list[dict[str, Any]] = []
    for item in raw if isinstance(raw, list) else ():
        function = item.get("function") if isinstance(item, dict) else None
        call_id = item.get("id") if isinstance(item, dict) else None
        if not (isinstance(call_id, str) and call_id and isinstance(function, dict)):
            return []
        name, arguments = function.get("name"), function.get("arguments", "")
        if not isinstance(name, str) or not name:
            return []
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    if len({call["id"] for call in calls}) != len(calls):
        return []
    return calls


def _units(rows: Sequence[MessageView]) -> list[_Unit]:
    """Group rows into units; drop incomplete tool groups and orphan tool messages."""
    units: list[_Unit] = []
    pending: _Unit | None = None  # an assistant tool-call unit still collecting its results
    waiting: set[str] = set()
    for row in rows:
        message = _to_message(row)
        if message is None:
            continue
        if message["role"] == "tool":
            if pending is not None and message["tool_call_id"] in waiting:
                waiting.discard(message["tool_call_id"])
                pending.messages.append(message)
                if not waiting:
                    units.append(pending)
                    pending = None
            continue  # an orphan or duplicate result: never sent
        # Any other message closes an open group; if results are still missing, the group is dropped.
        pending, waiting = None, set()
        if "tool_calls" in message:
            if message["tool_calls"]:
                pending = _Unit(len(units), [message])
                waiting = {call["id"] for call in message["tool_calls"]}
            continue
        units.append(_Unit(len(units), [message], is_user=message["role"] == "user"))
    return units


class _Fitter:
    def __init__(
        self, system: dict[str, Any], rows: Sequence[MessageView], budget: int, count: Count
    ) -> None:
        self.system = system
        self.units = _units(rows)
        self.count = count
        self.left = budget - message_tokens(system, count)
        self.kept: list[_Unit] = []

    def run(self) -> list[dict[str, Any]]:
        users = [i for i, unit in enumerate(self.units) if unit.is_user]
        newest_cost = self._cost(self.units[users[-1]]) if users else 0
        if newest_cost > self.left:  # also when the system prompt alone is over budget
            raise PayloadTooLarge(
                "The message is too long for this model's context window; shorten it or start a session "
                "with a model that has a larger context window."
            )
        if not users:
            self._fill(reversed(self.units))
            return self._result()
        newest, first = users[-1], users[0]
        self._take(self.units[newest], newest_cost)
        self._fill(reversed(self.units[newest + 1 :]))
        if first != newest:
            self._try(self.units[first])
        self._fill(unit for i, unit in reversed(list(enumerate(self.units[:newest]))) if i != first)
        return self._result()

    def _result(self) -> list[dict[str, Any]]:
        self.kept.sort(key=lambda unit: unit.index)
        return [self.system, *(message for unit in self.kept for message in unit.messages)]

    def _cost(self, unit: _Unit) -> int:
        return sum(message_tokens(message, self.count) for message in unit.messages)

    def _take(self, unit: _Unit, cost: int) -> None:
        self.kept.append(unit)
        self.left -= cost

    def _fill(self, units: Any) -> None:
        for unit in units:
            if not self._try(unit):
                return

    def _try(self, unit: _Unit) -> bool:
        cost = self._cost(unit)
        if cost > self.left and len(unit.messages) > 1:
            shrunk = _shrink_results(unit, cost - self.left, self.count)
            if shrunk is not None:
                unit, cost = shrunk, self._cost(shrunk)
        if cost > self.left:
            return False
        self._take(unit, cost)
        return True


def _shrink_results(unit: _Unit, excess: int, count: Count) -> _Unit | None:
    """Truncate the largest tool results of a group until it is `excess` tokens smaller, or None."""
    messages = list(unit.messages)
    by_size = sorted(range(1, len(messages)), key=lambda i: message_tokens(messages[i], count), reverse=True)
    for i in by_size:
        if excess <= 0:
            break
        content = messages[i]["content"]
        current = count(content)
        target = max(MIN_TOOL_RESULT_TOKENS, current - excess)
        if target >= current:
            continue
        shorter = truncate_to_tokens(content, target, count)
        if shorter is None:
            continue
        excess -= current - count(shorter)
        messages[i] = {**messages[i], "content": shorter}
    if excess > 0:
        return None
    return _Unit(unit.index, messages, unit.is_user)


def truncate_to_tokens(text: str, max_tokens: int, count: Count) -> str | None:
    """The head of `text` plus a marker, costing at most `max_tokens`; None if even that cannot fit.

    Guesses a cut from the text's own characters-per-token ratio and shrinks it until it fits: a few
    counts of at most the original text's size, never a character-by-character search.
    """
    total = count(text)
    if total <= max_tokens:
        return text
    keep = len(text) * max_tokens // max(total, 1)
    while True:
        candidate = text[:keep] + TRUNCATION_MARKER.format(kept=keep, total=len(text))
        if count(candidate) <= max_tokens:
            return candidate
        if keep == 0:
            return None
        keep = keep * 3 // 4 if keep > 4 else 0
