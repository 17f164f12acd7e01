"""The seven scenarios of the benchmark, one module each; each `run(...)` returns a JSON-ready dict.

1 `ttft`, 2 `throughput`, 3 `many_streams`, 4 `rest`, 5 `history`, 6 `peer` (LiteLLM's proxy), 7 `soak`.
Times in results are milliseconds, rates per second, memory in bytes unless a key says otherwise.
"""

from __future__ import annotations

__all__ = ["ms"]


def ms(seconds: list[float]) -> list[float]:
    """Seconds to milliseconds, for a list of samples."""
    return [value * 1000.0 for value in seconds]
