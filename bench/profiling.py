"""Optional sampling profiles of a server while a scenario runs (`python -m bench --profile`).

Each profile is taken during one extra, uncounted repetition of a measurement (`profile_extra_run`).

py-spy attaches to the server's process from outside (no code change, no import in the server), samples
its Python stacks, and writes collapsed stacks ("frame;frame;frame count"). The summary kept in the
results lists the functions with the most samples, by own time (leaf frame) and by inclusive time,
restricted to frames that matter for tuning (our code, the ASGI/WebSocket stack, SQLAlchemy, drivers).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.harness import Bench
    from bench.procs import Service

__all__ = ["profile_extra_run", "profiled", "py_spy", "summarize_collapsed"]


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(bench: Bench, service: Service, name: str, *, enabled: bool = True) -> Iterator[None]:
    """Sample `service` for the duration of the block when the run profiles; otherwise do nothing."""
    executable = py_spy()
    if not (bench.profile and enabled and executable):
        yield
        return
    output = bench.work_dir / f"profile-{name}.txt"
    recorder = subprocess.Popen(
        [
            executable,
            "record",
            "--pid",
            str(service.pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
        if output.exists():
            bench.profiles[name] = summarize_collapsed(output.read_text(errors="replace")) | {
                "file": str(output)
            }


def profile_extra_run(bench: Bench, service: Service | None, name: str, run: Callable[[], object]) -> None:
    """When the run profiles, repeat one measurement under py-spy; its numbers are thrown away.

    Profiling costs CPU on the same cores, so a profiled repetition is never one of the counted ones.
    """
    if bench.profile and service is not None and py_spy():
        with profiled(bench, service, name):
            run()


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/module.py:123)"; keep the function and the file name.
    function, _, where = frame.partition(" (")
    file_name = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{function} ({file_name})" if file_name else function


def summarize_collapsed(text: str, top: int = 25) -> dict[str, Any]:
    """Own-time and inclusive-time leaders of a collapsed-stack profile."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    return {"samples": total, "own_percent": share(own), "inclusive_percent": share(inclusive)}
