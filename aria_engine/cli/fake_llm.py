"""`aria-engine fake-llm`: serve the fake OpenAI-compatible provider for benchmarks and demos."""

from __future__ import annotations

import itertools

import click

__all__ = ["fake_llm"]

_WORDS = ("the", "engine", "streams", "every", "token", "to", "its", "client", "as", "it", "arrives")


@click.command("fake-llm")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", type=int, default=8001, show_default=True, help="Port (0: any free port).")
@click.option(
    "--tokens",
    type=click.IntRange(1, 100_000),
    default=64,
    show_default=True,
    help="Words (chunks) per reply.",
)
@click.option(
    "--token-delay",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds slept before each chunk.",
)
@click.option("--text", default=None, help="Reply text instead of generated words.")
def fake_llm(host: str, port: int, tokens: int, token_delay: float, text: str | None) -> None:
    """Serve a fake OpenAI-compatible chat-completions endpoint at http://HOST:PORT/v1.

    Every request gets the same reply, streamed word by word (usage included when asked for). The
    chunks are serialized once, so the fake costs little per token and benchmarks measure the engine.

    Example: aria-engine fake-llm --port 8001 --tokens 200 --token-delay 0.01
    then: ARIA_LLM_BASE_URL=http://127.0.0.1:8001/v1 ARIA_LLM_MODEL=fake-model aria-engine serve
    """
    from aria_engine.testing.fake_llm import FakeLLM, Reply

    reply_text = text or " ".join(itertools.islice(itertools.cycle(_WORDS), tokens))
    server = FakeLLM(
        host=host, port=port, default_reply=Reply(reply_text, delay=token_delay), record_requests=False
    )
    click.echo(f"fake LLM: {len(reply_text.split())} chunks per reply, {token_delay}s before each")
    server.serve_forever()
