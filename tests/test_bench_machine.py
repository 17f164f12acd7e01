"""The benchmark's reading of the machine's CPU: busy and stolen cores from /proc/stat, and its speed
reference."""

from __future__ import annotations

import time

import pytest

from bench.machine import CpuMeter, cpu_between, parse_proc_stat, speed_reference_ms
from bench.report import _speed_row

# user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks over all cores
BEFORE = "cpu  1000 0 200 5000 100 0 10 40 0 0"
# One second later on 2 cores (200 ticks): 60 user, 20 system, 60 idle, 10 iowait, 50 steal.
AFTER = "cpu  1060 0 220 5060 110 0 10 90 30 0"


def test_busy_and_stolen_cores_between_two_readings() -> None:
    before, after = parse_proc_stat(BEFORE), parse_proc_stat(AFTER)
    # guest time (30) is part of user already: it must not count twice
    result = cpu_between(before, after, cores=2)
    assert result == pytest.approx({"busy_cores": 1.3, "stolen_cores": 0.5})


@pytest.mark.parametrize("line", ["", "cpu0 1 2 3 4 5 6 7 8", "intr 1 2 3", "cpu 1 2 3"])
def test_lines_that_are_not_the_aggregate_cpu_line_give_nothing(line: str) -> None:
    assert parse_proc_stat(line) is None


def test_no_elapsed_time_or_a_missing_reading_gives_no_figures() -> None:
    snapshot = parse_proc_stat(BEFORE)
    assert cpu_between(snapshot, snapshot, cores=2) == {}
    assert cpu_between(None, snapshot, cores=2) == {}


def test_the_meter_reads_this_machine_over_a_block() -> None:
    with CpuMeter() as meter:
        time.sleep(0.05)  # several clock ticks (10 ms each), so that there is an interval to report
    # On Linux (where the suite runs) both figures are there and within the machine's size.
    assert set(meter.result) == {"busy_cores", "stolen_cores"}
    assert 0.0 <= meter.result["stolen_cores"] <= meter.result["busy_cores"]


def test_the_speed_reference_gives_the_median_and_the_best_of_its_runs() -> None:
    reading = speed_reference_ms(repeats=5)
    assert set(reading) == {"median", "best"}
    assert 0 < reading["best"] <= reading["median"]


def test_the_report_gives_the_speed_reference_only_for_runs_that_recorded_it() -> None:
    assert _speed_row({}) == []
    recorded = {
        "speed_reference_ms_at_start": {"median": 22.1, "best": 11.04},
        "speed_reference_ms_at_end": {"median": 12.5, "best": 11.2},
    }
    (row,) = _speed_row(recorded)
    assert row[0] == "Speed reference"
    assert row[1].startswith("22.10 ms (best 11.04) at the start, 12.50 ms (best 11.20) at the end")
