"""FastAPI dependencies: the engine objects from `app.state`, the caller's principal, and owned sessions.

Everything is read from `request.app.state` (filled by the lifespan through `configure_engine`), never
from module globals, so each app (and each test) has its own engine and database.

    EngineDep        the ChatEngine
    ConfigDep        the EngineConfig
    PrincipalDep     the caller's principal (Bearer key, or `local` in open mode); counts the request
                     against the principal's rate limit
    OwnedSessionDep  the `{session_id}` session as a dict, if the principal owns it; another principal's
                     session is a 404, exactly like a missing one (the check is done once, here)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from aria_engine.chat_engine import ChatEngine
from aria_engine.config import EngineConfig
from aria_engine.exceptions import AuthError, EngineUnavailable, Forbidden
from aria_engine.ids import parse_session_id

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

__all__ = [
    "ConfigDep",
    "EngineDep",
    "OwnedSessionDep",
    "PrincipalDep",
    "authenticate_websocket",
    "get_config",
    "get_engine",
    "get_owned_session",
    "get_principal",
    "origin_allowed",
    "parse_session_id",
]

_bearer = HTTPBearer(auto_error=False, description="An API key from `aria-engine keys create`.")


def _state(connection: HTTPConnection, name: str) -> Any:
    value = getattr(connection.app.state, name, None)
    if value is None:
        raise EngineUnavailable("The engine is not ready yet.")
    return value


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread,
# a thread hop on every request for what is an attribute read.
async def get_config(request: Request) -> EngineConfig:
    config: EngineConfig = _state(request, "config")
    return config


async def get_engine(request: Request) -> ChatEngine:
    engine: ChatEngine = _state(request, "engine")
    return engine


async def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    principal: str = await _state(request, "authenticator").principal_for(
        credentials.credentials if credentials else None
    )
    await _state(request, "limiter").hit(principal)
    return principal


EngineDep = Annotated[ChatEngine, Depends(get_engine)]
ConfigDep = Annotated[EngineConfig, Depends(get_config)]
PrincipalDep = Annotated[str, Depends(get_principal)]


async def get_owned_session(session_id: str, engine: EngineDep, principal: PrincipalDep) -> dict[str, Any]:
    return await engine.get_session(parse_session_id(session_id), owner=principal)


OwnedSessionDep = Annotated[dict[str, Any], Depends(get_owned_session)]


def origin_allowed(websocket: WebSocket, config: EngineConfig) -> bool:
    """No Origin (non-browser clients), the same origin, or one in `allowed_origins`."""
    origin = websocket.headers.get("origin")
    if not origin:
        return True
    if "*" in config.allowed_origins or origin.rstrip("/") in {o.rstrip("/") for o in config.allowed_origins}:
        return True
    host = websocket.headers.get("host", "")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


async def authenticate_websocket(websocket: WebSocket, session_id: str) -> str:
    """The socket's principal: a single-use `?ticket=`, else an `Authorization: Bearer` header.

    An API key in the URL is never accepted: URLs end up in logs and browser history.
    """
    config: EngineConfig = _state(websocket, "config")
    if not origin_allowed(websocket, config):
        raise Forbidden("This origin may not open the chat socket.")
    ticket = websocket.query_params.get("ticket")
    if ticket:
        principal: str = await _state(websocket, "tickets").redeem(ticket, session_id)
        return principal
    header = websocket.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if header and (scheme.lower() != "bearer" or not key.strip()):
        raise AuthError("Use `Authorization: Bearer <key>` or a ticket.")
    principal = await _state(websocket, "authenticator").principal_for(key.strip() or None)
    return principal
