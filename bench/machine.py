"""What machine and which versions a result was measured on (cores, CPU, memory, load, packages), and how
much CPU the machine actually had while it was measured.

On a virtual machine the host may run other guests on the same physical cores: time this machine's
processes were ready to run but the host ran someone else is *steal* (`/proc/stat`). It shows only under
load (an idle guest has nothing to be kept from) and comes and goes with the neighbours: in one window of
scenario 3 the host took 0.75 of the 2 cores, and the engine's tail rose from about 60 ms to 244 ms. A
run records it, so a result measured on a machine that was not all there says so.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import timeit
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "CpuMeter",
    "CpuSnapshot",
    "cpu_between",
    "cpu_snapshot",
    "machine_info",
    "machine_name",
    "parse_proc_stat",
    "speed_reference_ms",
]

_PACKAGES = (
    "aria-engine",
    "fastapi",
    "starlette",
    "uvicorn",
    "websockets",
    "aiohttp",
    "httpx",
    "openai",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "orjson",
    "uvloop",
    "httptools",
    "pydantic",
)


_PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """The machine's cumulative CPU time in clock ticks (all cores), read at one moment."""

    total: int
    idle: int  # idle + iowait
    steal: int


def parse_proc_stat(first_line: str) -> CpuSnapshot | None:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    fields = first_line.split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    # guest and guest_nice are already counted in user and nice
    return CpuSnapshot(total=sum(ticks[:8]), idle=ticks[3] + ticks[4], steal=ticks[7])


def cpu_snapshot() -> CpuSnapshot | None:
    """Now, or None where there is no /proc/stat (not Linux)."""
    try:
        with _PROC_STAT.open() as stat:
            return parse_proc_stat(stat.readline())
    except OSError:
        return None


def cpu_between(
    before: CpuSnapshot | None, after: CpuSnapshot | None, cores: int | None = None
) -> dict[str, float]:
    """Cores busy (this machine's processes, and steal) and cores stolen by the host, on average."""
    if before is None or after is None or after.total <= before.total:
        return {}
    ticks_per_core = (after.total - before.total) / (cores or os.cpu_count() or 1)  # elapsed, in ticks
    busy = (after.total - after.idle) - (before.total - before.idle)
    return {
        "busy_cores": busy / ticks_per_core,
        "stolen_cores": (after.steal - before.steal) / ticks_per_core,
    }


class CpuMeter:
    """The machine's CPU over a `with` block: `meter.result` is `cpu_between` its start and end."""

    def __init__(self) -> None:
        self.result: dict[str, float] = {}
        self._before: CpuSnapshot | None = None

    def __enter__(self) -> CpuMeter:
        self._before = cpu_snapshot()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.result = cpu_between(self._before, cpu_snapshot())


def machine_name() -> str:
    return socket.gethostname().split(".")[0] or "machine"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _uncommitted(repo: Path) -> list[str]:
    """Engine files that differ from the commit: the server runs what is on disk, not what is committed."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "aria_engine", "src", "migrations", "models.yaml"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return [line[3:] for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _reference_work() -> int:
    """A fixed piece of the interpreter's everyday work: calls, small dicts and lists, string joins."""
    total = 0
    for i in range(20_000):
        item = {"seq": i, "text": str(i), "parts": [i, i + 1]}
        total += len("".join((item["text"], "-", str(item["parts"][1])))) + item["seq"] % 7
    return total


def speed_reference_ms(repeats: int = 25) -> dict[str, float]:
    """How long this machine takes for `_reference_work` on one core, in ms: the median and the best
    of `repeats` (about half a second in all).

    The same machine ran the same code at very different speeds from one day to another (the fake
    provider's CPU per token doubled), and within seconds: on a slow day the times fell in two groups,
    11-13 ms and 20-23 ms, as if the core were shared half the time. The best is the core's speed; the
    median, what it gave that moment. A run records both at its start and end: figures to compare across
    reports before comparing their absolute numbers. Lower is faster.
    """
    times = timeit.repeat(_reference_work, number=1, repeat=repeats)
    return {"median": round(statistics.median(times) * 1000, 2), "best": round(min(times) * 1000, 2)}


def machine_info(repo: Path) -> dict[str, Any]:
    """Cores, CPU model, memory, load average and speed reference at the start, OS, Python and package
    versions."""
    return {
        "name": machine_name(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "speed_reference_ms_at_start": speed_reference_ms(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "git_commit": _git_commit(repo),
        "uncommitted_engine_files": _uncommitted(repo),
        "packages": {name: _version(name) for name in _PACKAGES},
    }
