"""Scenario 2: streaming throughput at zero per-token delay, for 1 and 32 concurrent sessions.

Three targets read the same provider answer: (a) clients reading the provider's SSE directly, (b) the
minimal relay (bare Starlette WebSocket, no database), (c) the engine over WebSocket. Tokens per second is
all tokens delivered divided by the window from the first send to the last `done` (and, without the
turn's set-up, from the first token to the last `done`). Also measured: bytes on
the wire per token and the server's CPU time per token (from /proc), which shows where the time goes.
The baselines run once per run (`baselines`) for the table; the ratio to the relay, which the target
uses, comes from a relay measured alongside each engine, window by window in ABBA order (`run`), so that
a machine whose speed drifts over the hour a full run takes moves both sides of the ratio alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench.harness import ALT_RELAY_WS, RELAY_WS, Bench, EngineHandle
from bench.procs import Service
from bench.profiling import profile_extra_run
from bench.stats import across_repeats
from bench.targets import pick

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
    """Engine rates per session count, each repeat paired with a bare relay repeat taken beside it."""
    sizes = bench.sizes
    bench.configure_provider(tokens=sizes.stream_tokens)
    out: dict[str, Any] = {}
    with bench.relay(RELAY_WS) as relay:
        relay_url = f"ws://127.0.0.1:{relay.port}/ws/relay"
        for sessions in sizes.stream_sessions:
            urls = [engine.ws_url(sid) for sid in engine.create_sessions(sessions)]
            job = bench.ws_job(urls, warmup=1)
            relay_job = bench.ws_job([relay_url] * sessions, warmup=1)
            name = f"stream-{engine.backend}-{sessions}"
            profile_extra_run(bench, engine.service, name, lambda job=job: bench.turns(job))
            reps, relay_reps = _paired(
                lambda job=job: measure(bench, job, engine.service),
                lambda relay_job=relay_job: measure(bench, relay_job, relay),
                sizes.repeats,
            )
            out[str(sessions)] = _entry(reps, relay_reps, base.get(str(sessions)))
    return {"sessions": out}


def _paired(
    engine: Callable[[], dict[str, float]], relay: Callable[[], dict[str, float]], repeats: int
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """`repeats` windows of each, in ABBA order: engine-relay, relay-engine, engine-relay, ..."""
    reps: list[dict[str, float]] = []
    relay_reps: list[dict[str, float]] = []
    for index in range(repeats):
        if index % 2 == 0:
            reps.append(engine())
            relay_reps.append(relay())
        else:
            relay_reps.append(relay())
            reps.append(engine())
    return reps, relay_reps


def _entry(
    reps: list[dict[str, float]], relay_reps: list[dict[str, float]], baseline: dict[str, Any] | None
) -> dict[str, Any]:
    summary = across_repeats(reps)
    entry: dict[str, Any] = {
        "repeats": reps,
        "summary": summary,
        "relay_alongside": {"repeats": relay_reps, "summary": across_repeats(relay_reps)},
    }
    # The target's ratio: the median of the per-pair ratios (each engine window over the relay window
    # next to it), which a drifting machine cannot move the way it moves two runs far apart.
    pairs = [
        rep["tokens_per_s"] / ref["tokens_per_s"]
        for rep, ref in zip(reps, relay_reps, strict=True)
        if rep.get("tokens_per_s") and ref.get("tokens_per_s")
    ]
    if pairs:
        entry["ratio_vs_relay"] = statistics.median(pairs)
        entry["pair_ratios"] = pairs
    direct = pick(baseline, "direct", "summary", "tokens_per_s", "median") if baseline else None
    if direct and "tokens_per_s" in summary:
        entry["ratio_vs_direct"] = summary["tokens_per_s"]["median"] / direct
    return entry
