"""Bundle manifest and loading: layout helpers, lexicon and session config, and refusal of corrupted or
mismatched bundles."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import export_fixtures as fx
import numpy as np
import pytest

from fedkey.models.bundle import export_bundle, tokenizer_lexicon
from fedkey.models.manifest import (
    FORMAT_VERSION,
    BundleError,
    file_entry,
    flatten_params,
    load_bundle,
    param_layout,
    read_lexicon,
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
        "lexicon.txt",
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
    assert {role: g.session_config for role, g in m.graphs.items()} == {
        "predict": {},
        "predict_int8": {"session.disable_quant_qdq": "1"},
        "train_step": {},
        "local_update": {},
    }
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


@pytest.mark.parametrize(
    "name", ["weights.bin", "predict.int8.onnx", "local_update.onnx", "tokenizer.model", "lexicon.txt"]
)
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


def test_default_lexicon_is_the_tokenizers_whole_words() -> None:
    bundle = load_bundle(fx.bundle_dir())
    words = bundle.lexicon()
    assert words == tokenizer_lexicon(fx.tokenizer())
    assert words and set(words) <= set(fx.WORDS)
    # Exactly the format the Kotlin core reads: UTF-8, one word per line, each line ending in a newline.
    assert (fx.bundle_dir() / "lexicon.txt").read_bytes() == "".join(f"{w}\n" for w in words).encode()


def test_export_writes_the_given_lexicon(tmp_path: Path) -> None:
    words = ["going", "café", "don't", "home", "2026"]
    export_bundle(fx.checkpoint(), tmp_path / "b", reuse_graphs_from=fx.bundle_dir(), lexicon=words)
    bundle = load_bundle(tmp_path / "b")
    assert bundle.lexicon() == words
    assert bundle.manifest.files["lexicon.txt"] == file_entry(tmp_path / "b" / "lexicon.txt")
    assert read_lexicon(tmp_path / "b" / "lexicon.txt") == words


@pytest.mark.parametrize(
    ("words", "problem"),
    [
        (["home", "Home"], "'Home'.*not a normalised word"),
        (["a b"], "not a normalised word"),
        (["go", "go"], "more than once"),
        ([], "empty"),
        (["home", ","], r"^lexicon: line 2 \(','\) is not"),
    ],
)
def test_export_refuses_a_bad_lexicon(tmp_path: Path, words: list[str], problem: str) -> None:
    with pytest.raises(BundleError, match=problem):
        export_bundle(fx.checkpoint(), tmp_path / "b", reuse_graphs_from=fx.bundle_dir(), lexicon=words)
    assert not (tmp_path / "b").exists()


def test_a_lexicon_with_valid_hash_but_bad_content_is_refused(copy: Path) -> None:
    (copy / "lexicon.txt").write_bytes(b"home\nHello there\n")
    raw = json.loads((copy / "manifest.json").read_text())
    raw["files"]["lexicon.txt"] = file_entry(copy / "lexicon.txt").model_dump()
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"line 2 .* not a normalised word"):
        load_bundle(copy)
    (copy / "lexicon.txt").write_bytes(b"home\nnow")
    raw["files"]["lexicon.txt"] = file_entry(copy / "lexicon.txt").model_dump()
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="each ending in a newline"):
        load_bundle(copy)


def test_older_manifest_without_lexicon_or_session_config_loads(copy: Path) -> None:
    raw = json.loads((copy / "manifest.json").read_text())
    del raw["files"]["lexicon.txt"]
    for graph in raw["graphs"].values():
        del graph["session_config"]
    (copy / "manifest.json").write_text(json.dumps(raw))
    bundle = load_bundle(copy)
    assert bundle.lexicon() is None
    assert bundle.session_config("predict_int8") == {}
    with pytest.raises(BundleError, match="no graph 'predict_fp16'"):
        bundle.session_config("predict_fp16")
