"""The `aria-engine` command line. One module per command group; each stays thin over the library.

    aria-engine serve [--host H] [--port P]     run the HTTP/WebSocket service
    aria-engine migrate                         apply database migrations
    aria-engine version                         print the version
"""

from __future__ import annotations

import click

from aria_engine import __version__
from aria_engine.cli.chat import chat
from aria_engine.cli.core import migrate, serve, version
from aria_engine.cli.fake_llm import fake_llm
from aria_engine.cli.keys import keys
from aria_engine.cli.transfer import export_command, import_command

__all__ = ["cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="aria-engine")
def cli() -> None:
    """Aria Engine: a self-hostable chat engine with persistent sessions and streaming."""


cli.add_command(serve)
cli.add_command(migrate)
cli.add_command(version)
cli.add_command(export_command)
cli.add_command(import_command)
cli.add_command(chat)
cli.add_command(keys)
cli.add_command(fake_llm)
