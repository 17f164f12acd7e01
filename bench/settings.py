"""Sizes of every scenario in the three modes: `full` (the issue's numbers), `quick` (under ~10 minutes on
2 cores) and `tiny` (a smoke run of the harness itself, a minute or so)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["MODES", "Sizes", "sizes_for"]


@dataclass(frozen=True, slots=True)
class Sizes:
    repeats: int
    # 1. TTFT: sequential turns per repeat, and the answer length (TTFT does not depend on it).
    ttft_turns: int
    ttft_tokens: int
    # 2. Throughput: tokens per answer at zero delay, for each number of concurrent sessions.
    stream_tokens: int
    stream_sessions: tuple[int, ...]
    # 3. Many streams: sockets, tokens per answer, tokens per second per stream, start ramp, client procs,
    # and the slower rate of the memory repeat, one that a single process carries for every stream at once.
    many_streams: int
    many_tokens: int
    many_rate: float
    many_ramp: float
    many_processes: int
    many_memory_rate: float
    # 4. REST: seeded sessions for the list, concurrency levels, seconds measured (after a warm-up).
    rest_sessions: int
    rest_concurrency: tuple[int, ...]
    rest_duration: float
    rest_warmup: float
    # 5. History scaling: messages per session, sends measured per size.
    history_sizes: tuple[int, ...]
    history_turns: int
    # 7. Memory soak: seconds, concurrent clients, RSS sampling period.
    soak_seconds: float
    soak_workers: int
    soak_sample_every: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Sizes(
    repeats=5,
    ttft_turns=200,
    ttft_tokens=16,
    stream_tokens=4000,
    stream_sessions=(1, 32),
    many_streams=1000,
    many_tokens=200,
    many_rate=20.0,
    many_ramp=5.0,
    many_processes=2,
    many_memory_rate=4.0,
    rest_sessions=100_000,
    rest_concurrency=(1, 16, 64),
    rest_duration=10.0,
    rest_warmup=2.0,
    history_sizes=(10, 1000, 10_000),
    history_turns=50,
    soak_seconds=1800.0,
    soak_workers=8,
    soak_sample_every=10.0,
)

QUICK = replace(
    FULL,
    repeats=3,
    ttft_turns=60,
    stream_tokens=400,
    many_streams=100,
    many_tokens=100,
    many_ramp=2.0,
    many_processes=1,
    rest_sessions=10_000,
    rest_duration=1.5,
    rest_warmup=0.5,
    history_turns=20,
    soak_seconds=120.0,
    soak_workers=4,
    soak_sample_every=2.0,
)

TINY = replace(
    QUICK,
    repeats=1,
    ttft_turns=10,
    stream_tokens=200,
    stream_sessions=(1, 4),
    many_streams=10,
    many_tokens=20,
    many_ramp=0.5,
    rest_sessions=500,
    rest_concurrency=(1, 4),
    rest_duration=0.5,
    rest_warmup=0.2,
    history_sizes=(10, 200),
    history_turns=5,
    soak_seconds=10.0,
    soak_workers=2,
    soak_sample_every=1.0,
)

MODES = {"full": FULL, "quick": QUICK, "tiny": TINY}


def sizes_for(mode: str, **overrides: Any) -> Sizes:
    """The sizes of a mode, with command-line overrides (None = keep)."""
    return replace(MODES[mode], **{k: v for k, v in overrides.items() if v is not None})
