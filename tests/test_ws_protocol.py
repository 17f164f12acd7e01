"""The WebSocket chat protocol (SPEC 9.1) against the real server, a real client and the fake provider."""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.exceptions import ConnectionClosed

from aria_engine.streaming import StreamManager
from aria_engine.testing.fake_llm import FakeLLM, Reply, Stall, ToolCall
from aria_engine.turn_log import MemoryTurnEventLog
from tests.plugins.live_server import (
    LiveServer,
    assert_totals_match,
    read_turn,
    read_until,
    recv_json,
    send_json,
)

Factory = async_sessionmaker[AsyncSession]


async def _session(server: LiveServer, **body: Any) -> str:
    async with server.client() as http:
        response = await http.post("/api/engine/chat/sessions", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


async def _messages(server: LiveServer, session_id: str) -> list[dict[str, Any]]:
    async with server.client() as http:
        response = await http.get(f"/api/engine/chat/sessions/{session_id}/messages")
        assert response.status_code == 200
        return list(response.json()["items"])


def _assert_one_turn(events: list[dict[str, Any]]) -> None:
    """start first, done last and once, seq 1..n, one turn_id."""
    assert events[0]["type"] == "start"
    assert [e["type"] for e in events].count("done") == 1
    assert events[-1]["type"] == "done"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({e["turn_id"] for e in events}) == 1


async def test_a_turn_streams_start_token_deltas_usage_and_one_done(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(Reply("Hello there, friend."))
    session_id = await _session(live_server)
    async with live_server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "Hi"})
        events = await read_turn(ws)
    _assert_one_turn(events)
    tokens = [e["content"] for e in events if e["type"] == "token"]
    assert len(tokens) > 1  # deltas, not one snapshot
    assert "".join(tokens) == "Hello there, friend."
    assert events[0]["session_id"] == session_id
    done = events[-1]
    assert done["finish_reason"] == "stop"
    assert done["output_tokens"] > 0
    stored = await _messages(live_server, session_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["id"] == events[0]["message_id"]
    assert stored[1]["id"] == done["message_id"]
    assert stored[1]["content"] == "Hello there, friend."


async def test_thinking_and_tool_events_arrive_in_order(live_server: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(
        Reply(
            "",
            thinking="I should add.",
            tool_calls=[ToolCall("calculate", {"expression": "2+3"}, id="call_1")],
        ),
        Reply("It is 5."),
    )
    session_id = await _session(live_server)
    async with live_server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "2+3?", "enable_thinking": True})
        events = await read_turn(ws)
    _assert_one_turn(events)
    types = [e["type"] for e in events]
    assert "".join(e["content"] for e in events if e["type"] == "thinking") == "I should add."
    call = next(e for e in events if e["type"] == "tool_call")
    result = next(e for e in events if e["type"] == "tool_result")
    assert (call["id"], call["name"]) == ("call_1", "calculate")
    assert (result["id"], result["name"], result["success"]) == ("call_1", "calculate", True)
    assert "5" in result["content"]
    assert (
        types.index("thinking") < types.index("tool_call") < types.index("tool_result") < types.index("token")
    )
    assert "".join(e["content"] for e in events if e["type"] == "token") == "It is 5."


async def test_ping_mid_turn_gets_a_pong_and_cancel_ends_the_turn_cancelled(
    live_server: LiveServer, fake_llm: FakeLLM, db_factory: Factory
) -> None:
    fake_llm.enqueue(Stall(after=2, seconds=60, reply=Reply("one two three four five")))
    session_id = await _session(live_server)
    async with live_server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "count"})
        first = await read_until(ws, lambda e: e["type"] == "token" and e["seq"] == 3)
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}
        await send_json(ws, {"type": "cancel"})
        events = await read_turn(ws, first)
    _assert_one_turn(events)
    assert events[-1]["finish_reason"] == "cancelled"
    assert await asyncio.to_thread(fake_llm.wait_for_disconnects, 1)  # the upstream call was closed
    assistant = (await _messages(live_server, session_id))[-1]
    assert assistant["role"] == "assistant"
    assert assistant["finish_reason"] == "cancelled"
    assert assistant["content"] == "".join(e["content"] for e in events if e["type"] == "token")
    # The closing `done` is the engine's own: it names the persisted row and counts what streamed.
    assert events[-1]["message_id"] == assistant["id"]
    assert events[-1]["output_tokens"] == assistant["output_tokens"] > 0
    await assert_totals_match(db_factory, session_id)


async def test_a_second_message_while_a_turn_runs_gets_session_busy(
    live_server: LiveServer, fake_llm: FakeLLM, db_factory: Factory
) -> None:
    fake_llm.enqueue(Stall(after=1, seconds=60, reply=Reply("slow answer here")))
    session_id = await _session(live_server)
    async with live_server.websocket(session_id) as ws, live_server.websocket(session_id) as other:
        await send_json(ws, {"type": "message", "content": "first"})
        first = await read_until(ws, lambda e: e["type"] == "token")
        await send_json(ws, {"type": "message", "content": "second"})
        busy = await recv_json(ws)
        await send_json(other, {"type": "message", "content": "from another socket"})
        busy_elsewhere = await recv_json(other)
        async with live_server.client() as http:
            rest = await http.post(
                f"/api/engine/chat/sessions/{session_id}/messages", json={"content": "rest"}
            )
        await send_json(ws, {"type": "cancel"})
        events = await read_turn(ws, first)
    assert busy["type"] == busy_elsewhere["type"] == "error"
    assert busy["code"] == busy_elsewhere["code"] == "session_busy"
    assert rest.status_code == 409
    assert rest.json()["error"]["code"] == "session_busy"
    _assert_one_turn(events)
    await assert_totals_match(db_factory, session_id)


async def test_bad_json_and_unknown_types_get_error_events_and_the_socket_stays_open(
    live_server: LiveServer,
) -> None:
    session_id = await _session(live_server)
    async with live_server.websocket(session_id) as ws:
        await ws.send("{not json")
        assert (await recv_json(ws))["code"] == "invalid_json"
        await send_json(ws, {"type": "dance"})
        assert (await recv_json(ws))["code"] == "unknown_type"
        await ws.send("[1, 2]")
        assert (await recv_json(ws))["code"] == "unknown_type"
        await send_json(ws, {"type": "message", "content": ""})
        assert (await recv_json(ws))["code"] == "invalid_request"
        await send_json(ws, {"type": "resume", "turn_id": "nope", "after_seq": 0})
        assert (await recv_json(ws))["code"] == "turn_not_found"
        await send_json(ws, {"type": "ping"})
        assert await recv_json(ws) == {"type": "pong"}


async def test_a_client_that_stops_reading_does_not_hold_up_its_turn(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    # ~4 MB of answer is more than the client's 16 KB receive buffer, the server's send buffer and
    # uvicorn's write buffer hold, so sends to a client that reads nothing have to wait; the turn must
    # still end at the provider's pace (its task logs, the socket's forwarder sends), and the client,
    # once it reads again, get every event exactly once and in order.
    text = "".join(f"{i:06d}" + "x" * 2042 for i in range(2000))
    fake_llm.enqueue(Reply(text, chunk_size=2048))
    session_id = await _session(live_server)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    address = urlsplit(live_server.base_url)
    sock.connect((address.hostname, address.port))
    async with live_server.websocket(session_id, sock=sock, max_queue=4, max_size=None) as ws:
        await send_json(ws, {"type": "message", "content": "a long answer, please"})
        for _ in range(1200):  # waits at most a minute: a broken server fails rather than hangs
            messages = await _messages(live_server, session_id)
            if messages[1:]:  # the assistant row: the turn has ended
                break
            await asyncio.sleep(0.05)
        assert messages[-1]["content"] == text and messages[-1]["finish_reason"] == "stop"
        events = await read_turn(ws)
    _assert_one_turn(events)
    assert "".join(e["content"] for e in events if e["type"] == "token") == text
    assert events[-1]["finish_reason"] == "stop"


@pytest.mark.parametrize("enabled", [False, True], ids=["default-off", "enabled"])
async def test_compression_is_accepted_only_when_enabled(
    start_server: Any, api_config: Any, enabled: bool
) -> None:
    # A client offering permessage-deflate, as every browser does: declined unless ARIA_WS_COMPRESSION.
    server = start_server(api_config(ws_compression=enabled))
    session_id = await _session(server)
    async with server.websocket(session_id, compression="deflate") as ws:
        negotiated = [extension.name for extension in ws.protocol.extensions]
        await send_json(ws, {"type": "message", "content": "Hello"})
        events = await read_turn(ws)
    assert negotiated == (["permessage-deflate"] if enabled else [])
    _assert_one_turn(events)
    assert "".join(e["content"] for e in events if e["type"] == "token")


async def test_a_frame_over_the_size_limit_closes_with_1009(start_server: Any, api_config: Any) -> None:
    server = start_server(api_config(ws_max_frame_bytes=4096))
    session_id = await _session(server)
    async with server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "x" * 5000})
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_disconnect_mid_turn_cancels_it_and_persists_the_partial_as_disconnected(
    live_server: LiveServer, fake_llm: FakeLLM, db_factory: Factory
) -> None:
    fake_llm.enqueue(Stall(after=2, seconds=60, reply=Reply("alpha beta gamma delta")))
    session_id = await _session(live_server)
    async with live_server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "go"})
        seen = await read_until(ws, lambda e: e["type"] == "token" and e["seq"] == 3)
    assert await asyncio.to_thread(fake_llm.wait_for_disconnects, 1)
    streamed = "".join(e["content"] for e in seen if e["type"] == "token")
    assistant = await _wait_for_assistant(live_server, session_id)
    assert assistant["finish_reason"] == "disconnected"
    assert assistant["content"] == streamed
    async with live_server.client() as http:
        session = (await http.get(f"/api/engine/chat/sessions/{session_id}")).json()
    assert session["message_count"] == 2
    await assert_totals_match(db_factory, session_id)


async def _wait_for_assistant(server: LiveServer, session_id: str) -> dict[str, Any]:
    """The assistant row, once the server has persisted it (polled; bounded)."""
    async with asyncio.timeout(30):
        while True:
            rows = [m for m in await _messages(server, session_id) if m["role"] == "assistant"]
            if rows:
                return rows[-1]
            await asyncio.sleep(0.05)


async def test_an_unknown_session_is_refused_with_an_error_event_and_1008(live_server: LiveServer) -> None:
    async with live_server.websocket("00000000-0000-4000-8000-000000000000") as ws:
        error = await recv_json(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert error["type"] == "error"
    assert error["code"] == "session_not_found"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_a_message_to_an_ended_session_gets_session_ended(live_server: LiveServer) -> None:
    session_id = await _session(live_server)
    async with live_server.client() as http:
        assert (await http.delete(f"/api/engine/chat/sessions/{session_id}")).status_code == 200
    async with live_server.websocket(session_id) as ws:
        await send_json(ws, {"type": "message", "content": "hello?"})
        error = await recv_json(ws)
    assert (error["type"], error["code"]) == ("error", "session_ended")


async def test_a_repeated_idempotency_key_replays_the_turn_without_a_new_llm_call(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(Reply("Said once."))
    session_id = await _session(live_server)
    message = {"type": "message", "content": "hi", "idempotency_key": "retry-1"}
    async with live_server.websocket(session_id) as ws:
        await send_json(ws, message)
        first = await read_turn(ws)
    async with live_server.websocket(session_id) as ws:
        await send_json(ws, message)
        again = await read_turn(ws)
    _assert_one_turn(again)
    assert again[-1]["message_id"] == first[-1]["message_id"]
    assert "".join(e["content"] for e in again if e["type"] == "token") == "Said once."
    assert len(fake_llm.requests) == 1
    assert len(await _messages(live_server, session_id)) == 2


async def test_on_start_runs_when_start_is_logged_before_the_turn_reads_on(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    # A socket starts forwarding its turn from `on_start`, so `start` and the first token go out while
    # the provider's answer is still being read, not once `start_turn` has returned.
    engine = await make_engine()
    log = MemoryTurnEventLog()
    manager = StreamManager(engine, engine.config, log)
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Reply("one two three four"))  # the whole answer is ready at once
    logged_at_start: list[list[str]] = []

    def on_start(turn_id: str) -> None:
        logged_at_start.append([orjson.loads(data)["type"] for data in log._turns[turn_id].texts])

    turn_id = await manager.start_turn(session["id"], "o", "hi", on_start=on_start)
    assert logged_at_start == [["start"]]
    events = [orjson.loads(data) async for batch in log.follow(turn_id, 0) for data in batch]
    assert "".join(e["content"] for e in events if e["type"] == "token") == "one two three four"
    assert events[-1]["type"] == "done"
    await manager.aclose()
