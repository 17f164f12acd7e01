"""The benchmark's statistics: how many streams ran at once, from each stream's first and last token."""

from __future__ import annotations

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
