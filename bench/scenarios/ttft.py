"""Scenario 1: time to first token over WebSocket, minus the provider's own TTFT measured by the same kind
of client directly against the fake provider.

Turns are sequential on one session (the history grows as in a conversation; the context window caps
what is read). Each repeat measures the engine and the direct baseline back to back, so both see the same
machine load; the overhead is engine p50 minus direct p50 (and likewise for p99) within a repeat.
"""

from __future__ import annotations

from typing import Any

from bench.harness import Bench, EngineHandle
from bench.machine import CpuMeter
from bench.procs import Service
from bench.profiling import profile_extra_run
from bench.scenarios import ms
from bench.stats import across_repeats, summarize

__all__ = ["measure_overhead", "run"]

WARMUP_TURNS = 3


def measure_overhead(
    bench: Bench, measured_job: dict[str, Any], server: Service | None = None, profile: str = ""
) -> dict[str, Any]:
    """Repeats of (measured target, direct provider) TTFT; `measured_job` is a ws_ or sse_turns job.

    With `profile` set (and profiling on), `server` is sampled during one extra, uncounted repeat.
    """
    turns = bench.sizes.ttft_turns
    bench.configure_provider(tokens=bench.sizes.ttft_tokens)
    direct_job = bench.sse_job(bench.provider_v1 + "/chat/completions", turns=turns, warmup=WARMUP_TURNS)
    repeats: list[dict[str, float]] = []
    errors: list[str] = []
    target_job = measured_job | {"turns": turns, "warmup": WARMUP_TURNS}
    if profile:
        profile_extra_run(bench, server, profile, lambda: bench.turns(target_job))
    for _ in range(bench.sizes.repeats):
        with CpuMeter() as machine:
            target = bench.turns(target_job)
        direct = bench.turns(direct_job)
        measured, baseline = summarize(ms(target["ttft"])), summarize(ms(direct["ttft"]))
        if not measured.get("n") or not baseline.get("n"):
            errors.append(target["error_sample"] or direct["error_sample"] or "no turn completed")
            continue
        repeats.append(
            {
                "p50": measured["p50"],
                "p99": measured["p99"],
                "direct_p50": baseline["p50"],
                "direct_p99": baseline["p99"],
                "overhead_p50": measured["p50"] - baseline["p50"],
                "overhead_p99": measured["p99"] - baseline["p99"],
                "errors": target["errors"] + direct["errors"],
                "stolen_cores": machine.result.get("stolen_cores", float("nan")),
            }
        )
        if target["error_sample"]:
            errors.append(target["error_sample"])
    return {
        "turns_per_repeat": turns,
        "repeats": repeats,
        "summary": across_repeats(repeats),
        "error_samples": errors[:3],
    }


def run(bench: Bench, engine: EngineHandle) -> dict[str, Any]:
    session_id = engine.create_session()
    job = bench.ws_job([engine.ws_url(session_id)])
    return measure_overhead(bench, job, engine.service, f"ttft-{engine.backend}")
