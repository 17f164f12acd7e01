"""The benchmark's statistics: how many streams ran at once, and when all of them did, from each
stream's first and last token (merged across load-generator processes)."""

from __future__ import annotations

from typing import Any

from bench.loadrun import merge_turns
from bench.stats import most_at_once


def test_streams_that_all_overlap_count_fully() -> None:
    # 1,000 streams of 10 s started over 5 s: between 5 s and 10 s every one of them streams.
    starts = [index * 0.005 for index in range(1000)]
    assert most_at_once(starts, [start + 10.0 for start in starts]) == 1000


def test_streams_started_slower_than_they_last_never_all_overlap() -> None:
    # Started over 20 s, each lasting 10 s: at any moment only those started in the last 10 s stream.
    starts = [index * 0.02 for index in range(1000)]
    assert most_at_once(starts, [start + 10.0 for start in starts]) == 501


def test_a_stream_ending_as_another_starts_overlaps_it() -> None:
    assert most_at_once([0.0, 10.0, 5.0], [10.0, 20.0, 15.0]) == 3
    assert most_at_once([0.0, 2.0], [1.0, 3.0]) == 1


def test_no_streams_none_at_once() -> None:
    assert most_at_once([], []) == 0


def _turns(first_tokens: list[float], last_tokens: list[float], sent: float, done: float) -> dict[str, Any]:
    count = len(first_tokens)
    return {
        "ttft": [0.1] * count,
        "total": [1.0] * count,
        "tokens": [10] * count,
        "bytes": [100] * count,
        "gaps": [],
        "gap_ends": [],
        "first_tokens": first_tokens,
        "last_tokens": last_tokens,
        "errors": 0,
        "error_sample": "",
        "first_send": sent,
        "last_done": done,
    }


def test_merged_processes_give_the_window_where_every_stream_ran() -> None:
    # Two load generators: the last stream anywhere starts at 3, the first one anywhere ends at 10.
    merged = merge_turns([_turns([1.0, 2.0], [11.0, 12.0], 0.9, 12.5), _turns([3.0], [10.0], 2.9, 10.5)])
    assert merged["all_streaming"] == [3.0, 10.0]
    assert merged["streaming_window"] == 12.5 - 1.0
    assert most_at_once(merged["first_tokens"], merged["last_tokens"]) == 3


def test_streams_that_never_all_ran_give_an_empty_window() -> None:
    merged = merge_turns([_turns([0.0, 11.0], [10.0, 21.0], 0.0, 21.0)])
    start, end = merged["all_streaming"]
    assert end < start  # read as zero seconds with every stream running
