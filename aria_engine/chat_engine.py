"""ChatEngine: sessions, and THE turn pipeline that every surface (REST, WebSocket, CLI) runs.

A turn, read top to bottom in `stream_turn`:

1. Checks that can fail run before anything is started: the session exists and is the caller's, it is
   active, the model is valid, the content is acceptable, and the session's turn lease is free
   (`SessionBusy` otherwise). A repeated idempotency key replays the original turn instead.
2. The user row is written (with the lease, in one transaction) and `StartEvent` goes out.
3. Rounds: build the context, stream one LLM call (thinking/token events as deltas arrive), and if the
   model asked for tools, persist the assistant row carrying the calls, run the tools, persist one tool
   row per result, and loop — within the caps on rounds, tokens and USD per turn.
4. The final assistant row is written with exact usage, cost, latency and TTFT; the lease is released in
   the same statement; `DoneEvent` closes the turn.

The turn's own statements are all Core and run on plain connections (`self._db_engine`), not ORM
sessions: a session around them cost about a third of each transaction's time, on every turn. A write
that is one statement (a message row with its counters on PostgreSQL, a lease renewal) runs outside a
transaction (`_one_statement`): BEGIN and COMMIT would be two of its three round trips.

Every `StartEvent` gets exactly one `DoneEvent`: errors after the start become `ErrorEvent` + `DoneEvent`.
Cancellation (the consumer cancels its task or closes the iterator) persists the partial answer in a
shielded block and leaves the closing `DoneEvent` in `TurnControl.final_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from aria_engine.context_manager import ContextManager, MessageView
from aria_engine.db import store
from aria_engine.db.engine import shielded, transaction
from aria_engine.db.models import ChatMessage, ChatSession, utcnow
from aria_engine.db.store import Executor, MessageCounters, TurnSession
from aria_engine.db.types import format_money
from aria_engine.events import (
    DoneEvent,
    ErrorEvent,
    FinishReason,
    StartEvent,
    ThinkingEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    TurnControl,
    TurnEvent,
    UsageEvent,
)
from aria_engine.exceptions import (
    EngineError,
    LLMError,
    PayloadTooLarge,
    SessionBusy,
    SessionEnded,
    ValidationError,
)
from aria_engine.llm_gateway import ChunkStream, ToolCallAssembler
from aria_engine.providers.base import (
    Chunk,
    ContentDelta,
    FinishChunk,
    ModelSelected,
    ThinkingDelta,
    ToolCallDelta,
    UsageChunk,
)
from aria_engine.sessions import SessionManager, clean_title, load_session, parse_id

if TYPE_CHECKING:
    from aria_engine.config import EngineConfig
    from aria_engine.llm_gateway import LLMGateway, ModelInfo
    from aria_engine.prompts import PromptAssembler
    from aria_engine.tool_registry import ToolRegistry

__all__ = ["MAX_MESSAGE_CHARS", "ChatEngine", "ChatResponse"]

logger = logging.getLogger("aria.engine")
T = TypeVar("T")

MAX_MESSAGE_CHARS = 100_000
_TITLE_INSTRUCTION = (
    "Write a short title (at most six words) for a conversation that starts with the user's message. "
    "Answer with the title only, without quotes."
)
_TERMINAL_REASONS = {reason.value for reason in FinishReason} - {FinishReason.TOOL_CALLS.value}


@dataclass(slots=True)
class ChatResponse:
    """A finished turn, as the REST endpoint returns it (the seed's shape)."""

    message_id: str
    session_id: str
    content: str
    turn_id: str = ""
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_results: list[dict[str, Any]] | None = None
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost: Decimal = Decimal(0)
    latency_ms: int = 0
    ttft_ms: int | None = None
    finish_reason: str = ""

    @property
    def cost_usd(self) -> float:
        return float(self.cost)


class _TextParts:
    """Streamed text, kept as a few joined blocks instead of a string per delta.

    A Python string costs about 50 bytes before its first character: a 200-token answer held as 200
    strings took 11 KB where its text is 1 KB (tracemalloc, bench scenario 3). Joining every `_BLOCK`
    pieces costs O(1) per piece, amortised, whatever the answer's length.
    """

    __slots__ = ("_blocks", "_pieces")
    _BLOCK = 64

    def __init__(self) -> None:
        self._blocks: list[str] = []
        self._pieces: list[str] = []

    def append(self, piece: str) -> None:
        self._pieces.append(piece)
        if len(self._pieces) == self._BLOCK:
            self._blocks.append("".join(self._pieces))
            self._pieces = []

    def __bool__(self) -> bool:
        return bool(self._blocks or self._pieces)

    def text(self) -> str:
        return "".join(self._blocks) + "".join(self._pieces)


@dataclass(slots=True)
class _Call:
    """What one LLM call produced so far."""

    model_id: str
    messages: list[dict[str, Any]]
    content: _TextParts = field(default_factory=_TextParts)
    thinking: _TextParts = field(default_factory=_TextParts)
    tool_fragments: ToolCallAssembler = field(default_factory=ToolCallAssembler)
    usage: UsageChunk | None = None
    finish: str | None = None
    started: float = field(default_factory=time.perf_counter)

    def text(self) -> str:
        return self.content.text()

    def thought(self) -> str | None:
        return self.thinking.text() or None

    def tool_calls(self) -> list[dict[str, Any]]:
        return self.tool_fragments.calls()


@dataclass(slots=True, frozen=True)
class _Plan:
    """What a turn will send, decided before it starts: model, tools, system prompt, token budget."""

    info: ModelInfo
    schemas: list[dict[str, Any]]
    system_prompt: str
    budget: int


# A turn's start (`store.start_turn` with the turn's arguments), given the connection to run on.
_Start: TypeAlias = Callable[[store.Executor], Awaitable[store.StartedTurn | None]]


class _OpenedCall:
    """An LLM call whose request is on its way: the first chunk is awaited in a task of its own, so the
    request overlaps whatever the turn does meanwhile (the first round: its commit and `start`)."""

    __slots__ = ("first", "messages", "offered_tools", "stream", "taken")

    def __init__(
        self,
        messages: list[dict[str, Any]],
        offered_tools: list[dict[str, Any]],
        stream: ChunkStream,
    ) -> None:
        self.messages = messages
        self.offered_tools = offered_tools
        self.stream = stream
        self.first: asyncio.Future[Chunk | None] = asyncio.ensure_future(anext(stream, None))
        self.taken = False  # `_run_rounds` owns it from then on (and closes it)

    async def discard(self) -> None:
        """Close a call nobody will read: cancel the pending first read, then the stream."""
        self.first.cancel()
        await asyncio.wait([self.first])
        if not self.first.cancelled():
            self.first.exception()  # retrieved: a failure of a discarded call is not an error
        await self.stream.aclose()


@dataclass(slots=True)
class _Turn:
    """State of one running turn: ids, the event counter and the turn's running totals."""

    control: TurnControl
    session_id: uuid.UUID
    agent_id: str
    model_id: str
    started: float = field(default_factory=time.perf_counter)
    seq: int = 0
    ttft_ms: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)
    call: _Call | None = None
    pending_tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def turn_id(self) -> uuid.UUID:
        return uuid.UUID(self.control.turn_id)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def add_usage(self, counters: MessageCounters) -> None:
        self.input_tokens += counters.input_tokens
        self.output_tokens += counters.output_tokens
        self.reasoning_tokens += counters.reasoning_tokens
        self.cost += counters.cost


class ChatEngine(SessionManager):
    """Sessions and turns over one database and one gateway.

    Usage:
        engine = ChatEngine(config, db_factory, gateway, tools=tools, context=context, prompts=prompts)
        session = await engine.create_session(owner="alice")
        async for event in engine.stream_turn(session["id"], "Hello", owner="alice"):
            print(event.to_dict())
    """

    def __init__(
        self,
        config: EngineConfig,
        db_factory: async_sessionmaker[AsyncSession],
        gateway: LLMGateway,
        *,
        tools: ToolRegistry,
        context: ContextManager,
        prompts: PromptAssembler,
    ) -> None:
        super().__init__(config, db_factory, gateway)
        self._db_engine: AsyncEngine = db_factory.kw["bind"]  # the factory's engine, for Core connections
        # Same pool, no BEGIN/COMMIT: for writes that are atomic as one statement (PostgreSQL only; on
        # SQLite a message row is two statements and needs its transaction).
        self._autocommit: AsyncEngine | None = (
            self._db_engine.execution_options(isolation_level="AUTOCOMMIT")
            if store.single_statement_appends(self._db_engine)
            else None
        )
        self.tools = tools
        self.context = context
        self.prompts = prompts
        # Renewed every third of its length while a turn runs, so a crashed holder frees it quickly.
        self.lease_seconds = 60.0
        self._background: set[asyncio.Task[None]] = set()  # title generation; bounded by live sessions
        # Starting a turn is a few milliseconds of CPU in several loop passes; a burst of starts all at
        # once would make every running stream wait behind them. Admitted a few at a time, the burst
        # waits instead (config.max_concurrent_turn_starts). Not on SQLite: its single writer already
        # lets one start write at a time, and hands its lock over in the driver's threads; a queue in
        # the event loop in front of it only slowed starts down (32 sessions streaming: 0.80x the relay
        # with it, 1.06x without).
        self._turn_starts: contextlib.AbstractAsyncContextManager[Any] = (
            contextlib.nullcontext()
            if self._db_engine.dialect.name == "sqlite"
            else asyncio.Semaphore(config.max_concurrent_turn_starts)
        )
        self._prompt_token_cache: dict[tuple[str, str], int] = {}  # bounded to 256 entries

    def _one_statement(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A connection for writes of one `store.append_message` or one UPDATE: no transaction where the
        statement is atomic by itself (PostgreSQL), a transaction otherwise."""
        return transaction(self._autocommit or self._db_engine)

    async def aclose(self) -> None:
        """Stop background work (title generation). Running turns belong to their callers."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def delete_session(self, session_id: str | uuid.UUID, *, owner: str | None = None) -> None:
        await super().delete_session(session_id, owner=owner)
        # Its history leaves this process's cache now, not when the least recently used end reaches it:
        # a deleted conversation does not stay in memory, and the cache's room goes to live sessions
        # (in a create/send/delete soak the deleted sessions filled it to its bound, 64 MB). A copy on
        # another replica is never read again: a deleted session has no next turn.
        self.context.history.discard(parse_id(session_id))

    # -- turns -------------------------------------------------------------------------------------

    async def send_message(
        self,
        session_id: str | uuid.UUID,
        content: str,
        *,
        owner: str | None = None,
        enable_thinking: bool = False,
        enable_tools: bool = True,
        idempotency_key: str | None = None,
    ) -> ChatResponse:
        """Run one turn and collect its events: the non-streaming surface of `stream_turn`."""
        control = TurnControl()
        tokens: list[str] = []
        thinking: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        tool_results: list[dict[str, Any]] = []
        done: DoneEvent | None = None
        start: StartEvent | None = None
        async for event in self.stream_turn(
            session_id,
            content,
            owner=owner,
            enable_thinking=enable_thinking,
            enable_tools=enable_tools,
            idempotency_key=idempotency_key,
            control=control,
        ):
            if isinstance(event, TokenEvent):
                tokens.append(event.content)
            elif isinstance(event, ThinkingEvent):
                thinking.append(event.content)
            elif isinstance(event, ToolCallEvent):
                tool_calls.append({"id": event.id, "name": event.name, "arguments": event.arguments})
            elif isinstance(event, ToolResultEvent):
                tool_results.append(
                    {"id": event.id, "name": event.name, "content": event.content, "success": event.success}
                )
            elif isinstance(event, StartEvent):
                start = event
            elif isinstance(event, DoneEvent):
                done = event
        assert done is not None and start is not None  # stream_turn always starts and finishes
        if done.finish_reason == FinishReason.ERROR and control.error is not None and not tokens:
            raise control.error  # nothing useful was produced: surface the provider failure as an error
        return ChatResponse(
            message_id=done.message_id or start.message_id,
            session_id=start.session_id,
            turn_id=done.turn_id,
            content="".join(tokens),
            thinking="".join(thinking) or None,
            tool_calls=tool_calls or None,
            tool_results=tool_results or None,
            model=done.model,
            input_tokens=done.input_tokens,
            output_tokens=done.output_tokens,
            reasoning_tokens=done.reasoning_tokens,
            total_tokens=done.total_tokens,
            cost=Decimal(done.cost),
            latency_ms=done.latency_ms,
            ttft_ms=done.ttft_ms,
            finish_reason=done.finish_reason,
        )

    async def stream_turn(
        self,
        session_id: str | uuid.UUID,
        content: str,
        *,
        owner: str | None = None,
        enable_thinking: bool = False,
        enable_tools: bool = True,
        idempotency_key: str | None = None,
        control: TurnControl | None = None,
    ) -> AsyncIterator[TurnEvent]:
        """THE turn pipeline: one async producer of typed events (see the module docstring)."""
        control = control or TurnControl()
        _check_content(content)
        sid = parse_id(session_id)
        if idempotency_key:
            replay = await self._replay_if_seen(sid, owner, idempotency_key)
            if replay is not None:
                for event in replay:
                    yield event
                return
        async with self._turn_starts:
            session, plan, user_row, first_call = await self._begin_turn(
                sid, owner, content, idempotency_key, control, enable_tools, enable_thinking
            )
        info = plan.info
        turn = _Turn(control=control, session_id=sid, agent_id=session.agent_id, model_id=info.id)
        heartbeat = asyncio.create_task(self._renew_lease_forever(turn))
        try:
            yield StartEvent(control.turn_id, turn.next_seq(), str(user_row.id), str(sid), info.id)
            async for event in self._run_rounds(turn, session, plan, enable_thinking, first_call):
                yield event
            if session.title is None and self.config.title_model:
                self._spawn(self._generate_title(sid, clean_title(content), content))
        except BaseException as exc:  # cancellation, consumer gone, or a failure mid-turn
            if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                control.final_event = await shielded(self._finish(turn, control.reason))
                raise
            error_event, done = await shielded(self._fail(turn, exc))
            yield error_event
            yield done
        finally:
            heartbeat.cancel()
            if not first_call.taken:  # the turn ended before its first round began
                await shielded(first_call.discard())

    async def _begin_turn(
        self,
        sid: uuid.UUID,
        owner: str | None,
        content: str,
        idempotency_key: str | None,
        control: TurnControl,
        enable_tools: bool,
        enable_thinking: bool,
    ) -> tuple[TurnSession, _Plan, ChatMessage, _OpenedCall]:
        """The lease and the user row, then the checks that can refuse the turn, in one transaction.

        On PostgreSQL the writes are one statement, so the turn's first round trips are BEGIN and that
        statement; the history follows when the cache lacks it. The first LLM request is then opened,
        and the commit (on PostgreSQL the WAL flush, the slowest step of the start) overlaps it. A
        refusal rolls the transaction back; if the commit fails, the request is closed before any event
        went out. Crashed-turn takeovers go through `_start_refused`.
        """
        turn_id = uuid.UUID(control.turn_id)
        title = clean_title(content)

        async def start(db: store.Executor) -> store.StartedTurn | None:
            return await store.start_turn(
                db,
                sid,
                owner,
                turn_id,
                self.lease_seconds,
                content=content,
                idempotency_key=idempotency_key,
                title=title,
            )

        async with transaction(self._db_engine) as db:
            started = await start(db) or await self._start_refused(db, sid, owner, start)
            session, user_row = started.session, started.user_row
            plan = self._plan(session, content, enable_tools)
            # The lease is held, so no other writer: a history that cannot fit fails here, before
            # anything of the turn is emitted.
            user = MessageView(user_row.seq, "user", content)
            first_messages = await self._context(db, session, plan, user)
            first_call = self._open_call(session, plan, 0, first_messages, enable_thinking)
            try:
                await db.commit()
            except BaseException:
                await shielded(first_call.discard())
                raise
        self._remember(session.id, user_row)
        return session, plan, user_row, first_call

    async def _start_refused(
        self, db: AsyncConnection, sid: uuid.UUID, owner: str | None, start: _Start
    ) -> store.StartedTurn:
        """Why `start_turn` refused: raise the matching error, or take over a crashed turn's lease."""
        # The slow path reads ORM objects: a session on the turn's connection joins its transaction
        # (closing the session does not end it).
        async with AsyncSession(bind=db) as orm:
            session = await load_session(orm, sid, owner)
            if session.status != "active":
                raise SessionEnded()
            stale, lease_until = session.active_turn_id, store.as_utc(session.turn_lease_until)
            now = utcnow()
            # The holder's lease ran out without finishing its turn (a crashed replica): close that turn
            # as interrupted and start this one, unless another request got there first.
            expired = stale is not None and lease_until is not None and lease_until < now
            if expired and stale and await store.clear_stale_lease(orm, sid, stale, expired_before=now):
                await self._mark_interrupted(orm, sid, stale)
                started = await start(orm)
                if started is not None:
                    return started
        raise SessionBusy()

    def _plan(self, session: TurnSession, content: str, enable_tools: bool) -> _Plan:
        """Resolve the model and budget; refuse a message that cannot fit before anything starts."""
        info = self.gateway.resolve(session.model)
        use_tools = enable_tools and info.supports_tools and self.config.max_tool_rounds > 0
        schemas = self.tools.schemas(session.agent_id) if use_tools else []
        schema_tokens = self._prompt_tokens(info.id, orjson.dumps(schemas).decode()) if schemas else 0
        max_output = session.max_tokens or info.max_output_tokens
        budget = self.context.budget_for(
            context_window_tokens=info.context_window,
            max_output_tokens=max_output,
            tool_schema_tokens=schema_tokens,
        )
        system_prompt = self.prompts.build(
            agent_id=session.agent_id, override=session.system_prompt, tool_schemas=schemas
        )
        needed = self._prompt_tokens(info.id, system_prompt) + self.gateway.count_tokens(info.id, content)
        if needed > budget:
            raise PayloadTooLarge(
                f"The message does not fit the model's context window ({needed} of {budget} tokens)."
            )
        return _Plan(info, schemas, system_prompt, budget)

    def _prompt_tokens(self, model_id: str, prompt: str) -> int:
        """Token count of a system prompt or tool schemas: the same text comes back turn after turn."""
        key = (model_id, prompt)
        count = self._prompt_token_cache.get(key)
        if count is None:
            if len(self._prompt_token_cache) >= 256:
                self._prompt_token_cache.pop(next(iter(self._prompt_token_cache)))
            count = self._prompt_token_cache[key] = self.gateway.count_tokens(model_id, prompt)
        return count

    async def _context(
        self, db: Executor, session: TurnSession, plan: _Plan, new_user_message: MessageView | None = None
    ) -> list[dict[str, Any]]:
        return await self.context.build(
            db,
            session_id=session.id,
            model_id=plan.info.id,
            context_window=session.context_window,
            budget_tokens=plan.budget,
            system_prompt=plan.system_prompt,
            new_user_message=new_user_message,
        )

    async def _run_rounds(
        self,
        turn: _Turn,
        session: TurnSession,
        plan: _Plan,
        enable_thinking: bool,
        first_call: _OpenedCall,
    ) -> AsyncIterator[TurnEvent]:
        for round_no in range(self.config.max_tool_rounds + 1):
            if round_no == 0:
                call = first_call  # opened while the user row committed
            else:
                async with transaction(self._db_engine) as db:
                    messages = await self._context(db, session, plan)
                call = self._open_call(session, plan, round_no, messages, enable_thinking)
            streamed = turn.call = _Call(model_id=plan.info.id, messages=call.messages)
            # The call's events are yielded right here, not through a generator of their own: a
            # waiting turn is suspended in one layer fewer (see `ChunkStream`).
            call.taken = True
            async with contextlib.aclosing(call.stream):  # closing it closes the upstream request at once
                # Cancelled while waiting here, this task resumes only once the first read's task has
                # ended (asyncio cancels the awaited task and waits for it), so closing is safe.
                chunk = await call.first
                while chunk is not None:
                    event = self._on_chunk(turn, streamed, chunk)
                    if event is not None:
                        yield event
                    try:
                        chunk = await call.stream.__anext__()
                    except StopAsyncIteration:
                        chunk = None
            calls = streamed.tool_calls()
            if not calls or not call.offered_tools:
                yield self._usage_event(turn, self._call_counters(streamed))
                yield await self._finish(turn, _finish_reason(streamed.finish))
                return
            async for event in self._run_tools(turn, streamed, calls):
                yield event
            if turn.output_tokens + turn.input_tokens > self.config.max_turn_tokens or (
                turn.cost > self.config.max_turn_cost_usd
            ):
                yield ErrorEvent(
                    turn.control.turn_id,
                    turn.next_seq(),
                    "turn_limit",
                    "The turn reached its token or cost limit and was stopped.",
                )
                yield await self._finish(turn, FinishReason.LENGTH)
                return

    def _open_call(
        self,
        session: TurnSession,
        plan: _Plan,
        round_no: int,
        messages: list[dict[str, Any]],
        enable_thinking: bool,
    ) -> _OpenedCall:
        """Start one LLM call: the request goes out now, its chunks are read by `_run_rounds`."""
        # The last allowed round offers no tools, so the model has to answer in text.
        offered = plan.schemas if round_no < self.config.max_tool_rounds else []
        stream = self.gateway.stream(
            plan.info.id,
            messages,
            tools=offered or None,
            temperature=session.temperature,
            max_tokens=session.max_tokens,
            enable_thinking=enable_thinking,
        )
        return _OpenedCall(messages, offered, stream)

    def _on_chunk(self, turn: _Turn, call: _Call, chunk: Chunk) -> TurnEvent | None:
        if isinstance(chunk, ContentDelta):
            self._mark_first_output(turn)
            call.content.append(chunk.text)
            return TokenEvent(turn.control.turn_id, turn.next_seq(), chunk.text)
        if isinstance(chunk, ThinkingDelta):
            self._mark_first_output(turn)
            call.thinking.append(chunk.text)
            return ThinkingEvent(turn.control.turn_id, turn.next_seq(), chunk.text)
        if isinstance(chunk, ToolCallDelta):
            self._mark_first_output(turn)
            call.tool_fragments.add(chunk)
        elif isinstance(chunk, UsageChunk):
            call.usage = chunk
        elif isinstance(chunk, FinishChunk):
            call.finish = chunk.reason
        elif isinstance(chunk, ModelSelected):
            call.model_id = chunk.model_id
        return None

    def _mark_first_output(self, turn: _Turn) -> None:
        if turn.ttft_ms is None:
            turn.ttft_ms = turn.elapsed_ms()

    async def _run_tools(
        self, turn: _Turn, call: _Call, calls: list[dict[str, Any]]
    ) -> AsyncIterator[TurnEvent]:
        turn_id = turn.control.turn_id
        counters = self._call_counters(call)
        async with self._one_statement() as db:
            row = await store.append_message(
                db,
                turn.session_id,
                role="assistant",
                content=call.text(),
                turn_id=turn.turn_id,
                counters=counters,
                thinking=call.thought(),
                tool_calls=calls,
                model=call.model_id,
                latency_ms=int((time.perf_counter() - call.started) * 1000),
                finish_reason=FinishReason.TOOL_CALLS.value,
                metadata_=self._usage_metadata(call),
            )
        self._remember(turn.session_id, row)
        turn.add_usage(counters)
        turn.call = None
        turn.pending_tool_calls = list(calls)
        yield self._usage_event(turn, None)
        for tool_call in calls:
            function = tool_call["function"]
            yield ToolCallEvent(
                turn_id, turn.next_seq(), tool_call["id"], function["name"], function["arguments"]
            )
        while turn.pending_tool_calls:
            tool_call = turn.pending_tool_calls[0]
            name = tool_call["function"]["name"]
            result = await self.tools.execute(
                name, tool_call["function"]["arguments"], agent_id=turn.agent_id
            )
            async with self._one_statement() as db:
                row = await store.append_message(
                    db,
                    turn.session_id,
                    role="tool",
                    content=result.content,
                    turn_id=turn.turn_id,
                    tool_call_id=tool_call["id"],
                    tool_name=name,
                    metadata_=None if result.success else {"success": False},
                )
            self._remember(turn.session_id, row)
            turn.pending_tool_calls.pop(0)
            yield ToolResultEvent(
                turn_id, turn.next_seq(), tool_call["id"], name, result.content, result.success
            )

    def _usage_event(self, turn: _Turn, pending: MessageCounters | None) -> UsageEvent:
        input_tokens = turn.input_tokens + (pending.input_tokens if pending else 0)
        output_tokens = turn.output_tokens + (pending.output_tokens if pending else 0)
        cost = turn.cost + (pending.cost if pending else Decimal(0))
        return UsageEvent(
            turn.control.turn_id, turn.next_seq(), input_tokens, output_tokens, format_money(cost)
        )

    def _call_counters(self, call: _Call) -> MessageCounters:
        """Exact usage when the provider reported it; otherwise an offline count of what was sent and got.

        A call that failed or was cancelled before any output is counted as zero: nothing was generated.
        """
        if call.usage is None and not call.content and not call.thinking and not call.tool_fragments:
            return MessageCounters()
        usage = call.usage or UsageChunk(
            input_tokens=self.gateway.count_messages(call.model_id, call.messages),
            output_tokens=self.gateway.count_tokens(call.model_id, call.text() + (call.thought() or "")),
        )
        return MessageCounters(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost=self.gateway.cost(call.model_id, usage),
        )

    @staticmethod
    def _usage_metadata(call: _Call) -> dict[str, Any] | None:
        if call.usage is None:
            return {"usage_estimated": True}
        if call.usage.cached_input_tokens:
            return {"cached_input_tokens": call.usage.cached_input_tokens}
        return None

    async def _finish(self, turn: _Turn, reason: FinishReason | str) -> DoneEvent:
        """Write the turn's final assistant row, release the lease, and build the closing event."""
        call = turn.call
        counters = self._call_counters(call) if call else MessageCounters()
        written: list[ChatMessage] = []
        # Tool calls left unanswered add rows of their own: then all of them in one transaction.
        async with transaction(self._db_engine) if turn.pending_tool_calls else self._one_statement() as db:
            for tool_call in turn.pending_tool_calls:
                # Tools that never ran still get a result row, so the history stays well-formed.
                cancelled = await store.append_message(
                    db,
                    turn.session_id,
                    role="tool",
                    content="The tool call was cancelled.",
                    turn_id=turn.turn_id,
                    tool_call_id=tool_call["id"],
                    tool_name=tool_call["function"]["name"],
                    metadata_={"success": False},
                )
                written.append(cancelled)
            row = await store.append_message(
                db,
                turn.session_id,
                role="assistant",
                content=call.text() if call else "",
                turn_id=turn.turn_id,
                counters=counters,
                thinking=call.thought() if call else None,
                model=call.model_id if call else turn.model_id,
                latency_ms=turn.elapsed_ms(),
                ttft_ms=turn.ttft_ms,
                finish_reason=str(reason),
                metadata_=self._usage_metadata(call) if call else None,
                ends_turn=turn.turn_id,
            )
        self._remember(turn.session_id, *written, row)
        turn.add_usage(counters)
        turn.call = None
        turn.pending_tool_calls = []
        self._log_finished(turn, row, str(reason))
        return DoneEvent(
            turn.control.turn_id,
            turn.next_seq(),
            str(row.id),
            str(reason),
            model=row.model or turn.model_id,
            input_tokens=turn.input_tokens,
            output_tokens=turn.output_tokens,
            reasoning_tokens=turn.reasoning_tokens,
            total_tokens=turn.input_tokens + turn.output_tokens,
            cost=format_money(turn.cost),
            latency_ms=row.latency_ms or 0,
            ttft_ms=turn.ttft_ms,
        )

    def _remember(self, session_id: uuid.UUID, *rows: ChatMessage) -> None:
        """Rows this turn wrote, once committed: the history cache follows the session (see
        history_cache.py), so its next turn here starts without reading the history."""
        self.context.history.extend(session_id, [MessageView.from_message(row) for row in rows])

    def _log_finished(self, turn: _Turn, row: ChatMessage, reason: str) -> None:
        fields: dict[str, Any] = {
            "turn_id": turn.control.turn_id,
            "session_id": str(turn.session_id),
            "model": row.model,
            "finish_reason": reason,
            "input_tokens": turn.input_tokens,
            "output_tokens": turn.output_tokens,
            "cost": format_money(turn.cost),
            "latency_ms": row.latency_ms,
            "ttft_ms": turn.ttft_ms,
        }
        if self.config.log_bodies:  # off by default: message text stays out of the logs
            fields["content"] = row.content
        logger.info("turn finished", extra=fields)

    async def _fail(self, turn: _Turn, exc: BaseException) -> tuple[ErrorEvent, DoneEvent]:
        if isinstance(exc, EngineError):
            code, message = exc.code, exc.message
            logger.warning("turn failed", extra={"turn_id": turn.control.turn_id, "code": code})
        else:
            code, message = "internal_error", "The engine failed while running this turn."
            # exc_info given: this runs in a task of its own (shielded), outside the `except` block.
            logger.error("turn crashed", exc_info=exc, extra={"turn_id": turn.control.turn_id})
        if isinstance(exc, LLMError | EngineError):
            turn.control.error = exc
        error_event = ErrorEvent(turn.control.turn_id, turn.next_seq(), code, message)
        return error_event, await self._finish(turn, FinishReason.ERROR)

    async def _renew_lease_forever(self, turn: _Turn) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                async with self._one_statement() as db:
                    await store.renew_turn_lease(db, turn.session_id, turn.turn_id, self.lease_seconds)
            except Exception:  # a missed renewal is retried next time; the turn itself goes on
                logger.warning("turn lease renewal failed", exc_info=True)

    # -- titles ------------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _generate_title(self, sid: uuid.UUID, auto_title: str, content: str) -> None:
        """Ask the configured title model for a short title, after the turn (it never blocks one).

        The title call's usage is kept in the session metadata (`title_usage`), not in the message
        totals, since it belongs to no message.
        """
        assert self.config.title_model is not None
        prompt = [
            {"role": "system", "content": _TITLE_INSTRUCTION},
            {"role": "user", "content": content[:2000]},
        ]
        try:
            completion = await self.gateway.complete(self.config.title_model, prompt, max_tokens=24)
        except EngineError as exc:
            logger.warning("title generation failed", extra={"code": exc.code})
            return
        title = clean_title(completion.content.strip().strip("\"'"))
        if not title:
            return
        usage = {
            "model": completion.model_id,
            "input_tokens": completion.usage.input_tokens,
            "output_tokens": completion.usage.output_tokens,
            "cost": format_money(completion.cost),
        }
        async with self._db_factory.begin() as db:
            row = await db.get(ChatSession, sid)
            if row is None or row.title != auto_title:
                return  # deleted, or renamed by the user meanwhile: their title wins
            row.title = title
            row.metadata_ = {**(row.metadata_ or {}), "title_usage": usage}

    # -- idempotency and recovery ------------------------------------------------------------------

    async def _replay_if_seen(
        self, sid: uuid.UUID, owner: str | None, idempotency_key: str
    ) -> list[TurnEvent] | None:
        """A repeated idempotency key gets the original turn's result (waiting if it still runs)."""
        deadline = time.monotonic() + self.config.timeouts.total
        while True:
            async with self._db_factory() as db:
                await load_session(db, sid, owner)
                user_row = (
                    await db.execute(
                        select(ChatMessage).where(
                            ChatMessage.session_id == sid, ChatMessage.idempotency_key == idempotency_key
                        )
                    )
                ).scalar_one_or_none()
                if user_row is None:
                    return None
                turn_rows = list(
                    (
                        await db.execute(
                            select(ChatMessage)
                            .where(ChatMessage.session_id == sid, ChatMessage.turn_id == user_row.turn_id)
                            .order_by(ChatMessage.seq)
                        )
                    ).scalars()
                )
            final = turn_rows[-1]
            if final.role == "assistant" and final.finish_reason in _TERMINAL_REASONS:
                return _replay_events(sid, user_row, turn_rows)
            if time.monotonic() > deadline:
                raise SessionBusy()
            await asyncio.sleep(0.2)

    async def _mark_interrupted(self, db: AsyncSession, sid: uuid.UUID, turn_id: uuid.UUID) -> bool:
        last = (
            await db.execute(
                select(ChatMessage)
                .where(ChatMessage.session_id == sid)
                .order_by(ChatMessage.seq.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if last is None or last.turn_id != turn_id:
            return False
        if last.role == "assistant" and last.finish_reason in _TERMINAL_REASONS:
            return False
        if last.role == "assistant" and last.tool_calls:
            for tool_call in last.tool_calls:
                await store.append_message(
                    db,
                    sid,
                    role="tool",
                    content="The tool call was interrupted.",
                    turn_id=turn_id,
                    tool_call_id=tool_call.get("id"),
                    tool_name=(tool_call.get("function") or {}).get("name"),
                    metadata_={"success": False},
                )
        await store.append_message(
            db, sid, role="assistant", turn_id=turn_id, finish_reason=FinishReason.INTERRUPTED.value
        )
        return True

    async def recover_interrupted(self, *, all_leases: bool | None = None) -> int:
        """Close turns left unfinished by a crash: mark them `interrupted` and free their sessions.

        With SQLite only one process serves the file, so every lease found at start-up is stale. With
        PostgreSQL other replicas may be mid-turn, so only expired leases are taken over.
        """
        take_all = self.config.is_sqlite if all_leases is None else all_leases
        query = select(ChatSession.id, ChatSession.active_turn_id).where(
            ChatSession.active_turn_id.is_not(None)
        )
        if not take_all:
            query = query.where(ChatSession.turn_lease_until < utcnow())
        async with self._db_factory() as db:
            stale = list((await db.execute(query)).all())
        recovered = 0
        for sid, turn_id in stale:
            async with self._db_factory.begin() as db:
                claimed = await store.clear_stale_lease(db, sid, turn_id, expired_before=None)
                if claimed and await self._mark_interrupted(db, sid, turn_id):
                    recovered += 1
        if recovered:
            logger.info("recovered interrupted turns", extra={"count": recovered})
        return recovered


def _replay_events(sid: uuid.UUID, user_row: ChatMessage, rows: list[ChatMessage]) -> list[TurnEvent]:
    turn_id = str(user_row.turn_id)
    events: list[TurnEvent] = []
    seq = 0

    def next_seq() -> int:
        nonlocal seq
        seq += 1
        return seq

    final = rows[-1]
    events.append(StartEvent(turn_id, next_seq(), str(user_row.id), str(sid), final.model or ""))
    totals = [0, 0, 0, Decimal(0)]
    for row in rows[1:]:
        totals[0] += row.input_tokens
        totals[1] += row.output_tokens
        totals[2] += row.reasoning_tokens
        totals[3] += row.cost
        if row.role == "assistant":
            if row.thinking:
                events.append(ThinkingEvent(turn_id, next_seq(), row.thinking))
            if row.content:
                events.append(TokenEvent(turn_id, next_seq(), row.content))
            for call in row.tool_calls or []:
                function = call.get("function") or {}
                events.append(
                    ToolCallEvent(
                        turn_id,
                        next_seq(),
                        call.get("id", ""),
                        function.get("name", ""),
                        function.get("arguments", ""),
                    )
                )
        elif row.role == "tool":
            success = (row.metadata_ or {}).get("success") is not False
            events.append(
                ToolResultEvent(
                    turn_id, next_seq(), row.tool_call_id or "", row.tool_name or "", row.content, success
                )
            )
    events.append(UsageEvent(turn_id, next_seq(), totals[0], totals[1], format_money(totals[3])))
    events.append(
        DoneEvent(
            turn_id,
            next_seq(),
            str(final.id),
            final.finish_reason or FinishReason.STOP.value,
            model=final.model or "",
            input_tokens=totals[0],
            output_tokens=totals[1],
            reasoning_tokens=totals[2],
            total_tokens=totals[0] + totals[1],
            cost=format_money(totals[3]),
            latency_ms=final.latency_ms or 0,
            ttft_ms=final.ttft_ms,
        )
    )
    return events


def _finish_reason(provider_reason: str | None) -> FinishReason:
    if provider_reason == "length":
        return FinishReason.LENGTH
    if provider_reason == "error":
        return FinishReason.ERROR
    return FinishReason.STOP


def _check_content(content: str) -> None:
    if not isinstance(content, str) or not content.strip():
        raise ValidationError("Message content must not be empty.")
    if len(content) > MAX_MESSAGE_CHARS:
        raise PayloadTooLarge(f"Message content is longer than {MAX_MESSAGE_CHARS} characters.")
