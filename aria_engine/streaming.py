"""StreamManager: the WebSocket chat protocol (SPEC 9.1) over the engine's one turn producer.

    client -> server   message {content, enable_thinking, enable_tools, idempotency_key?}
                       cancel {turn_id?} | resume {turn_id, after_seq} | ping
    server -> client   start | thinking | token | tool_call | tool_result | usage | error | done
                       (each with turn_id and a per-turn seq 1, 2, 3, ...), pong

How it fits together:
- A turn runs as a task owned by the manager, not by the socket that started it. The task iterates
  `ChatEngine.stream_turn` and appends every event, serialised once with orjson, to the `TurnEventLog`.
- A socket forwards a turn by following the log, from seq 0 for its own turn or from `after_seq` for a
  `resume`, so a reconnecting client (on any replica, with Redis) gets each missing event exactly once and
  then the live rest.
- The socket's reader keeps reading while a turn streams, so `cancel` and `ping` work mid-turn.
- Every `start` is closed by exactly one `done`: when a turn task is cancelled, the engine leaves the
  closing `DoneEvent` in `TurnControl.final_event` and the task appends it.
- A disconnect cancels the socket's running turn with reason `disconnected` when no socket resumes it
  within `config.disconnect_grace_seconds` (0: at once); `config.keep_turn_on_disconnect` keeps it
  running regardless, for a later `resume` (also from another replica).
- Frames larger than `config.ws_max_frame_bytes` close the socket with 1009; bad JSON or an unknown type
  gets an `error` event and the socket stays open.

Keepalive pings are protocol-level frames sent by the ASGI server (uvicorn `ws_ping_interval`, set from
`config.ws_ping_interval`); ASGI gives applications no way to send ping frames themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from starlette.status import WS_1009_MESSAGE_TOO_BIG
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from aria_engine.db.engine import is_transient_database_error
from aria_engine.events import DoneEvent, ErrorEvent, FinishReason, TurnControl, TurnEvent
from aria_engine.exceptions import (
    DatabaseUnavailable,
    EngineError,
    EngineUnavailable,
    SessionBusy,
)
from aria_engine.turn_log import TurnEventLog, TurnNotFound

if TYPE_CHECKING:
    from aria_engine.auth import RateLimiter
    from aria_engine.chat_engine import ChatEngine
    from aria_engine.config import EngineConfig

__all__ = ["MAX_CONTENT_CHARS", "StreamManager", "TurnObserver"]

logger = logging.getLogger("aria.streaming")

MAX_CONTENT_CHARS = 100_000  # the seed's SendMessageRequest.content limit, the same on both surfaces


class TurnObserver(Protocol):
    """Told about finished turns and their errors (the API's metrics implement this)."""

    def turn_done(self, event: DoneEvent) -> None: ...

    def turn_error(self, event: ErrorEvent) -> None: ...


@dataclass(slots=True)
class _RunningTurn:
    turn_id: str
    session_id: str
    owner: str
    control: TurnControl
    task: asyncio.Task[None]


@dataclass(slots=True)
class _TurnRun:
    """Bookkeeping of one turn task: the last seq appended and whether `done` went out."""

    last_seq: int = 0
    done: bool = False
    turn_id: str = ""
    started: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    on_start: Callable[[str], None] | None = None


def _encode(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


def _error_frame(code: str, message: str, turn_id: str | None = None, **extra: Any) -> str:
    return _encode({"type": "error", "turn_id": turn_id, "code": code, "message": message, **extra})


class StreamManager:
    """Runs turns for WebSocket clients and serves the protocol on each socket.

    Usage (the API's lifespan builds one per process):
        manager = StreamManager(engine, config, MemoryTurnEventLog(ttl=config.turn_event_ttl))
        await manager.handle_connection(websocket, session_id, owner)   # after auth + owner check
        await manager.aclose()                                          # on shutdown
    """

    def __init__(
        self,
        engine: ChatEngine,
        config: EngineConfig,
        event_log: TurnEventLog,
        *,
        limiter: RateLimiter | None = None,
        observer: TurnObserver | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.event_log = event_log
        self.limiter = limiter
        self.observer = observer
        self._turns: dict[str, _RunningTurn] = {}
        self._followers: dict[str, int] = {}  # turn_id -> sockets following it; entries leave at zero
        self._connections = 0
        self._closing = False

    @property
    def active_streams(self) -> int:
        """Open WebSocket connections."""
        return self._connections

    @property
    def active_turns(self) -> int:
        return len(self._turns)

    def is_running(self, turn_id: str) -> bool:
        """Whether the turn runs in this process."""
        return turn_id in self._turns

    async def handle_connection(self, websocket: WebSocket, session_id: str, owner: str) -> None:
        """Serve one socket until it closes. The caller has authenticated it and checked ownership."""
        if websocket.application_state == WebSocketState.CONNECTING:
            await websocket.accept()
        self._connections += 1
        try:
            await _Connection(self, websocket, session_id, owner).run()
        finally:
            self._connections -= 1

    async def start_turn(
        self,
        session_id: str,
        owner: str,
        content: str,
        *,
        enable_thinking: bool = False,
        enable_tools: bool = True,
        idempotency_key: str | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> str:
        """Start a turn task; returns its turn_id once `start` is logged.

        Errors raised before the turn starts (busy, ended, unknown model, ...) are raised here.
        `on_start(turn_id)` is called in the turn task as soon as `start` is logged, before the turn
        reads on: a socket that starts its forwarder there sends `start` and the first token without
        waiting for this call to return (which takes a few loop passes).
        """
        if self._closing:
            raise EngineUnavailable("The server is shutting down.")
        control = TurnControl()
        run = _TurnRun(on_start=on_start)
        events = self.engine.stream_turn(
            session_id,
            content,
            owner=owner,
            enable_thinking=enable_thinking,
            enable_tools=enable_tools,
            idempotency_key=idempotency_key,
            control=control,
        )
        task = asyncio.create_task(self._run_turn(events, session_id, owner, control, run), name="aria-turn")
        try:
            return await asyncio.shield(run.started)
        except asyncio.CancelledError:
            # The requesting socket went away before `start`: the turn must not run unowned.
            control.reason = FinishReason.DISCONNECTED
            task.cancel()
            raise

    def cancel(self, turn_id: str, reason: str = FinishReason.CANCELLED) -> bool:
        """Cancel a turn running in this process. True if it was running here."""
        turn = self._turns.get(turn_id)
        if turn is None or turn.task.done():
            return False
        turn.control.reason = FinishReason(reason)
        turn.task.cancel()
        return True

    def cancel_if_abandoned(self, turn_id: str, grace: float) -> None:
        """After a disconnect: cancel the turn (`disconnected`) unless a socket follows it within `grace`.

        The grace period lets a reload or a network blip `resume` the answer, while a closed tab stops
        spending tokens a few seconds later.
        """
        if grace <= 0:
            self.cancel(turn_id, FinishReason.DISCONNECTED)
            return
        asyncio.get_running_loop().call_later(grace, self._cancel_unfollowed, turn_id)

    def _cancel_unfollowed(self, turn_id: str) -> None:
        if not self._followers.get(turn_id):
            self.cancel(turn_id, FinishReason.DISCONNECTED)

    def following(self, turn_id: str) -> contextlib.AbstractContextManager[None]:
        """Count a socket as following `turn_id` while the block runs (see `cancel_if_abandoned`)."""
        return _Following(self._followers, turn_id)

    async def request_cancel(self, turn_id: str, reason: str = FinishReason.CANCELLED) -> None:
        """Cancel a turn wherever it runs (another replica gets the signal through the event log)."""
        if not self.cancel(turn_id, reason):
            await self.event_log.request_cancel(turn_id, str(reason))

    async def aclose(self) -> None:
        """Stop accepting turns and cancel the running ones; their partials are persisted `interrupted`."""
        self._closing = True
        running = list(self._turns.values())
        for turn in running:
            turn.control.reason = FinishReason.INTERRUPTED
            turn.task.cancel()
        if running:
            await asyncio.gather(*(turn.task for turn in running), return_exceptions=True)

    # -- the turn task -----------------------------------------------------------------------------

    async def _run_turn(
        self,
        events: AsyncIterator[TurnEvent],
        session_id: str,
        owner: str,
        control: TurnControl,
        run: _TurnRun,
    ) -> None:
        unregister = None
        try:
            try:
                first = await anext(events)
            except BaseException as exc:
                if not run.started.done():
                    run.started.set_exception(
                        exc if isinstance(exc, EngineError | asyncio.CancelledError) else _start_error(exc)
                    )
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            run.turn_id = first.turn_id
            await self.event_log.open_turn(run.turn_id, session_id)
            self._turns[run.turn_id] = _RunningTurn(
                run.turn_id,
                session_id,
                owner,
                control,
                asyncio.current_task(),  # type: ignore[arg-type]
            )
            unregister = self.event_log.on_cancel(
                run.turn_id, lambda reason: self.cancel(run.turn_id, reason)
            )
            await self._append(run, first, owner)
            run.started.set_result(run.turn_id)
            if run.on_start is not None:
                run.on_start(run.turn_id)
            # One loop pass after `start` and one after the event that follows it, for the sockets to
            # send them: a provider's first chunks often arrive together, and the first token would
            # otherwise go out only once the whole burst is logged. Later events go out in batches,
            # which costs less per token.
            await asyncio.sleep(0)
            first_output = True
            async for event in events:
                await self._append(run, event, owner)
                if first_output:
                    first_output = False
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            # Close the turn first, so the engine persists the partial and leaves its own `done` (with
            # the message id and usage) in `control` even when the cancel landed out here, in an append.
            with contextlib.suppress(BaseException):
                await asyncio.shield(events.aclose())  # type: ignore[attr-defined]
            await self._close_cancelled(run, control, owner)
        except Exception:
            logger.exception("turn %s failed after start", run.turn_id)
            await self._close_failed(run, owner)
        finally:
            if run.turn_id and not run.done:
                await self._close_failed(run, owner)
            if unregister is not None:
                unregister()
            self._turns.pop(run.turn_id, None)
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]

    async def _append(self, run: _TurnRun, event: TurnEvent, owner: str) -> None:
        if run.done:
            raise RuntimeError(f"turn {run.turn_id} emitted {event.type} after done")
        final = isinstance(event, DoneEvent)
        await self.event_log.append(run.turn_id, event.seq, _encode(event.to_dict()), final=final)
        run.last_seq = event.seq
        if isinstance(event, ErrorEvent) and self.observer is not None:
            self.observer.turn_error(event)
        if isinstance(event, DoneEvent):
            run.done = True
            if self.observer is not None:
                self.observer.turn_done(event)
            if self.limiter is not None:
                with contextlib.suppress(Exception):
                    await self.limiter.add_tokens(owner, event.total_tokens)

    async def _close_cancelled(self, run: _TurnRun, control: TurnControl, owner: str) -> None:
        if not run.turn_id or run.done:
            return
        final = control.final_event
        if final is None or final.seq <= run.last_seq:
            final = DoneEvent(run.turn_id, run.last_seq + 1, message_id=None, finish_reason=control.reason)
        # Shielded: the task is being cancelled, but its one `done` must still be logged.
        await asyncio.shield(self._append(run, final, owner))

    async def _close_failed(self, run: _TurnRun, owner: str) -> None:
        if run.done:
            return
        error = ErrorEvent(run.turn_id, run.last_seq + 1, code="internal_error", message="The turn failed.")
        await self._append(run, error, owner)
        await self._append(
            run,
            DoneEvent(run.turn_id, run.last_seq + 1, message_id=None, finish_reason=FinishReason.ERROR),
            owner,
        )


def _start_error(exc: BaseException) -> EngineError:
    """What a client is told when its turn failed before `start` with an exception that is no EngineError."""
    if is_transient_database_error(exc):  # overload or outage: the client should retry, not report a bug
        logger.warning("turn refused before start: database unavailable (%s)", type(exc).__name__)
        return DatabaseUnavailable()
    logger.error("turn failed before start", exc_info=exc)
    error = EngineError("The turn could not be started.")
    error.code = "internal_error"
    return error


class _Following:
    """Counts one follower of a turn for the duration of a `with` block; the dict stays bounded."""

    __slots__ = ("_counts", "_turn_id")

    def __init__(self, counts: dict[str, int], turn_id: str) -> None:
        self._counts = counts
        self._turn_id = turn_id

    def __enter__(self) -> None:
        self._counts[self._turn_id] = self._counts.get(self._turn_id, 0) + 1

    def __exit__(self, *exc_info: object) -> None:
        remaining = self._counts[self._turn_id] - 1
        if remaining:
            self._counts[self._turn_id] = remaining
        else:
            del self._counts[self._turn_id]


class _Connection:
    """One socket: a reader loop plus one forwarder task per turn it is following."""

    def __init__(self, manager: StreamManager, websocket: WebSocket, session_id: str, owner: str) -> None:
        self.manager = manager
        self.ws = websocket
        self.session_id = session_id
        self.owner = owner
        self.config = manager.config
        self._send_lock = asyncio.Lock()
        self._forwarders: dict[str, asyncio.Task[None]] = {}
        self._own_turns: list[str] = []  # turns started here, newest last (bounded: pruned when done)
        self._open = True

    async def run(self) -> None:
        try:
            await self._read_loop()
        finally:
            self._open = False
            for task in self._forwarders.values():
                task.cancel()
            await asyncio.gather(*self._forwarders.values(), return_exceptions=True)
            if not self.config.keep_turn_on_disconnect:
                for turn_id in self._own_turns:
                    self.manager.cancel_if_abandoned(turn_id, self.config.disconnect_grace_seconds)

    async def _read_loop(self) -> None:
        handlers = {
            "message": self._on_message,
            "cancel": self._on_cancel,
            "resume": self._on_resume,
            "ping": self._on_ping,
        }
        limit = self.config.ws_max_frame_bytes
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            raw = message.get("bytes")
            size = (
                len(text.encode()) if text is not None and len(text) * 4 > limit else len(text or raw or b"")
            )
            if size > limit:
                with contextlib.suppress(Exception):
                    await self.ws.close(code=WS_1009_MESSAGE_TOO_BIG, reason="frame too large")
                return
            try:
                payload = orjson.loads(text if text is not None else raw or b"")
            except orjson.JSONDecodeError:
                await self._send(_error_frame("invalid_json", "The frame is not valid JSON."))
                continue
            kind = payload.get("type") if isinstance(payload, dict) else None
            handler = handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                await self._send(
                    _error_frame("unknown_type", "Unknown message type; use message, cancel, resume or ping.")
                )
                continue
            await handler(payload)

    async def _send(self, text: str) -> bool:
        return await self._send_all((text,))

    async def _send_all(self, texts: Iterable[str]) -> bool:
        """Send frames in order, none interleaved with another sender's (one lock for the lot)."""
        if not self._open:
            return False
        async with self._send_lock:
            try:
                for text in texts:
                    await self.ws.send_text(text)
            except Exception:  # the peer is gone; the reader loop sees the disconnect
                self._open = False
                return False
        return True

    # -- client messages ---------------------------------------------------------------------------

    async def _on_ping(self, payload: dict[str, Any]) -> None:
        await self._send(_encode({"type": "pong"}))

    async def _on_message(self, payload: dict[str, Any]) -> None:
        content = payload.get("content")
        # NUL is refused as at the REST edge: PostgreSQL cannot store it.
        if (
            not isinstance(content, str)
            or not content
            or len(content) > MAX_CONTENT_CHARS
            or "\x00" in content
        ):
            await self._send(
                _error_frame(
                    "invalid_request", f"content must be 1 to {MAX_CONTENT_CHARS} characters, without NUL."
                )
            )
            return
        key = payload.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128 or "\x00" in key):
            await self._send(_error_frame("invalid_request", "idempotency_key must be 1 to 128 characters."))
            return
        self._own_turns = [t for t in self._own_turns if self.manager.is_running(t)]
        if self._own_turns:
            # Fast local answer; the engine's lease enforces the same rule across sockets and replicas.
            busy = SessionBusy()
            await self._send(_error_frame(busy.code, busy.message))
            return
        try:
            if self.manager.limiter is not None:
                await self.manager.limiter.hit(self.owner)
                await self.manager.limiter.check_tokens(self.owner)
            await self.manager.start_turn(
                self.session_id,
                self.owner,
                content,
                enable_thinking=bool(payload.get("enable_thinking", False)),
                enable_tools=bool(payload.get("enable_tools", True)),
                idempotency_key=key,
                on_start=self._on_turn_started,
            )
        except EngineError as exc:
            # retry_after: rate limited, or the database is overloaded or down
            extra = {} if exc.retry_after is None else {"retry_after": exc.retry_after}
            await self._send(_error_frame(exc.code, exc.message, **extra))

    def _on_turn_started(self, turn_id: str) -> None:
        self._own_turns.append(turn_id)
        self._follow(turn_id, 0)

    async def _on_cancel(self, payload: dict[str, Any]) -> None:
        turn_id = payload.get("turn_id")
        if not isinstance(turn_id, str) or not turn_id:
            running = [t for t in self._own_turns if self.manager.is_running(t)]
            turn_id = running[-1] if running else None
        if turn_id is None or await self.manager.event_log.session_of(turn_id) != self.session_id:
            await self._send(_error_frame("no_active_turn", "No turn of this session is running."))
            return
        await self.manager.request_cancel(turn_id, FinishReason.CANCELLED)

    async def _on_resume(self, payload: dict[str, Any]) -> None:
        turn_id = payload.get("turn_id")
        after_seq = payload.get("after_seq", 0)
        if not isinstance(turn_id, str) or not isinstance(after_seq, int) or isinstance(after_seq, bool):
            await self._send(
                _error_frame("invalid_request", "resume needs turn_id and an integer after_seq.")
            )
            return
        # Another session's turn is "not found", exactly like another owner's session.
        if after_seq < 0 or await self.manager.event_log.session_of(turn_id) != self.session_id:
            error = TurnNotFound()
            await self._send(_error_frame(error.code, error.message, turn_id))
            return
        self._follow(turn_id, after_seq)

    def _follow(self, turn_id: str, after_seq: int) -> None:
        previous = self._forwarders.pop(turn_id, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.create_task(self._forward(turn_id, after_seq), name="aria-ws-forward")
        self._forwarders[turn_id] = task
        task.add_done_callback(lambda done: self._forget_forwarder(turn_id, done))

    def _forget_forwarder(self, turn_id: str, task: asyncio.Task[None]) -> None:
        if self._forwarders.get(turn_id) is task:
            del self._forwarders[turn_id]

    async def _forward(self, turn_id: str, after_seq: int) -> None:
        try:
            with self.manager.following(turn_id):
                async for batch in self.manager.event_log.follow(turn_id, after_seq):
                    if not await self._send_all(batch):
                        return
        except TurnNotFound as exc:
            await self._send(_error_frame(exc.code, exc.message, turn_id))
        except Exception:
            logger.exception("forwarding turn %s failed", turn_id)
            await self._send(_error_frame("internal_error", "Streaming this turn failed.", turn_id))
