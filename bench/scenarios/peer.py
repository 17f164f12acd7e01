"""Scenario 6: LiteLLM's proxy beside the engine, on the same machine, provider and clients.

Measured on LiteLLM: TTFT overhead over SSE (scenario 1's method), single-stream throughput at zero delay
(scenario 2's method, against its own direct baseline in the same run), and non-streaming chat
completions per second at each REST concurrency (scenario 4's method and answer length). The engine's
TTFT and throughput for comparison come from scenarios 1 and 2 of this run on PostgreSQL.

The non-streaming comparison is head to head: a fresh engine (on PostgreSQL, persisting every turn) runs
beside LiteLLM (no database), and the two are measured in alternating windows, in the order ABBA, so that
the machine's speed, which moves from minute to minute on a shared VM, weighs on both alike. Measured
one after the other, LiteLLM's own rate moved by 21-29% between two runs, more than the difference being
measured.
"""

from __future__ import annotations

from typing import Any

from bench.harness import Bench, EngineHandle
from bench.litellm_peer import ensure_venv, litellm_service, litellm_version
from bench.provider import MODEL
from bench.scenarios import throughput
from bench.scenarios.rest import SEND_TOKENS, measure_endpoint, send_template
from bench.scenarios.ttft import measure_overhead
from bench.stats import across_repeats

__all__ = ["run"]

STARTUP_TIMEOUT = 300.0  # LiteLLM imports a great deal; on a busy 2-core machine it takes a while


def run(bench: Bench, install: bool, backend: str) -> dict[str, Any]:
    problem = ensure_venv(install)
    if problem:
        return {"available": False, "reason": problem}
    service = litellm_service(bench.work_dir, bench.provider_v1)
    try:
        bench.start_service(service, timeout=STARTUP_TIMEOUT)
    except RuntimeError as exc:
        return {"available": False, "reason": f"LiteLLM's proxy did not start: {exc}"}
    url = service.base_url + "/v1/chat/completions"
    try:
        out: dict[str, Any] = {"available": True, "version": litellm_version()}
        out["ttft"] = measure_overhead(bench, bench.sse_job(url))
        bench.configure_provider(tokens=bench.sizes.stream_tokens)
        reps = [
            throughput.measure(bench, bench.sse_job(url, warmup=1), service)
            for _ in range(bench.sizes.repeats)
        ]
        out["stream_1"] = {"repeats": reps, "summary": across_repeats(reps)}
        with bench.engine(backend) as engine:
            out |= _head_to_head(bench, service.base_url, engine)
        out["rss_mb_after"] = service.rss() / 2**20
        return out
    finally:
        service.stop()


def _head_to_head(bench: Bench, litellm_url: str, engine: EngineHandle) -> dict[str, Any]:
    """Non-streaming sends on the engine and chat completions on LiteLLM, window by window in turn."""
    bench.configure_provider(tokens=SEND_TOKENS)
    senders = engine.create_sessions(max(bench.sizes.rest_concurrency))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    servers = {
        "engine_non_streaming": (engine.base_url, send_template(senders)),
        "non_streaming": (
            litellm_url,
            lambda _i: {"method": "POST", "path": "/v1/chat/completions", "json": body},
        ),
    }
    out: dict[str, Any] = {name: {} for name in servers}
    out["engine_backend"] = engine.backend
    for concurrency in bench.sizes.rest_concurrency:
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for repeat in range(max(2, bench.sizes.repeats - 1)):
            order = list(servers) if repeat % 2 == 0 else list(reversed(servers))  # ABBA...
            for name in order:
                base_url, template = servers[name]
                rows[name] += measure_endpoint(bench, base_url, template, concurrency, 1)["repeats"]
        for name in servers:
            out[name][str(concurrency)] = {"repeats": rows[name], "summary": across_repeats(rows[name])}
    return out
