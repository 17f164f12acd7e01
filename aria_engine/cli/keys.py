"""`aria-engine keys`: create, list and revoke API keys (stored as SHA-256 hashes; shown once).

    aria-engine keys create --name alice [--principal team-a]
    aria-engine keys list [--json]
    aria-engine keys revoke <id or prefix>

Creating the first key switches the server from open mode to keyed mode at once (it checks the table on
every request).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from aria_engine.auth import ApiKeyInfo, create_key, list_keys, revoke_key
from aria_engine.cli.core import load_config
from aria_engine.db.engine import create_engine, create_session_factory

__all__ = ["keys"]

T = TypeVar("T")


def _with_db(action: Callable[..., Awaitable[T]], *args: object) -> T:
    async def run() -> T:
        engine = create_engine(load_config().database_url)
        try:
            return await action(create_session_factory(engine), *args)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _as_dict(info: ApiKeyInfo) -> dict[str, str | None]:
    return {
        "id": info.id,
        "name": info.name,
        "principal": info.principal,
        "prefix": info.prefix,
        "created_at": info.created_at.isoformat(),
        "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
    }


@click.group()
def keys() -> None:
    """Manage API keys. With no active key the server runs in open mode (loopback only)."""


@keys.command("create")
@click.option("--name", required=True, help="A label for the key (1-100 characters).")
@click.option("--principal", default=None, help="Who owns the sessions made with it (default: the name).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def create_command(name: str, principal: str | None, as_json: bool) -> None:
    """Create a key and print it once; only its hash is stored.

    Example: aria-engine keys create --name alice
    """
    try:
        key, info = _with_db(create_key, name, principal)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"key": key, **_as_dict(info)}))
        return
    click.echo(key)
    click.echo(
        f"created key {info.id} ({info.name}, principal {info.principal}); it is not shown again", err=True
    )


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(as_json: bool) -> None:
    """List keys (prefix, name, principal, state); never the keys themselves.

    Example: aria-engine keys list --json
    """
    rows = _with_db(list_keys)
    if as_json:
        click.echo(json.dumps([_as_dict(info) for info in rows]))
        return
    for info in rows:
        state = "revoked" if info.revoked_at else "active"
        click.echo(f"{info.id}  {info.prefix}…  {state:7}  {info.name}  ({info.principal})")


@keys.command("revoke")
@click.argument("key_id")
def revoke_command(key_id: str) -> None:
    """Revoke a key by its id or prefix (as `keys list` shows them).

    Example: aria-engine keys revoke aria_AbC1234
    """
    info = _with_db(revoke_key, key_id)
    if info is None:
        raise click.ClickException(f"no single active key matches {key_id!r}")
    click.echo(f"revoked key {info.id} ({info.name})")
