"""The minimal relay: the practical ceiling for streaming through a Python WebSocket server.

A bare Starlette WebSocket endpoint that, for each `{"type": "message"}` it receives, streams the fake
provider's SSE answer and forwards every content delta as the same `token` frame the engine sends
(`{"type","turn_id","seq","content"}`), framed by `start` and `done`. No database, no accounting, no
context building: whatever the engine adds on top of this is its overhead. It runs under uvicorn with
the same WebSocket implementation as the engine (`python -m bench.relay --port N --provider URL`).
"""

from __future__ import annotations

import argparse
import contextlib
import uuid
from collections.abc import AsyncIterator

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = ["build_app"]


def build_app(provider_url: str) -> Starlette:
    """The relay app for a provider base URL such as http://127.0.0.1:9000/v1."""
    clients: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # The same HTTP client as the engine's adapter, so the ceiling is not lowered by a slower one.
        clients["provider"] = aiohttp.ClientSession(
            base_url=provider_url.rstrip("/") + "/",
            headers={"Content-Type": "application/json"},
            connector=aiohttp.TCPConnector(limit=4096, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=600.0),
        )
        try:
            yield
        finally:
            await clients["provider"].close()

    async def health(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def relay(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                message = orjson.loads(await websocket.receive_text())
                if message.get("type") == "message":
                    await _forward_turn(websocket, clients["provider"], message.get("content", ""))
        except WebSocketDisconnect:
            return

    routes = [Route("/health", health), WebSocketRoute("/ws/relay", relay)]
    return Starlette(routes=routes, lifespan=lifespan)


async def _forward_turn(websocket: WebSocket, client: aiohttp.ClientSession, content: str) -> None:
    turn_id = str(uuid.uuid4())
    seq = 1
    await websocket.send_text(
        orjson.dumps({"type": "start", "turn_id": turn_id, "seq": seq, "message_id": turn_id}).decode()
    )
    body = {"model": "bench-model", "stream": True, "messages": [{"role": "user", "content": content}]}
    async with client.post("chat/completions", data=orjson.dumps(body)) as response:
        async for line in response.content:  # lines, each ending with b"\n"
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            choices = orjson.loads(line[6:]).get("choices") or ()
            text = choices[0]["delta"].get("content") if choices else None
            if text:
                seq += 1
                frame = {"type": "token", "turn_id": turn_id, "seq": seq, "content": text}
                await websocket.send_text(orjson.dumps(frame).decode())
    done = {
        "type": "done",
        "turn_id": turn_id,
        "seq": seq + 1,
        "message_id": turn_id,
        "finish_reason": "stop",
    }
    await websocket.send_text(orjson.dumps(done).decode())


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Minimal WebSocket relay (benchmark baseline).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--provider", required=True, help="provider base URL, e.g. http://127.0.0.1:9000/v1")
    parser.add_argument(
        "--ws", default="websockets", help="uvicorn WebSocket implementation (as the engine's)"
    )
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.provider),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        ws=args.ws,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
