"""The engine's cost in instructions, per token and per turn, against the bare relay's (callgrind).

Timed figures on a shared machine move with its hour (bench/ANALYSIS.md: the same code measured 7.6 to
25 ms on the speed reference); instruction counts do not. callgrind (valgrind) counts the instructions a
process runs in user space, and the same count taken again agrees within 1%. So two versions of the engine
can be compared on any hour, one after the other.

Each server runs under valgrind with counting off while it starts, its clients connect and each runs a
warm-up turn. Then CLIENTS clients run TURNS turns each of SHORT tokens, and again of LONG tokens, at
RATE tokens/s from the fake provider (slow enough that valgrind's slowdown, tens of times, leaves the server
idle between tokens, as a server with 1,000 streams of 20 tokens/s is between each stream's tokens).
Per token is the difference between the two counts over the difference in tokens; per turn is the
rest. System calls (the kernel's work), waiting and the time an instruction waits for memory are not
counted: this is how much Python a token and a turn run, a guide to where the cost is. A change is
judged by the timed scenarios (`python -m bench`): one that ran fewer instructions here took more CPU
time at full speed (bench/ANALYSIS.md, "frames pushed from the turn's task").

    python -m bench.instructions                  # the engine on PostgreSQL, and the bare relay
    python -m bench.instructions --backend sqlite

Needs valgrind (Debian's `valgrind` package); takes about five minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Bench
from bench.procs import Service
from bench.settings import sizes_for

__all__ = ["Cost", "callgrind_total", "split_cost"]

CLIENTS = 8
TURNS = 2
SHORT, LONG = 20, 200
RATE = 10.0  # tokens/s per stream


@dataclass(frozen=True, slots=True)
class Cost:
    per_token: float
    per_turn: float

    def per_token_all_in(self, tokens: int) -> float:
        """Per token with the turn's own cost spread over a turn of `tokens` tokens."""
        return self.per_token + self.per_turn / tokens


def split_cost(short: tuple[int, int, int], long: tuple[int, int, int]) -> Cost:
    """(instructions, tokens, turns) of a run of short turns and one of long turns -> the cost split."""
    (short_count, short_tokens, short_turns), (long_count, long_tokens, _) = short, long
    per_token = (long_count - short_count) / (long_tokens - short_tokens)
    return Cost(per_token, (short_count - per_token * short_tokens) / short_turns)


def callgrind_total(dump: Path) -> int:
    """The instructions counted in one callgrind dump (its `totals:` line)."""
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"{dump} has no totals line")


def _callgrind(out_dir: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_dir}/cg.%p"]


def _control(service: Service, *flags: str) -> None:
    command = ["callgrind_control", *flags, str(service.pid)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _count(
    bench: Bench, service: Service, urls: list[str], tokens: int, out_dir: Path
) -> tuple[int, int, int]:
    """Instructions, tokens and turns of TURNS turns per URL of `tokens` tokens, after a warm-up turn."""
    bench.configure_provider(tokens=tokens, delay=1.0 / RATE)
    bench.turns(bench.ws_job(urls, turns=1))
    before = set(out_dir.iterdir())
    _control(service, "--instr=on")
    result = bench.turns(bench.ws_job(urls, turns=TURNS))
    _control(service, "--instr=off")
    if result["errors"]:
        raise RuntimeError(f"turns failed: {result['error_sample']}")
    _control(service, "--dump")
    for _ in range(100):  # the server's process writes the dump a moment later; its last line is the total
        dumps = set(out_dir.iterdir()) - before
        if dumps and all("totals:" in d.read_text() for d in dumps):
            return sum(callgrind_total(d) for d in dumps), sum(result["tokens"]), len(result["tokens"])
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no complete dump")


def _measure(
    bench: Bench, server: Callable[[], AbstractContextManager[tuple[Service, list[str]]]], out_dir: Path
) -> Cost:
    with server() as (service, urls):
        short = _count(bench, service, urls, SHORT, out_dir)
        long = _count(bench, service, urls, LONG, out_dir)
    return split_cost(short, long)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="aria-instructions-") as tmp:
        work, out_dir = Path(tmp), Path(tmp) / "callgrind"
        out_dir.mkdir()
        with Bench(sizes_for("quick"), work) as bench:

            @contextlib.contextmanager
            def engine() -> Iterator[tuple[Service, list[str]]]:
                with bench.engine(args.backend, wrapper=_callgrind(out_dir)) as handle:
                    yield handle.service, [handle.ws_url(sid) for sid in handle.create_sessions(CLIENTS)]

            @contextlib.contextmanager
            def relay() -> Iterator[tuple[Service, list[str]]]:
                with bench.relay(wrapper=_callgrind(out_dir)) as service:
                    yield service, [f"ws://127.0.0.1:{service.port}/ws/relay"] * CLIENTS

            costs = {
                f"engine ({args.backend})": _measure(bench, engine, out_dir),
                "bare relay": _measure(bench, relay, out_dir),
            }
    relay_cost = costs["bare relay"]
    print(f"| Server | Instructions per token | Per turn | Per token, {LONG}-token turns | vs relay |")
    print("|---|---|---|---|---|")
    for name, cost in costs.items():
        all_in = cost.per_token_all_in(LONG)
        ratio = all_in / relay_cost.per_token_all_in(LONG)
        print(f"| {name} | {cost.per_token:,.0f} | {cost.per_turn:,.0f} | {all_in:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
