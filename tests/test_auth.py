"""Auth and ownership (SPEC section 10): API keys, open mode, 404 for others' sessions, WebSocket tickets,
Origin allow-list, rate limits, and the refusal to serve open mode on a public address."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aria_engine.auth import Authenticator, create_key, hash_key, revoke_key
from aria_engine.cli import cli
from aria_engine.config import EngineConfig
from aria_engine.db.models import ApiKey
from aria_engine.exceptions import ConfigError
from aria_engine.testing.fake_llm import FakeLLM, Reply, Usage
from tests.plugins.live_server import LiveServer, read_turn, recv_json, send_json

CHAT = "/api/engine/chat"
Factory = async_sessionmaker[AsyncSession]


async def _create(server: LiveServer, key: str | None = None) -> str:
    async with server.client(key) as http:
        response = await http.post(f"{CHAT}/sessions", json={})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


async def _refusal(server: LiveServer, session_id: str, **kwargs: Any) -> tuple[dict[str, Any], int | None]:
    """The error event and close code a refused socket gets."""
    async with server.websocket(session_id, **kwargs) as ws:
        error = await recv_json(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    return error, closed.value.rcvd.code if closed.value.rcvd else None


async def test_open_mode_serves_everyone_as_local(live_server: LiveServer) -> None:
    session_id = await _create(live_server)
    async with live_server.client() as http:
        listed = (await http.get(f"{CHAT}/sessions")).json()
    assert [s["id"] for s in listed["items"]] == [session_id]


async def test_keys_are_stored_hashed_and_required_once_one_exists(
    live_server: LiveServer, db_factory: Factory
) -> None:
    key, info = await create_key(db_factory, "alice")
    async with db_factory() as db:
        row = await db.get(ApiKey, uuid.UUID(info.id))
    assert row is not None and row.key_hash == hash_key(key) and key not in (row.key_hash, row.prefix)
    async with live_server.client() as anonymous, live_server.client("aria_wrong") as wrong:
        missing = await anonymous.get(f"{CHAT}/sessions")
        bad = await wrong.get(f"{CHAT}/sessions")
    assert missing.status_code == bad.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert await _create(live_server, key)
    await revoke_key(db_factory, info.id)
    async with live_server.client(key) as revoked:
        assert (await revoked.get(f"{CHAT}/sessions")).status_code == 401


async def test_another_principals_session_is_404_on_every_route(
    live_server: LiveServer, db_factory: Factory
) -> None:
    alice, _ = await create_key(db_factory, "alice")
    bob, _ = await create_key(db_factory, "bob")
    session_id = await _create(live_server, alice)
    base = f"{CHAT}/sessions/{session_id}"
    async with live_server.client(bob) as http:
        responses = [
            await http.get(base),
            await http.post(f"{base}/messages", json={"content": "hi"}),
            await http.delete(base),
            await http.get(f"{base}/export"),
            await http.get(f"{base}/messages"),
            await http.patch(base, json={"title": "mine now"}),
            await http.post(f"{base}/reopen"),
            await http.post(f"{CHAT}/ws-ticket", json={"session_id": session_id}),
        ]
        listed = (await http.get(f"{CHAT}/sessions")).json()
    assert [(r.status_code, r.json()["error"]["code"]) for r in responses] == [(404, "session_not_found")] * 8
    assert listed["items"] == []
    error, code = await _refusal(live_server, session_id, key=bob)
    assert (error["code"], code) == ("session_not_found", 1008)
    async with live_server.client(alice) as http:
        assert (await http.get(base)).json()["title"] is None  # untouched


async def test_websocket_needs_credentials_and_never_takes_the_key_in_the_url(
    live_server: LiveServer, db_factory: Factory
) -> None:
    key, _ = await create_key(db_factory, "alice")
    session_id = await _create(live_server, key)
    error, code = await _refusal(live_server, session_id)
    assert (error["code"], code) == ("unauthorized", 1008)
    error, code = await _refusal(live_server, session_id, query=f"key={key}&api_key={key}&token={key}")
    assert (error["code"], code) == ("unauthorized", 1008)
    async with live_server.websocket(session_id, key=key) as ws:
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}


async def test_a_ticket_opens_the_socket_once(live_server: LiveServer, db_factory: Factory) -> None:
    key, _ = await create_key(db_factory, "alice")
    session_id = await _create(live_server, key)
    other_id = await _create(live_server, key)
    async with live_server.client(key) as http:
        issued = await http.post(f"{CHAT}/ws-ticket", json={"session_id": session_id})
        unbound = (await http.post(f"{CHAT}/ws-ticket")).json()["ticket"]
    async with live_server.client() as anonymous:
        assert (await anonymous.post(f"{CHAT}/ws-ticket")).status_code == 401
    assert issued.status_code == 201
    ticket = issued.json()["ticket"]
    assert issued.json()["expires_in"] > 0
    async with live_server.websocket(session_id, query=f"ticket={ticket}") as ws:
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}
    error, code = await _refusal(live_server, session_id, query=f"ticket={ticket}")
    assert (error["code"], code) == ("unauthorized", 1008)
    async with live_server.websocket(other_id, query=f"ticket={unbound}") as ws:
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}


async def test_a_ticket_bound_to_one_session_does_not_open_another(
    live_server: LiveServer, db_factory: Factory
) -> None:
    key, _ = await create_key(db_factory, "alice")
    session_id = await _create(live_server, key)
    other_id = await _create(live_server, key)
    async with live_server.client(key) as http:
        ticket = (await http.post(f"{CHAT}/ws-ticket", json={"session_id": session_id})).json()["ticket"]
    error, code = await _refusal(live_server, other_id, query=f"ticket={ticket}")
    assert (error["code"], code) == ("unauthorized", 1008)


async def test_websocket_origin_allow_list(
    start_server: Callable[[EngineConfig], LiveServer], api_config: Callable[..., EngineConfig]
) -> None:
    server = start_server(api_config(allowed_origins=["https://chat.example"]))
    session_id = await _create(server)
    with pytest.raises(InvalidStatus) as refused:
        async with server.websocket(session_id, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    same_origin = server.base_url  # the page the server itself serves
    for origin in ("https://chat.example", same_origin):
        async with server.websocket(session_id, origin=origin) as ws:
            await send_json(ws, {"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}


async def test_request_rate_limit_answers_429_with_retry_after(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    db_factory: Factory,
) -> None:
    server = start_server(api_config(rate_limit_requests_per_minute=3))
    alice, _ = await create_key(db_factory, "alice")
    bob, _ = await create_key(db_factory, "bob")
    async with server.client(alice) as http:
        statuses = [(await http.get(f"{CHAT}/sessions")).status_code for _ in range(3)]
        limited = await http.get(f"{CHAT}/sessions")
    async with server.client(bob) as http:
        other = await http.get(f"{CHAT}/sessions")
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert other.status_code == 200  # per principal


async def test_token_rate_limit_refuses_the_next_turn_once_the_budget_is_spent(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    fake_llm: FakeLLM,
) -> None:
    server = start_server(api_config(rate_limit_tokens_per_minute=100))
    fake_llm.enqueue(Reply("A long answer.", usage=Usage(400, 100)))
    session_id = await _create(server)
    url = f"{CHAT}/sessions/{session_id}/messages"
    async with server.client() as http:
        first = await http.post(url, json={"content": "hi"})
        second = await http.post(url, json={"content": "again"})
    assert first.status_code == 200
    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) >= 1
    async with server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "via socket"})
        error = await recv_json(ws)
    assert (error["type"], error["code"]) == ("error", "rate_limited")


async def test_websocket_turns_count_against_the_token_budget(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    fake_llm: FakeLLM,
) -> None:
    server = start_server(api_config(rate_limit_tokens_per_minute=100))
    fake_llm.enqueue(Reply("Streamed.", usage=Usage(400, 100)))
    session_id = await _create(server)
    async with server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "hi"})
        await read_turn(ws)
    async with server.client() as http:
        refused = await http.post(f"{CHAT}/sessions/{session_id}/messages", json={"content": "more"})
    assert refused.status_code == 429


async def _run_lifespan(config: EngineConfig) -> None:
    from main import create_app

    app = create_app(config)
    async with app.router.lifespan_context(app):
        assert app.state.engine is not None


async def test_open_mode_refuses_a_public_bind_unless_allowed(
    api_config: Callable[..., EngineConfig], db_factory: Factory
) -> None:
    with pytest.raises(ConfigError, match="without API keys"):
        await _run_lifespan(api_config(host="0.0.0.0"))
    await _run_lifespan(api_config(host="0.0.0.0", allow_anonymous=True))
    await create_key(db_factory, "ops")
    await _run_lifespan(api_config(host="0.0.0.0"))
    await _run_lifespan(api_config(host="::1"))


async def test_keys_cli_creates_lists_and_revokes(live_server: LiveServer, database_url: str) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": database_url}

    def invoke(*args: str) -> Any:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        return result

    created = await asyncio.to_thread(
        invoke, "keys", "create", "--name", "ci", "--principal", "team", "--json"
    )
    assert created.exit_code == 0, created.output
    data = orjson.loads(created.stdout)
    key = data["key"]
    assert key.startswith("aria_") and data["principal"] == "team"
    session_id = await _create(live_server, key)
    listed = await asyncio.to_thread(invoke, "keys", "list", "--json")
    rows = orjson.loads(listed.stdout)
    assert [(r["name"], r["principal"], r["revoked_at"]) for r in rows] == [("ci", "team", None)]
    assert key not in listed.stdout
    revoked = await asyncio.to_thread(invoke, "keys", "revoke", data["prefix"])
    assert revoked.exit_code == 0
    missing = await asyncio.to_thread(runner.invoke, cli, ["keys", "revoke", "nope"], env=env)
    assert missing.exit_code == 1 and "no single active key" in missing.output
    async with live_server.client(key) as http:
        assert (await http.get(f"{CHAT}/sessions/{session_id}")).status_code == 401


async def test_key_lookups_are_cached_for_the_configured_time_then_reread(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    db_factory: Factory,
) -> None:
    server = start_server(api_config(auth_cache_seconds=0.5))
    key, info = await create_key(db_factory, "alice")
    async with server.client(key) as http:
        assert (await http.get(f"{CHAT}/sessions")).status_code == 200
        await revoke_key(db_factory, info.id)
        # Within the cache time the answer may be the cached one; after it, the revocation holds.
        statuses = []
        for _ in range(100):
            statuses.append((await http.get(f"{CHAT}/sessions")).status_code)
            if statuses[-1] == 401:
                break
            await asyncio.sleep(0.05)
    assert statuses[-1] == 401
    assert set(statuses) <= {200, 401}


async def test_concurrent_lookups_that_miss_the_cache_share_one_query(db_factory: Factory) -> None:
    # When the cache expires under load, 64 waiting requests must not send 64 identical queries.
    key, _info = await create_key(db_factory, "alice")
    authenticator = Authenticator(db_factory, cache_seconds=60)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "api_keys" in statement:
            seen.append(statement)

    engine = db_factory.kw["bind"].sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        principals = await asyncio.gather(*(authenticator.principal_for(key) for _ in range(64)))
        open_modes = await asyncio.gather(*(authenticator.open_mode() for _ in range(64)))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert principals == ["alice"] * 64
    assert open_modes == [False] * 64
    assert len(seen) == 2  # one per kind of lookup
    assert authenticator._reading == {}  # nothing left in flight
