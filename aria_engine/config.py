"""EngineConfig: every setting of the engine, read from the environment and an optional `.env`.

Secrets (API keys of providers) are never fields with defaults here: the catalog names the environment
variable that holds a provider's key and the gateway reads it from the environment at start-up.

Usage:
    config = EngineConfig()                       # environment + .env
    config = EngineConfig(database_url="sqlite+aiosqlite:///tmp/x.db")   # tests

A bad value fails at construction with a message naming the variable (pydantic-settings does this).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["REPO_ROOT", "EngineConfig", "ProviderTimeouts"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class ProviderTimeouts(BaseModel):
    """Per-phase timeouts for a provider call, in seconds (like httpx's `Timeout`).

    - connect: opening the connection and sending the request.
    - first_token: from the request to the first chunk of the stream.
    - idle: the longest gap allowed between two chunks.
    - total: the whole call, a last guard.
    """

    connect: float = Field(default=10.0, gt=0)
    first_token: float = Field(default=60.0, gt=0)
    idle: float = Field(default=30.0, gt=0)
    total: float = Field(default=600.0, gt=0)


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class EngineConfig(BaseSettings):
    """All settings. Environment names are listed in README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="ARIA_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        env_nested_delimiter="__",
    )

    # -- where things live -------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("data"), validation_alias=_env("ARIA_DATA_DIR", "data_dir"))
    database_url: str = Field(default="", validation_alias=_env("DATABASE_URL", "database_url"))
    memories_path: Path | None = Field(
        default=None, validation_alias=_env("ARIA_MEMORIES_PATH", "memories_path")
    )
    models_path: Path = Field(
        default=REPO_ROOT / "models.yaml", validation_alias=_env("ARIA_MODELS_PATH", "models_path")
    )
    prompts_dir: Path | None = Field(
        default=REPO_ROOT / "prompts", validation_alias=_env("ARIA_PROMPTS_DIR", "prompts_dir")
    )
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL", "redis_url"))
    auto_migrate: bool | None = None  # None: migrate automatically only for SQLite
    # PostgreSQL connections kept open per process. Every turn uses one briefly at its start and end;
    # bursts beyond the pool open short-lived overflow connections, which cost a connect each.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # Seconds a request waits for the database (PostgreSQL: a free pooled connection; SQLite: the write
    # lock) before it is refused with 503 engine_unavailable.
    db_pool_timeout: float = Field(default=30.0, gt=0)
    # Turns whose start (lease, user row, first request) runs at once in this process; the others wait
    # their turn. A burst of new turns then waits itself instead of making every running stream stutter
    # (measured: 1,000 streams started in 5 s, added inter-token p99 150 ms unlimited, 74 ms with 4; later,
    # alternated on one machine, 63 ms with 8, 57 with 4, 42 with 2, and the same time to first token).
    # PostgreSQL only: SQLite's single writer admits starts one at a time already.
    max_concurrent_turn_starts: int = Field(default=2, ge=1)

    # -- serving -----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    allow_anonymous: bool = False  # allow open mode on a non-loopback bind
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    log_bodies: bool = False  # message bodies are never logged unless this is set

    # -- models ------------------------------------------------------------------------------------
    default_model: str | None = None
    llm_base_url: str | None = None  # shortcut: any OpenAI-compatible server, no catalog edit
    llm_model: str | None = None
    llm_context_window: int = Field(default=32768, gt=0)
    timeouts: ProviderTimeouts = Field(default_factory=ProviderTimeouts)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    llm_retry_backoff: float = Field(default=0.25, ge=0)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=30.0, gt=0)

    # -- turns -------------------------------------------------------------------------------------
    max_tool_rounds: int = Field(default=8, ge=0, le=100)
    max_turn_tokens: int = Field(default=200_000, ge=1)
    max_turn_cost_usd: Decimal = Field(default=Decimal("1.00"), ge=0)
    tool_timeout: float = Field(default=10.0, gt=0)
    tool_result_max_chars: int = Field(default=16_000, ge=100)
    max_tools_per_request: int = Field(default=128, ge=0, le=128)
    context_safety_margin: int = Field(default=256, ge=0)
    # Megabytes of recent history kept per process, so a session's next turn served here skips the
    # history read (exact, see history_cache.py); 0 turns it off.
    history_cache_mb: float = Field(default=64.0, ge=0)
    title_model: str | None = None

    # -- tools: per-agent allow-lists (owned by tool_registry.py) ---------------------------------
    # ARIA_AGENT_TOOLS='{"main": ["current_time"], "*": ["calculate"]}' (JSON). An agent listed here may
    # call only its tools; an agent not listed falls back to the "*" entry, else to every tool.
    agent_tools: dict[str, list[str]] | None = None

    # -- streaming ---------------------------------------------------------------------------------
    ws_max_frame_bytes: int = Field(default=256 * 1024, ge=1024)
    ws_ping_interval: float = Field(default=20.0, gt=0)
    # permessage-deflate, which browsers always offer. Off by default: a token frame is about 100 bytes
    # (20 tokens/s is 2 KB/s a stream), while compressing costs each socket about 50 KB of zlib state
    # and the server about a tenth more CPU per token (measured: docs/API.md).
    ws_compression: bool = False
    keep_turn_on_disconnect: bool = False
    # A dropped socket's turn keeps running this long, so a reload or a network blip can `resume` it.
    disconnect_grace_seconds: float = Field(default=10.0, ge=0)
    turn_event_ttl: float = Field(default=300.0, gt=0)  # how long a finished turn can still be resumed

    # -- limits ------------------------------------------------------------------------------------
    rate_limit_requests_per_minute: int = Field(default=600, ge=0)  # 0 disables
    rate_limit_tokens_per_minute: int = Field(default=0, ge=0)  # 0 disables
    ws_ticket_ttl: float = Field(default=60.0, gt=0)
    # How long an API-key lookup (and the "no keys yet: open mode" answer) is reused: a key created or
    # revoked in another process takes effect within this time. 0: every request reads the database.
    auth_cache_seconds: float = Field(default=2.0, ge=0)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg:// "
                f"(got scheme {value.split('://', 1)[0]!r})"
            )
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> EngineConfig:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{(self.data_dir / 'aria.db').resolve()}"
        if self.memories_path is None:
            self.memories_path = self.data_dir / "aria_memories"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    @property
    def exports_dir(self) -> Path:
        assert self.memories_path is not None
        return self.memories_path / "exports"
