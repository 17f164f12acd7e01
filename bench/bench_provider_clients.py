"""Client CPU per streamed chunk of a chat-completions stream: the openai SDK, an httpx SSE reader, and the
engine's `openai` adapter (aiohttp), each reading the bench provider running in a process of its own.

Why it exists: SPEC 5 asks whether the `openai` adapter should use the SDK or read SSE itself, and with
which HTTP client. Two shapes, because they cost differently:
- `burst`: one stream of `--chunks` chunks with no delay, so one socket read carries many chunks;
- `paced`: `--streams` concurrent streams of `--paced-chunks` chunks at `--rate` chunks per second each,
  so nearly every chunk is a read of its own (a chat service's normal case: many users, token by token).

    .venv/bin/python -m bench.bench_provider_clients --rounds 3

The printed JSON is client CPU (`time.process_time`) divided by the content chunks received; docs/MODELS.md
("Why aiohttp, not the openai SDK or httpx") has the numbers we took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

from aria_engine.providers.base import ContentDelta, LLMRequest
from aria_engine.providers.openai_compatible import OpenAICompatibleProvider
from bench.procs import Service, free_port

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
BODY = {
    "model": "bench-model",
    "messages": MESSAGES,
    "stream": True,
    "stream_options": {"include_usage": True},
}

Reader = Callable[[str, int], Awaitable[int]]  # (base_url, concurrent streams) -> content chunks received


async def _sdk(base_url: str, streams: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)

    async def one() -> int:
        received = 0
        stream = await client.chat.completions.create(
            model="bench-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
        return received

    try:
        return sum(await asyncio.gather(*(one() for _ in range(streams))))
    finally:
        await client.close()


async def _httpx(base_url: str, streams: int) -> int:
    """The adapter's reader before aiohttp: httpx `aiter_lines` and one `orjson.loads` per event."""
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)

    async def one(client: httpx.AsyncClient) -> int:
        received = 0
        async with client.stream(
            "POST", base_url + "/chat/completions", content=orjson.dumps(BODY)
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    choices = orjson.loads(line[5:]).get("choices") or ()
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        received += 1
        return received

    async with httpx.AsyncClient(limits=limits, timeout=600.0) as client:
        return sum(await asyncio.gather(*(one(client) for _ in range(streams))))


async def _adapter(base_url: str, streams: int) -> int:
    provider = OpenAICompatibleProvider("bench", base_url, max_connections=max(streams, 1))

    async def one() -> int:
        request = LLMRequest(model="bench-model", messages=MESSAGES)
        return sum([isinstance(chunk, ContentDelta) async for chunk in provider.stream(request)])

    try:
        return sum(await asyncio.gather(*(one() for _ in range(streams))))
    finally:
        await provider.aclose()


READERS: dict[str, Reader] = {"openai_sdk": _sdk, "httpx_sse_reader": _httpx, "aiohttp_adapter": _adapter}


def _configure(base_url: str, tokens: int, delay: float) -> None:
    body = {"tokens": tokens, "delay": delay, "first_delay": 0.0}
    httpx.post(base_url.removesuffix("/v1") + "/_bench/config", json=body, timeout=10).raise_for_status()


async def _measure(reader: Reader, base_url: str, streams: int, rounds: int) -> dict[str, float]:
    await reader(base_url, min(streams, 4))  # warm-up: imports, connection set-up
    per_chunk_us: list[float] = []
    for _ in range(rounds):
        cpu = time.process_time()
        received = await reader(base_url, streams)
        per_chunk_us.append((time.process_time() - cpu) / received * 1e6)
    return {
        "client_cpu_us_per_chunk_median": round(statistics.median(per_chunk_us), 2),
        "client_cpu_us_per_chunk_min": round(min(per_chunk_us), 2),
    }


def _shape(base_url: str, tokens: int, delay: float, streams: int, rounds: int) -> dict[str, object]:
    _configure(base_url, tokens, delay)
    measured = {
        name: asyncio.run(_measure(reader, base_url, streams, rounds)) for name, reader in READERS.items()
    }
    return {"streams": streams, "chunks_per_stream": tokens, "delay_seconds": delay, **measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000, help="burst: chunks in the one stream")
    parser.add_argument("--streams", type=int, default=200, help="paced: concurrent streams")
    parser.add_argument("--paced-chunks", type=int, default=60, help="paced: chunks per stream")
    parser.add_argument("--rate", type=float, default=20.0, help="paced: chunks per second per stream")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    argv = [sys.executable, "-m", "bench.provider", "--port", str(port)]
    with tempfile.TemporaryDirectory() as work, Service("provider", argv, port, Path(work) / "provider.log"):
        base_url = f"http://127.0.0.1:{port}/v1"
        results = {
            "burst": _shape(base_url, args.chunks, 0.0, 1, args.rounds),
            "paced": _shape(base_url, args.paced_chunks, 1.0 / args.rate, args.streams, args.rounds),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
