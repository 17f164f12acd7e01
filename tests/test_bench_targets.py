"""The report's verdicts on the 1,000-stream targets (bench/targets.py)."""

from __future__ import annotations

from typing import Any

from bench.targets import evaluate_targets


def _run(most_at_once: int, rss_kb: float = 60.0, p99: float = 40.0) -> dict[str, Any]:
    engine = {
        "repeats": [{"most_streaming_at_once": most_at_once, "rss_streaming_kb_per_connection": rss_kb}],
        "summary": {
            "added_p99": {"median": p99},
            "all_streaming_added_p99": {"median": p99 if most_at_once == 1000 else None},
            "all_streaming_seconds": {"median": 4.0 if most_at_once == 1000 else 0.0},
            "most_streaming_at_once": {"median": most_at_once},
            "rss_streaming_kb_per_connection": {"max": rss_kb},
        },
    }
    return {"scenarios": {"many_streams": {"postgres": {"streams": 1000, "engine": engine}}}}


def _row(results: dict[str, Any], starts: str) -> dict[str, Any]:
    (row,) = [row for row in evaluate_targets(results) if row["target"].startswith(starts)]
    return row


def test_memory_per_stream_is_judged_when_every_stream_ran_at_once() -> None:
    assert _row(_run(1000, rss_kb=60.0), "Concurrent streams: RSS")["met"] is True
    assert _row(_run(1000, rss_kb=120.0), "Concurrent streams: RSS")["met"] is False


def test_memory_per_stream_is_not_judged_when_the_streams_never_all_ran() -> None:
    row = _row(_run(389, rss_kb=55.0), "Concurrent streams: RSS")
    assert row["met"] is None
    assert "at most 389 of the 1,000 streamed at once" in row["note"]


def test_a_low_p99_of_fewer_streams_does_not_meet_the_target() -> None:
    row = _row(_run(816, p99=40.0), "Concurrent streams: added")
    assert row["met"] is False
    assert "never all ran at once (at most 816" in row["note"]
    assert _row(_run(1000, p99=40.0), "Concurrent streams: added")["met"] is True
