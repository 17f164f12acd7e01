"""One benchmark run from start to end: provider, then per backend an engine on a fresh database and the
selected scenarios, then LiteLLM's proxy; results to `bench/results/<date>-<machine>.json` and the report
to docs/BENCHMARKS.md.

A scenario that fails is recorded with its error and the run goes on: a partial result still says what
was measured. Partial results are also written after every scenario to the run's work directory.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.harness import RELAY_WS, Bench, EngineHandle
from bench.machine import CpuMeter, machine_info, machine_name, speed_reference_ms
from bench.report import render
from bench.scenarios import history, many_streams, peer, rest, soak, throughput, ttft
from bench.settings import Sizes
from bench.targets import evaluate_targets

__all__ = ["SCENARIOS", "RunOptions", "run_benchmark", "write_results"]

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
DOC = REPO / "docs" / "BENCHMARKS.md"

# number -> (results key, runner on one engine); 2 and 6 are special-cased below.
SCENARIOS: dict[int, tuple[str, Callable[[Bench, EngineHandle], dict[str, Any]] | None]] = {
    1: ("ttft", ttft.run),
    2: ("throughput", None),
    3: ("many_streams", many_streams.run),
    4: ("rest", rest.run),
    5: ("history", history.run),
    6: ("peer", None),
    7: ("soak", soak.run),
}


@dataclass(frozen=True)
class RunOptions:
    mode: str
    sizes: Sizes
    scenarios: frozenset[int]
    backends: tuple[str, ...]
    sqlite_scenarios: frozenset[int]
    profile: bool
    litellm_install: bool
    notes: tuple[str, ...]
    output: Path | None
    doc: Path | None


def _log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _default_paths(options: RunOptions, started: datetime, work_dir: Path) -> tuple[Path, Path]:
    if options.mode == "tiny":  # a smoke run never replaces the committed results or the doc
        return options.output or work_dir / "results.json", options.doc or work_dir / "BENCHMARKS.md"
    output = options.output or RESULTS_DIR / f"{started:%Y-%m-%d}-{machine_name()}.json"
    return output, options.doc or DOC


def run_benchmark(options: RunOptions) -> Path:
    started = datetime.now(UTC)
    work_dir = RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}-{options.mode}.tmp"
    output, doc = _default_paths(options, started, work_dir)
    results: dict[str, Any] = {
        "schema": 1,
        "mode": options.mode,
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine_info(REPO),
        "notes": list(options.notes),
        "sizes": options.sizes.as_dict(),
        "servers": {
            "engine": f"aria-engine serve (uvicorn, one worker, ws={RELAY_WS!r} via uvicorn_options)",
            "relay": f"bench/relay.py (Starlette under uvicorn, ws={RELAY_WS!r})",
            "provider": "bench/provider.py (raw ASGI under uvicorn, httptools)",
        },
        "scenarios": {},
        "failures": [],
    }
    _log(f"mode {options.mode}; work directory {work_dir}")
    with Bench(options.sizes, work_dir) as bench:
        bench.profile = options.profile
        for backend in options.backends:
            wanted = (
                options.scenarios if backend == "postgres" else options.scenarios & options.sqlite_scenarios
            )
            if wanted - {6}:
                _run_backend(bench, backend, sorted(wanted - {6}), results, work_dir)
        if 6 in options.scenarios:
            _log("scenario 6 (LiteLLM's proxy)")
            backend = "postgres" if "postgres" in options.backends else options.backends[0]
            _timed(results, "peer", None, lambda: peer.run(bench, options.litellm_install, backend))
        results["database_versions"] = bench.database_versions
        results["profiles"] = bench.profiles
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["machine"]["speed_reference_ms_at_end"] = speed_reference_ms()
    results["targets"] = evaluate_targets(results)
    write_results(results, output)
    doc.write_text(render(results, output))
    _log(f"results: {output}\nreport: {doc}")
    return output


def _start_engine(
    bench: Bench, backend: str, results: dict[str, Any]
) -> tuple[contextlib.AbstractContextManager[EngineHandle], EngineHandle] | None:
    _log(f"starting the engine on {backend}")
    context = bench.engine(backend)
    try:
        return context, context.__enter__()
    except Exception as exc:  # the engine not starting is a result too; the other backend may work
        results["failures"].append({"backend": backend, "scenario": "engine start", "error": _brief(exc)})
        _log(f"engine on {backend} did not start: {_brief(exc)}")
        return None


def _run_backend(
    bench: Bench, backend: str, numbers: list[int], results: dict[str, Any], work_dir: Path
) -> None:
    started = _start_engine(bench, backend, results)
    if started is None:
        return
    context, engine = started
    try:
        for number in numbers:
            if engine.service.exit_status() is not None:
                # Killed from outside or crashed: say so, and go on with a fresh engine and database.
                error = f"the engine process ended ({engine.service.exit_status()}) before scenario {number}"
                results["failures"].append({"backend": backend, "scenario": "engine", "error": error})
                _log(error + "; restarting it on a fresh database")
                context.__exit__(None, None, None)
                started = _start_engine(bench, backend, results)
                if started is None:
                    return
                context, engine = started
            _run_scenario(bench, engine, number, results)
            write_results(results, work_dir / "results.partial.json")
    finally:
        context.__exit__(None, None, None)


def _run_scenario(bench: Bench, engine: EngineHandle, number: int, results: dict[str, Any]) -> None:
    name, runner = SCENARIOS[number]
    _log(f"[{engine.backend}] scenario {number} ({name})")
    if number == 2:
        if "throughput_baselines" not in results["scenarios"]:
            _log("scenario 2 baselines: direct SSE and the bare relay")
            results["scenarios"]["throughput_baselines"] = throughput.baselines(bench)
        base = results["scenarios"]["throughput_baselines"]
        _timed(results, name, engine.backend, lambda: throughput.run(bench, engine, base))
    else:
        assert runner is not None
        _timed(results, name, engine.backend, lambda: runner(bench, engine))
    status = engine.service.exit_status()
    if status is not None:
        entry = results["scenarios"][name][engine.backend]
        ended = f"the engine process ended during the scenario ({status})"
        entry["failed"] = f"{entry['failed']}; {ended}" if entry.get("failed") else ended


def _timed(
    results: dict[str, Any], name: str, backend: str | None, call: Callable[[], dict[str, Any]]
) -> None:
    started = time.perf_counter()
    machine = CpuMeter()
    try:
        with machine:
            value = call()
    except Exception as exc:  # one broken scenario must not lose the others' numbers
        traceback.print_exc(file=sys.stderr)
        value = {"failed": _brief(exc)}
        results["failures"].append({"backend": backend, "scenario": name, "error": _brief(exc)})
    value["elapsed_seconds"] = time.perf_counter() - started
    value["machine_cpu"] = machine.result  # busy and stolen cores over the whole scenario
    if backend is None:
        results["scenarios"][name] = value
    else:
        results["scenarios"].setdefault(name, {})[backend] = value


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def write_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
