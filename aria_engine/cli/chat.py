"""`aria-engine chat`: a terminal chat client that speaks only the engine's public API.

REST (httpx) for sessions, model changes and exports; the WebSocket protocol (websockets) for turns.
It owns no SQL and no engine objects, so it works against any server, local or remote.

What it keeps true:
- A turn's text is printed once: events carry `turn_id` and a per-turn `seq`; after a dropped connection
  the client reconnects with backoff and sends `resume` after the last `seq` it printed, and ignores
  anything at or below it. A message whose `start` never arrived is re-sent with the same idempotency key,
  which the server turns into a replay rather than a second turn.
- Ctrl-C during an answer sends `cancel` and stays in the program; at the prompt it explains how to leave.
- Lines come from stdin through a reader thread, so piped input (tests, scripts) works like a terminal.
- The API key comes only from the environment (ARIA_API_KEY), is sent as a Bearer header, and the
  WebSocket authenticates with a short-lived ticket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import click
import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = ["ChatClient", "chat"]

API = "/api/engine/chat"
EXPORT_FORMATS = ("jsonl", "markdown", "md", "openclaw", "openai")
RECONNECT_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_FRAME_BYTES = 4 * 1024 * 1024
TOOL_RESULT_PREVIEW = 500

HELP = """Commands:
  /new [MODEL]        start a new session (optionally with another model)
  /sessions [QUERY]   list recent sessions (QUERY searches message text)
  /switch ID          continue another session
  /model M            use model M for this session from now on
  /export FORMAT [PATH]  export this session (jsonl, markdown, openclaw, openai) to PATH or the screen
  /thinking on|off    ask for the model's reasoning
  /help               this text
  /quit               leave (Ctrl-D works too)
Ctrl-C stops the answer being written."""


class ClientError(Exception):
    """A problem to show the user as one line (bad command, HTTP error); the session goes on."""


@dataclass(slots=True)
class _Turn:
    """The turn this client is waiting for: enough to resume it or to resend its message safely."""

    frame: dict[str, Any]
    turn_id: str | None = None
    last_seq: int = 0
    mode: str = ""  # "thinking" | "text" | "" : what the last printed delta was, to place line breaks
    cancelled: bool = field(default=False)


def _format_cost(value: object) -> str:
    try:
        amount = Decimal(str(value or "0"))
    except InvalidOperation:
        return f"${value}"
    if not amount:
        return "$0"
    return "$" + format(amount.quantize(Decimal("0.000001")).normalize(), "f")


def _ws_base(url: str) -> str:
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return f"HTTP {response.status_code}"


def _write_file(target: str, data: bytes) -> Path:
    path = Path(target).expanduser()
    path.write_bytes(data)
    return path


class _LineReader:
    """Reads stdin lines on a daemon thread into an asyncio queue.

    A daemon thread (not the loop's executor) so that leaving never waits on a blocked `readline`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = loop
        stream = sys.stdin
        threading.Thread(target=self._pump, args=(stream,), name="aria-chat-stdin", daemon=True).start()

    def _pump(self, stream: Any) -> None:
        # OSError/ValueError: stdin closed under us, the same as end of input. RuntimeError: the loop is
        # already closed because the client left while this thread still waited for a line.
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            for line in iter(stream.readline, ""):
                self._loop.call_soon_threadsafe(self._queue.put_nowait, line.rstrip("\r\n"))
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def readline(self) -> str | None:
        return await self._queue.get()

    def stop(self) -> None:
        self._queue.put_nowait(None)


class ChatClient:
    """One terminal chat: a session, a WebSocket to it, and the line loop.

    Usage: `asyncio.run(ChatClient("http://127.0.0.1:8000").run())`.
    """

    def __init__(
        self,
        url: str,
        *,
        session_id: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        thinking: bool = False,
        color: bool | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.session_id = session_id
        self.model = model
        self.api_key = api_key or None
        self.thinking = thinking
        self.color = sys.stdout.isatty() if color is None else color
        self.interactive = sys.stdin.isatty()
        self.session: dict[str, Any] = {}
        self._http: httpx.AsyncClient | None = None
        self._ws: ClientConnection | None = None
        self._turn: _Turn | None = None
        self._reader: _LineReader | None = None
        self._idle_interrupts = 0
        self._cancel_task: asyncio.Future[None] | None = None

    # ── output ────────────────────────────────────────────────────────────────────────────────────

    def _out(self, text: str, *, nl: bool = False, **style: Any) -> None:
        if self.color and style:
            text = click.style(text, **style)
        click.echo(text, nl=nl, color=self.color)

    def _info(self, text: str) -> None:
        self._out(text, nl=True, dim=True)

    def _problem(self, text: str) -> None:
        self._out(f"error: {text}", nl=True, fg="red")

    # ── REST ──────────────────────────────────────────────────────────────────────────────────────

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self._http is not None
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.url} ({type(exc).__name__})") from exc
        if response.status_code == 401:
            raise ClientError("the server needs an API key: set ARIA_API_KEY")
        if response.is_error:
            raise ClientError(_error_message(response))
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._request(method, path, **kwargs)).json()

    async def _create_session(self, model: str | None) -> dict[str, Any]:
        body = {"model": model} if model else {}
        created = await self._json("POST", f"{API}/sessions", json=body)
        return await self._load_session(created["id"])

    async def _load_session(self, session_id: str) -> dict[str, Any]:
        detail = await self._json("GET", f"{API}/sessions/{quote(session_id, safe='')}")
        detail.pop("messages", None)
        return detail

    # ── WebSocket ─────────────────────────────────────────────────────────────────────────────────

    async def _ws_url(self) -> str:
        url = f"{_ws_base(self.url)}/ws/chat/{quote(self.session['id'], safe='')}"
        if self.api_key:
            data = await self._json("POST", f"{API}/ws-ticket", json={"session_id": self.session["id"]})
            url += "?ticket=" + quote(str(data["ticket"]), safe="")
        return url

    async def _open_socket(self) -> ClientConnection:
        url = await self._ws_url()
        try:
            return await connect(url, max_size=MAX_FRAME_BYTES, open_timeout=10)
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ClientError(f"the server refused the chat connection (HTTP {status})") from exc
        except (OSError, TimeoutError) as exc:
            raise ClientError(f"cannot reach {self.url} ({type(exc).__name__})") from exc

    async def _close_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def _socket(self) -> ClientConnection:
        if self._ws is None:
            self._ws = await self._open_socket()
        return self._ws

    async def _reconnect(self) -> ClientConnection:
        """Reconnect with backoff after a drop, then pick the in-flight turn up where it was."""
        self._ws = None
        if self._turn is not None:
            self._end_line(self._turn)
        last: ClientError | None = None
        for delay in RECONNECT_DELAYS:
            self._info(f"[connection lost, reconnecting in {delay:g}s]")
            await asyncio.sleep(delay)
            try:
                ws = await self._open_socket()
            except ClientError as exc:
                last = exc
                continue
            self._ws = ws
            turn = self._turn
            if turn is not None and turn.turn_id:
                resume = {"type": "resume", "turn_id": turn.turn_id, "after_seq": turn.last_seq}
                await ws.send(json.dumps(resume))
            elif turn is not None:
                await ws.send(json.dumps(turn.frame))
            return ws
        raise ClientError(f"lost the connection to the server: {last}")

    # ── turns ─────────────────────────────────────────────────────────────────────────────────────

    async def _run_turn(self, content: str) -> None:
        frame = {
            "type": "message",
            "content": content,
            "enable_thinking": self.thinking,
            "enable_tools": True,
            "idempotency_key": str(uuid.uuid4()),
        }
        self._turn = _Turn(frame=frame)
        try:
            ws = await self._socket()
            try:
                await ws.send(json.dumps(frame))
            except ConnectionClosed:
                ws = await self._reconnect()
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed:
                    ws = await self._reconnect()
                    continue
                if self._handle(json.loads(raw)):
                    return
        finally:
            self._turn = None

    def _handle(self, event: dict[str, Any]) -> bool:
        """Print one server event; True when the turn is over."""
        turn = self._turn
        assert turn is not None
        kind = event.get("type")
        if kind == "pong":
            return False
        seq = event.get("seq")
        # Turn events always carry a seq; an error without one answers a request (a refused message, a
        # resume of a turn the server no longer knows) and is not part of a turn's stream.
        if not event.get("turn_id") or not isinstance(seq, int):
            if kind == "error" and event.get("code") == "no_active_turn":
                return False  # a Ctrl-C that raced the end of the previous answer: nothing to stop
            if kind == "error":
                self._end_line(turn)
                self._problem(str(event.get("message") or event.get("code") or "message refused"))
                # Before `start` an error means the message was not taken; a failed resume of our turn
                # means it is gone; otherwise (say, a late cancel) the turn's own `done` still follows.
                return turn.turn_id is None or event.get("turn_id") == turn.turn_id
            return False
        if turn.turn_id is None:
            turn.turn_id = str(event["turn_id"])
        if event["turn_id"] != turn.turn_id:
            return False  # another client's turn on this session
        if seq <= turn.last_seq:
            return False  # already printed before a reconnect
        turn.last_seq = seq
        return self._render(turn, kind, event)

    def _render(self, turn: _Turn, kind: object, event: dict[str, Any]) -> bool:
        if kind == "thinking":
            if turn.mode != "thinking":
                self._end_line(turn)
                if not self.color:
                    self._out("[thinking] ")
            turn.mode = "thinking"
            self._out(str(event.get("content", "")), dim=True)
        elif kind == "token":
            if turn.mode == "thinking":
                self._out("", nl=True)
            turn.mode = "text"
            self._out(str(event.get("content", "")))
        elif kind == "tool_call":
            self._end_line(turn)
            self._out(f"[tool] {event.get('name')}({event.get('arguments', '')})", nl=True, fg="cyan")
        elif kind == "tool_result":
            self._end_line(turn)
            content = str(event.get("content", ""))
            if len(content) > TOOL_RESULT_PREVIEW:
                content = content[:TOOL_RESULT_PREVIEW] + "…"
            label = "tool result" if event.get("success", True) else "tool failed"
            self._out(f"[{label}] {event.get('name')}: {content}", nl=True, fg="cyan")
        elif kind == "error":
            self._end_line(turn)
            self._problem(str(event.get("message") or event.get("code")))
        elif kind == "done":
            self._end_line(turn)
            self._info(self._summary(event))
            return True
        return False

    def _end_line(self, turn: _Turn) -> None:
        if turn.mode:
            self._out("", nl=True)
            turn.mode = ""

    @staticmethod
    def _summary(done: dict[str, Any]) -> str:
        parts = [
            f"{done.get('input_tokens', 0)} in / {done.get('output_tokens', 0)} out tokens",
            _format_cost(done.get("cost")),
        ]
        if done.get("ttft_ms") is not None:
            parts.append(f"TTFT {done['ttft_ms']} ms")
        parts.append(f"{done.get('latency_ms', 0)} ms")
        reason = done.get("finish_reason")
        if reason and reason != "stop":
            parts.append(str(reason))
        return "[" + " · ".join(parts) + "]"

    # ── Ctrl-C ────────────────────────────────────────────────────────────────────────────────────

    def _on_interrupt(self) -> None:
        turn = self._turn
        if turn is not None and self._ws is not None:
            if not turn.cancelled:
                turn.cancelled = True
                self._end_line(turn)
                self._info("[stopping…]")
                self._cancel_task = asyncio.ensure_future(self._send_cancel())
            return
        self._idle_interrupts += 1
        if self._idle_interrupts >= 2 and self._reader is not None:
            self._reader.stop()
            return
        self._info("(Ctrl-C stops an answer; /quit or Ctrl-D leaves, Ctrl-C again leaves too)")

    async def _send_cancel(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(json.dumps({"type": "cancel"}))

    # ── slash commands ────────────────────────────────────────────────────────────────────────────

    async def _command(self, line: str) -> bool:
        """Run one slash command; False when the user leaves."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        handlers = {
            "new": self._cmd_new,
            "sessions": self._cmd_sessions,
            "switch": self._cmd_switch,
            "model": self._cmd_model,
            "export": self._cmd_export,
            "thinking": self._cmd_thinking,
        }
        if name in ("quit", "exit", "q"):
            return False
        if name in ("help", "?"):
            self._out(HELP, nl=True)
            return True
        handler = handlers.get(name)
        if handler is None:
            raise ClientError(f"unknown command /{name} (try /help)")
        await handler(arg)
        return True

    async def _use_session(self, session: dict[str, Any]) -> None:
        await self._close_socket()
        self.session = session
        self._info(
            f"[session {session['id']} · {session.get('title') or 'untitled'} · "
            f"model {session.get('model')} · {session.get('message_count', 0)} messages · "
            f"{_format_cost(session.get('total_cost_usd', session.get('total_cost')))}]"
        )
        if session.get("status") == "ended":
            self._info("[this session has ended: /new starts another]")

    async def _cmd_new(self, arg: str) -> None:
        await self._use_session(await self._create_session(arg or self.model))

    async def _cmd_sessions(self, arg: str) -> None:
        params: dict[str, Any] = {"page": 1, "page_size": 20}
        if arg:
            params["q"] = arg
        data = await self._json("GET", f"{API}/sessions", params=params)
        items = data.get("items", [])
        if not items:
            self._info("[no sessions]")
        for item in items:
            marker = "*" if item["id"] == self.session.get("id") else " "
            status = " (ended)" if item.get("status") == "ended" else ""
            self._out(
                f"{marker} {item['id']}  {item.get('title') or 'untitled'}  {item.get('model')}  "
                f"{item.get('message_count', 0)} msgs  {item.get('updated_at') or ''}{status}",
                nl=True,
            )
        if data.get("pages", 1) > 1:
            self._info(f"[page 1 of {data['pages']}, {data.get('total')} sessions]")

    async def _cmd_switch(self, arg: str) -> None:
        if not arg:
            raise ClientError("usage: /switch SESSION_ID")
        await self._use_session(await self._load_session(arg))

    async def _cmd_model(self, arg: str) -> None:
        if not arg:
            raise ClientError(f"usage: /model MODEL (now {self.session.get('model')})")
        await self._json("PATCH", f"{API}/sessions/{quote(self.session['id'], safe='')}", json={"model": arg})
        self.session = await self._load_session(self.session["id"])
        self._info(f"[model is now {self.session.get('model')}]")

    async def _cmd_export(self, arg: str) -> None:
        fmt, _, target = arg.partition(" ")
        if fmt not in EXPORT_FORMATS:
            raise ClientError(f"usage: /export {{{'|'.join(EXPORT_FORMATS)}}} [PATH]")
        response = await self._request(
            "GET", f"{API}/sessions/{quote(self.session['id'], safe='')}/export", params={"format": fmt}
        )
        if target.strip():
            # Off the loop, so a slow disk cannot stall the socket's keepalive.
            path = await asyncio.to_thread(_write_file, target.strip(), response.content)
            self._info(f"[exported {len(response.content)} bytes to {path}]")
        else:
            self._out(response.text, nl=not response.text.endswith("\n"))

    async def _cmd_thinking(self, arg: str) -> None:
        if arg not in ("on", "off"):
            raise ClientError("usage: /thinking on|off")
        self.thinking = arg == "on"
        self._info(f"[thinking {arg}]")

    # ── the loop ──────────────────────────────────────────────────────────────────────────────────

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0) as http:
            self._http = http
            if self.session_id:
                await self._use_session(await self._load_session(self.session_id))
            else:
                await self._use_session(await self._create_session(self.model))
            self._info("[type a message, or /help]")
            self._reader = _LineReader(loop)
            installed = self._install_interrupt(loop)
            try:
                await self._loop()
            finally:
                if installed:
                    loop.remove_signal_handler(signal.SIGINT)
                await self._close_socket()

    def _install_interrupt(self, loop: asyncio.AbstractEventLoop) -> bool:
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_interrupt)
        except (RuntimeError, ValueError, NotImplementedError):
            return False  # not the main thread, or no signal support: Ctrl-C keeps its default meaning
        return True

    async def _loop(self) -> None:
        assert self._reader is not None
        while True:
            if self.interactive:
                self._out("you> ", bold=True)
            line = await self._reader.readline()
            if line is None:
                return
            self._idle_interrupts = 0
            text = line.strip()
            if not text:
                continue
            try:
                if text.startswith("/"):
                    if not await self._command(text):
                        return
                elif self.session.get("status") == "ended":
                    raise ClientError("this session has ended: /new starts another")
                else:
                    await self._run_turn(line)
            except ClientError as exc:
                self._problem(str(exc))


@click.command()
@click.option(
    "--url",
    envvar="ARIA_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The engine's base URL.",
)
@click.option("--session", "session_id", default=None, help="Continue this session instead of starting one.")
@click.option("--model", default=None, help="Model for a new session (default: the server's default).")
@click.option("--thinking/--no-thinking", default=False, help="Ask for the model's reasoning.")
def chat(url: str, session_id: str | None, model: str | None, thinking: bool) -> None:
    """Chat with the engine from a terminal, streaming answers as they are written.

    The API key, when the server needs one, is read from ARIA_API_KEY (never a flag: flags show in `ps`).
    Lines starting with / are commands (/help lists them). Ctrl-C stops the answer being written.

    Example: ARIA_API_KEY=... aria-engine chat --url http://127.0.0.1:8000 --model gpt-4o-mini
    """
    client = ChatClient(
        url,
        session_id=session_id,
        model=model,
        api_key=os.environ.get("ARIA_API_KEY"),
        thinking=thinking,
    )
    try:
        asyncio.run(client.run())
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
