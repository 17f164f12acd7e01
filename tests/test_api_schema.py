"""The OpenAPI schema is served and usable, and schemathesis fuzzing of every operation finds no 5xx."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.plugins.live_server import LiveServer

CHAT = "/api/engine/chat"
# The import endpoint takes the exported file as its body: send generated strings as they are.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")
EXPECTED_OPERATIONS = {
    ("POST", f"{CHAT}/sessions"),
    ("GET", f"{CHAT}/sessions"),
    ("GET", f"{CHAT}/sessions/{{session_id}}"),
    ("POST", f"{CHAT}/sessions/{{session_id}}/messages"),
    ("DELETE", f"{CHAT}/sessions/{{session_id}}"),
    ("GET", f"{CHAT}/sessions/{{session_id}}/export"),
    ("GET", f"{CHAT}/sessions/{{session_id}}/messages"),
    ("PATCH", f"{CHAT}/sessions/{{session_id}}"),
    ("POST", f"{CHAT}/sessions/{{session_id}}/reopen"),
    ("POST", f"{CHAT}/sessions/import"),
    ("POST", f"{CHAT}/ws-ticket"),
    ("GET", "/api/engine/models"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
}


def _operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item}


async def test_openapi_schema_lists_every_operation_with_the_seed_models(live_server: LiveServer) -> None:
    async with live_server.client() as http:
        response = await http.get("/openapi.json")
        docs = await http.get("/docs")
    assert response.status_code == 200 and docs.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    assert _operations(spec) == EXPECTED_OPERATIONS
    schemas = spec["components"]["schemas"]
    for name in (
        "CreateSessionRequest",
        "CreateSessionResponse",
        "SendMessageRequest",
        "SendMessageResponse",
        "SessionSummary",
        "SessionDetail",
        "PaginatedSessions",
    ):
        assert name in schemas
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    loaded = schemathesis.openapi.from_dict(spec)
    problems = [str(result.err()) for result in loaded.get_all_operations() if not result.ok()]
    assert problems == []


def test_fuzzing_every_operation_finds_no_server_error(live_server: LiveServer) -> None:
    import httpx

    with httpx.Client(base_url=live_server.base_url) as http:
        real_session = http.post(f"{CHAT}/sessions", json={}).json()["id"]
        spec = http.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, live_server.base_url, real_session, failures)
    assert failures == []


def _fuzz(
    operation: Any, mode: GenerationMode, base_url: str, real_session: str, failures: list[str]
) -> None:
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), use_real=st.booleans())
    def run(case: Any, use_real: bool) -> None:
        if use_real and case.path_parameters and "session_id" in case.path_parameters:
            case.path_parameters["session_id"] = real_session
        response = case.call(base_url=base_url, timeout=60)
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
            )
        assert "Traceback" not in response.text

    try:
        run()
    except Unsatisfiable:
        # Negative mode has nothing to break in an operation without parameters or body (/health).
        assert mode is GenerationMode.NEGATIVE
