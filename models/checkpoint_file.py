"""Checkpoint files without torch: write and read everything needed to rebuild a model as numpy arrays.

The federated server keeps its model as numpy arrays and must not pay for importing torch, so this
module touches only numpy, pydantic and the standard library; :class:`fedkey.models.checkpoint.Checkpoint`
wraps it for the torch side (a ``CifgLstm`` and a loaded ``Tokenizer``).

On disk, format ``"fedkey-checkpoint/2"`` is an uncompressed numpy ``.npz`` zip (``np.savez``) whatever
the file name (``checkpoint.pt`` and ``best.pt`` are kept). Its entries, each one ``.npy`` array:

    header          UTF-8 JSON as uint8: {"format": "fedkey-checkpoint/2", "model_config": ModelConfig
                    as a dict (resolved: embed_dim and hidden_dim filled), "seq_len": training sequence
                    length (pieces), "model_version": integer, increases with every published model,
                    "meta": free-form dict (step, round, metrics, optimizer state ...)}
    param/<name>    float32 parameter, one per name in PARAM_NAMES, shape ModelConfig.param_shapes()
    tokenizer       the serialized SentencePiece model as uint8
    meta/<i>        the i-th numpy array found in meta; in the header's meta it is {"__ndarray__": "meta/<i>"}

Meta holds dicts with str keys, lists, None, bool, int, float, str and numpy arrays of any non-object
dtype (a numpy scalar comes back as a 0-d array); anything else (tuples, int keys, tensors) is refused
when saving rather than silently changed. Files are read with ``allow_pickle=False``.

Format ``"fedkey-checkpoint/1"`` (older runs) is a ``torch.save`` zip of a dict with the keys format,
model_config, params ({name: fp32 tensor}), tokenizer (bytes), seq_len, model_version and meta (tensors
allowed); :meth:`CheckpointFile.load` still reads it, importing torch for such a file only and turning
every tensor into a numpy array.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedkey.models.model_config import PARAM_NAMES, ModelConfig

FORMAT = "fedkey-checkpoint/2"
FORMAT_V1 = "fedkey-checkpoint/1"

HEADER = "header"
TOKENIZER = "tokenizer"
PARAM_PREFIX = "param/"
META_PREFIX = "meta/"
ARRAY_REF = "__ndarray__"  # {ARRAY_REF: entry} in the header's meta stands for a stored array
HEADER_KEYS = ("format", "model_config", "seq_len", "model_version", "meta")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a fedkey checkpoint."""


@dataclass
class CheckpointFile:
    """The content of a checkpoint file. Construction checks the parameters against the model config and
    copies them (a snapshot of weights that training goes on changing); meta is kept as given."""

    model_config: ModelConfig
    params: dict[str, np.ndarray]
    tokenizer: bytes
    seq_len: int
    model_version: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model_config = self.model_config.resolved()
        self.tokenizer = bytes(self.tokenizer)
        self.seq_len, self.model_version = int(self.seq_len), int(self.model_version)
        self.params = _checked_params(self.params, self.model_config)

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        try:
            meta = _encode_meta(self.meta, "meta", arrays)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {path} not saved: {exc}") from exc
        header = {
            "format": FORMAT,
            "model_config": self.model_config.model_dump(),
            "seq_len": self.seq_len,
            "model_version": self.model_version,
            "meta": meta,
        }
        entries = {
            HEADER: np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            TOKENIZER: np.frombuffer(self.tokenizer, dtype=np.uint8),
            **{PARAM_PREFIX + name: array for name, array in self.params.items()},
            **arrays,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:  # a handle, so that np.savez keeps the caller's file name
                np.savez(handle, **entries)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> CheckpointFile:
        """Read a format 2 file, or a format 1 (torch) file converted to numpy."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            return _read(path)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from exc
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}") from exc


def tensors_to_numpy(value: Any) -> Any:
    """`value` with every torch tensor (in nested dicts and lists) replaced by a numpy copy.

    Torch is not imported here: while it is not loaded, no tensor can exist.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, dict):
        return {k: tensors_to_numpy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tensors_to_numpy(v) for v in value]
    return value


def _checked_params(params: dict[str, Any], config: ModelConfig) -> dict[str, np.ndarray]:
    """Float32 copies of the parameters in PARAM_NAMES order; refuses missing, extra or misshapen ones."""
    problems = []
    missing = [name for name in PARAM_NAMES if name not in params]
    if missing:
        problems.append(f"missing parameters {missing}")
    extra = sorted(set(params) - set(PARAM_NAMES))
    if extra:
        problems.append(f"unexpected parameters {extra}")
    if problems:
        raise CheckpointError(f"{', '.join(problems)}; the model has {list(PARAM_NAMES)}")
    shapes = config.param_shapes()
    checked = {}
    for name in PARAM_NAMES:
        array = np.asarray(params[name])
        if not np.can_cast(array.dtype, np.float32, casting="same_kind"):
            raise CheckpointError(f"parameter {name!r} has dtype {array.dtype}, which does not cast to float32")
        if array.shape != shapes[name]:
            raise CheckpointError(f"parameter {name!r} has shape {array.shape}, the model config needs {shapes[name]}")
        checked[name] = np.array(array, dtype=np.float32, order="C")
    return checked


def _encode_meta(value: Any, where: str, arrays: dict[str, np.ndarray]) -> Any:
    """JSON for `value`, moving each numpy array into `arrays` under a new entry name."""
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise CheckpointError(f"{where} is a numpy array of dtype {array.dtype}, which needs pickle")
        entry = f"{META_PREFIX}{len(arrays)}"
        arrays[entry] = array
        return {ARRAY_REF: entry}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CheckpointError(f"{where} has the {type(key).__name__} key {key!r}; meta keys must be str")
        if ARRAY_REF in value:
            raise CheckpointError(f"{where} uses the reserved key {ARRAY_REF!r}")
        return {k: _encode_meta(v, f"{where}[{k!r}]", arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode_meta(v, f"{where}[{i}]", arrays) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CheckpointError(
        f"{where} is a {type(value).__name__}; meta holds dicts, lists, None, bool, int, float, str and numpy arrays"
    )


def _decode_meta(value: Any, entries: np.lib.npyio.NpzFile) -> Any:
    """Inverse of :func:`_encode_meta`: array references replaced by the stored arrays."""
    if isinstance(value, dict):
        if set(value) == {ARRAY_REF}:
            return _entry(entries, value[ARRAY_REF])
        return {k: _decode_meta(v, entries) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_meta(v, entries) for v in value]
    return value


def _entry(entries: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    if name not in entries.files:
        raise CheckpointError(f"entry {name!r} is missing")
    return entries[name]


def _read(path: Path) -> CheckpointFile:
    """Both formats are zips: a torch zip holds "<archive>/data.pkl", an npz holds .npy entries."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.endswith("/data.pkl") for name in names):
        return _read_v1(path)
    if HEADER + ".npy" in names:
        return _read_v2(path)
    raise CheckpointError(f"not a fedkey checkpoint (a zip without {HEADER}.npy or data.pkl)")


def _read_v2(path: Path) -> CheckpointFile:
    with np.load(path, allow_pickle=False) as entries:
        raw = _entry(entries, HEADER)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise CheckpointError(f"the header entry is {raw.dtype} of shape {raw.shape}, not uint8 bytes")
        header = json.loads(raw.tobytes().decode())
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            found = header.get("format") if isinstance(header, dict) else None
            raise CheckpointError(f"format {found!r}; this fedkey reads {FORMAT!r} and {FORMAT_V1!r}")
        missing = [key for key in HEADER_KEYS if key not in header]
        if missing:
            raise CheckpointError(f"the header lacks {missing}")
        if not isinstance(header["meta"], dict):
            raise CheckpointError("the header's meta is not a dict")
        tokenizer = _entry(entries, TOKENIZER)
        if tokenizer.dtype != np.uint8 or tokenizer.ndim != 1:
            raise CheckpointError(f"the tokenizer entry is {tokenizer.dtype} of shape {tokenizer.shape}, not bytes")
        params = {n[len(PARAM_PREFIX) :]: entries[n] for n in entries.files if n.startswith(PARAM_PREFIX)}
        return CheckpointFile(
            ModelConfig(**header["model_config"]),
            params,
            tokenizer.tobytes(),
            int(header["seq_len"]),
            int(header["model_version"]),
            _decode_meta(header["meta"], entries),
        )


def _read_v1(path: Path) -> CheckpointFile:
    import torch  # format 1 is a torch.save pickle: only such old files make the reader pay for torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot be read by torch: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_V1:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise CheckpointError(f"a torch file of format {found!r}; this fedkey reads {FORMAT!r} and {FORMAT_V1!r}")
    return CheckpointFile(
        ModelConfig(**payload["model_config"]),
        tensors_to_numpy(dict(payload["params"])),
        payload["tokenizer"],
        int(payload["seq_len"]),
        int(payload["model_version"]),
        tensors_to_numpy(dict(payload.get("meta", {}))),
    )
