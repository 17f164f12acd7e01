"""The FastAPI service: `create_app(config)` and the lifespan that builds and closes the engine.

    app = create_app(EngineConfig(database_url=...))
    uvicorn.run(app, **uvicorn_options(app.state.config))

Routes are registered when the app is built; the object graph is built in the lifespan, in this order:
migrations (SQLite by default), database engine, Redis (if configured), the key check for open mode,
gateway -> tools, prompts, context -> ChatEngine (which marks turns left unfinished by a crash
`interrupted`), the turn event log, rate limiter, tickets and StreamManager. `configure_engine` puts them
on `app.state`. Shutdown cancels in-flight WebSocket turns (persisted as `interrupted`), then closes the
gateway's HTTP clients, Redis and the database pool.

The static web UI (`aria_engine/static/`) is mounted at `/` after every API route, when it exists.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from errors import install_error_handlers
from fastapi import FastAPI
from metrics import ApiMetrics
from middleware import RequestContextMiddleware
from routers.engine_chat import configure_engine, register_engine_chat, register_routes
from routers.engine_extra import chat_extra_router, models_router
from routers.service import service_router
from starlette.staticfiles import StaticFiles

import aria_engine
from aria_engine import __version__
from aria_engine.auth import Authenticator, RateLimiter, TicketStore, check_bind_allowed
from aria_engine.chat_engine import ChatEngine
from aria_engine.config import EngineConfig
from aria_engine.context_manager import ContextManager
from aria_engine.db.engine import create_engine, create_session_factory
from aria_engine.llm_gateway import LLMGateway
from aria_engine.prompts import PromptAssembler
from aria_engine.streaming import StreamManager
from aria_engine.tool_registry import ToolRegistry
from aria_engine.turn_log import MemoryTurnEventLog, RedisTurnEventLog, TurnEventLog

__all__ = ["IMPORT_MAX_BYTES", "MAX_BODY_BYTES", "create_app", "uvicorn_options"]

logger = logging.getLogger("aria.api")

MAX_BODY_BYTES = 2 * 1024 * 1024  # room for a 100,000-character message in any encoding
IMPORT_MAX_BYTES = 256 * 1024 * 1024
FULL_COLLECTION_THRESHOLD = 100  # younger collections per full one while serving (Python: 10)
STATIC_DIR = Path(aria_engine.__file__).parent / "static"


def create_app(config: EngineConfig | None = None) -> FastAPI:
    """Build the app for `config` (from the environment when omitted). Nothing connects until startup."""
    config = config or EngineConfig()
    app = FastAPI(
        title="Aria Engine",
        version=__version__,
        description="Chat engine: persistent sessions, streaming over WebSocket, exports. See docs/API.md.",
        lifespan=_lifespan,
    )
    app.state.config = config
    app.state.metrics = ApiMetrics()
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app.state.metrics,
        max_body_bytes=MAX_BODY_BYTES,
        large_body_paths={"/api/engine/chat/sessions/import": IMPORT_MAX_BYTES},
    )
    register_engine_chat(app)
    register_routes(app, chat_extra_router, models_router, service_router)
    if STATIC_DIR.is_dir():
        # Last: the UI must not shadow any API route.
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    return app


def uvicorn_options(config: EngineConfig) -> dict[str, Any]:
    """Server settings the protocol relies on: keepalive pings, the frame size limit (1009 above it) and
    whether frames may be compressed."""
    return {
        "ws": "websockets-sansio",
        "ws_ping_interval": config.ws_ping_interval,
        "ws_ping_timeout": config.ws_ping_interval,
        "ws_per_message_deflate": config.ws_compression,
        # A little above the app's own limit, so the app answers oversized frames with a clean 1009.
        "ws_max_size": config.ws_max_frame_bytes * 4 + 4096,
    }


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    config: EngineConfig = app.state.config
    async with AsyncExitStack() as stack:
        await _build(app, config, stack)
        # What start-up built lives as long as the app: freeze it out of full collections, which
        # otherwise traverse it every few seconds under load (pauses of 64-175 ms were measured). The
        # collect first leaves garbage out of the frozen set; shutdown unfreezes, so an app that ends
        # in a longer-lived process (the tests start many) can still be collected.
        gc.collect()
        gc.freeze()
        # Full collections only after 100 younger ones instead of 10. With 1,000 open sockets the
        # collector tracks about 300 objects per connection (uvicorn, websockets, asyncio), and each
        # full collection stopped every stream for 120-200 ms, several times a minute under load; young
        # collections still run as before, and the memory soak stays flat.
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], FULL_COLLECTION_THRESHOLD)
        logger.info("Aria Engine ready (database %s)", "sqlite" if config.is_sqlite else "postgresql")
        try:
            yield
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
        logger.info("Aria Engine shutting down")


async def _build(app: FastAPI, config: EngineConfig, stack: AsyncExitStack) -> None:
    if config.should_auto_migrate:
        from aria_engine.db.migrate import upgrade

        await upgrade(config.database_url)
    db_engine = create_engine(
        config.database_url,
        pool_size=config.db_pool_size,
        max_overflow=config.db_max_overflow,
        pool_timeout=config.db_pool_timeout,
    )
    stack.push_async_callback(db_engine.dispose)
    db_factory = create_session_factory(db_engine)

    redis = None
    if config.redis_url:
        from redis.asyncio import Redis

        redis = Redis.from_url(config.redis_url)
        stack.push_async_callback(redis.aclose)

    authenticator = Authenticator(db_factory, cache_seconds=config.auth_cache_seconds)
    await check_bind_allowed(config, authenticator)

    gateway = LLMGateway.from_config(config)
    stack.push_async_callback(gateway.aclose)
    tools = ToolRegistry(config)
    prompts = PromptAssembler(config)
    context = ContextManager(config, gateway.count_tokens)
    engine = ChatEngine(config, db_factory, gateway, tools=tools, context=context, prompts=prompts)
    stack.push_async_callback(engine.aclose)  # background title generation stops before the gateway
    recovered = await engine.recover_interrupted()
    if recovered:
        logger.warning("marked %d unfinished turn(s) interrupted", recovered)

    event_log: TurnEventLog = (
        RedisTurnEventLog(redis, ttl=config.turn_event_ttl)
        if redis is not None
        else MemoryTurnEventLog(ttl=config.turn_event_ttl)
    )
    await event_log.start()
    stack.push_async_callback(event_log.aclose)

    metrics: ApiMetrics = app.state.metrics
    limiter = RateLimiter.from_config(config, redis)
    manager = StreamManager(engine, config, event_log, limiter=limiter, observer=metrics)
    stack.push_async_callback(manager.aclose)  # runs first on shutdown: turns end before the pool closes
    metrics.bind(lambda: manager.active_streams, lambda: manager.active_turns, gateway.breaker_states)

    app.state.db_engine = db_engine
    app.state.db_factory = db_factory
    app.state.redis = redis
    app.state.gateway = gateway
    app.state.authenticator = authenticator
    app.state.limiter = limiter
    app.state.tickets = TicketStore(config.ws_ticket_ttl, redis)
    app.state.event_log = event_log
    configure_engine(config, engine, manager, context, prompts, app=app)
