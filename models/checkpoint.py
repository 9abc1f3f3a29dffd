"""Model checkpoints: one file holding everything needed to rebuild and run a model.

A checkpoint is a ``torch.save`` dict with:
    format          "fedkey-checkpoint/1"
    model_config    ModelConfig as a dict (resolved: embed_dim and hidden_dim filled)
    params          {name: fp32 tensor} in PARAM_NAMES order
    tokenizer       the serialized SentencePiece model (bytes)
    seq_len         training sequence length (pieces)
    model_version   integer, increases with every published model
    meta            free-form dict (step, round, metrics ...)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedkey.models.cifg_lstm import PARAM_NAMES, CifgLstm, ModelConfig
from fedkey.models.tokenizer import Tokenizer

FORMAT = "fedkey-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a fedkey checkpoint."""


@dataclass
class Checkpoint:
    model: CifgLstm
    tokenizer: Tokenizer
    seq_len: int
    model_version: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT,
            "model_config": self.model.config.model_dump(),
            "params": {n: t.detach().cpu().clone() for n, t in self.model.named_tensors()},
            "tokenizer": self.tokenizer.serialized(),
            "seq_len": self.seq_len,
            "model_version": self.model_version,
            "meta": self.meta,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a fedkey checkpoint (expected format {FORMAT!r})")
        config = ModelConfig(**payload["model_config"])
        model = CifgLstm(config)
        shapes = config.param_shapes()
        with torch.no_grad():
            for name in PARAM_NAMES:
                tensor = payload["params"].get(name)
                if tensor is None or tuple(tensor.shape) != shapes[name]:
                    raise CheckpointError(f"checkpoint {path}: parameter {name!r} missing or of wrong shape")
                model.params[name].copy_(tensor)
        return cls(
            model,
            Tokenizer(payload["tokenizer"]),
            int(payload["seq_len"]),
            int(payload["model_version"]),
            dict(payload.get("meta", {})),
        )
