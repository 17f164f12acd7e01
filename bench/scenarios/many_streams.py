"""Scenario 3: many concurrent WebSocket streams, each receiving tokens at a fixed rate (20 tokens/s).

All sockets are opened first; the server's RSS is read before (baseline) and with every socket open and
idle; then all turns start, spread over a short ramp, and a sampler records the server's RSS and CPU
while they stream. The added inter-token delay of a stream is each gap between two tokens minus the
provider's schedule (the per-token delay), over the whole run and over the window where every stream
was delivering tokens at once (from the last stream's first token to the first stream's last one: the
full load, without the start burst; empty when the first streams end before the last ones start), and
the most streams that delivered tokens at one moment says how close to the full load a run came. The
same clients reading the provider directly give the floor (client and provider jitter on this machine),
and the bare relay of scenario 2 (no database) under the same load gives the ceiling a one-process
Python WebSocket server reaches here. The engine's own TTFT (stored on each assistant row, measured from
the start of its LLM call) separates waiting before the call from delivering it. The server's CPU per
token delivered, engine against relay, says how many such streams one core carries. The machine's CPU over
each load, including what the host took for other guests (steal, `bench/machine.py`), says whether the
repeat had the machine to itself.

Memory per connection is measured once, in a repeat of its own that runs first (the process's first
load of this many sockets and streams; in a full run it has served scenarios 1 and 2 before): the
same sockets and answers at a slower rate (`many_memory_rate`, 4 tokens/s), one that a single process
carries for every stream at once. At 20 tokens/s the engine's core is full before the last turns have
started, so the first streams end before the last ones begin and the peak is that of fewer streams; the
memory a streaming connection holds (its turn, its log, its buffers) does not depend on the rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench.database import assistant_timings
from bench.harness import RELAY_WS, Bench, EngineHandle, Sampler
from bench.machine import CpuMeter
from bench.procs import Service
from bench.profiling import profile_extra_run
from bench.scenarios import ms
from bench.stats import across_repeats, most_at_once, summarize

__all__ = ["run"]

SETTLE_SECONDS = 1.0


def _added(result: dict[str, Any], delay: float, provider: Sampler | None = None) -> dict[str, float]:
    """The delay added to the schedule, and the CPU the provider and the load generators took: on a
    small machine they share the cores with the server being measured."""
    added = summarize(ms([gap - delay for gap in result["gaps"]]))
    start, end = result.get("all_streaming") or (0.0, 0.0)
    steady = [
        gap - delay for gap, at in zip(result["gaps"], result["gap_ends"], strict=True) if start < at <= end
    ]
    all_streaming = summarize(ms(steady))
    ttft = summarize(ms(result["ttft"]))
    return {
        "added_p50": added.get("p50", float("nan")),
        "added_p99": added.get("p99", float("nan")),
        "added_max": added.get("max", float("nan")),
        "all_streaming_added_p50": all_streaming.get("p50", float("nan")),
        "all_streaming_added_p99": all_streaming.get("p99", float("nan")),
        "all_streaming_added_max": all_streaming.get("max", float("nan")),
        "all_streaming_seconds": max(0.0, end - start),
        "ttft_p50": ttft.get("p50", float("nan")),
        "ttft_p99": ttft.get("p99", float("nan")),
        "streams_completed": float(len(result["total"])),
        # Below the number of streams, the target's load never happened: the rest waited to start.
        "most_streaming_at_once": float(most_at_once(result["first_tokens"], result["last_tokens"])),
        "errors": float(result["errors"]),
        "client_cores": float(result.get("client_cores", float("nan"))),
        "provider_cores": provider.cpu_cores() if provider is not None else float("nan"),
        # The whole machine over the load: what every process used, and what the host kept from them.
        "machine_busy_cores": result["machine_cpu"].get("busy_cores", float("nan")),
        "stolen_cores": result["machine_cpu"].get("stolen_cores", float("nan")),
    }


def _cpu_per_token(server: Sampler, result: dict[str, Any]) -> float:
    """The server's CPU per token delivered (µs), its turns' starts and ends included: at 20 tokens/s
    each token arrives alone, so this is the cost that decides how many streams one core carries."""
    tokens = sum(result["tokens"])
    return server.cpu_seconds() / tokens * 1e6 if tokens else float("nan")


def _sampled_load(
    bench: Bench, job: dict[str, Any], services: list[Service], before: Callable[[], None] | None = None
) -> tuple[dict[str, Any], list[Sampler]]:
    """Run a phased load, sampling each service's CPU and RSS from the moment the clients are released
    (after `before`, run once every client is connected)."""
    samplers = [Sampler(service, period=0.25) for service in services]
    machine = CpuMeter()

    def on_ready() -> None:
        if before is not None:
            before()
        for sampler in samplers:
            sampler.__enter__()
        machine.__enter__()

    try:
        result = bench.turns(job | {"phased": True}, processes=bench.sizes.many_processes, on_ready=on_ready)
    finally:
        machine.__exit__()
        for sampler in samplers:
            sampler.__exit__()
    result["machine_cpu"] = machine.result
    return result, samplers


def _engine_repeat(bench: Bench, engine: EngineHandle, urls: list[str], delay: float) -> dict[str, Any]:
    sizes = bench.sizes
    time.sleep(SETTLE_SECONDS)
    state: dict[str, Any] = {"base": engine.service.rss()}

    def measure_idle() -> None:
        time.sleep(SETTLE_SECONDS)
        state["idle"] = engine.service.rss()

    job = bench.ws_job(urls, record_gaps=True, ramp=sizes.many_ramp, connect_concurrency=100)
    since = datetime.now(UTC)
    result, (sampler, provider) = _sampled_load(bench, job, [engine.service, bench.provider], measure_idle)
    streams = len(urls)
    server = assistant_timings(engine.database.url, since)
    server_ttft = summarize(float(ttft) for ttft, _ in server)
    row = _added(result, delay, provider) | {
        "server_ttft_p50": server_ttft.get("p50", float("nan")),
        "server_ttft_p99": server_ttft.get("p99", float("nan")),
        "rss_base_mb": state["base"] / 2**20,
        "rss_idle_kb_per_connection": (state["idle"] - state["base"]) / streams / 1024,
        "rss_streaming_kb_per_connection": (sampler.peak_rss() - state["base"]) / streams / 1024,
        "server_cpu_cores": sampler.cpu_cores(),
        "server_cpu_us_per_token": _cpu_per_token(sampler, result),
        "connections": float(result["connections"]),
    }
    return {"row": row, "error_sample": result["error_sample"]}


def _relay_repeat(bench: Bench, delay: float) -> dict[str, float]:
    """The same load on the bare relay: what a WebSocket server with nothing to do but relay adds."""
    sizes = bench.sizes
    with bench.relay(RELAY_WS) as relay:
        urls = [f"ws://127.0.0.1:{relay.port}/ws/relay"] * sizes.many_streams
        job = bench.ws_job(urls, record_gaps=True, ramp=sizes.many_ramp, connect_concurrency=100)
        result, (sampler, provider) = _sampled_load(bench, job, [relay, bench.provider])
    return _added(result, delay, provider) | {
        "server_cpu_cores": sampler.cpu_cores(),
        "server_cpu_us_per_token": _cpu_per_token(sampler, result),
    }


def _memory_repeat(bench: Bench, engine: EngineHandle, urls: list[str]) -> dict[str, Any]:
    """The process's memory with every stream running at once (module docstring)."""
    delay = 1.0 / bench.sizes.many_memory_rate
    bench.configure_provider(tokens=bench.sizes.many_tokens, delay=delay)
    measured = _engine_repeat(bench, engine, urls, delay)
    measured["row"]["tokens_per_second_per_stream"] = bench.sizes.many_memory_rate
    return measured


def run(bench: Bench, engine: EngineHandle) -> dict[str, Any]:
    sizes = bench.sizes
    urls = [engine.ws_url(sid) for sid in engine.create_sessions(sizes.many_streams)]
    memory = _memory_repeat(bench, engine, urls)
    delay = 1.0 / sizes.many_rate
    bench.configure_provider(tokens=sizes.many_tokens, delay=delay)
    # As many repeats as the other scenarios: a median of two is their mean, and one noisy window of the
    # shared machine moved it by 5 ms.
    repeats = sizes.repeats
    engine_rows, direct_rows, relay_rows = [], [], []
    errors = [memory["error_sample"]] if memory["error_sample"] else []
    for _ in range(repeats):
        measured = _engine_repeat(bench, engine, urls, delay)
        engine_rows.append(measured["row"])
        if measured["error_sample"]:
            errors.append(measured["error_sample"])
        direct_job = bench.sse_job(
            bench.provider_v1 + "/chat/completions",
            streams=sizes.many_streams,
            record_gaps=True,
            ramp=sizes.many_ramp,
        )
        result, (provider,) = _sampled_load(bench, direct_job, [bench.provider])
        direct_rows.append(_added(result, delay, provider))
        relay_rows.append(_relay_repeat(bench, delay))
    profile_extra_run(
        bench, engine.service, f"many-{engine.backend}", lambda: _engine_repeat(bench, engine, urls, delay)
    )
    return {
        "streams": sizes.many_streams,
        "tokens_per_stream": sizes.many_tokens,
        "tokens_per_second_per_stream": sizes.many_rate,
        "memory": memory["row"],
        "engine": {"repeats": engine_rows, "summary": across_repeats(engine_rows)},
        "direct": {"repeats": direct_rows, "summary": across_repeats(direct_rows)},
        "relay": {"repeats": relay_rows, "summary": across_repeats(relay_rows)},
        "error_samples": errors[:3],
    }
