"""Model checkpoints: one file holding everything needed to rebuild and run a model.

:class:`Checkpoint` is the torch side: a ``CifgLstm``, its ``Tokenizer``, the training sequence length,
the model version and a free-form meta dict. The file itself is written and read by
:class:`fedkey.models.checkpoint_file.CheckpointFile` (no torch), whose docstring describes the format:
``"fedkey-checkpoint/2"``, an ``.npz`` zip of float32 parameters, the serialized SentencePiece model,
the arrays found in meta and a JSON header (model config, seq_len, model_version, meta). Files of the
older torch format ``"fedkey-checkpoint/1"`` still load.

Tensors put in meta are saved as numpy arrays, so a loaded checkpoint's meta holds numpy arrays where
the saved one held tensors; meta keys must be str (JSON), and tuples are refused rather than turned into
lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedkey.models.checkpoint_file import CheckpointError, CheckpointFile, tensors_to_numpy
from fedkey.models.cifg_lstm import PARAM_NAMES, CifgLstm
from fedkey.models.tokenizer import Tokenizer

__all__ = ["Checkpoint", "CheckpointError"]


@dataclass
class Checkpoint:
    model: CifgLstm
    tokenizer: Tokenizer
    seq_len: int
    model_version: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_file(self) -> CheckpointFile:
        """A numpy snapshot (CheckpointFile copies the parameters; the tensors in meta become array copies)."""
        return CheckpointFile(
            self.model.config,
            {name: t.detach().cpu().numpy() for name, t in self.model.named_tensors()},
            self.tokenizer.serialized(),
            self.seq_len,
            self.model_version,
            tensors_to_numpy(self.meta),
        )

    @classmethod
    def from_file(cls, file: CheckpointFile) -> Checkpoint:
        """Rebuild the model with the file's parameters and load its tokenizer."""
        model = CifgLstm(file.model_config)
        with torch.no_grad():
            for name in PARAM_NAMES:
                model.params[name].copy_(torch.from_numpy(file.params[name]))
        return cls(model, Tokenizer(file.tokenizer), file.seq_len, file.model_version, dict(file.meta))

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint."""
        self.to_file().save(path)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        file = CheckpointFile.load(path)
        try:
            return cls.from_file(file)
        except (RuntimeError, ValueError) as exc:  # what sentencepiece and Tokenizer raise for a bad tokenizer
            raise CheckpointError(f"checkpoint {path}: the tokenizer cannot be loaded: {exc}") from exc
