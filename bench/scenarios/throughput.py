"""Scenario 2: streaming throughput at zero per-token delay, for 1 and 32 concurrent sessions.

Three targets read the same provider answer: (a) clients reading the provider's SSE directly, (b) the
minimal relay (bare Starlette WebSocket, no database), (c) the engine over WebSocket. Tokens per second is
all tokens delivered divided by the window from the first send to the last `done` (and, without the
turn's set-up, from the first token to the last `done`). Also measured: bytes on
the wire per token and the server's CPU time per token (from /proc), which shows where the time goes.
The baselines do not depend on the engine's database, so they run once per run (`baselines`).
"""

from __future__ import annotations

from typing import Any

from bench.harness import ALT_RELAY_WS, RELAY_WS, Bench, EngineHandle
from bench.procs import Service
from bench.profiling import profile_extra_run
from bench.stats import across_repeats

__all__ = ["baselines", "measure", "run"]


def _rates(result: dict[str, Any], cpu_seconds: float | None) -> dict[str, float]:
    tokens = sum(result["tokens"])
    window = result["window"] or float("nan")
    streaming = result["streaming_window"] or float("nan")
    rates = {
        "tokens_per_s": tokens / window,
        "streaming_tokens_per_s": tokens / streaming,
        "bytes_per_token": sum(result["bytes"]) / tokens if tokens else float("nan"),
        "errors": float(result["errors"]),
    }
    if cpu_seconds is not None and tokens:
        rates["server_cpu_us_per_token"] = cpu_seconds / tokens * 1e6
    return rates


def measure(bench: Bench, job: dict[str, Any], server: Service | None) -> dict[str, float]:
    before = server.cpu() if server is not None else 0.0
    provider_before = bench.provider.cpu()
    result = bench.turns(job)
    cpu = server.cpu() - before if server is not None else None
    rates = _rates(result, cpu)
    tokens = sum(result["tokens"])
    if tokens:
        rates["provider_cpu_us_per_token"] = (bench.provider.cpu() - provider_before) / tokens * 1e6
    return rates


def baselines(bench: Bench) -> dict[str, Any]:
    """Direct SSE and bare relay rates for each session count.

    `relay` runs on the engine's WebSocket implementation and is the ceiling the targets use;
    `relay_alt` runs on uvicorn's other implementation, for reference.
    """
    sizes = bench.sizes
    bench.configure_provider(tokens=sizes.stream_tokens)
    out: dict[str, Any] = {str(sessions): {} for sessions in sizes.stream_sessions}
    for sessions in sizes.stream_sessions:
        reps = []
        for _ in range(sizes.repeats):
            job = bench.sse_job(bench.provider_v1 + "/chat/completions", streams=sessions, warmup=1)
            reps.append(measure(bench, job, None))
        out[str(sessions)]["direct"] = {"repeats": reps, "summary": across_repeats(reps)}
    variants = [("relay", RELAY_WS)] + ([("relay_alt", ALT_RELAY_WS)] if ALT_RELAY_WS != RELAY_WS else [])
    for key, ws in variants:
        with bench.relay(ws) as relay:
            url = f"ws://127.0.0.1:{relay.port}/ws/relay"
            for sessions in sizes.stream_sessions:
                job = bench.ws_job([url] * sessions, warmup=1)
                if key == "relay":
                    name = f"stream-relay-{sessions}"
                    profile_extra_run(bench, relay, name, lambda job=job: bench.turns(job))
                reps = [measure(bench, job, relay) for _ in range(sizes.repeats)]
                out[str(sessions)][key] = {"ws": ws, "repeats": reps, "summary": across_repeats(reps)}
    return out


def run(bench: Bench, engine: EngineHandle, base: dict[str, Any]) -> dict[str, Any]:
    """Engine rates per session count, with ratios against the run's baselines."""
    sizes = bench.sizes
    bench.configure_provider(tokens=sizes.stream_tokens)
    out: dict[str, Any] = {}
    for sessions in sizes.stream_sessions:
        urls = [engine.ws_url(sid) for sid in engine.create_sessions(sessions)]
        reps: list[dict[str, float]] = []
        job = bench.ws_job(urls, warmup=1)
        name = f"stream-{engine.backend}-{sessions}"
        profile_extra_run(bench, engine.service, name, lambda job=job: bench.turns(job))
        for _ in range(sizes.repeats):
            reps.append(measure(bench, job, engine.service))
        summary = across_repeats(reps)
        entry: dict[str, Any] = {"repeats": reps, "summary": summary}
        baseline = base.get(str(sessions))
        if baseline and "tokens_per_s" in summary:
            engine_rate = summary["tokens_per_s"]["median"]
            for name in ("relay", "direct"):
                ref = baseline[name]["summary"].get("tokens_per_s", {}).get("median")
                if ref:
                    entry[f"ratio_vs_{name}"] = engine_rate / ref
        out[str(sessions)] = entry
    return {"sessions": out}
