"""CLI smoke: config, data prepare, n-gram baseline, a tiny central training run, evaluation, bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedkey.cli import app

runner = CliRunner()


def test_help_lists_commands_and_options():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train-central", "baseline", "evaluate", "config"):
        assert command in result.output
    sub = runner.invoke(app, ["train-central", "--help"])
    assert "--resume" in sub.output and "--set" in sub.output


def test_config_show_applies_file_and_overrides(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[central]\nepochs = 2.5\n[model]\npreset = "small"\n')
    result = runner.invoke(app, ["config", "show", "--config", str(cfg), "--set", "central.lr=0.01"])
    assert result.exit_code == 0, result.output
    assert "epochs = 2.5" in result.output and "lr = 0.01" in result.output and 'preset = "small"' in result.output


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[central]\nepochs = -1\n", "central.epochs"),
        ("[central]\nepoch = 3\n", "central.epoch"),
        ("[model]\npreset = 'giant'\n", "unknown model preset"),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_bad_config_is_refused_with_the_key(tmp_path, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    result = runner.invoke(app, ["config", "show", "--config", str(cfg)])
    assert result.exit_code == 2
    assert needle in result.output


def test_prepare_baseline_train_evaluate(tmp_path, corpus_file):
    data = tmp_path / "data"
    result = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--corpus",
            f"jsonl:{corpus_file}",
            "--out",
            str(data),
            "--set",
            "tokenizer.vocab_size=64",
            "--set",
            "data.lexicon_size=50",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((data / "stats.json").read_text())["train"]["users"] > 40

    result = runner.invoke(app, ["baseline", "--data", str(data), "--order", "2", "--out", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    bigram = json.loads((tmp_path / "b.json").read_text())
    assert bigram["held_out_users"]["recall@1"] > 0.2  # the synthetic grammar is very predictable

    run = tmp_path / "run"
    args = ["train-central", "--data", str(data), "--out", str(run)]
    for setting in (
        'model.preset="small"',
        "model.hidden_dim=32",
        "model.embed_dim=16",
        "central.eval_every=20",
        "central.batch_size=32",
        "central.lr=0.01",
        "central.threads=1",
    ):
        args += ["--set", setting]
    result = runner.invoke(app, [*args, "--set", "central.epochs=3"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) >= 2 and lines[-1]["loss"] < lines[0]["loss"]
    final = json.loads((run / "final.json").read_text())
    assert final["held_out_users"]["recall@1"] > 0.2
    assert (run / "metrics.png").stat().st_size > 1000

    # resume continues from the saved step instead of starting over, with the run's own settings
    # (RUN/config.toml: the small model above, not the default one) and the --set on top
    resume = ["train-central", "--data", str(data), "--out", str(run), "--set", "central.epochs=4", "--resume"]
    result = runner.invoke(app, resume)
    assert result.exit_code == 0, result.output
    resumed = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed[0] == lines[0] and resumed[-1]["step"] > lines[-1]["step"]
    written = (run / "config.toml").read_text()
    assert "hidden_dim = 32" in written and "epochs = 4.0" in written

    result = runner.invoke(app, ["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "held_out_users" in result.output


def test_missing_data_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["baseline", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "not a prepared data folder" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    (tmp_path / "d").mkdir()
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(bad), "--data", str(tmp_path)])
    assert result.exit_code == 2
