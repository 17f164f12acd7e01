"""Turn event logs: every event of a running or recently finished turn, kept for resume and fan-out.

The task running a turn appends each event once, already serialised, with its per-turn `seq`. Sockets
`follow(turn_id, after_seq)`: they get every logged event after `after_seq` in order, exactly once, then
the live ones, and the iteration ends after the turn's final (`done`) event. Events come in batches,
every event logged since the follower last looked: a burst of tokens costs the follower one wake-up and
no object per event. The log is also the channel for cancelling a turn that runs in another process
(`request_cancel` / `on_cancel`).

Two implementations behind one interface:
- `MemoryTurnEventLog`: this process only. Bounded: a finished turn is kept `ttl` seconds, at most
  `max_turns` turns and `max_events` events per turn are retained (older events of a huge turn are dropped;
  a resume that needs them is refused rather than answered with a gap). All but a running turn's newest
  events are kept compressed (`_TurnRecord`).
- `RedisTurnEventLog` (when REDIS_URL is set): the same, plus a Redis stream per turn (`XADD` with the seq
  as the entry id) that any replica can replay and follow, and a pub/sub channel for cancel signals. Local
  followers still read from memory, so the hot path does not wait on Redis reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from abc import ABC, abstractmethod
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aria_engine.exceptions import EngineError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "MAX_BATCH",
    "CancelCallback",
    "MemoryTurnEventLog",
    "RedisTurnEventLog",
    "TurnEventLog",
    "TurnNotFound",
]

logger = logging.getLogger("aria.turn_log")

CancelCallback = Callable[[str], None]  # receives the reason (cancelled | disconnected | ...)


class TurnNotFound(EngineError):
    code = "turn_not_found"
    default_message = "That turn is unknown here or too old to resume."


# At most this many events per batch, so a socket replaying a long turn still answers a ping in between.
MAX_BATCH = 256


class TurnEventLog(ABC):
    """The interface the StreamManager uses; see the module docstring."""

    async def start(self) -> None:
        """Start background work (the Redis cancel listener)."""
        return None

    async def aclose(self) -> None:
        """Stop background work."""
        return None

    @abstractmethod
    async def open_turn(self, turn_id: str, session_id: str) -> None: ...

    @abstractmethod
    async def append(self, turn_id: str, seq: int, data: str, *, final: bool) -> None: ...

    @abstractmethod
    async def session_of(self, turn_id: str) -> str | None:
        """The session a logged turn belongs to, or None if it is unknown or expired."""

    @abstractmethod
    def follow(self, turn_id: str, after_seq: int) -> AsyncIterator[Sequence[str]]:
        """Batches of the events (their JSON texts) after `after_seq`, then of live ones, until the
        final event (the last of its batch). Raises TurnNotFound."""

    @abstractmethod
    def on_cancel(self, turn_id: str, callback: CancelCallback) -> Callable[[], None]:
        """Register this process's handler for cancel requests of a turn; returns the unregister call."""

    @abstractmethod
    async def request_cancel(self, turn_id: str, reason: str) -> bool:
        """Ask the process running the turn to cancel it. True if it was handled here."""


# A turn's log keeps its newest events as strings, where the sockets following it read them, and the
# older ones joined and compressed in blocks: about 12 bytes an event instead of about 150 for a string
# (bench scenario 3: with 1,000 streams running at once their logs were a quarter of their memory).
LIVE_EVENTS = 16
BLOCK_EVENTS = 32


def _compress(text: str) -> bytes:
    # A raw deflate stream with a 2 KB window: a block's events repeat their turn_id every hundred bytes
    # or so, and setting up zlib's default 32 KB window took longer than compressing a block (50 µs
    # against 8 for 32 token events).
    packer = zlib.compressobj(1, zlib.DEFLATED, -11, 3)
    return packer.compress(text.encode()) + packer.flush()


def _pack(texts: list[str]) -> tuple[bytes, array[int]]:
    """Texts joined and compressed, and each one's end in the joined text."""
    joined = "".join(texts)
    ends, end = array("I" if len(joined) < 2**32 else "Q"), 0  # 4 bytes an end, unless it cannot be
    for text in texts:
        end += len(text)
        ends.append(end)
    return _compress(joined), ends


def _unpack(data: bytes, ends: array[int]) -> list[str]:
    joined = zlib.decompress(data, -11).decode()
    return [joined[begin:end] for begin, end in zip((0, *ends), ends, strict=False)]


@dataclass(slots=True)
class _TurnRecord:
    session_id: str
    # The logged events: the newest ones' JSON texts (serialised once), the older ones in blocks of
    # BLOCK_EVENTS (a finished turn's last block holds the rest: `_pack`, with each text's end), and
    # every kept event's seq. Strings, bytes and int arrays only: logging an event makes nothing the
    # garbage collector tracks. A tuple per event counted towards the next young collection and had to
    # be looked at by it (docs/ARCHITECTURE.md, "Memory and the garbage collector").
    texts: list[str] = field(default_factory=list)
    blocks: list[bytes] = field(default_factory=list)
    block_ends: list[array[int]] = field(default_factory=list)
    seqs: array[int] | range = field(default_factory=lambda: array("q"))
    finished_at: float | None = None  # set with the final event, which is always the last one
    # One future per waiting follower (no shared, shielded future: waking one costs one loop pass).
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def add(self, text: str, seq: int, max_events: int) -> None:
        """Log an event of the running turn (its seqs are an array until it finishes)."""
        seqs = self.seqs
        assert isinstance(seqs, array)
        self.texts.append(text)
        seqs.append(seq)
        if len(seqs) > max_events:
            # Drop the older half at once: amortised O(1) per event, unlike dropping one at a time.
            half = len(seqs) // 2
            texts = self.unpacked()[half:]
            del seqs[:half]
            self.blocks, self.block_ends, self.texts = [], [], texts
        while len(self.texts) >= BLOCK_EVENTS + LIVE_EVENTS:
            self._add_block(self.texts[:BLOCK_EVENTS])
            del self.texts[:BLOCK_EVENTS]

    def _add_block(self, texts: list[str]) -> None:
        data, ends = _pack(texts)
        self.blocks.append(data)
        self.block_ends.append(ends)

    def pack(self) -> None:
        """Compress the rest of a finished turn, kept `ttl` seconds for a rare late resume."""
        if self.texts:
            self._add_block(self.texts)
            self.texts = []
        seqs = self.seqs
        if seqs and seqs[-1] - seqs[0] + 1 == len(seqs):  # the usual 1, 2, 3, ...: a range holds it
            self.seqs = range(seqs[0], seqs[-1] + 1)

    def between(self, start: int, end: int) -> list[str]:
        """The texts of the kept events at positions [start, end)."""
        packed = len(self.seqs) - len(self.texts)
        if start >= packed:  # a socket keeping up with its turn, until the rest is packed at its end
            return self.texts[start - packed : end - packed]
        texts: list[str] = []
        while start < min(end, packed):  # a late resume: each block it needs is decompressed once
            index = min(start // BLOCK_EVENTS, len(self.blocks) - 1)  # only the last block differs in size
            first = index * BLOCK_EVENTS
            block = _unpack(self.blocks[index], self.block_ends[index])
            texts += block[start - first : end - first]
            start = first + len(block)
        return texts + self.texts[start - packed : end - packed] if start < end else texts

    def unpacked(self) -> list[str]:
        """Every kept text, in order."""
        blocks = zip(self.blocks, self.block_ends, strict=True)
        return [text for data, ends in blocks for text in _unpack(data, ends)] + self.texts

    def wake(self) -> None:
        """Wake the followers waiting for an event."""
        if not self.waiters:  # the common case while a burst is logged: no list built per event
            return
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter.cancelled():  # the follower went away; `wake` may have taken the list already
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)


class MemoryTurnEventLog(TurnEventLog):
    """In-process log. See the module docstring for its bounds."""

    def __init__(self, ttl: float = 300.0, max_turns: int = 1000, max_events: int = 50_000) -> None:
        self.ttl = ttl
        self.max_turns = max_turns
        self.max_events = max_events
        self._turns: dict[str, _TurnRecord] = {}
        # Finished turns in the order they finished: pruning pops from the front, O(1) per turn.
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._cancel_handlers: dict[str, CancelCallback] = {}

    def __contains__(self, turn_id: str) -> bool:
        return turn_id in self._turns

    async def open_turn(self, turn_id: str, session_id: str) -> None:
        self._prune()
        existing = self._turns.get(turn_id)
        if existing is None or existing.finished_at is not None:
            # A finished turn opened again is an idempotent replay: it is logged afresh from seq 1.
            self._turns[turn_id] = _TurnRecord(session_id)
            self._finished.pop(turn_id, None)

    async def append(self, turn_id: str, seq: int, data: str, *, final: bool) -> None:
        record = self._turns.get(turn_id)
        if record is None:
            return  # pruned while running: only possible past max_turns live turns
        record.add(data, seq, self.max_events)
        if final:
            record.finished_at = time.monotonic()
            self._finished[turn_id] = record.finished_at
            record.pack()  # a socket still reading the turn reads the rest from the last block
        record.wake()

    async def session_of(self, turn_id: str) -> str | None:
        record = self._live_record(turn_id)
        return record.session_id if record else None

    async def follow(self, turn_id: str, after_seq: int) -> AsyncIterator[Sequence[str]]:
        record = self._live_record(turn_id)
        if record is None:
            raise TurnNotFound()
        sent = after_seq
        while True:
            # Positions are found afresh each time: the log may have been trimmed during the last send.
            seqs = record.seqs
            if seqs and seqs[0] > sent + 1:
                raise TurnNotFound("The events to resume from are no longer kept; reload the session.")
            start = bisect_right(seqs, sent)
            if start < len(seqs):
                batch = record.between(start, min(start + MAX_BATCH, len(seqs)))
                end = start + len(batch)
                final = end == len(seqs) and record.finished_at is not None  # the final event is last
                sent = seqs[end - 1]
                yield batch
                if final:
                    return
                continue
            if record.finished_at is not None:
                return
            await record.wait()

    def on_cancel(self, turn_id: str, callback: CancelCallback) -> Callable[[], None]:
        self._cancel_handlers[turn_id] = callback
        return lambda: self._cancel_handlers.pop(turn_id, None)  # type: ignore[func-returns-value]

    async def request_cancel(self, turn_id: str, reason: str) -> bool:
        return self.cancel_local(turn_id, reason)

    def cancel_local(self, turn_id: str, reason: str) -> bool:
        handler = self._cancel_handlers.get(turn_id)
        if handler is None:
            return False
        handler(reason)
        return True

    def _live_record(self, turn_id: str) -> _TurnRecord | None:
        record = self._turns.get(turn_id)
        if record is None or self._expired(record, time.monotonic()):
            return None
        return record

    def _expired(self, record: _TurnRecord, now: float) -> bool:
        return record.finished_at is not None and now - record.finished_at > self.ttl

    def _prune(self) -> None:
        """Drop expired turns, and past `max_turns` the oldest finished ones (running turns are bounded
        by the running tasks). Oldest first, stopping at the first turn kept: no scan of every turn."""
        now = time.monotonic()
        while self._finished:
            turn_id, finished_at = next(iter(self._finished.items()))
            if now - finished_at <= self.ttl and len(self._turns) < self.max_turns:
                return
            del self._finished[turn_id]
            self._turns.pop(turn_id, None)


_CANCEL_CHANNEL = "aria:turn-cancel"


class RedisTurnEventLog(TurnEventLog):
    """Memory log for this process's turns, mirrored to Redis streams for every replica."""

    def __init__(self, redis: Redis, ttl: float = 300.0, local: MemoryTurnEventLog | None = None) -> None:
        self._redis = redis
        self.ttl = ttl
        self.local = local or MemoryTurnEventLog(ttl=ttl)
        self._listener: asyncio.Task[None] | None = None
        # Keys of a running turn outlive any plausible turn; they shrink to `ttl` once the turn finishes.
        self._running_ttl = max(int(ttl), 6 * 3600)

    async def start(self) -> None:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(_CANCEL_CHANNEL)
        self._listener = asyncio.create_task(self._listen(pubsub), name="aria-turn-cancel-listener")

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self, pubsub: object) -> None:
        try:
            async for message in pubsub.listen():  # type: ignore[attr-defined]
                if message.get("type") != "message":
                    continue
                turn_id, _, reason = _text(message["data"]).partition(" ")
                self.local.cancel_local(turn_id, reason)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[attr-defined]

    @staticmethod
    def _stream_key(turn_id: str) -> str:
        return f"aria:turn:{turn_id}:events"

    @staticmethod
    def _meta_key(turn_id: str) -> str:
        return f"aria:turn:{turn_id}:session"

    async def open_turn(self, turn_id: str, session_id: str) -> None:
        await self.local.open_turn(turn_id, session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._stream_key(turn_id))  # an idempotent replay is logged afresh from seq 1
            pipe.set(self._meta_key(turn_id), session_id, ex=self._running_ttl)
            await pipe.execute()

    async def append(self, turn_id: str, seq: int, data: str, *, final: bool) -> None:
        await self.local.append(turn_id, seq, data, final=final)
        key = self._stream_key(turn_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            # The seq is the entry id, so a replay can start right after any seq with one XRANGE.
            pipe.xadd(
                key,
                {"d": data, "f": "1" if final else "0"},
                id=f"{seq}-0",
                maxlen=self.local.max_events,
                approximate=True,
            )
            # Expiry is set when the stream is created and when the turn ends, not on every token.
            if final:
                pipe.expire(key, int(self.ttl))
                pipe.expire(self._meta_key(turn_id), int(self.ttl))
            elif seq == 1:
                pipe.expire(key, self._running_ttl)
            await pipe.execute()

    async def session_of(self, turn_id: str) -> str | None:
        local = await self.local.session_of(turn_id)
        if local is not None:
            return local
        raw = await self._redis.get(self._meta_key(turn_id))
        return None if raw is None else _text(raw)

    async def follow(self, turn_id: str, after_seq: int) -> AsyncIterator[Sequence[str]]:
        if turn_id in self.local and await self.local.session_of(turn_id) is not None:
            async for batch in self.local.follow(turn_id, after_seq):
                yield batch
            return
        if await self._redis.exists(self._meta_key(turn_id)) == 0:
            raise TurnNotFound()
        key = self._stream_key(turn_id)
        expected = after_seq + 1
        entries = await self._redis.xrange(key, min=f"({after_seq}-0", max="+", count=MAX_BATCH)
        while True:
            if not entries:
                # Block in slices so a turn whose keys expired cannot leave the reader waiting forever.
                reply = await self._redis.xread({key: f"{expected - 1}-0"}, count=MAX_BATCH, block=5000)
                entries = reply[0][1] if reply else []
                if not entries and await self._redis.exists(self._meta_key(turn_id)) == 0:
                    return
                continue
            batch: list[str] = []
            final = False
            for entry_id, fields in entries:
                seq = int(_text(entry_id).split("-", 1)[0])
                if seq != expected:
                    raise TurnNotFound("The events to resume from are no longer kept; reload the session.")
                final = _text(fields.get(b"f", fields.get("f", b"0"))) == "1"
                batch.append(_text(fields.get(b"d", fields.get("d", b""))))
                expected = seq + 1
                if final:
                    break
            yield batch
            if final:
                return
            entries = await self._redis.xrange(key, min=f"({expected - 1}-0", max="+", count=MAX_BATCH)

    def on_cancel(self, turn_id: str, callback: CancelCallback) -> Callable[[], None]:
        return self.local.on_cancel(turn_id, callback)

    async def request_cancel(self, turn_id: str, reason: str) -> bool:
        if self.local.cancel_local(turn_id, reason):
            return True
        await self._redis.publish(_CANCEL_CHANNEL, f"{turn_id} {reason}")
        return False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
