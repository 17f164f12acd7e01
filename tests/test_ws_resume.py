"""Reconnect + `resume {turn_id, after_seq}`: every missing event exactly once, then the live rest.

In one process the turn event log is in memory; with Redis two replicas share it, so a client can resume
(and cancel) on another replica than the one running its turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aria_engine.config import EngineConfig
from aria_engine.testing.fake_llm import FakeLLM, Reply, Stall
from tests.conftest import REDIS_URL, needs_redis
from tests.plugins.live_server import LiveServer, read_turn, read_until, recv_json, send_json

WORDS = " ".join(f"w{i}" for i in range(1, 25))


async def _session(server: LiveServer) -> str:
    async with server.client() as http:
        response = await http.post("/api/engine/chat/sessions", json={})
        return str(response.json()["id"])


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["content"] for e in events if e["type"] == "token")


async def _start_then_drop(server: LiveServer, session_id: str, upto_seq: int) -> list[dict[str, Any]]:
    async with server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "count"})
        return await read_until(ws, lambda e: e.get("seq") == upto_seq)


async def _resume(server: LiveServer, session_id: str, turn_id: str, after_seq: int) -> list[dict[str, Any]]:
    async with server.websocket(session_id) as ws:
        await send_json(ws, {"type": "resume", "turn_id": turn_id, "after_seq": after_seq})
        return await read_turn(ws)


async def _assert_resumed_exactly_once(
    first: list[dict[str, Any]], rest: list[dict[str, Any]], server: LiveServer, session_id: str
) -> None:
    seqs = [e["seq"] for e in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
    assert rest[-1]["type"] == "done" and rest[-1]["finish_reason"] == "stop"
    assert _text(first + rest) == WORDS
    async with server.client() as http:
        messages = (await http.get(f"/api/engine/chat/sessions/{session_id}/messages")).json()["items"]
    assert messages[-1]["content"] == WORDS


async def test_reconnect_and_resume_mid_turn_receives_each_missing_event_once(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    fake_llm: FakeLLM,
) -> None:
    server = start_server(api_config(keep_turn_on_disconnect=True))
    fake_llm.enqueue(Reply(WORDS, delay=0.02))
    session_id = await _session(server)
    first = await _start_then_drop(server, session_id, upto_seq=4)
    rest = await _resume(server, session_id, first[0]["turn_id"], after_seq=4)
    assert rest[0]["seq"] == 5
    await _assert_resumed_exactly_once(first, rest, server, session_id)


async def test_resume_after_the_turn_finished_replays_from_the_log(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    fake_llm: FakeLLM,
) -> None:
    server = start_server(api_config(keep_turn_on_disconnect=True))
    fake_llm.enqueue(Reply(WORDS))
    session_id = await _session(server)
    async with server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "count"})
        whole = await read_turn(ws)
        await send_json(ws, {"type": "resume", "turn_id": whole[0]["turn_id"], "after_seq": 0})
        replayed = await read_turn(ws)
    assert replayed == whole


async def test_resume_of_another_sessions_turn_is_turn_not_found(live_server: LiveServer) -> None:
    session_id = await _session(live_server)
    other_id = await _session(live_server)
    async with live_server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "hi"})
        events = await read_turn(ws)
    async with live_server.websocket(other_id) as ws:
        await send_json(ws, {"type": "resume", "turn_id": events[0]["turn_id"], "after_seq": 0})
        error = await recv_json(ws)
    assert (error["type"], error["code"]) == ("error", "turn_not_found")


@needs_redis
async def test_resume_on_another_replica_through_redis(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    fake_llm: FakeLLM,
) -> None:
    config = api_config(keep_turn_on_disconnect=True, redis_url=REDIS_URL)
    replica_a, replica_b = start_server(config), start_server(config)
    fake_llm.enqueue(Reply(WORDS, delay=0.02))
    session_id = await _session(replica_a)
    first = await _start_then_drop(replica_a, session_id, upto_seq=4)
    rest = await _resume(replica_b, session_id, first[0]["turn_id"], after_seq=4)
    await _assert_resumed_exactly_once(first, rest, replica_b, session_id)


@needs_redis
async def test_cancel_sent_to_another_replica_stops_the_turn(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    fake_llm: FakeLLM,
) -> None:
    config = api_config(keep_turn_on_disconnect=True, redis_url=REDIS_URL)
    replica_a, replica_b = start_server(config), start_server(config)
    fake_llm.enqueue(Stall(after=2, seconds=60, reply=Reply(WORDS)))
    session_id = await _session(replica_a)
    first = await _start_then_drop(replica_a, session_id, upto_seq=3)
    turn_id = first[0]["turn_id"]
    async with replica_b.websocket(session_id) as ws:
        await send_json(ws, {"type": "resume", "turn_id": turn_id, "after_seq": 3})
        await send_json(ws, {"type": "cancel", "turn_id": turn_id})
        rest = await read_turn(ws)
    assert rest[-1]["finish_reason"] == "cancelled"
    assert [e["seq"] for e in first + rest] == list(range(1, len(first + rest) + 1))
    assert await asyncio.to_thread(fake_llm.wait_for_disconnects, 1)


async def test_by_default_a_dropped_turn_waits_for_a_resume_within_the_grace_period(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    fake_llm: FakeLLM,
) -> None:
    server = start_server(api_config(disconnect_grace_seconds=30))  # keep_turn_on_disconnect stays off
    fake_llm.enqueue(Reply(WORDS, delay=0.02))
    session_id = await _session(server)
    first = await _start_then_drop(server, session_id, upto_seq=4)
    rest = await _resume(server, session_id, first[0]["turn_id"], after_seq=4)
    await _assert_resumed_exactly_once(first, rest, server, session_id)


async def test_a_dropped_turn_nobody_resumes_stops_as_disconnected_after_the_grace_period(
    start_server: Callable[[EngineConfig], LiveServer],
    api_config: Callable[..., EngineConfig],
    fake_llm: FakeLLM,
) -> None:
    server = start_server(api_config(disconnect_grace_seconds=0.5))
    fake_llm.enqueue(Stall(after=2, seconds=60, reply=Reply("alpha beta gamma delta")))
    session_id = await _session(server)
    await _start_then_drop(server, session_id, upto_seq=3)
    assert await asyncio.to_thread(fake_llm.wait_for_disconnects, 1)
    async with server.client() as http:
        for _ in range(300):
            items = (await http.get(f"/api/engine/chat/sessions/{session_id}/messages")).json()["items"]
            if items[-1]["role"] == "assistant":
                break
            await asyncio.sleep(0.05)
    assert (items[-1]["finish_reason"], items[-1]["content"]) == ("disconnected", "alpha beta")
