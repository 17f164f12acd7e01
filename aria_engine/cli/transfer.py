"""Transfer commands: `export` a session to a file or stdout, `import` a transcript as a new session.

Both are thin over `aria_engine.export` and `aria_engine.importers`; they open the database named by
DATABASE_URL (migrating SQLite first, as the server does) and act as an administrator: no owner check on
export, and `--owner` names the principal an import belongs to.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, TypeVar

import click
import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aria_engine.auth import OPEN_PRINCIPAL
from aria_engine.cli.core import load_config
from aria_engine.config import EngineConfig
from aria_engine.exceptions import EngineError
from aria_engine.export import FORMATS, stream_export
from aria_engine.importers import IMPORT_FORMATS, ImportResult, detect_format, import_session

__all__ = ["export_command", "import_command"]

DEFAULT_OWNER = OPEN_PRINCIPAL  # the principal of open mode, so imports show up in the UI without keys
T = TypeVar("T")


@asynccontextmanager
async def _database(config: EngineConfig) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    from aria_engine.db.engine import create_engine, create_session_factory
    from aria_engine.db.migrate import upgrade

    if config.should_auto_migrate:
        await upgrade(config.database_url)
    engine = create_engine(config.database_url)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


def _run(work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    config = load_config()

    async def main() -> T:
        async with _database(config) as factory:
            return await work(factory)

    try:
        return asyncio.run(main())
    except EngineError as exc:
        raise click.ClickException(exc.message) from None


@click.command("export")
@click.argument("session_id")
@click.option(
    "--format",
    "-f",
    "format_",
    type=click.Choice(list(FORMATS)),
    default="jsonl",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to FILE (atomically) instead of standard output.",
)
def export_command(session_id: str, format_: str, output: Path | None) -> None:
    """Export one session.

    Example: aria-engine export 3f2a...-... --format openclaw -o session.jsonl
    """

    async def work(factory: async_sessionmaker[AsyncSession]) -> None:
        stream = await stream_export(session_id, factory, None, format_).open()
        if output is None:
            sink = sys.stdout.buffer
            async for chunk in stream.chunks():
                sink.write(chunk)
            sink.flush()
            return
        with _atomic_file(output) as handle:
            async for chunk in stream.chunks():
                handle.write(chunk)

    _run(work)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "format_",
    type=click.Choice(IMPORT_FORMATS),
    default=None,
    help="Input format (default: detected from the first line).",
)
@click.option(
    "--owner",
    envvar="ARIA_IMPORT_OWNER",
    default=DEFAULT_OWNER,
    show_default=True,
    help="Principal that owns the new session.",
)
@click.option(
    "--agent-id", default=None, help="Agent of the new session (default: from the file, else main)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_command(file: Path, format_: str | None, owner: str, agent_id: str | None, as_json: bool) -> None:
    """Import an exported session (our jsonl) or an OpenClaw/pi v3 transcript as a new session.

    Corrupt lines are skipped and listed. Example: aria-engine import ~/.openclaw/agents/main/sessions/x.jsonl
    """
    fmt = format_ or detect_format(_first_line(file))

    async def work(factory: async_sessionmaker[AsyncSession]) -> ImportResult:
        with file.open(encoding="utf-8", errors="replace") as handle:
            return await import_session(handle, factory, format=fmt, owner=owner, agent_id=agent_id)

    result = _run(work)
    if as_json:
        click.echo(orjson.dumps(result.to_dict()).decode())
        return
    click.echo(f"imported {result.imported} messages into session {result.session_id} ({fmt})")
    if result.skipped:
        click.echo(f"skipped {result.skipped} lines:")
        for line, reason in result.problems:
            click.echo(f"  line {line}: {reason}")
    if result.off_branch:
        click.echo(f"{result.off_branch} entries on inactive branches were left out")


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line
    return ""


@contextmanager
def _atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside `target`, renamed over it only once writing finished."""
    fd, temp = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
