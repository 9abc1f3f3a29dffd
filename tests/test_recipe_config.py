"""configs/chitchat-quality.toml: the recipe issue 5's quality figure is measured with, ready to run."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedkey.cli import app
from fedkey.config import dotted_items, load_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "chitchat-quality.toml"
#: What bench/fed_quality.py adds to a recipe (its final evaluation on 20,000 positions, no bundle) and
#: the one machine-sharing setting of the measured runs (one phone host each, two runs side by side).
BENCH = [
    'model.preset="default"',
    "simulate.export_bundle=false",
    "eval.max_positions=20000",
    "simulate.phone_hosts=1",
]
#: The measured runs' own settings (docs/results.md, runs/fed-1pass-c25-r5280: started through
#: bench/fed_recipes.py with these --set flags before the recipe had a file of its own).
MEASURED = [
    "simulate.rounds=5280",
    "simulate.cohort_size=25",
    "simulate.local_epochs=1",
    "simulate.local_batch_size=4",
    "simulate.optimizer.momentum=0.7",
    "simulate.local_lr=2.0",
    "simulate.eval_every=20",
    'simulate.local_lr_schedule="cosine"',
    "simulate.local_dropout=0.25",
    'simulate.update_weight="cached"',
    "simulate.round_interval_s=600",
    "simulate.over_selection=1.0",
]


def test_recipe_file_is_the_measured_recipe():
    for pipeline in ([], ["pipeline=[]"]):  # compressed (the default pipeline) and dense
        from_file = load_config(RECIPE, [*BENCH, *pipeline]).model_dump()
        measured = load_config(None, [*BENCH, *MEASURED, *pipeline]).model_dump()
        flat, want = dotted_items(from_file), dotted_items(measured)
        differ = sorted(key for key in flat.keys() | want.keys() if flat.get(key) != want.get(key))
        assert from_file == measured, f"configs/chitchat-quality.toml differs from the measured runs in {differ}"


def test_recipe_differs_from_the_defaults_where_the_measurements_said(prepared, tmp_path: Path):
    recipe = load_config(RECIPE)
    assert recipe.simulate.cohort_size == 25 and recipe.simulate.local_epochs == 1
    assert recipe.pipeline == load_config(None).pipeline  # compression stays the default one
    # the file is accepted by `fedkey simulate` (nothing in it is refused) and its schedule plans
    args = ["simulate", "--data", str(prepared.root), "--out", str(tmp_path / "r"), "--plan", "--config", str(RECIPE)]
    result = CliRunner().invoke(app, [*args, "--rounds", "200"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "phones report at least once" in result.output
    assert not (tmp_path / "r").exists()
