"""Scenario 4: REST request rates and latencies at several concurrency levels (closed loop).

Endpoints: list sessions (page 1 of a table seeded with `rest_sessions` sessions of the same owner, in bulk
SQL), get session (one with a short history), create session, and non-streaming send (each client has
its own session, since a session runs one turn at a time). Each (endpoint, concurrency) runs `repeats`
measured windows after a warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.database import seed_sessions
from bench.harness import API, Bench, EngineHandle
from bench.profiling import profile_extra_run
from bench.provider import MODEL
from bench.scenarios import ms
from bench.stats import across_repeats, summarize

__all__ = ["SEND_TOKENS", "measure_endpoint", "run", "send_template"]

SEND_TOKENS = 16  # the answer length of every non-streaming send (engine and LiteLLM alike)

Template = Callable[[int], dict[str, Any]]


def send_template(senders: list[str]) -> Template:
    """A non-streaming send per client, each to a session of its own (a session runs one turn at a time)."""
    return lambda i: {
        "method": "POST",
        "path": f"{API}/sessions/{senders[i]}/messages",
        "json": {"content": "hello"},
    }


def measure_endpoint(
    bench: Bench, base_url: str, template: Template, concurrency: int, repeats: int, profile: str = ""
) -> dict[str, Any]:
    sizes = bench.sizes
    rows: list[dict[str, float]] = []
    errors: list[str] = []
    job = {
        "kind": "http",
        "base_url": base_url,
        "workers": [template(i) for i in range(concurrency)],
        "duration": sizes.rest_duration,
        "warmup": sizes.rest_warmup,
    }
    if profile:
        profile_extra_run(bench, bench.profile_target, profile, lambda: bench.load([job]))
    for _ in range(repeats):
        [result] = bench.load([job])
        latency = summarize(ms(result["latencies"]))
        rows.append(
            {
                "rps": result["rps"],
                "p50": latency.get("p50", float("nan")),
                "p99": latency.get("p99", float("nan")),
                "errors": float(result["errors"]),
            }
        )
        errors.extend(result["error_sample"])
    return {"repeats": rows, "summary": across_repeats(rows), "error_samples": errors[:3]}


def run(bench: Bench, engine: EngineHandle) -> dict[str, Any]:
    sizes = bench.sizes
    bench.configure_provider(tokens=SEND_TOKENS)
    detail = engine.create_session()
    started = time.perf_counter()
    seed_sessions(engine.database.url, engine.owner, sizes.rest_sessions, MODEL)
    seed_seconds = time.perf_counter() - started
    for _ in range(2):
        engine.send(detail)
    senders = engine.create_sessions(max(sizes.rest_concurrency))
    endpoints: dict[str, Template] = {
        "list_sessions": lambda _i: {"method": "GET", "path": f"{API}/sessions?page=1&page_size=20"},
        "get_session": lambda _i: {"method": "GET", "path": f"{API}/sessions/{detail}"},
        "create_session": lambda _i: {"method": "POST", "path": f"{API}/sessions", "json": {}},
        "send_message": send_template(senders),
    }
    repeats = max(1, sizes.repeats - 1)
    bench.profile_target = engine.service
    out: dict[str, Any] = {"seeded_sessions": sizes.rest_sessions, "seed_seconds": seed_seconds}
    try:
        for name, template in endpoints.items():
            out[name] = {}
            for concurrency in sizes.rest_concurrency:
                profile = f"{name}-{engine.backend}-c{concurrency}" if concurrency == 16 else ""
                out[name][str(concurrency)] = measure_endpoint(
                    bench, engine.base_url, template, concurrency, repeats, profile
                )
    finally:
        bench.profile_target = None
    return out
