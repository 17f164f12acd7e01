"""Service behaviour around the endpoints: health, readiness, metrics, request ids, error shapes, limits,
the web UI mount, and shutdown with a turn in flight."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aria_engine.config import EngineConfig
from aria_engine.testing.fake_llm import FakeLLM, Reply, Stall, Usage
from tests.conftest import run_admin_sql
from tests.plugins.live_server import (
    LiveServer,
    assert_totals_match,
    read_turn,
    read_until,
    recv_json,
    send_json,
    serve,
)

CHAT = "/api/engine/chat"


@contextlib.contextmanager
def database_outage(database_url: str) -> Iterator[None]:
    """PostgreSQL refuses new connections to the test database and drops the open ones, until the end."""
    if database_url.startswith("sqlite"):
        pytest.skip("the outage is made with PostgreSQL's ALLOW_CONNECTIONS; SQLite has no server to stop")
    name = make_url(database_url).database
    admin = make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    run_admin_sql(
        admin,
        f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
    )
    try:
        yield
    finally:
        run_admin_sql(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def test_health_and_ready(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        health = await http.get("/health")
        ready = await http.get("/ready")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_ready_is_503_with_retry_after_while_the_database_refuses_connections(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    database_url: str,
) -> None:
    server = start_server(api_config())
    async with server.client() as http:
        assert (await http.get("/ready")).status_code == 200
        with database_outage(database_url):
            response = await http.get("/ready")
        recovered = await http.get("/ready")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert recovered.status_code == 200


async def test_requests_during_a_database_outage_get_503_engine_unavailable_and_recover(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    database_url: str,
    fake_llm: FakeLLM,
) -> None:
    # Overload (no pooled connection free in time) and outages are the client's cue to retry: 503 with
    # Retry-After on REST, an `engine_unavailable` frame with retry_after on the socket; never a 500.
    server = start_server(api_config())
    async with server.client() as http:
        session_id = (await http.post(f"{CHAT}/sessions", json={})).json()["id"]
        async with server.websocket(session_id) as ws:
            with database_outage(database_url):
                sent = await http.post(f"{CHAT}/sessions/{session_id}/messages", json={"content": "hi"})
                listed = await http.get(f"{CHAT}/sessions")
                await send_json(ws, {"type": "message", "content": "hi"})
                frame = await recv_json(ws)
        for response in (sent, listed):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "engine_unavailable"
            assert int(response.headers["Retry-After"]) >= 1
        assert (frame["type"], frame["code"]) == ("error", "engine_unavailable")
        assert frame["retry_after"] > 0
        assert "asyncpg" not in str(frame) and "asyncpg" not in sent.text  # no internal text
        fake_llm.enqueue(Reply("back"))
        for _ in range(3):  # a pooled connection the outage killed fails once, then the pool reconnects
            recovered = await http.post(f"{CHAT}/sessions/{session_id}/messages", json={"content": "again"})
            if recovered.status_code != 503:
                break
    assert recovered.status_code == 200, recovered.text
    assert recovered.json()["content"] == "back"


async def test_metrics_count_requests_and_turns(live_server: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(Reply("Counted.", usage=Usage(10, 20)), Reply("Streamed.", usage=Usage(10, 20)))
    async with live_server.client() as http:
        session_id = (await http.post(f"{CHAT}/sessions", json={})).json()["id"]
        await http.post(f"{CHAT}/sessions/{session_id}/messages", json={"content": "hi"})
        async with live_server.websocket(session_id) as ws:
            await send_json(ws, {"type": "message", "content": "again"})
            await read_turn(ws)
            metrics = (await http.get("/metrics")).text
    route = "/api/engine/chat/sessions/{session_id}/messages"
    assert f'aria_http_requests_total{{method="POST",route="{route}",status="200"}} 1.0' in metrics
    assert 'aria_turns_total{finish_reason="stop"} 2.0' in metrics
    assert 'aria_tokens_total{kind="output"} 40.0' in metrics
    assert "aria_active_streams 1.0" in metrics
    assert "aria_ttft_seconds_count 2.0" in metrics
    assert "aria_cost_usd_total" in metrics
    assert "aria_breaker_state" in metrics


async def test_every_response_carries_a_request_id(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        ok = await http.get("/health")
        echoed = await http.get("/health", headers={"X-Request-ID": "client-id-1"})
        refused = await http.get("/health", headers={"X-Request-ID": "bad id with spaces"})
        missing = await http.get(f"{CHAT}/sessions/00000000-0000-4000-8000-000000000000")
    assert len(ok.headers["X-Request-ID"]) == 32
    assert echoed.headers["X-Request-ID"] == "client-id-1"
    assert refused.headers["X-Request-ID"] != "bad id with spaces"
    assert missing.headers["X-Request-ID"]


async def test_framework_errors_use_the_error_body(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        not_found = await http.get("/api/engine/chat/nothing-here")
        wrong_method = await http.put(f"{CHAT}/sessions")
    assert not_found.status_code == 404
    assert not_found.json() == {"error": {"code": "not_found", "message": "Not Found."}}
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_a_body_over_the_limit_is_413(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        session_id = (await http.post(f"{CHAT}/sessions", json={})).json()["id"]
        response = await http.post(
            f"{CHAT}/sessions/{session_id}/messages",
            content=b'{"content": "' + b"x" * (3 * 1024 * 1024) + b'"}',
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_the_web_ui_is_served_at_the_root_without_shadowing_the_api(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        page = await http.get("/")
        api = await http.get("/health")
        missing = await http.get("/no-such-file.js")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert api.json()["status"] == "ok"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_shutdown_ends_a_running_turn_as_interrupted(
    api_config: Callable[..., EngineConfig], fake_llm: FakeLLM, db_factory: async_sessionmaker[AsyncSession]
) -> None:
    fake_llm.enqueue(Stall(after=2, seconds=60, reply=Reply("never finished")))
    config = api_config(keep_turn_on_disconnect=True)
    with serve(config) as server:
        async with server.client() as http:
            session_id = (await http.post(f"{CHAT}/sessions", json={})).json()["id"]
        async with server.websocket(session_id) as ws:
            await send_json(ws, {"type": "message", "content": "go"})
            await read_until(ws, lambda e: e["type"] == "token" and e["seq"] == 3)
    with serve(config) as restarted:
        async with restarted.client() as http:
            messages = (await http.get(f"{CHAT}/sessions/{session_id}/messages")).json()["items"]
            session = (await http.get(f"{CHAT}/sessions/{session_id}")).json()
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[-1]["finish_reason"] == "interrupted"
    assert messages[-1]["content"] == "never finished"[: len(messages[-1]["content"])]
    assert session["message_count"] == 2
    await assert_totals_match(db_factory, session_id)


async def test_while_serving_full_collections_are_rarer_and_start_up_is_frozen_out_of_them(
    api_config: Callable[..., EngineConfig],
) -> None:
    # With 1,000 sockets a full collection stopped every stream for 120-200 ms: while the service runs
    # they come after 100 younger collections instead of 10; an app that ends leaves the process as it was.
    from main import create_app

    before = gc.get_threshold()
    app = create_app(api_config())
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == (before[0], before[1], 100)
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
