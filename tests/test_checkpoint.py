"""Checkpoint files: format 2 (npz, no torch needed) round trips, format 1 (torch.save) still loads,
bad files and bad meta fail with one clear CheckpointError, and a failed save leaves the old file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import export_fixtures as fx
import numpy as np
import pytest
import torch

from fedkey.models.checkpoint import Checkpoint, CheckpointError
from fedkey.models.checkpoint_file import FORMAT, FORMAT_V1, CheckpointFile
from fedkey.models.cifg_lstm import PARAM_NAMES, CifgLstm
from fedkey.models.model_config import ModelConfig

CONFIG = ModelConfig(vocab_size=16, embed_dim=4, hidden_dim=5)


def params(config: ModelConfig = CONFIG, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in config.param_shapes().items()}


def nested_meta() -> dict:
    return {
        "kind": "simulate",
        "round": 3,
        "wall_time_s": 12.5,
        "nan": float("nan"),
        "none": None,
        "flag": False,
        "list": [1, 2.5, "x", None, True],
        "strategy": {
            "optimizer": {
                "m": np.linspace(0, 1, 7, dtype=np.float32),
                "v": np.arange(6, dtype=np.float64).reshape(2, 3),
            },
            "participation_ids": np.array([3, 9, 12], np.int64),
            "mask": np.array([[True, False], [False, True]]),
            "half": np.array([1.5, -2.0], np.float16),
            "bytes": np.frombuffer(b"\x00\xff\x10", np.uint8),
            "names": np.array(["ab", "cde"]),
            "scalar": np.float32(0.25),
            "empty": np.zeros((0, 4), np.int32),
            "deep": {"deeper": {"a": np.array(7, np.int16)}},
        },
    }


def assert_same_meta(loaded: object, saved: object) -> None:
    if isinstance(saved, np.ndarray | np.generic):
        assert isinstance(loaded, np.ndarray)
        assert loaded.dtype == np.asarray(saved).dtype and loaded.shape == np.shape(saved)
        np.testing.assert_array_equal(loaded, saved)
    elif isinstance(saved, dict):
        assert isinstance(loaded, dict) and loaded.keys() == saved.keys()
        for key in saved:
            assert_same_meta(loaded[key], saved[key])
    elif isinstance(saved, float) and saved != saved:
        assert isinstance(loaded, float) and loaded != loaded
    else:
        assert type(loaded) is type(saved) and loaded == saved


def test_checkpoint_file_round_trips_params_tokenizer_and_nested_meta_arrays(tmp_path: Path) -> None:
    source = params()
    saved = CheckpointFile(CONFIG, source, b"\x00tokenizer bytes\xff", seq_len=8, model_version=4, meta=nested_meta())
    source["b"][:] = 99.0  # the file holds a snapshot of the parameters
    path = tmp_path / "run" / "checkpoint.pt"
    saved.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # name kept, no temp file left
    with zipfile.ZipFile(path) as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())

    loaded = CheckpointFile.load(path)
    assert loaded.model_config == CONFIG.resolved()
    assert list(loaded.params) == list(PARAM_NAMES)
    for name in PARAM_NAMES:
        assert loaded.params[name].dtype == np.float32
        np.testing.assert_array_equal(loaded.params[name], params()[name])
    assert loaded.tokenizer == saved.tokenizer
    assert (loaded.seq_len, loaded.model_version) == (8, 4)
    assert_same_meta(loaded.meta, nested_meta())


def test_loading_format_2_does_not_import_torch(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    CheckpointFile(CONFIG, params(), b"tok", seq_len=8, meta={"a": np.ones(3)}).save(path)
    code = (
        "import sys\n"
        "from fedkey.models.checkpoint_file import CheckpointFile\n"
        "f = CheckpointFile.load(sys.argv[1])\n"
        "assert f.meta['a'].tolist() == [1.0, 1.0, 1.0]\n"
        "assert 'torch' not in sys.modules, 'loading a format 2 checkpoint imported torch'\n"
        "f.save(sys.argv[1])\n"
        "assert 'torch' not in sys.modules, 'saving a checkpoint imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def write_format_1(ckpt: Checkpoint, path: Path) -> None:
    """What models/checkpoint.py wrote before format 2, meta tensors included (as the server stored them)."""
    payload = {
        "format": FORMAT_V1,
        "model_config": ckpt.model.config.model_dump(),
        "params": {n: t.detach().cpu().clone() for n, t in ckpt.model.named_tensors()},
        "tokenizer": ckpt.tokenizer.serialized(),
        "seq_len": ckpt.seq_len,
        "model_version": ckpt.model_version,
        "meta": ckpt.meta,
    }
    torch.save(payload, path)


def test_format_1_files_still_load_with_tensors_turned_into_arrays(tmp_path: Path) -> None:
    reference = fx.checkpoint()
    meta = {"kind": "simulate", "round": 2, "strategy": {"m": torch.arange(4, dtype=torch.float32), "ledger": ""}}
    path = tmp_path / "best.pt"
    write_format_1(Checkpoint(reference.model, reference.tokenizer, 8, 5, meta), path)

    file = CheckpointFile.load(path)
    assert file.model_config == reference.model.config
    for name, tensor in reference.model.named_tensors():
        np.testing.assert_array_equal(file.params[name], tensor.detach().numpy())
    assert file.tokenizer == reference.tokenizer.serialized()
    assert (file.seq_len, file.model_version) == (8, 5)
    expected = {"kind": "simulate", "round": 2, "strategy": {"m": np.arange(4.0, dtype=np.float32), "ledger": ""}}
    assert_same_meta(file.meta, expected)

    ckpt = Checkpoint.load(path)
    for (name, a), (_, b) in zip(ckpt.model.named_tensors(), reference.model.named_tensors(), strict=True):
        assert torch.equal(a, b), name
    assert ckpt.tokenizer.encode("i love the cat") == reference.tokenizer.encode("i love the cat")
    assert isinstance(ckpt.meta["strategy"]["m"], np.ndarray)

    ckpt.save(path)  # saving again upgrades the file to format 2
    with np.load(path) as entries:
        assert json.loads(entries["header"].tobytes())["format"] == FORMAT


def test_checkpoint_round_trip_keeps_model_tokenizer_and_meta(tmp_path: Path) -> None:
    reference = fx.checkpoint()
    meta = {"step": 40, "best_recall1": 0.5, "kind": "central", "state": {"m": torch.ones(2, 3, dtype=torch.float64)}}
    path = tmp_path / "checkpoint.pt"
    Checkpoint(reference.model, reference.tokenizer, 8, 40, meta).save(path)
    ckpt = Checkpoint.load(path)
    assert ckpt.model.config == reference.model.config
    for (name, a), (_, b) in zip(ckpt.model.named_tensors(), reference.model.named_tensors(), strict=True):
        assert torch.equal(a, b), name
    assert ckpt.tokenizer.serialized() == reference.tokenizer.serialized()
    assert (ckpt.seq_len, ckpt.model_version) == (8, 40)
    assert_same_meta(ckpt.meta, {"step": 40, "best_recall1": 0.5, "kind": "central", "state": {"m": np.ones((2, 3))}})


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"optimizer": {"state": {0: {"step": 1}}}}, r"meta\['optimizer'\]\['state'\] has the int key 0"),
        ({"shape": (2, 3)}, r"meta\['shape'\] is a tuple"),
        ({"objects": np.array([{}, 1], dtype=object)}, r"meta\['objects'\] is a numpy array of dtype object"),
        ({"x": {"__ndarray__": "meta/0"}}, "reserved key"),
        ({"path": Path("x")}, r"meta\['path'\] is a \w*Path;"),
    ],
)
def test_meta_that_would_not_come_back_unchanged_is_refused(tmp_path: Path, meta: dict, message: str) -> None:
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(CheckpointError, match=message) as info:
        CheckpointFile(CONFIG, params(), b"tok", seq_len=8, meta=meta).save(path)
    assert str(info.value).startswith(f"checkpoint {path} not saved: ")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    CheckpointFile(CONFIG, params(seed=0), b"tok", seq_len=8, model_version=1).save(path)
    before = path.read_bytes()

    with pytest.raises(CheckpointError):  # refused before anything is written
        CheckpointFile(CONFIG, params(seed=1), b"tok", seq_len=8, model_version=2, meta={1: 2}).save(path)

    def half_write(handle, **entries) -> None:
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_write)
    with pytest.raises(OSError, match="disk full"):
        CheckpointFile(CONFIG, params(seed=1), b"tok", seq_len=8, model_version=2).save(path)
    monkeypatch.undo()

    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    assert CheckpointFile.load(path).model_version == 1


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    CheckpointFile(CONFIG, params(), b"tok", seq_len=8, meta={"a": np.arange(3)}).save(path)
    return path


def rewrite(source: Path, target: Path, change: dict[str, np.ndarray | None]) -> Path:
    """A copy of the npz `source` with entries replaced (or dropped where the value is None)."""
    with np.load(source) as entries:
        kept = {name: entries[name] for name in entries.files}
    for name, value in change.items():
        if value is None:
            del kept[name]
        else:
            kept[name] = value
    with target.open("wb") as handle:
        np.savez(handle, **kept)
    return target


def header_bytes(header: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(header).encode(), np.uint8)


def test_missing_and_damaged_files_are_named_in_the_error(tmp_path: Path, good_file: Path) -> None:
    with pytest.raises(CheckpointError, match=r"none\.pt does not exist"):
        CheckpointFile.load(tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.load(tmp_path)

    data = good_file.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.pt"  # a byte of a parameter changed: the zip's CRC check fails
    offset = data.index(b"param/w_h.npy") + 200
    flipped.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    bad_json = rewrite(good_file, tmp_path / "bad_json.pt", {"header": np.frombuffer(b"{not json", np.uint8)})
    for path in (truncated, flipped, garbage, bad_json):
        with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))} cannot be read"):
            CheckpointFile.load(path)
        with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))} cannot be read"):
            Checkpoint.load(path)


def test_files_of_another_format_are_refused(tmp_path: Path, good_file: Path) -> None:
    with np.load(good_file) as entries:
        header = json.loads(entries["header"].tobytes())
    future = rewrite(good_file, tmp_path / "future.pt", {"header": header_bytes(header | {"format": "other/3"})})
    other_zip = tmp_path / "other.pt"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("hello.txt", "hi")
    plain_npz = tmp_path / "plain.npz"
    np.savez(plain_npz, a=np.ones(2))
    other_torch = tmp_path / "torch.pt"
    torch.save({"format": "something else", "params": {}}, other_torch)
    cases = [
        (future, "format 'other/3'"),
        (other_zip, "not a fedkey checkpoint"),
        (plain_npz, "not a fedkey checkpoint"),
        (other_torch, "a torch file of format 'something else'"),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))}: {message}"):
            CheckpointFile.load(path)


def test_missing_misshapen_and_non_float_params_are_refused(tmp_path: Path, good_file: Path) -> None:
    cases = [
        ({"param/w_x": None}, r"missing parameters \['w_x'\]; the model has"),
        ({"param/extra": np.ones(2, np.float32)}, r"unexpected parameters \['extra'\]; the model has"),
        ({"param/b": np.ones(3, np.float32)}, r"parameter 'b' has shape \(3,\), the model config needs \(15,\)"),
        ({"param/b": np.ones(15, np.complex64)}, "parameter 'b' has dtype complex64"),
        ({"param/b": np.array(["x"] * 15)}, "parameter 'b' has dtype <U1"),
        ({"tokenizer": None}, "entry 'tokenizer' is missing"),
        ({"meta/0": None}, "entry 'meta/0' is missing"),
    ]
    for i, (change, message) in enumerate(cases):
        path = rewrite(good_file, tmp_path / f"bad{i}.pt", change)
        with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))}: {message}"):
            CheckpointFile.load(path)

    shapes = CONFIG.param_shapes()
    float64 = rewrite(good_file, tmp_path / "float64.pt", {"param/b": np.full(shapes["b"], 0.5)})
    assert CheckpointFile.load(float64).params["b"].dtype == np.float32  # float64 casts

    old = Checkpoint(CifgLstm(CONFIG, seed=0), fx.tokenizer(), 8)
    old.model.params["b"] = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(CheckpointError, match="parameter 'b' has shape"):  # refused when saving, too
        old.save(tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists()


def test_a_damaged_tokenizer_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    CheckpointFile(CONFIG, params(), b"not a sentencepiece model", seq_len=8).save(path)
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))}: the tokenizer cannot be loaded"):
        Checkpoint.load(path)
