"""The on-device bundle's manifest: the contract between server, simulator and phone.

A bundle is a directory holding the ONNX graphs, the flat weights, the tokenizer and ``manifest.json``
(see ``docs/artifacts.md``). The manifest records the format and model versions, the parameter layout
of ``weights.bin`` (name, shape, dtype, offset), the training sequence length, the special token ids,
every graph's inputs, outputs and the ONNX Runtime session config entries it needs, the word list for
whole-word suggestions (``lexicon.txt``), and the sha256 and size of every file.

This module also holds the flat-weights helpers (``flatten_params`` / ``unflatten_weights``) and
``load_bundle``, which verifies a bundle and refuses a corrupted or mismatched one with ``BundleError``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedkey.models.model_config import PARAM_NAMES, ModelConfig
from fedkey.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, is_word, normalize

FORMAT = "fedkey-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.bin"
TOKENIZER_FILE = "tokenizer.model"
PREDICT_FILE = "predict.onnx"
PREDICT_INT8_FILE = "predict.int8.onnx"
TRAIN_STEP_FILE = "train_step.onnx"
LOCAL_UPDATE_FILE = "local_update.onnx"
LEXICON_FILE = "lexicon.txt"
GRAPH_FILES = {
    "predict": PREDICT_FILE,
    "predict_int8": PREDICT_INT8_FILE,
    "train_step": TRAIN_STEP_FILE,
    "local_update": LOCAL_UPDATE_FILE,
}


class BundleError(ValueError):
    """A bundle is missing a file, is corrupted, or does not match what the caller expects."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(_Strict):
    """One parameter tensor inside weights.bin: row-major float32 starting at `offset` bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: Literal["float32"] = "float32"
    offset: int = Field(ge=0, description="byte offset in weights.bin")
    numel: int = Field(ge=1, description="number of elements = product of shape")


class TensorSpec(_Strict):
    """An ONNX graph input or output; a string dimension is dynamic (named), an int is fixed."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


class GraphSpec(_Strict):
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    session_config: dict[str, str] = Field(
        default_factory=dict, description="ONNX Runtime session config entries to set when loading this graph"
    )


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class SpecialIds(_Strict):
    pad: int = PAD_ID
    unk: int = UNK_ID
    bos: int = BOS_ID
    eos: int = EOS_ID


class ModelShape(_Strict):
    vocab_size: int
    embed_dim: int
    hidden_dim: int
    num_parameters: int


class Manifest(_Strict):
    format: Literal["fedkey-bundle"] = FORMAT
    format_version: int
    model_version: int = Field(ge=0)
    model: ModelShape
    parameters: tuple[ParamSpec, ...]
    weights_byte_order: Literal["little"] = "little"
    seq_len: int = Field(ge=1, description="training sequence length (pieces) of train_step/local_update")
    special_ids: SpecialIds = SpecialIds()
    opset: int
    graphs: dict[str, GraphSpec]
    files: dict[str, FileEntry]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"

    def to_model_config(self) -> ModelConfig:
        """The ModelConfig these weights belong to."""
        m = self.model
        return ModelConfig(vocab_size=m.vocab_size, embed_dim=m.embed_dim, hidden_dim=m.hidden_dim)


def param_layout(config: ModelConfig) -> tuple[ParamSpec, ...]:
    """The weights.bin layout for a model: PARAM_NAMES order, row-major, fp32, packed without gaps."""
    shapes = config.param_shapes()
    specs, offset = [], 0
    for name in PARAM_NAMES:
        numel = math.prod(shapes[name])
        specs.append(ParamSpec(name=name, shape=shapes[name], offset=offset, numel=numel))
        offset += 4 * numel
    return tuple(specs)


def flatten_params(params: Mapping[str, object], layout: tuple[ParamSpec, ...]) -> np.ndarray:
    """Concatenate named tensors (torch tensors or arrays) into one flat float32 vector in layout order."""
    parts = []
    for spec in layout:
        if spec.name not in params:
            raise BundleError(f"parameter {spec.name!r} is missing")
        value = params[spec.name]
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float32)
        if array.shape != spec.shape:
            raise BundleError(f"parameter {spec.name!r} has shape {array.shape}, layout says {spec.shape}")
        parts.append(array.reshape(-1))
    return np.concatenate(parts)


def unflatten_weights(flat: np.ndarray, layout: tuple[ParamSpec, ...]) -> dict[str, np.ndarray]:
    """Split a flat float32 vector into named arrays (views, no copy) following the layout."""
    total = sum(s.numel for s in layout)
    if flat.ndim != 1 or flat.shape[0] != total:
        raise BundleError(f"flat weights have shape {flat.shape}; the layout needs ({total},)")
    out, start = {}, 0
    for spec in layout:
        out[spec.name] = flat[start : start + spec.numel].reshape(spec.shape)
        start += spec.numel
    return out


def write_weights(flat: np.ndarray, path: Path) -> None:
    np.ascontiguousarray(flat, dtype="<f4").tofile(path)


def read_weights(path: Path, layout: tuple[ParamSpec, ...]) -> np.ndarray:
    flat = np.fromfile(path, dtype="<f4").astype(np.float32, copy=False)
    expected = sum(s.numel for s in layout)
    if flat.shape[0] != expected:
        raise BundleError(f"{path} holds {flat.shape[0]} floats; the manifest's layout needs {expected}")
    return flat


def is_lexicon_word(word: str) -> bool:
    """A word the suggestion strip can show: a normalised word (letters/digits with inner apostrophes)."""
    return is_word(word) and normalize(word) == word


def write_lexicon(words: Sequence[str], path: Path) -> None:
    """Write the suggestion word list: UTF-8, one normalised word per line, each line ending in "\\n"."""
    _check_lexicon(list(words), "lexicon")
    path.write_bytes("".join(f"{w}\n" for w in words).encode("utf-8"))


def read_lexicon(path: Path) -> list[str]:
    """Read and check a word list written by `write_lexicon` (or a prepared data folder's lexicon.txt)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} cannot be read as UTF-8 text: {exc}") from exc
    if not text.endswith("\n"):
        raise BundleError(f"{path}: a lexicon has one word per line, each ending in a newline")
    words = text[:-1].split("\n")
    _check_lexicon(words, str(path))
    return words


def _check_lexicon(words: list[str], where: str) -> None:
    if not words:
        raise BundleError(f"{where} is empty")
    for i, word in enumerate(words):
        if not is_lexicon_word(word):
            raise BundleError(f"{where}: line {i + 1} ({word!r}) is not a normalised word")
    if len(set(words)) != len(words):
        raise BundleError(f"{where} lists a word more than once")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), size=path.stat().st_size)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory, manifest and flat weights."""

    root: Path
    manifest: Manifest
    weights: np.ndarray

    def path(self, role_or_file: str) -> Path:
        """Path of a graph by role ("predict", "train_step", ...) or of any listed file by name."""
        name = GRAPH_FILES.get(role_or_file, role_or_file)
        if name not in self.manifest.files:
            raise BundleError(f"bundle {self.root} has no file {name!r}")
        return self.root / name

    def params(self) -> dict[str, np.ndarray]:
        return unflatten_weights(self.weights, self.manifest.parameters)

    def session_config(self, role: str) -> dict[str, str]:
        """The ONNX Runtime session config entries the manifest asks for when loading graph `role`."""
        if role not in self.manifest.graphs:
            raise BundleError(f"bundle {self.root} has no graph {role!r}")
        return dict(self.manifest.graphs[role].session_config)

    def lexicon(self) -> list[str] | None:
        """The words the suggestion strip may show, most useful first; None for a bundle without lexicon.txt."""
        return read_lexicon(self.root / LEXICON_FILE) if LEXICON_FILE in self.manifest.files else None


def load_bundle(root: str | Path, expected_model_version: int | None = None) -> Bundle:
    """Read and verify a bundle directory.

    Checks the manifest's format and version, that the parameter layout matches the model shape,
    that every listed file exists with the recorded size and sha256, that the required files are
    listed, that ``lexicon.txt`` (optional: older bundles lack it) is a valid word list, and (if given)
    the model version. Raises BundleError naming the problem.
    """
    root = Path(root)
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST_FILE} is missing")
    try:
        raw = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"{manifest_path} is not a fedkey bundle manifest (format must be {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle format version {raw.get('format_version')!r} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{manifest_path} is malformed: {exc}") from exc
    if expected_model_version is not None and manifest.model_version != expected_model_version:
        raise BundleError(
            f"bundle {root} holds model version {manifest.model_version}, expected {expected_model_version}"
        )
    expected_layout = param_layout(manifest.to_model_config())
    if manifest.parameters != expected_layout:
        raise BundleError(f"{manifest_path}: parameter layout does not match model shape {manifest.model}")
    graphs = {role: graph.file for role, graph in manifest.graphs.items()}
    if graphs != GRAPH_FILES:
        raise BundleError(f"{manifest_path}: graphs {graphs} do not match the format's {GRAPH_FILES}")
    required = {WEIGHTS_FILE, TOKENIZER_FILE, *GRAPH_FILES.values()}
    missing = required - set(manifest.files)
    if missing:
        raise BundleError(f"{manifest_path} does not list required files {sorted(missing)}")
    for name, entry in manifest.files.items():
        path = root / name
        if Path(name).name != name:
            raise BundleError(f"{manifest_path} lists {name!r}, which is not a plain file name")
        if not path.is_file():
            raise BundleError(f"bundle {root}: file {name} is missing")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"bundle {root}: {name} has {size} bytes, the manifest says {entry.size}")
        if sha256_file(path) != entry.sha256:
            raise BundleError(f"bundle {root}: {name} is corrupted or from another bundle (sha256 mismatch)")
    weights = read_weights(root / WEIGHTS_FILE, manifest.parameters)
    if LEXICON_FILE in manifest.files:
        read_lexicon(root / LEXICON_FILE)
    return Bundle(root=root, manifest=manifest, weights=weights)
