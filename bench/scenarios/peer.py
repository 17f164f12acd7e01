"""Scenario 6: LiteLLM's proxy beside the engine, on the same machine, provider and clients.

Measured on LiteLLM: TTFT overhead over SSE (scenario 1's method), single-stream throughput at zero delay
(scenario 2's method, against its own direct baseline in the same run), and non-streaming chat
completions per second at each REST concurrency (scenario 4's method and answer length). The engine's
numbers for the same measurements come from scenarios 1, 2 and 4 of this run on PostgreSQL, where the
engine persists every turn; LiteLLM runs without a database.
"""

from __future__ import annotations

from typing import Any

from bench.harness import Bench
from bench.litellm_peer import ensure_venv, litellm_service, litellm_version
from bench.provider import MODEL
from bench.scenarios import throughput
from bench.scenarios.rest import SEND_TOKENS, measure_endpoint
from bench.scenarios.ttft import measure_overhead
from bench.stats import across_repeats

__all__ = ["run"]

STARTUP_TIMEOUT = 300.0  # LiteLLM imports a great deal; on a busy 2-core machine it takes a while


def run(bench: Bench, install: bool) -> dict[str, Any]:
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
        bench.configure_provider(tokens=SEND_TOKENS)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
        out["non_streaming"] = {
            str(concurrency): measure_endpoint(
                bench,
                service.base_url,
                lambda _i: {"method": "POST", "path": "/v1/chat/completions", "json": body},
                concurrency,
                max(1, bench.sizes.repeats - 1),
            )
            for concurrency in bench.sizes.rest_concurrency
        }
        out["rss_mb_after"] = service.rss() / 2**20
        return out
    finally:
        service.stop()
