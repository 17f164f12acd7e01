"""The endpoints SPEC section 9 adds to the seed's six (kept off `engine_chat.router` so its count holds).

GET    /api/engine/chat/sessions/{id}/messages?after_seq=&limit=   history, paginated by seq
PATCH  /api/engine/chat/sessions/{id}                              title, model, metadata
POST   /api/engine/chat/sessions/{id}/reopen                       ended -> active
POST   /api/engine/chat/sessions/import?format=jsonl|openclaw      body: the exported file
POST   /api/engine/chat/ws-ticket                                  single-use WebSocket ticket
GET    /api/engine/models                                          the model catalog
"""

from __future__ import annotations

from typing import Any

from deps import EngineDep, OwnedSessionDep, PrincipalDep, get_owned_session
from fastapi import APIRouter, Query, Request
from fields import JsonObject, Text
from pydantic import BaseModel, Field

from aria_engine.importers import import_session, iter_text_lines
from routers.engine_chat import SessionSummary, summary_of

__all__ = ["chat_extra_router", "models_router"]

chat_extra_router = APIRouter(prefix="/api/engine/chat", tags=["Engine Chat"])
models_router = APIRouter(prefix="/api/engine", tags=["Models"])


class MessagePage(BaseModel):
    items: list[dict[str, Any]]
    has_more: bool
    next_after_seq: int | None = Field(description="Pass as after_seq for the next page (null at the end)")


class UpdateSessionRequest(BaseModel):
    """Only the fields present are changed."""

    title: Text | None = Field(default=None, min_length=1, max_length=200)
    model: Text | None = Field(default=None, min_length=1, max_length=200)
    metadata: JsonObject | None = None


class ImportResponse(BaseModel):
    session_id: str
    imported: int
    skipped: int
    off_branch: int = 0
    problems: list[dict[str, Any]] = Field(default_factory=list)


class TicketRequest(BaseModel):
    session_id: str | None = Field(default=None, max_length=64, description="Bind the ticket to one session")


class TicketResponse(BaseModel):
    ticket: str
    expires_in: float


class ModelSummary(BaseModel):
    id: str
    provider: str
    aliases: list[str] = Field(default_factory=list)
    available: bool = True
    context_window: int | None = None
    max_output_tokens: int | None = None
    input_price: str | None = Field(default=None, description="USD per 1M input tokens")
    output_price: str | None = Field(default=None, description="USD per 1M output tokens")
    supports_tools: bool = False
    reasoning: bool = False
    is_demo: bool = False
    description: str | None = None
    default: bool = False


class ModelList(BaseModel):
    items: list[ModelSummary]
    default_model: str | None


@chat_extra_router.get("/sessions/{session_id}/messages", response_model=MessagePage)
async def list_messages(
    session: OwnedSessionDep,
    engine: EngineDep,
    principal: PrincipalDep,
    after_seq: int = Query(default=0, ge=0, le=2**31 - 1),
    limit: int = Query(default=100, ge=1, le=500),
) -> MessagePage:
    """Messages with seq > after_seq, oldest first, at most `limit`."""
    items, has_more = await engine.list_messages(
        session["id"], owner=principal, after_seq=after_seq, limit=limit
    )
    next_after = items[-1]["seq"] if items and has_more else None
    return MessagePage(items=items, has_more=has_more, next_after_seq=next_after)


@chat_extra_router.patch("/sessions/{session_id}", response_model=SessionSummary)
async def update_session(
    body: UpdateSessionRequest, session: OwnedSessionDep, engine: EngineDep, principal: PrincipalDep
) -> SessionSummary:
    """Rename a session, switch its model (validated against the catalog) or replace its metadata."""
    changes = body.model_dump(include=body.model_fields_set, exclude_none=True)
    updated = await engine.update_session(session["id"], owner=principal, **changes)
    return summary_of(updated)


@chat_extra_router.post("/sessions/{session_id}/reopen", response_model=SessionSummary)
async def reopen_session(
    session: OwnedSessionDep, engine: EngineDep, principal: PrincipalDep
) -> SessionSummary:
    """Make an ended session active again."""
    return summary_of(await engine.reopen_session(session["id"], owner=principal))


@chat_extra_router.post(
    "/sessions/import",
    response_model=ImportResponse,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
async def import_session_endpoint(
    request: Request,
    engine: EngineDep,
    principal: PrincipalDep,
    format: str = Query(default="jsonl", pattern="^(jsonl|openclaw)$"),
    agent_id: Text | None = Query(default=None, max_length=64),
) -> ImportResponse:
    """Import an exported transcript (our jsonl or OpenClaw) as a new session; corrupt lines are skipped
    and listed. The body is read as a stream, never held whole in memory."""
    result = await import_session(
        iter_text_lines(request.stream()),
        engine.db_factory,
        format=format,
        owner=principal,
        agent_id=agent_id,
    )
    return ImportResponse.model_validate(result.to_dict())


@chat_extra_router.post("/ws-ticket", response_model=TicketResponse, status_code=201)
async def create_ws_ticket(
    request: Request, principal: PrincipalDep, engine: EngineDep, body: TicketRequest | None = None
) -> TicketResponse:
    """A single-use ticket to open the WebSocket as `?ticket=...` (browsers cannot set headers on it).
    Bound to `session_id` when one is given (which must be the caller's)."""
    session_id = None
    if body is not None and body.session_id:
        session_id = (await get_owned_session(body.session_id, engine, principal))["id"]
    tickets = request.app.state.tickets
    return TicketResponse(ticket=await tickets.issue(principal, session_id), expires_in=tickets.ttl)


@models_router.get("/models", response_model=ModelList)
async def list_models(engine: EngineDep, principal: PrincipalDep) -> ModelList:
    """The enabled models of the catalog; `default` marks the one new sessions use."""
    gateway = engine.gateway
    default = gateway.default_model
    items = [
        ModelSummary(
            id=info.id,
            provider=info.provider,
            aliases=list(info.aliases),
            available=info.available,
            context_window=info.context_window,
            max_output_tokens=info.max_output_tokens,
            input_price=_price(info.input_price),
            output_price=_price(info.output_price),
            supports_tools=info.supports_tools,
            reasoning=info.reasoning,
            is_demo=info.is_demo,
            description=info.description,
            default=info.id == default,
        )
        for info in gateway.list_models()
    ]
    return ModelList(items=items, default_model=default)


def _price(value: Any) -> str | None:
    return None if value is None else format(value, "f")
