"""Bundle manifest and loading: layout helpers, and refusal of corrupted or mismatched bundles."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import export_fixtures as fx
import numpy as np
import pytest

from fedkey.models.bundle import export_bundle
from fedkey.models.manifest import (
    FORMAT_VERSION,
    BundleError,
    flatten_params,
    load_bundle,
    param_layout,
    unflatten_weights,
)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A private copy of the session's bundle that a test may damage."""
    target = tmp_path / "bundle"
    shutil.copytree(fx.bundle_dir(), target)
    return target


def test_manifest_describes_the_bundle() -> None:
    bundle = load_bundle(fx.bundle_dir(), expected_model_version=7)
    m = bundle.manifest
    ckpt = fx.checkpoint()
    assert m.format_version == FORMAT_VERSION and m.model_version == 7 and m.seq_len == fx.SEQ_LEN
    assert m.opset == 18
    assert m.model.num_parameters == ckpt.model.config.num_parameters() == bundle.weights.size
    assert set(m.files) == {
        "predict.onnx",
        "predict.int8.onnx",
        "train_step.onnx",
        "local_update.onnx",
        "weights.bin",
        "tokenizer.model",
    }
    assert (fx.bundle_dir() / "tokenizer.model").read_bytes() == ckpt.tokenizer.serialized()
    assert [s.name for s in m.parameters] == ["embedding", "w_x", "w_h", "b", "w_proj", "out_bias"]
    assert [i.name for i in m.graphs["local_update"].inputs] == [
        "weights",
        "tokens",
        "targets",
        "mask",
        "steps",
        "lr",
        "clip",
        "delta_clip",
    ]
    assert m.graphs["train_step"].inputs[1].shape == ("batch", fx.SEQ_LEN)
    for name, tensor in bundle.params().items():
        np.testing.assert_array_equal(tensor, ckpt.model.params[name].detach().numpy())


def test_flat_weights_round_trip() -> None:
    layout = param_layout(fx.checkpoint().model.config)
    flat = flatten_params(fx.checkpoint().model.param_dict(), layout)
    assert flat.dtype == np.float32
    assert layout[1].offset == 4 * layout[0].numel
    again = flatten_params(unflatten_weights(flat, layout), layout)
    np.testing.assert_array_equal(flat, again)
    with pytest.raises(BundleError, match="shape"):
        unflatten_weights(flat[:-1], layout)
    with pytest.raises(BundleError, match="missing"):
        flatten_params({}, layout)


@pytest.mark.parametrize("name", ["weights.bin", "predict.int8.onnx", "local_update.onnx", "tokenizer.model"])
def test_corrupted_file_is_refused(copy: Path, name: str) -> None:
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=re.escape(f"{name} is corrupted")):
        load_bundle(copy)


def test_truncated_and_missing_files_are_refused(copy: Path) -> None:
    (copy / "weights.bin").write_bytes((copy / "weights.bin").read_bytes()[:-4])
    with pytest.raises(BundleError, match=r"weights\.bin has \d+ bytes"):
        load_bundle(copy)
    (copy / "weights.bin").unlink()
    with pytest.raises(BundleError, match=r"weights\.bin is missing"):
        load_bundle(copy)


def edit_manifest(root: Path, **changes: object) -> None:
    raw = json.loads((root / "manifest.json").read_text())
    raw.update(changes)
    (root / "manifest.json").write_text(json.dumps(raw))


def test_mismatched_versions_are_refused(copy: Path) -> None:
    with pytest.raises(BundleError, match="model version 7, expected 8"):
        load_bundle(copy, expected_model_version=8)
    edit_manifest(copy, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match="format version"):
        load_bundle(copy)
    edit_manifest(copy, format="something-else")
    with pytest.raises(BundleError, match="not a fedkey bundle"):
        load_bundle(copy)


def test_mismatched_layout_and_malformed_manifest_are_refused(copy: Path) -> None:
    raw = json.loads((copy / "manifest.json").read_text())
    edit_manifest(copy, model={**raw["model"], "hidden_dim": raw["model"]["hidden_dim"] + 1})
    with pytest.raises(BundleError, match="layout"):
        load_bundle(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)
    (copy / "manifest.json").write_text(json.dumps({**raw, "seq_len": "long"}))
    with pytest.raises(BundleError, match="malformed"):
        load_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(copy)


def test_weights_from_another_model_are_refused(copy: Path) -> None:
    other = np.asarray(load_bundle(copy).weights) + 1.0
    other.astype("<f4").tofile(copy / "weights.bin")
    with pytest.raises(BundleError, match=r"weights\.bin is corrupted or from another bundle"):
        load_bundle(copy)


def test_export_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="exists"):
        export_bundle(fx.checkpoint(), target)
    with pytest.raises(BundleError, match="neither a bundle nor an empty directory"):
        export_bundle(fx.checkpoint(), target, overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"
