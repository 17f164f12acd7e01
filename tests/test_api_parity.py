"""REST and WebSocket run one turn pipeline: the REST reply equals the folded WebSocket events for the same
scripted provider reply (content, thinking, tool calls and results, usage, cost, finish reason)."""

from __future__ import annotations

from typing import Any

import pytest

from aria_engine.testing.fake_llm import FakeLLM, Reply, Script, ToolCall, Usage
from tests.plugins.live_server import LiveServer, read_turn, send_json

CHAT = "/api/engine/chat"
# Fields that differ between two runs by nature: ids and timings.
RUN_SPECIFIC = {"message_id", "session_id", "turn_id", "latency_ms", "ttft_ms"}


def _fold(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The WebSocket events of one turn, collected the way a client would."""
    done = events[-1]
    thinking = "".join(e["content"] for e in events if e["type"] == "thinking")
    calls = [{k: e[k] for k in ("id", "name", "arguments")} for e in events if e["type"] == "tool_call"]
    results = [
        {k: e[k] for k in ("id", "name", "content", "success")} for e in events if e["type"] == "tool_result"
    ]
    return {
        "content": "".join(e["content"] for e in events if e["type"] == "token"),
        "thinking": thinking or None,
        "tool_calls": calls or None,
        "tool_results": results or None,
        "model": done["model"],
        "input_tokens": done["input_tokens"],
        "output_tokens": done["output_tokens"],
        "reasoning_tokens": done["reasoning_tokens"],
        "total_tokens": done["total_tokens"],
        "cost": done["cost"],
        "finish_reason": done["finish_reason"],
    }


def _scripts() -> list[Script]:
    return [
        Reply(
            "",
            thinking="Need the sum.",
            tool_calls=[ToolCall("calculate", {"expression": "19*3"}, id="call_7")],
            usage=Usage(120, 30, reasoning_tokens=5),
        ),
        Reply("19 times 3 is 57.", usage=Usage(200, 12)),
    ]


@pytest.mark.parametrize("scripted", ["plain", "thinking_and_tools"])
async def test_rest_reply_equals_the_folded_websocket_events(
    live_server: LiveServer, fake_llm: FakeLLM, scripted: str
) -> None:
    def enqueue() -> None:
        if scripted == "plain":
            fake_llm.enqueue(Reply("Same words both ways.", usage=Usage(50, 6)))
        else:
            fake_llm.enqueue(*_scripts())

    async with live_server.client() as http:
        rest_session = (await http.post(f"{CHAT}/sessions", json={})).json()["id"]
        ws_session = (await http.post(f"{CHAT}/sessions", json={})).json()["id"]
        enqueue()
        rest = await http.post(
            f"{CHAT}/sessions/{rest_session}/messages",
            json={"content": "What is 19*3?", "enable_thinking": True},
        )
    enqueue()
    async with live_server.websocket(ws_session) as ws:
        await send_json(ws, {"type": "message", "content": "What is 19*3?", "enable_thinking": True})
        events = await read_turn(ws)
    assert rest.status_code == 200, rest.text
    reply = {k: v for k, v in rest.json().items() if k not in RUN_SPECIFIC}
    folded = _fold(events)
    assert {k: reply[k] for k in folded} == folded
    assert reply["cost_usd"] == float(folded["cost"])
    assert (await _stored(live_server, rest_session)) == (await _stored(live_server, ws_session))


async def _stored(server: LiveServer, session_id: str) -> list[tuple[Any, ...]]:
    """What was persisted, without ids and timings."""
    async with server.client() as http:
        items = (await http.get(f"{CHAT}/sessions/{session_id}/messages")).json()["items"]
    keys = (
        "seq",
        "role",
        "content",
        "thinking",
        "tool_calls",
        "tool_call_id",
        "tool_name",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost",
        "finish_reason",
    )
    return [tuple(str(m[k]) for k in keys) for m in items]
