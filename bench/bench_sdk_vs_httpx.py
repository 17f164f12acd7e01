"""Per-chunk client cost of reading a chat-completions stream: the openai SDK vs our lean httpx SSE reader.

Why it exists: SPEC 5 asks whether the `openai` adapter should use the SDK or read SSE itself. Both read
the same stream from the fake provider running in a separate process (`aria-engine fake-llm`), so the
numbers below are only the client's CPU (`time.process_time`) divided by the chunks received.

    .venv/bin/python -m bench.bench_sdk_vs_httpx --chunks 2000 --rounds 5

Results are printed as JSON; the numbers we took are in docs/MODELS.md ("Why httpx, not the SDK").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

from aria_engine.providers.base import LLMRequest
from aria_engine.providers.openai_compatible import OpenAICompatibleProvider

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_fake(port: int, chunks: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "aria_engine", "fake-llm", "--port", str(port), "--tokens", str(chunks)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    raise SystemExit("the fake provider did not start")


async def _sdk_round(base_url: str) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    received = 0
    try:
        stream = await client.chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
    finally:
        await client.close()
    return received


async def _httpx_round(base_url: str) -> int:
    provider = OpenAICompatibleProvider("bench", base_url)
    received = 0
    try:
        async for chunk in provider.stream(LLMRequest(model="fake-model", messages=MESSAGES)):
            if getattr(chunk, "text", None):
                received += 1
    finally:
        await provider.aclose()
    return received


async def _measure(reader: Callable[[str], Awaitable[int]], base_url: str, rounds: int) -> dict[str, float]:
    await reader(base_url)  # warm-up: imports, connection set-up
    per_chunk_us: list[float] = []
    wall_ms: list[float] = []
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        received = await reader(base_url)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        per_chunk_us.append(cpu / received * 1e6)
        wall_ms.append(wall * 1e3)
    return {
        "client_cpu_us_per_chunk_median": round(statistics.median(per_chunk_us), 2),
        "client_cpu_us_per_chunk_min": round(min(per_chunk_us), 2),
        "wall_ms_per_stream_median": round(statistics.median(wall_ms), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = _free_port()
    fake = _start_fake(port, args.chunks)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        results = {
            "chunks_per_stream": args.chunks,
            "rounds": args.rounds,
            "openai_sdk": asyncio.run(_measure(_sdk_round, base_url, args.rounds)),
            "httpx_sse_reader": asyncio.run(_measure(_httpx_round, base_url, args.rounds)),
        }
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    sdk = results["openai_sdk"]["client_cpu_us_per_chunk_median"]  # type: ignore[index]
    lean = results["httpx_sse_reader"]["client_cpu_us_per_chunk_median"]  # type: ignore[index]
    results["sdk_over_httpx"] = round(sdk / lean, 2) if lean else None
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
