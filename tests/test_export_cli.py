"""`fedkey export` smoke test: checkpoint file in, verified bundle out; errors are one clear line."""

from __future__ import annotations

from pathlib import Path

import export_fixtures as fx
import numpy as np
from typer.testing import CliRunner

from fedkey.cli import app
from fedkey.models.manifest import load_bundle

runner = CliRunner()


def test_export_writes_a_loadable_bundle(tmp_path: Path) -> None:
    ckpt_path = tmp_path / "model.pt"
    fx.checkpoint().save(ckpt_path)
    out = tmp_path / "bundle"
    args = [
        "export",
        "--checkpoint",
        str(ckpt_path),
        "--out",
        str(out),
        "--threads",
        "1",
        "--reuse-graphs-from",
        str(fx.bundle_dir()),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "model version 7" in result.output
    bundle = load_bundle(out, expected_model_version=7)
    reference = load_bundle(fx.bundle_dir())
    np.testing.assert_array_equal(bundle.weights, reference.weights)
    assert bundle.manifest.files["local_update.onnx"] == reference.manifest.files["local_update.onnx"]

    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "exists" in again.output
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "lexicon.txt" in forced.output
    assert load_bundle(out).lexicon() == reference.lexicon()


def test_export_writes_the_given_lexicon_file(tmp_path: Path) -> None:
    ckpt_path = tmp_path / "model.pt"
    fx.checkpoint().save(ckpt_path)
    words = tmp_path / "lexicon.txt"
    words.write_text("home\ngoing\ntomorrow\n", encoding="utf-8")
    base = ["export", "--checkpoint", str(ckpt_path), "--reuse-graphs-from", str(fx.bundle_dir())]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--lexicon", str(words)])
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "b").lexicon() == ["home", "going", "tomorrow"]

    words.write_text("home\nGoing Home\n", encoding="utf-8")
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--lexicon", str(words)])
    assert bad.exit_code == 1 and "line 2 ('Going Home') is not a normalised word" in bad.output
    assert not (tmp_path / "c").exists()


def test_export_reports_a_bad_checkpoint(tmp_path: Path) -> None:
    args = ["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "b")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert not (tmp_path / "b").exists()


def test_every_option_has_help() -> None:
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    for option in ("--checkpoint", "--out", "--force", "--reuse-graphs-from", "--lexicon", "--threads"):
        assert option in result.output
    assert "checkpoint file" in result.output and "training graphs" in result.output
