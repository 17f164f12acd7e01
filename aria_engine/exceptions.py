"""The engine's error vocabulary. Every error a caller can see is one of these.

    EngineError                      code             HTTP (mapped once, in src/api/errors.py)
    ├── ConfigError                  config_error     500 (start-up only)
    ├── ValidationError              invalid_request  400
    │   ├── UnknownModel             unknown_model    400
    │   └── PayloadTooLarge          payload_too_large 413
    ├── AuthError                    unauthorized     401
    │   └── Forbidden                forbidden        403
    ├── RateLimited                  rate_limited     429 (retry_after)
    ├── SessionError                 session_error    400
    │   ├── SessionNotFound          session_not_found 404 (also another owner's session)
    │   ├── SessionBusy              session_busy     409
    │   └── SessionEnded             session_ended    410
    ├── ToolError                    tool_error       (never raised to a client: becomes a tool result)
    ├── LLMError                     llm_error        502
    │   ├── ProviderUnavailable      provider_unavailable 502 (retryable)
    │   │   └── CircuitOpen          circuit_open     503 (retry_after)
    │   ├── ProviderTimeout          provider_timeout 504 (retryable; phase = connect|first_token|idle|total)
    │   └── ProviderRejected         provider_rejected 502 (4xx from upstream: not retryable)
    └── EngineUnavailable            engine_unavailable 503 (retry_after; shutting down, starting)
        └── DatabaseUnavailable      engine_unavailable 503 (no free connection in time, database down)

`message` is always safe to show a client: it never contains upstream or internal exception text.
The original exception is kept as `__cause__` (raise ... from exc) and goes to the server log only.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CircuitOpen",
    "ConfigError",
    "DatabaseUnavailable",
    "EngineError",
    "EngineUnavailable",
    "Forbidden",
    "LLMError",
    "PayloadTooLarge",
    "ProviderRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RateLimited",
    "SessionBusy",
    "SessionEnded",
    "SessionError",
    "SessionNotFound",
    "ToolError",
    "UnknownModel",
    "ValidationError",
]


class EngineError(Exception):
    """Base of every engine error. `code` is stable; `message` is safe for clients."""

    code = "engine_error"
    default_message = "The engine could not complete the request."
    retry_after: float | None = None

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class ConfigError(EngineError):
    code = "config_error"
    default_message = "The engine configuration is invalid."


class ValidationError(EngineError):
    code = "invalid_request"
    default_message = "The request is invalid."


class UnknownModel(ValidationError):
    code = "unknown_model"

    def __init__(self, model: str, valid: list[str] | tuple[str, ...] = ()) -> None:
        self.model = model
        self.valid = list(valid)
        shown = ", ".join(self.valid) if self.valid else "none"
        super().__init__(f"Unknown or disabled model {model!r}. Valid models: {shown}.")


class PayloadTooLarge(ValidationError):
    code = "payload_too_large"
    default_message = "The request is too large."


class AuthError(EngineError):
    code = "unauthorized"
    default_message = "A valid API key is required."


class Forbidden(AuthError):
    code = "forbidden"
    default_message = "This key may not do that."


class RateLimited(EngineError):
    code = "rate_limited"
    default_message = "Too many requests; slow down."

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class SessionError(EngineError):
    code = "session_error"
    default_message = "The session cannot be used for this request."


class SessionNotFound(SessionError):
    code = "session_not_found"
    default_message = "Session not found."


class SessionBusy(SessionError):
    code = "session_busy"
    default_message = "Another turn is running in this session; wait for it to finish or cancel it."


class SessionEnded(SessionError):
    code = "session_ended"
    default_message = "The session has ended; reopen it to send messages."


class ToolError(EngineError):
    """A tool failed. Turned into a tool result for the model, never shown as an API error."""

    code = "tool_error"
    default_message = "The tool failed."


class LLMError(EngineError):
    code = "llm_error"
    default_message = "The model provider failed to answer."
    retryable = False


class ProviderUnavailable(LLMError):
    code = "provider_unavailable"
    default_message = "The model provider is unavailable."
    retryable = True


class CircuitOpen(ProviderUnavailable):
    code = "circuit_open"
    default_message = "The model provider is failing; requests are paused for a moment."

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ProviderTimeout(LLMError):
    code = "provider_timeout"
    retryable = True

    def __init__(self, phase: str = "total", message: str | None = None) -> None:
        self.phase = phase
        super().__init__(message or f"The model provider timed out ({phase.replace('_', ' ')}).")


class ProviderRejected(LLMError):
    """The provider refused the request (4xx). Retrying the same request would not help."""

    code = "provider_rejected"
    default_message = "The model provider rejected the request."

    def __init__(self, status_code: int | None = None, message: str | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class EngineUnavailable(EngineError):
    code = "engine_unavailable"
    default_message = "The engine is temporarily unavailable."
    retry_after = 5.0


class DatabaseUnavailable(EngineUnavailable):
    """The database did not serve the request: the connection pool stayed exhausted past its timeout
    (overload) or the server is unreachable. Worth a retry (see `is_transient_database_error`)."""

    default_message = "The database is busy or unreachable; try again shortly."
