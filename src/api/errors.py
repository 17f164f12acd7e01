"""The API's one error table: engine exception class -> HTTP status, and the handlers that apply it.

Every error body is `{"error": {"code", "message"}}`. `code` is the exception's stable code and `message`
its client-safe message; internal exception text never reaches a client. Handlers are found by exception
class (Starlette walks the MRO), so route bodies contain no try/except.

Unknown exceptions become a generic 500 that names the request id; the traceback is logged with the same
id, server-side only. Every response carries the id in `X-Request-ID` (see `middleware.py`).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from aria_engine.db.engine import is_transient_database_error
from aria_engine.exceptions import (
    AuthError,
    CircuitOpen,
    ConfigError,
    DatabaseUnavailable,
    EngineError,
    EngineUnavailable,
    Forbidden,
    LLMError,
    PayloadTooLarge,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    SessionBusy,
    SessionEnded,
    SessionError,
    SessionNotFound,
    ToolError,
    UnknownModel,
    ValidationError,
)
from aria_engine.turn_log import TurnNotFound

__all__ = ["STATUS_BY_ERROR", "error_body", "install_error_handlers", "request_id_of", "status_for"]

logger = logging.getLogger("aria.api.errors")

# The one mapping table (SPEC section 9). A subclass not listed takes its nearest listed base's status.
STATUS_BY_ERROR: dict[type[EngineError], HTTPStatus] = {
    EngineError: HTTPStatus.INTERNAL_SERVER_ERROR,
    ConfigError: HTTPStatus.INTERNAL_SERVER_ERROR,
    ToolError: HTTPStatus.INTERNAL_SERVER_ERROR,
    ValidationError: HTTPStatus.BAD_REQUEST,
    UnknownModel: HTTPStatus.BAD_REQUEST,
    PayloadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    AuthError: HTTPStatus.UNAUTHORIZED,
    Forbidden: HTTPStatus.FORBIDDEN,
    RateLimited: HTTPStatus.TOO_MANY_REQUESTS,
    SessionError: HTTPStatus.BAD_REQUEST,
    SessionNotFound: HTTPStatus.NOT_FOUND,
    TurnNotFound: HTTPStatus.NOT_FOUND,
    SessionBusy: HTTPStatus.CONFLICT,
    SessionEnded: HTTPStatus.GONE,
    LLMError: HTTPStatus.BAD_GATEWAY,
    ProviderUnavailable: HTTPStatus.BAD_GATEWAY,
    ProviderRejected: HTTPStatus.BAD_GATEWAY,
    CircuitOpen: HTTPStatus.SERVICE_UNAVAILABLE,
    ProviderTimeout: HTTPStatus.GATEWAY_TIMEOUT,
    EngineUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
}

_CODE_BY_STATUS = {
    HTTPStatus.BAD_REQUEST: "invalid_request",
    HTTPStatus.UNAUTHORIZED: "unauthorized",
    HTTPStatus.FORBIDDEN: "forbidden",
    HTTPStatus.NOT_FOUND: "not_found",
    HTTPStatus.METHOD_NOT_ALLOWED: "method_not_allowed",
    HTTPStatus.NOT_ACCEPTABLE: "not_acceptable",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "payload_too_large",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "unsupported_media_type",
    HTTPStatus.UNPROCESSABLE_ENTITY: "validation_error",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limited",
}


def status_for(exc: EngineError) -> HTTPStatus:
    for cls in type(exc).__mro__:
        status = STATUS_BY_ERROR.get(cls)  # type: ignore[call-overload]
        if status is not None:
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


async def _engine_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    status = status_for(exc)
    headers: dict[str, str] = {"X-Request-ID": request_id_of(request)}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if status == HTTPStatus.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        logger.error("request %s failed: %s", request_id_of(request), exc.code, exc_info=exc)
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None and isinstance(exc, LLMError):
            metrics.provider_error(exc.code)
    return JSONResponse(error_body(exc.code, exc.message), status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = HTTPStatus(exc.status_code)
    code = _CODE_BY_STATUS.get(status, status.phrase.lower().replace(" ", "_"))
    headers = dict(exc.headers or {})
    headers["X-Request-ID"] = request_id_of(request)
    # The phrase, not exc.detail: a detail could carry text a framework took from internals.
    return JSONResponse(error_body(code, status.phrase + "."), status_code=status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Location and message only: the rejected input is not echoed back.
    details = [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        for error in exc.errors()[:20]
    ]
    summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5])
    return JSONResponse(
        error_body("validation_error", f"The request is invalid: {summary}", details=details),
        status_code=HTTPStatus.UNPROCESSABLE_ENTITY,
        headers={"X-Request-ID": request_id_of(request)},
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request)
    logger.error("unhandled error in request %s", request_id, exc_info=exc)
    return JSONResponse(
        error_body("internal_error", f"Internal server error (request id {request_id})."),
        status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
        headers={"X-Request-ID": request_id},
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """An overloaded or unreachable database is a 503 with Retry-After; any other database error a 500."""
    if is_transient_database_error(exc):
        logger.warning("request %s: database unavailable (%s)", request_id_of(request), type(exc).__name__)
        return await _engine_error(request, DatabaseUnavailable())
    return await _unexpected_error(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(ConnectionError, _database_error)  # a refused connection, unwrapped
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Starlette's ServerErrorMiddleware runs this one, then re-raises so the server logs the error too.
    app.add_exception_handler(Exception, _unexpected_error)
