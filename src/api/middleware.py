"""One pure-ASGI middleware for every request: request id, body size limit, request metrics.

- The request id (a client's `X-Request-ID` if it is short and plain, a new one otherwise) is stored in
  `scope["state"]["request_id"]` and returned in the `X-Request-ID` header of every response. The scope is
  mutated in place so the outer 500 handler (Starlette's ServerErrorMiddleware) can read it too.
- A declared body larger than the limit is refused with 413 before the app reads it.
- Requests are counted by route template (`/api/engine/chat/sessions/{session_id}`), never by raw path,
  so the metric's label set stays bounded.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING

import orjson
from errors import error_body
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from metrics import ApiMetrics

__all__ = ["RequestContextMiddleware"]

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_STATUS_413 = 413


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: ApiMetrics, max_body_bytes: int, large_body_paths: dict[str, int]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.large_body_paths = large_body_paths  # path -> its own limit (imports)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _CLIENT_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        status = 500  # what an exception escaping the app becomes
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            if self._too_large(scope, headers):
                await self._refuse(send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(scope["method"], template, status, time.perf_counter() - started)

    def _too_large(self, scope: Scope, headers: Headers) -> bool:
        declared = headers.get("content-length")
        if declared is None or not declared.isdigit():
            return False
        limit = self.large_body_paths.get(scope["path"], self.max_body_bytes)
        return int(declared) > limit

    @staticmethod
    async def _refuse(send: Send) -> None:
        body = orjson.dumps(error_body("payload_too_large", "The request body is too large."))
        await send(
            {
                "type": "http.response.start",
                "status": _STATUS_413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
