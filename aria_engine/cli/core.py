"""Core commands: serve, migrate, version."""

from __future__ import annotations

import sys

import click
from pydantic import ValidationError

from aria_engine import __version__
from aria_engine.config import REPO_ROOT, EngineConfig
from aria_engine.structured_logs import configure_logging

__all__ = ["load_config", "migrate", "serve", "version"]


def load_config(**overrides: object) -> EngineConfig:
    """Build the config, turning a bad setting into one clean line that names the variable."""
    try:
        return EngineConfig(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{_env_name(err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise click.ClickException(f"invalid configuration: {problems}") from None


def _env_name(loc: tuple[object, ...]) -> str:
    field = "_".join(str(part) for part in loc)
    special = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL"}
    return special.get(field, f"ARIA_{field.upper()}")


@click.command()
@click.option("--host", envvar="ARIA_HOST", default=None, help="Bind address (default 127.0.0.1).")
@click.option("--port", envvar="ARIA_PORT", type=int, default=None, help="Port (default 8000).")
@click.option(
    "--allow-anonymous",
    is_flag=True,
    default=False,
    help="Serve without API keys on a non-loopback address (dangerous).",
)
def serve(host: str | None, port: int | None, allow_anonymous: bool) -> None:
    """Run the chat engine service.

    Example: aria-engine serve --port 8000
    """
    import uvicorn

    config = load_config(host=host, port=port, allow_anonymous=allow_anonymous or None)
    sys.path.insert(0, str(REPO_ROOT / "src" / "api"))
    from main import create_app, uvicorn_options  # the FastAPI app dir, as the seed lays it out

    configure_logging(config.log_level)
    app = create_app(config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_config=None,  # keep the structured JSON logging configured above
        log_level=config.log_level.lower(),
        **uvicorn_options(config),
    )


@click.command()
def migrate() -> None:
    """Apply database migrations up to the newest revision.

    Example: DATABASE_URL=postgresql+asyncpg://user@host/db aria-engine migrate
    """
    from aria_engine.db.migrate import upgrade_sync

    config = load_config()
    upgrade_sync(config.database_url)
    click.echo("database is at the newest revision")


@click.command()
def version() -> None:
    """Print the engine version."""
    click.echo(__version__)
