"""bench/instructions.py: splitting two instruction counts into a cost per token and a cost per turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.instructions import callgrind_total, split_cost


def test_two_turn_lengths_separate_the_cost_per_token_from_the_cost_per_turn() -> None:
    # 16 turns each run: 5,000,000 instructions per turn plus 140,000 per token.
    def count(tokens_per_turn: int) -> tuple[int, int, int]:
        tokens = 16 * tokens_per_turn
        return 16 * 5_000_000 + tokens * 140_000, tokens, 16

    cost = split_cost(count(20), count(200))
    assert cost.per_token == pytest.approx(140_000)
    assert cost.per_turn == pytest.approx(5_000_000)
    assert cost.per_token_all_in(200) == pytest.approx(165_000)


def test_the_total_comes_from_the_dumps_totals_line(tmp_path: Path) -> None:
    dump = tmp_path / "cg.123.1"
    dump.write_text("# callgrind format\nevents: Ir\nsummary: 0\n\nfn=(1) main\n5 10\n\ntotals: 548457174\n")
    assert callgrind_total(dump) == 548_457_174
    (tmp_path / "empty").write_text("events: Ir\n")
    with pytest.raises(ValueError, match="no totals"):
        callgrind_total(tmp_path / "empty")

