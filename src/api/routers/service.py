"""Operational endpoints, unauthenticated: `/health` (liveness), `/ready` (database reachable), `/metrics`.

They reveal nothing about sessions: status words, the version, and Prometheus counters.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from metrics import CONTENT_TYPE
from pydantic import BaseModel
from sqlalchemy import text

from aria_engine import __version__
from aria_engine.exceptions import EngineUnavailable

__all__ = ["service_router"]

logger = logging.getLogger("aria.api.service")

service_router = APIRouter(tags=["Service"])


class Health(BaseModel):
    status: str
    version: str


@service_router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process serves requests."""
    return Health(status="ok", version=__version__)


@service_router.get("/ready", response_model=Health, responses={503: {"description": "Not ready"}})
async def ready(request: Request) -> Health:
    """Readiness: the engine is configured and the database answers (503 with Retry-After otherwise)."""
    factory = getattr(request.app.state, "db_factory", None)
    if factory is None or getattr(request.app.state, "engine", None) is None:
        raise EngineUnavailable("The engine is starting.")
    try:
        async with factory() as db:
            await db.execute(text("SELECT 1"))
    except Exception as exc:
        logger.warning("readiness check: database unreachable (%s)", type(exc).__name__)
        raise EngineUnavailable("The database is unreachable.") from exc
    return Health(status="ready", version=__version__)


@service_router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
