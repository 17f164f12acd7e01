"""Orchestrator side of the load generators: spawn `python -m bench.loadgen` processes and merge results.

A job may be split over several processes (`split_urls`): on 2 cores one client process is usually
enough, but 1,000 WebSockets are spread over two so that a client's own event loop is not what limits
the measured server.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

__all__ = ["merge_turns", "run_loadgens", "split_urls"]

Job = dict[str, Any]
REPO = Path(__file__).resolve().parent.parent
_RUN_IDS = itertools.count(1)


def run_loadgens(
    jobs: list[Job], log_path: Path, *, on_ready: Callable[[], None] | None = None, timeout: float = 1800.0
) -> list[dict[str, Any]]:
    """Run each job in its own process and return their results, in order.

    Phased jobs (`"phased": true`) are all connected before `on_ready()` is called, then released
    together.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    paths = [log_path.parent / f"loadgen-{next(_RUN_IDS)}.json" for _ in jobs]
    with log_path.open("ab") as log:
        for job, path in zip(jobs, paths, strict=True):
            job = job | {"result_path": str(path)}
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen"],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
            assert process.stdin is not None
            process.stdin.write(orjson.dumps(job) + b"\n")
            process.stdin.flush()
            processes.append(process)
        try:
            phased = [p for p, job in zip(processes, jobs, strict=True) if job.get("phased")]
            for process in phased:
                assert process.stdout is not None
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError(f"load generator exited before it was ready; see {log_path}")
            if on_ready is not None:
                on_ready()
            for process in phased:
                assert process.stdin is not None
                process.stdin.write(b"go\n")
                process.stdin.flush()
            return [_result(p, path, timeout, log_path) for p, path in zip(processes, paths, strict=True)]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def _result(process: subprocess.Popen[bytes], path: Path, timeout: float, log_path: Path) -> dict[str, Any]:
    process.communicate(timeout=timeout)
    if process.returncode != 0 or not path.exists():
        raise RuntimeError(f"load generator failed ({process.returncode}); see {log_path}")
    result: dict[str, Any] = orjson.loads(path.read_bytes())
    path.unlink()
    return result


def split_urls(job: Job, processes: int) -> list[Job]:
    """Split a `ws_turns` job's URLs (or an `sse_turns` job's streams) over several processes."""
    if processes <= 1:
        return [job]
    if job["kind"] == "sse_turns":
        streams = int(job.get("streams", 1))
        sizes = [streams // processes + (1 if i < streams % processes else 0) for i in range(processes)]
        return [job | {"streams": size} for size in sizes if size]
    urls = job["urls"]
    return [job | {"urls": urls[i::processes]} for i in range(processes) if urls[i::processes]]


def merge_turns(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One turn result from several processes' (lists concatenated, the time window spanned)."""
    keys = ("ttft", "total", "tokens", "bytes", "gaps", "gap_ends", "first_tokens", "last_tokens")
    merged: dict[str, Any] = {key: [] for key in keys}
    for result in results:
        for key in merged:
            merged[key].extend(result[key])
    starts = [r["first_send"] for r in results if r.get("first_send") is not None]
    ends = [r["last_done"] for r in results if r.get("last_done") is not None]
    merged["errors"] = sum(r["errors"] for r in results)
    merged["error_sample"] = next((r["error_sample"] for r in results if r["error_sample"]), "")
    merged["connections"] = sum(r.get("connections", 0) for r in results)
    merged["client_cores"] = sum(r.get("client_cores", 0.0) for r in results)  # while driving turns
    merged["window"] = (max(ends) - min(starts)) if starts and ends else 0.0
    firsts, lasts = merged["first_tokens"], merged["last_tokens"]
    # From the first token anywhere to the last `done`: the streaming rate without turn set-up.
    merged["streaming_window"] = (max(ends) - min(firsts)) if firsts and ends else 0.0
    # Every stream delivers tokens between the last stream's first token and the first stream's last
    # one: the window where the load is the full number of concurrent streams (empty if end < start).
    merged["all_streaming"] = [max(firsts), min(lasts)] if firsts else None
    return merged
