"""`python -m bench` (what `make bench` runs).

python -m bench                       full run (the issue's sizes)
python -m bench --quick               quick run (~10 minutes on 2 cores)
python -m bench --mode tiny           a smoke run of the harness (results stay in the .tmp directory)
python -m bench --scenarios 1,2,4 --backends postgres --profile
python -m bench report bench/results/2026-11-26-host.json      re-render docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from bench.report import render
from bench.runner import DOC, SCENARIOS, RunOptions, run_benchmark
from bench.settings import MODES, sizes_for


def _numbers(text: str) -> frozenset[int]:
    numbers = frozenset(int(part) for part in text.split(",") if part.strip())
    unknown = numbers - set(SCENARIOS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s): {sorted(unknown)}; known: 1-7")
    return numbers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument(
        "--quick", action="store_const", const="quick", dest="mode", help="same as --mode quick"
    )
    parser.add_argument(
        "--scenarios", type=_numbers, default=frozenset(SCENARIOS), help="e.g. 1,2,4 (default all)"
    )
    parser.add_argument("--backends", default="postgres,sqlite", help="postgres,sqlite (default both)")
    parser.add_argument(
        "--sqlite-scenarios",
        type=_numbers,
        default=frozenset({1, 2, 4, 5}),
        help="scenarios repeated on SQLite (default 1,2,4,5)",
    )
    parser.add_argument("--repeats", type=int, help="override the mode's repeat count")
    parser.add_argument("--streams", type=int, help="scenario 3: concurrent streams (full 1000, quick 100)")
    parser.add_argument("--soak-seconds", type=float, help="scenario 7: soak length (full 1800, quick 120)")
    parser.add_argument("--profile", action="store_true", help="sample the engine with py-spy (if installed)")
    parser.add_argument(
        "--no-litellm-install",
        action="store_true",
        help="do not create bench/.venv-litellm; skip LiteLLM if it is missing",
    )
    parser.add_argument("--note", action="append", default=[], help="a note printed in the report")
    parser.add_argument(
        "--output", type=Path, help="results file (default bench/results/<date>-<machine>.json)"
    )
    parser.add_argument("--doc", type=Path, help=f"report file (default {DOC})")
    return parser


def _report(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench report")
    parser.add_argument("results", type=Path)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    args.doc.write_text(render(orjson.loads(args.results.read_bytes()), args.results))
    print(args.doc)


def main(argv: list[str]) -> None:
    if argv[:1] == ["report"]:
        _report(argv[1:])
        return
    args = _parser().parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if set(backends) - {"postgres", "sqlite"}:
        raise SystemExit("--backends takes postgres and/or sqlite")
    options = RunOptions(
        mode=args.mode,
        sizes=sizes_for(
            args.mode, repeats=args.repeats, many_streams=args.streams, soak_seconds=args.soak_seconds
        ),
        scenarios=args.scenarios,
        backends=backends,
        sqlite_scenarios=args.sqlite_scenarios,
        profile=args.profile,
        litellm_install=not args.no_litellm_install,
        notes=tuple(args.note),
        output=args.output,
        doc=args.doc,
    )
    run_benchmark(options)


if __name__ == "__main__":
    main(sys.argv[1:])
