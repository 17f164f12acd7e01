"""REST endpoints: every route's success and error paths, with exact status codes and error bodies."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from aria_engine.config import ProviderTimeouts
from aria_engine.testing.fake_llm import FakeLLM, HTTPError, Reply, Stall, Usage
from tests.plugins.live_server import LiveServer

CHAT = "/api/engine/chat"
MISSING = "00000000-0000-4000-8000-000000000000"


async def _create(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await http.post(f"{CHAT}/sessions", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


async def test_create_session_uses_the_seed_defaults(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        session = await _create(http)
        detail = (await http.get(f"{CHAT}/sessions/{session['id']}")).json()
    assert session["agent_id"] == "main"
    assert session["status"] == "active"
    assert session["session_type"] == "interactive"
    assert session["model"] == "fake-model"
    assert session["created_at"]
    assert detail["context_window"] == 50
    assert detail["messages"] == []
    assert detail["has_more"] is False


async def test_create_session_rejects_an_unknown_model_with_400_listing_valid_ids(
    live_server: LiveServer,
) -> None:
    async with live_server.client() as http:
        response = await http.post(f"{CHAT}/sessions", json={"model": "gpt-nope"})
    body = _error(response, 400, "unknown_model")
    assert "fake-model" in body["error"]["message"]


async def test_create_session_validates_its_body_with_422(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        too_hot = await http.post(f"{CHAT}/sessions", json={"temperature": 3})
        no_window = await http.post(f"{CHAT}/sessions", json={"context_window": 0})
        not_json = await http.post(
            f"{CHAT}/sessions", content=b"{oops", headers={"Content-Type": "application/json"}
        )
        bad_agent = await http.post(f"{CHAT}/sessions", json={"agent_id": "../etc"})
    assert _error(too_hot, 422, "validation_error")["error"]["details"][0]["loc"] == ["body", "temperature"]
    _error(no_window, 422, "validation_error")
    _error(not_json, 422, "validation_error")
    _error(bad_agent, 400, "invalid_request")


async def test_send_message_returns_the_collected_reply_with_usage_and_exact_cost(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(Reply("Hi, how can I help?", usage=Usage(1000, 2000)))
    async with live_server.client() as http:
        session = await _create(http)
        response = await http.post(f"{CHAT}/sessions/{session['id']}/messages", json={"content": "Hello!"})
        detail = (await http.get(f"{CHAT}/sessions/{session['id']}")).json()
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["content"] == "Hi, how can I help?"
    assert reply["session_id"] == session["id"]
    assert reply["finish_reason"] == "stop"
    assert (reply["input_tokens"], reply["output_tokens"], reply["total_tokens"]) == (1000, 2000, 3000)
    # fake-model: 1.25 USD / 1M input, 10 USD / 1M output
    assert reply["cost"] == "0.02125"
    assert reply["cost_usd"] == 0.02125
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["messages"][1]["id"] == reply["message_id"]
    assert detail["total_cost_usd"] == "0.02125"
    assert detail["total_tokens"] == 3000


async def test_send_message_validates_content(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        session = await _create(http)
        url = f"{CHAT}/sessions/{session['id']}/messages"
        empty = await http.post(url, json={"content": ""})
        too_long = await http.post(url, json={"content": "x" * 100_001})
        missing = await http.post(url, json={})
    _error(empty, 422, "validation_error")
    _error(too_long, 422, "validation_error")
    _error(missing, 422, "validation_error")


async def test_unknown_and_malformed_session_ids_are_404_on_every_session_route(
    live_server: LiveServer,
) -> None:
    async with live_server.client() as http:
        for session_id in (MISSING, "not-a-uuid"):
            base = f"{CHAT}/sessions/{session_id}"
            responses = [
                await http.get(base),
                await http.post(f"{base}/messages", json={"content": "hi"}),
                await http.delete(base),
                await http.get(f"{base}/export"),
                await http.get(f"{base}/messages"),
                await http.patch(base, json={"title": "x"}),
                await http.post(f"{base}/reopen"),
            ]
            for response in responses:
                _error(response, 404, "session_not_found")


async def test_provider_failure_is_502_without_internal_text(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(HTTPError(500, body={"error": {"message": "SECRET upstream stack trace"}}))
    async with live_server.client() as http:
        session = await _create(http)
        response = await http.post(f"{CHAT}/sessions/{session['id']}/messages", json={"content": "hi"})
    _error(response, 502, "provider_unavailable")
    assert "SECRET" not in response.text
    assert response.headers["X-Request-ID"]


async def test_ended_session_refuses_messages_with_410_until_reopened(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    async with live_server.client() as http:
        session = await _create(http)
        base = f"{CHAT}/sessions/{session['id']}"
        ended = await http.delete(base)
        refused = await http.post(f"{base}/messages", json={"content": "hi"})
        listed = (await http.get(f"{CHAT}/sessions", params={"status": "ended"})).json()
        reopened = await http.post(f"{base}/reopen")
        accepted = await http.post(f"{base}/messages", json={"content": "hi"})
    assert ended.status_code == 200
    assert ended.json() == {"status": "ended", "session_id": session["id"]}
    _error(refused, 410, "session_ended")
    assert [s["id"] for s in listed["items"]] == [session["id"]]
    assert reopened.status_code == 200 and reopened.json()["status"] == "active"
    assert accepted.status_code == 200


async def test_delete_with_purge_removes_the_session(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        session = await _create(http)
        base = f"{CHAT}/sessions/{session['id']}"
        purged = await http.delete(base, params={"purge": "true"})
        gone = await http.get(base)
    assert purged.json() == {"status": "deleted", "session_id": session["id"]}
    _error(gone, 404, "session_not_found")


async def test_list_sessions_paginates_and_filters(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        ids = [(await _create(http, agent_id=agent))["id"] for agent in ("main", "main", "helper")]
        first = (await http.get(f"{CHAT}/sessions", params={"page_size": 2})).json()
        second = (await http.get(f"{CHAT}/sessions", params={"page_size": 2, "page": 2})).json()
        helper = (await http.get(f"{CHAT}/sessions", params={"agent_id": "helper"})).json()
        bad = await http.get(f"{CHAT}/sessions", params={"page_size": 1000})
        bad_status = await http.get(f"{CHAT}/sessions", params={"status": "sleeping"})
    assert (first["total"], first["pages"], first["page"], first["page_size"]) == (3, 2, 1, 2)
    assert len(first["items"]) == 2 and len(second["items"]) == 1
    assert {s["id"] for s in first["items"] + second["items"]} == set(ids)
    assert [s["id"] for s in helper["items"]] == [ids[2]]
    _error(bad, 422, "validation_error")
    _error(bad_status, 422, "validation_error")


async def test_search_finds_sessions_by_message_content(live_server: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(Reply("Noted."), Reply("Noted."))
    async with live_server.client() as http:
        zebra = await _create(http)
        other = await _create(http)
        await http.post(f"{CHAT}/sessions/{zebra['id']}/messages", json={"content": "tell me about zebras"})
        await http.post(f"{CHAT}/sessions/{other['id']}/messages", json={"content": "tell me about lions"})
        found = (await http.get(f"{CHAT}/sessions", params={"q": "zebras"})).json()
        none = (await http.get(f"{CHAT}/sessions", params={"q": "giraffes"})).json()
    assert [s["id"] for s in found["items"]] == [zebra["id"]]
    assert none["items"] == [] and none["total"] == 0


async def test_messages_are_paginated_by_seq(live_server: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(Reply("one"), Reply("two"))
    async with live_server.client() as http:
        session = await _create(http)
        base = f"{CHAT}/sessions/{session['id']}"
        for text in ("first", "second"):
            assert (await http.post(f"{base}/messages", json={"content": text})).status_code == 200
        page1 = (await http.get(f"{base}/messages", params={"limit": 3})).json()
        page2 = (await http.get(f"{base}/messages", params={"after_seq": page1["next_after_seq"]})).json()
        newest = (await http.get(base, params={"limit": 2})).json()
    assert [m["seq"] for m in page1["items"]] == [1, 2, 3]
    assert page1["has_more"] is True
    assert [m["seq"] for m in page2["items"]] == [4]
    assert page2["has_more"] is False and page2["next_after_seq"] is None
    assert [m["seq"] for m in newest["messages"]] == [3, 4]
    assert newest["has_more"] is True


async def test_patch_updates_only_the_given_fields(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        session = await _create(http, metadata={"a": 1})
        base = f"{CHAT}/sessions/{session['id']}"
        renamed = await http.patch(base, json={"title": "Trip plans"})
        switched = await http.patch(base, json={"model": "fake-alt"})
        unknown = await http.patch(base, json={"model": "nope"})
        detail = (await http.get(base)).json()
    assert renamed.status_code == 200 and renamed.json()["title"] == "Trip plans"
    assert switched.json()["model"] == "fake-alt"
    _error(unknown, 400, "unknown_model")
    assert (detail["title"], detail["model"], detail["metadata"]) == ("Trip plans", "fake-alt", {"a": 1})


async def test_export_streams_jsonl_and_markdown_and_rejects_unknown_formats(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(Reply("Exported *answer*"))
    async with live_server.client() as http:
        session = await _create(http)
        base = f"{CHAT}/sessions/{session['id']}"
        await http.post(f"{base}/messages", json={"content": "question"})
        jsonl = await http.get(f"{base}/export")
        markdown = await http.get(f"{base}/export", params={"format": "markdown"})
        bad = await http.get(f"{base}/export", params={"format": "pdf"})
    assert jsonl.status_code == 200
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    assert f'filename="{session["id"]}.jsonl"' in jsonl.headers["content-disposition"]
    lines = [orjson.loads(line) for line in jsonl.content.splitlines() if line.strip()]
    assert [line.get("role") for line in lines[1:]] == ["user", "assistant"]
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "question" in markdown.text
    _error(bad, 422, "validation_error")


async def test_import_creates_a_new_session_from_an_export(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(Reply("Round trip."))
    async with live_server.client() as http:
        session = await _create(http)
        base = f"{CHAT}/sessions/{session['id']}"
        await http.post(f"{base}/messages", json={"content": "hello"})
        exported = (await http.get(f"{base}/export")).content
        imported = await http.post(
            f"{CHAT}/sessions/import",
            content=exported + b"\n{corrupt line\n",
            headers={"Content-Type": "application/x-ndjson"},
        )
        empty = await http.post(
            f"{CHAT}/sessions/import", content=b"", headers={"Content-Type": "application/x-ndjson"}
        )
        copy = (await http.get(f"{CHAT}/sessions/{imported.json()['session_id']}")).json()
    assert imported.status_code == 201, imported.text
    result = imported.json()
    assert result["imported"] == 2 and result["skipped"] == 1
    assert result["session_id"] != session["id"]
    assert [m["content"] for m in copy["messages"]] == ["hello", "Round trip."]
    _error(empty, 400, "invalid_request")


async def test_models_lists_the_catalog_with_the_default_marked(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        response = await http.get("/api/engine/models")
    assert response.status_code == 200
    body = response.json()
    assert body["default_model"] == "fake-model"
    by_id = {m["id"]: m for m in body["items"]}
    assert by_id["fake-model"]["default"] is True
    assert by_id["fake-model"]["input_price"] == "1.25"
    assert by_id["fake-alt"]["default"] is False


async def test_idempotency_key_replays_the_first_reply_without_a_second_llm_call(
    live_server: LiveServer, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(Reply("Only once."))
    async with live_server.client() as http:
        session = await _create(http)
        url = f"{CHAT}/sessions/{session['id']}/messages"
        first = await http.post(url, json={"content": "hi"}, headers={"Idempotency-Key": "k-1"})
        again = await http.post(url, json={"content": "hi", "idempotency_key": "k-1"})
        detail = (await http.get(f"{CHAT}/sessions/{session['id']}")).json()
    assert first.status_code == again.status_code == 200
    assert again.json()["message_id"] == first.json()["message_id"]
    assert again.json()["content"] == "Only once."
    assert len(fake_llm.requests) == 1
    assert detail["message_count"] == 2


async def test_nul_characters_are_refused_with_422_on_both_backends(live_server: LiveServer) -> None:
    """PostgreSQL cannot store NUL: the API refuses it at the edge instead of failing in the database."""
    async with live_server.client() as http:
        titled = await http.post(f"{CHAT}/sessions", json={"title": "a\u0000b"})
        tagged = await http.post(f"{CHAT}/sessions", json={"metadata": {"k": ["x\u0000"]}})
        session = await _create(http)
        base = f"{CHAT}/sessions/{session['id']}"
        sent = await http.post(f"{base}/messages", json={"content": "a\u0000b"})
        renamed = await http.patch(base, json={"title": "\u0000"})
        searched = await http.get(f"{CHAT}/sessions", params={"q": "\u0000"})
    for response in (titled, tagged, sent, renamed, searched):
        _error(response, 422, "validation_error")


async def test_a_provider_that_never_answers_is_504(
    start_server: Any, api_config: Any, fake_llm: FakeLLM
) -> None:
    server = start_server(api_config(timeouts=ProviderTimeouts(first_token=0.5)))
    fake_llm.enqueue(Stall(after=0, seconds=30))
    async with server.client() as http:
        session = await _create(http)
        response = await http.post(f"{CHAT}/sessions/{session['id']}/messages", json={"content": "hi"})
    _error(response, 504, "provider_timeout")


async def test_an_open_circuit_is_503_with_retry_after(
    start_server: Any, api_config: Any, fake_llm: FakeLLM
) -> None:
    server = start_server(api_config(breaker_failure_threshold=1, breaker_reset_seconds=600))
    fake_llm.enqueue(HTTPError(503))
    async with server.client() as http:
        session = await _create(http)
        url = f"{CHAT}/sessions/{session['id']}/messages"
        failed = await http.post(url, json={"content": "hi"})
        paused = await http.post(url, json={"content": "again"})
    _error(failed, 502, "provider_unavailable")
    _error(paused, 503, "circuit_open")
    assert int(paused.headers["Retry-After"]) >= 1
