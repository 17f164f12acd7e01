"""Scenario 5: does a turn cost more in a long session? Send latency and SQL statements per turn in
sessions of 10, 1,000 and 10,000 messages (seeded in bulk).

Latency: sequential non-streaming sends over REST on each session. Statements: the API exposes no SQL
counter, so `bench.sqlcount` builds the same engine object graph in this process against the same
database and provider and counts what SQLAlchemy sends to the driver during one `send_message`.
"""

from __future__ import annotations

from typing import Any

from bench.database import seed_messages
from bench.harness import API, Bench, EngineHandle
from bench.provider import MODEL
from bench.scenarios import ms
from bench.scenarios.rest import SEND_TOKENS
from bench.sqlcount import count_turn_statements
from bench.stats import across_repeats, summarize

__all__ = ["run"]

WARMUP_SENDS = 2


def run(bench: Bench, engine: EngineHandle) -> dict[str, Any]:
    sizes = bench.sizes
    bench.configure_provider(tokens=SEND_TOKENS)
    sessions: dict[int, str] = {}
    for size in sizes.history_sizes:
        sessions[size] = engine.create_session()
        seed_messages(engine.database.url, sessions[size], size, MODEL)
    per_size: dict[str, list[dict[str, float]]] = {str(size): [] for size in sizes.history_sizes}
    errors: list[str] = []
    for _ in range(sizes.repeats):
        for size, session_id in sessions.items():
            job = {
                "kind": "http",
                "base_url": engine.base_url,
                "workers": [
                    {
                        "method": "POST",
                        "path": f"{API}/sessions/{session_id}/messages",
                        "json": {"content": "hi"},
                    }
                ],
                "requests": sizes.history_turns,
                "warmup": WARMUP_SENDS,
            }
            [result] = bench.load([job])
            latency = summarize(ms(result["latencies"]))
            per_size[str(size)].append(
                {
                    "p50": latency.get("p50", float("nan")),
                    "p99": latency.get("p99", float("nan")),
                    "errors": float(result["errors"]),
                }
            )
            errors.extend(result["error_sample"])
    summary = {size: across_repeats(rows) for size, rows in per_size.items()}
    smallest, largest = str(min(sizes.history_sizes)), str(max(sizes.history_sizes))
    out: dict[str, Any] = {
        "sizes": list(sizes.history_sizes),
        "sends_per_repeat": sizes.history_turns,
        "latency": {size: {"repeats": per_size[size], "summary": summary[size]} for size in per_size},
        "error_samples": errors[:3],
    }
    try:
        out["ratio_p50_largest_vs_smallest"] = (
            summary[largest]["p50"]["median"] / summary[smallest]["p50"]["median"]
        )
    except (KeyError, ZeroDivisionError):
        out["ratio_p50_largest_vs_smallest"] = float("nan")
    out["sql_statements_per_turn"] = count_turn_statements(
        engine.database.url, bench.provider_v1, engine.owner, {str(k): v for k, v in sessions.items()}
    )
    return out
