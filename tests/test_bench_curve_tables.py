"""bench/fed_quality.py, fed_recipes.py tables: a long run's sampled recall in block means, a short one's by round."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fed_quality
from fed_quality import CURVE_ROWS, curve_blocks
from fed_recipes import table

from fedkey.config import load_config


@pytest.mark.parametrize("evaluations", [1, 7, CURVE_ROWS, CURVE_ROWS + 1, 264])
def test_blocks_cover_every_evaluation_once_in_order(evaluations: int):
    rounds = [20 * (i + 1) for i in range(evaluations)]
    blocks = curve_blocks(rounds)
    assert [rnd for _, block in blocks for rnd in block] == rounds
    assert len(blocks) <= CURVE_ROWS
    assert len({len(block) for _, block in blocks[:-1]}) <= 1  # equal blocks, the last may be shorter
    for label, block in blocks:
        assert label == (str(block[0]) if len(block) == 1 else f"{block[0]}-{block[-1]}")
    if evaluations <= CURVE_ROWS:
        assert all(len(block) == 1 for _, block in blocks)


def fake_run(curve: list[tuple[int, float]], rounds: int) -> dict:
    return {
        "rounds": rounds,
        "held_out_users": {"recall@1": 0.2, "recall@3": 0.3},
        "bytes_up": 1e9,
        "wall_time_s": 60.0,
        "reports": 25 * rounds,
        "curve": [(rnd, recall, 4.0) for rnd, recall in curve],
        "simulate": load_config(None).simulate,
        "pipeline": load_config(None).pipeline.describe(),
    }


def test_recipes_table_shows_block_means_of_a_long_run():
    evaluations = 3 * CURVE_ROWS  # blocks of 3
    a = [(20 * (i + 1), 0.001 * i) for i in range(evaluations)]
    b = [(rnd, 2 * recall) for rnd, recall in a]
    runs = {"a": fake_run(a, 20 * evaluations), "b": fake_run(b, 20 * evaluations)}
    text = table("T", runs, [], {"a": [], "b": []}, [], 1)
    rows = [line for line in text.splitlines() if line.startswith("| 20-60 |") or line.startswith("| 80-120 |")]
    assert rows == ["| 20-60 | 0.001 | 0.002 |", "| 80-120 | 0.004 | 0.008 |"]
    assert "each row the mean of 3 evaluations" in text
    body = [line for line in text.splitlines() if line[:3] in {f"| {d}" for d in "123456789"}]
    assert len(body) == CURVE_ROWS


def test_recipes_table_keeps_one_row_per_evaluation_when_they_fit():
    curve = [(10, 0.1), (20, 0.15), (30, 0.17)]
    text = table("T", {"a": fake_run(curve, 30)}, [], {"a": []}, [], 1)
    assert "| 10 | 0.100 |" in text and "| 30 | 0.170 |" in text
    assert "Sampled held-out recall@1 by round" in text


def test_quality_table_averages_recall_and_loss_per_block_and_refuses_unequal_evaluations():
    evaluations = 2 * CURVE_ROWS  # blocks of 2
    curve = [(10 * (i + 1), 0.01 * i) for i in range(evaluations)]
    runs = {"compressed": fake_run(curve, 10 * evaluations), "uncompressed": fake_run(curve, 10 * evaluations)}
    central = {"held_out_users": {"recall@1": 0.25, "recall@3": 0.4}, "steps": 100}
    text = fed_quality.table("T", central, runs, "default", [])
    assert "| 10-20 | 0.005 | 4.00 | 0.005 | 4.00 |" in text
    assert "each row the mean of 2 evaluations" in text
    runs["uncompressed"] = fake_run(curve[:-1], 10 * evaluations)
    with pytest.raises(SystemExit, match="different rounds"):
        fed_quality.table("T", central, runs, "default", [])
