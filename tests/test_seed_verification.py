"""The seed's (S2-06) four verification commands, run verbatim as subprocesses, with their expected output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aria_engine.config import REPO_ROOT

COMMAND_1 = (
    "from routers.engine_chat import router, ws_router, register_engine_chat, configure_engine; print('OK')"
)

COMMAND_2 = """
import sys; sys.path.insert(0, 'src/api')
from routers.engine_chat import (
    CreateSessionRequest, CreateSessionResponse,
    SendMessageRequest, SendMessageResponse,
    SessionSummary, SessionDetail, PaginatedSessions,
)
# Test default creation
req = CreateSessionRequest()
assert req.agent_id == 'main'
assert req.context_window == 50

# Test message validation
msg = SendMessageRequest(content='Hello!')
assert msg.content == 'Hello!'
assert msg.enable_thinking == False

# Test response model
resp = SendMessageResponse(message_id='m1', session_id='s1', content='Hi')
assert resp.total_tokens == 0

print('Pydantic models OK')
"""

COMMAND_3 = """
import sys; sys.path.insert(0, 'src/api')
from routers.engine_chat import router, ws_router
routes = [r.path for r in router.routes]
assert '/sessions' in routes or any('/sessions' in str(r.path) for r in router.routes)
print(f'REST routes: {len(router.routes)}')
print(f'WS routes: {len(ws_router.routes)}')
"""

COMMAND_4 = """
import sys; sys.path.insert(0, 'src/api')
from fastapi import FastAPI
from routers.engine_chat import register_engine_chat
app = FastAPI()
register_engine_chat(app)
print(f'Total app routes: {len(app.routes)}')
"""


def _python(code: str, cwd: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_command_1_module_imports_from_the_app_dir() -> None:
    assert _python(COMMAND_1, str(REPO_ROOT / "src" / "api")).strip() == "OK"


def test_command_2_pydantic_models_validate() -> None:
    assert _python(COMMAND_2, str(REPO_ROOT)).strip() == "Pydantic models OK"


def test_command_3_router_has_six_rest_routes_and_one_websocket_route() -> None:
    assert _python(COMMAND_3, str(REPO_ROOT)).splitlines() == ["REST routes: 6", "WS routes: 1"]


def test_command_4_registration_puts_the_routes_in_app_routes() -> None:
    output = _python(COMMAND_4, str(REPO_ROOT)).strip()
    prefix = "Total app routes: "
    assert output.startswith(prefix)
    assert int(output.removeprefix(prefix)) > 6


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/engine/chat/sessions"),
        ("GET", "/api/engine/chat/sessions"),
        ("GET", "/api/engine/chat/sessions/{session_id}"),
        ("POST", "/api/engine/chat/sessions/{session_id}/messages"),
        ("DELETE", "/api/engine/chat/sessions/{session_id}"),
        ("GET", "/api/engine/chat/sessions/{session_id}/export"),
    ],
)
def test_the_seed_router_holds_exactly_the_seed_endpoints(method: str, path: str) -> None:
    from routers.engine_chat import router

    routes = {(m, r.path) for r in router.routes for m in r.methods}  # type: ignore[attr-defined]
    assert (method, path) in routes
    assert len(router.routes) == 6
