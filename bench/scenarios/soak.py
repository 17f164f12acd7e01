"""Scenario 7: memory soak. Clients loop create session -> stream one turn over WebSocket -> delete
session for `soak_seconds`; the engine's RSS is sampled throughout.

Reported: RSS at the start and end, peak, least-squares slope in MB/hour after a warm-up (the first 10% of
the samples, while caches and pools fill), the slope over the second half alone (what "growing without
bound" would show), and the growth over the measured part.
"""

from __future__ import annotations

import time
from typing import Any

from bench.harness import API, Bench, EngineHandle, Sampler
from bench.stats import linear_slope

__all__ = ["run"]

SOAK_TOKENS = 32
MB = 2**20


def run(bench: Bench, engine: EngineHandle) -> dict[str, Any]:
    sizes = bench.sizes
    bench.configure_provider(tokens=SOAK_TOKENS)
    job = {
        "kind": "soak",
        "base_url": engine.base_url,
        "ws_base": f"ws://127.0.0.1:{engine.service.port}/ws/chat/",
        "create_path": f"{API}/sessions",
        "workers": sizes.soak_workers,
        "duration": sizes.soak_seconds,
    }
    started = time.perf_counter()
    with Sampler(engine.service, period=sizes.soak_sample_every) as sampler:
        [result] = bench.load([job])
    gone = [t for t, rss, _ in sampler.samples if rss == 0]
    if gone:
        # A server that vanished mid-soak (killed from outside or crashed) has no memory curve to judge.
        raise RuntimeError(
            f"the engine process exited {gone[0] - started:.0f} s into the soak "
            f"({result['cycles']} cycles done, {result['errors']} errors: {result['error_sample']})"
        )
    points = [((t - started) / 3600.0, rss / MB) for t, rss, _ in sampler.samples]
    measured = points[max(1, len(points) // 10) :]
    second_half = points[len(points) // 2 :]
    return {
        "seconds": sizes.soak_seconds,
        "workers": sizes.soak_workers,
        "cycles": result["cycles"],
        "cycles_per_s": result["cycles"] / sizes.soak_seconds,
        "errors": result["errors"],
        "error_sample": result["error_sample"],
        "rss_start_mb": points[0][1],
        "rss_end_mb": points[-1][1],
        "rss_peak_mb": max(y for _, y in points),
        "growth_after_warmup_mb": measured[-1][1] - measured[0][1] if measured else float("nan"),
        "slope_mb_per_hour": linear_slope(measured),
        "slope_second_half_mb_per_hour": linear_slope(second_half),
        "samples": [[round(x * 3600.0, 2), round(y, 2)] for x, y in points],
        "server_cpu_cores": sampler.cpu_cores(),
    }
