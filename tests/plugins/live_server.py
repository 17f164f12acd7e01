"""The real service on a real port: `create_app(config)` under uvicorn on port 0, in a background thread.

    async def test_something(live_server):            # default config: the test's database + fake provider
        async with live_server.client() as http:      # httpx.AsyncClient on the base URL
            ...
        async with live_server.websocket(session_id) as ws:
            ...

    def test_other(start_server, api_config):          # any config
        server = start_server(api_config(keep_turn_on_disconnect=True))

`api_config(**overrides)` builds an EngineConfig on the test's `database_url` and a models.yaml written
next to it that points at the fake OpenAI-compatible provider (the `fake_llm` fixture of
tests/plugins/fake_llm.py, a real HTTP server; models as in `write_fake_catalog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import ClientConnection, connect

from aria_engine.config import REPO_ROOT, EngineConfig
from aria_engine.db.store import verify_totals
from aria_engine.testing.fake_llm import FakeLLM, write_fake_catalog

API_DIR = REPO_ROOT / "src" / "api"
if str(API_DIR) not in sys.path:
    sys.path.insert(0, str(API_DIR))  # the app dir, as the seed lays it out (`from routers... import`)

__all__ = ["LiveServer", "assert_totals_match", "read_turn", "read_until", "recv_json", "send_json", "serve"]

_STARTUP_SECONDS = 60.0

_FRAME_SECONDS = 60.0  # a bound so a broken server fails the test instead of hanging it


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    """The next frame as JSON."""
    async with asyncio.timeout(_FRAME_SECONDS):
        frame = await ws.recv()
    data: dict[str, Any] = orjson.loads(frame)
    return data


async def read_turn(ws: ClientConnection, first: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Frames up to and including the turn's `done` (`first`: frames already read)."""
    events = list(first or [])
    while not events or events[-1]["type"] != "done":
        events.append(await recv_json(ws))
    return events


async def read_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Frames up to and including the first one that satisfies `predicate`."""
    frames: list[dict[str, Any]] = []
    while not frames or not predicate(frames[-1]):
        frames.append(await recv_json(ws))
    return frames


async def send_json(ws: ClientConnection, payload: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(payload).decode())


async def assert_totals_match(db_factory: async_sessionmaker[AsyncSession], session_id: str) -> None:
    """The invariant after any fault: session counters equal the sums over its messages."""
    async with db_factory() as db:
        assert await verify_totals(db, uuid.UUID(session_id)) == {}


@dataclass
class LiveServer:
    base_url: str
    app: Any

    @property
    def ws_base(self) -> str:
        return "ws" + self.base_url.removeprefix("http")

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=60, **kwargs)

    @contextlib.asynccontextmanager
    async def websocket(
        self, session_id: str, *, key: str | None = None, query: str = "", **kwargs: Any
    ) -> AsyncIterator[ClientConnection]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = f"{self.ws_base}/ws/chat/{session_id}" + (f"?{query}" if query else "")
        async with connect(url, additional_headers=headers, open_timeout=30, **kwargs) as ws:
            yield ws


@contextlib.contextmanager
def serve(config: EngineConfig) -> Iterator[LiveServer]:
    """Run `create_app(config)` with the settings production uses; stop it (lifespan shutdown) at exit."""
    from main import create_app, uvicorn_options

    app = create_app(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30, **uvicorn_options(config)
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="live-server")
    thread.start()
    deadline = time.monotonic() + _STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            sock.close()
            raise RuntimeError("the app did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@pytest.fixture
def api_config(database_url: str, fake_llm: FakeLLM, tmp_path: Path) -> Callable[..., EngineConfig]:
    catalog = write_fake_catalog(tmp_path / "models.yaml", fake_llm.base_url)

    def build(**overrides: Any) -> EngineConfig:
        values: dict[str, Any] = {
            "database_url": database_url,
            "models_path": catalog,
            "data_dir": tmp_path / "data",
            "auto_migrate": False,  # the fixtures migrate once per run
            "default_model": "fake-model",
            "llm_max_retries": 0,
            # Tests of a dropped socket say explicitly when they want the resume grace period.
            "disconnect_grace_seconds": 0,
            # Key changes take effect at once; the cache has its own test.
            "auth_cache_seconds": 0,
        }
        values.update(overrides)
        return EngineConfig(**values)

    return build


@pytest.fixture
def start_server() -> Iterator[Callable[[EngineConfig], LiveServer]]:
    with contextlib.ExitStack() as stack:

        def start(config: EngineConfig) -> LiveServer:
            return stack.enter_context(serve(config))

        yield start


@pytest.fixture
def live_server(
    start_server: Callable[[EngineConfig], LiveServer], api_config: Callable[..., EngineConfig]
) -> LiveServer:
    return start_server(api_config())
