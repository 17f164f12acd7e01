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


def _with_memory(run: dict[str, Any], most_at_once: int, rss_kb: float) -> dict[str, Any]:
    many = run["scenarios"]["many_streams"]["postgres"]
    many["memory"] = {
        "most_streaming_at_once": most_at_once,
        "rss_streaming_kb_per_connection": rss_kb,
        "tokens_per_second_per_stream": 4.0,
    }
    return run


def test_memory_per_stream_comes_from_the_memory_repeat_where_every_stream_ran() -> None:
    # The latency repeats never had all 1,000 at once; the memory repeat did, and decides.
    row = _row(_with_memory(_run(389, rss_kb=55.0), 1000, 80.0), "Concurrent streams: RSS")
    assert (row["met"], row["value"]) == (True, 80.0)
    assert "a repeat of its own, first, at 4 tokens/s" in row["note"]
    assert "all 1,000 streamed at once" in row["note"]
    over = _row(_with_memory(_run(389, rss_kb=55.0), 1000, 130.0), "Concurrent streams: RSS")
    assert over["met"] is False


def test_a_memory_repeat_whose_streams_never_all_ran_is_not_judged() -> None:
    row = _row(_with_memory(_run(1000, rss_kb=60.0), 700, 50.0), "Concurrent streams: RSS")
    assert row["met"] is None
    assert "at most 700 of the 1,000 streamed at once" in row["note"]
