"""A phone's local update, run either through ``local_update.onnx`` (as the phone runs it) or in torch.

The simulator hook. Both paths take the same inputs and return the same ``LocalUpdateResult``:

    K SGD steps (step k uses batch k mod N, each with its gradient clipped to `grad_clip`),
    delta = final weights - start weights, clipped to L2 norm `delta_clip` (<= 0: no clipping),
    the per-step losses (mean NLL per counted token, before each step) and the delta's pre-clip norm.

``OnnxLocalUpdate`` keeps one InferenceSession (one intra-op thread by default) and is meant to be
reused across all phones of a simulation; ``TorchLocalUpdate`` is the reference. Both satisfy the
``LocalUpdater`` protocol, so a fleet can be simulated with either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch

from fedkey.models.manifest import Bundle
from fedkey.models.model_config import ModelConfig
from fedkey.models.onnx_predict import make_session
from fedkey.models.onnx_train import clip_scale, sgd_step
from fedkey.models.tokenizer import PAD_ID


class LocalUpdateError(ValueError):
    """Inputs to a local update have the wrong shape, dtype or value."""


@dataclass(frozen=True)
class Batches:
    """A phone's data as N fixed-length batches: tokens/targets [N, B, T] int64, mask [N, B, T] fp32."""

    tokens: np.ndarray
    targets: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        shape = self.tokens.shape
        if len(shape) != 3 or min(shape) < 1:
            raise LocalUpdateError(f"batches must be [N, B, T] with N, B, T >= 1; tokens have shape {shape}")
        if self.targets.shape != shape or self.mask.shape != shape:
            raise LocalUpdateError(
                f"tokens {shape}, targets {self.targets.shape} and mask {self.mask.shape} must have one shape"
            )
        if self.tokens.dtype != np.int64 or self.targets.dtype != np.int64 or self.mask.dtype != np.float32:
            raise LocalUpdateError("tokens and targets must be int64 and mask float32")

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[2])

    @classmethod
    def from_rows(cls, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray, batch_size: int) -> Batches:
        """Group R training rows ([R, T] each, e.g. a phone's `SequenceBatch` from models/sequences.py)
        into ceil(R / batch_size) batches, in order; the last batch is filled with empty rows (mask 0)."""
        if inputs.ndim != 2 or len(inputs) < 1 or batch_size < 1:
            raise LocalUpdateError(f"need rows [R, T] with R >= 1 and batch_size >= 1; got {inputs.shape}")
        rows, seq_len = inputs.shape
        n_batches = -(-rows // batch_size)
        padded = (n_batches * batch_size, seq_len)
        out_t = np.full(padded, PAD_ID, np.int64)
        out_y = np.full(padded, PAD_ID, np.int64)
        out_m = np.zeros(padded, np.float32)
        out_t[:rows], out_y[:rows], out_m[:rows] = inputs, targets, mask
        shape = (n_batches, batch_size, seq_len)
        return cls(out_t.reshape(shape), out_y.reshape(shape), out_m.reshape(shape))


@dataclass(frozen=True)
class LocalUpdateResult:
    delta: np.ndarray  # [P] fp32, clipped to delta_clip
    losses: np.ndarray  # [K] fp32, loss of each step's batch before that step
    delta_norm: float  # L2 norm of the delta before clipping


class LocalUpdater(Protocol):
    def __call__(
        self, weights: np.ndarray, batches: Batches, *, steps: int, lr: float, grad_clip: float, delta_clip: float
    ) -> LocalUpdateResult: ...


def _check(weights: np.ndarray, num_parameters: int, steps: int) -> None:
    if weights.dtype != np.float32 or weights.shape != (num_parameters,):
        raise LocalUpdateError(
            f"weights must be float32 of shape ({num_parameters},); got {weights.dtype} {weights.shape}"
        )
    if steps < 1:
        raise LocalUpdateError(f"steps must be >= 1, got {steps}")


def local_update_torch(
    config: ModelConfig,
    weights: np.ndarray,
    batches: Batches,
    *,
    steps: int,
    lr: float,
    grad_clip: float,
    delta_clip: float,
) -> LocalUpdateResult:
    """The reference: the same `sgd_step` the ONNX graphs are traced from, run eagerly in torch."""
    config = config.resolved()
    _check(weights, config.num_parameters(), steps)
    shapes = config.param_shapes()
    start = torch.from_numpy(weights)
    w = start
    tokens, targets = torch.from_numpy(batches.tokens), torch.from_numpy(batches.targets)
    mask = torch.from_numpy(batches.mask)
    lr_t, clip_t = torch.tensor(lr, dtype=torch.float32), torch.tensor(grad_clip, dtype=torch.float32)
    losses = []
    for k in range(steps):
        i = k % tokens.shape[0]
        w, loss = sgd_step(w, tokens[i], targets[i], mask[i], lr_t, clip_t, shapes)
        losses.append(loss.detach())
    with torch.no_grad():
        delta = w - start
        norm = torch.linalg.vector_norm(delta)
        delta = delta * clip_scale(norm, torch.tensor(delta_clip, dtype=torch.float32))
    return LocalUpdateResult(delta.numpy(), torch.stack(losses).numpy(), float(norm))


def local_update_onnx(
    session: ort.InferenceSession,
    weights: np.ndarray,
    batches: Batches,
    *,
    steps: int,
    lr: float,
    grad_clip: float,
    delta_clip: float,
) -> LocalUpdateResult:
    """Run local_update.onnx in an existing session (reuse one session for every phone)."""
    inputs = {i.name: i for i in session.get_inputs()}
    _check(weights, int(inputs["weights"].shape[0]), steps)
    seq_len = inputs["tokens"].shape[2]
    if batches.seq_len != seq_len:
        raise LocalUpdateError(f"batches have sequence length {batches.seq_len}; the graph needs {seq_len}")
    delta, losses, norm = session.run(
        None,
        {
            "weights": weights,
            "tokens": batches.tokens,
            "targets": batches.targets,
            "mask": batches.mask,
            "steps": np.array(steps, np.int64),
            "lr": np.array(lr, np.float32),
            "clip": np.array(grad_clip, np.float32),
            "delta_clip": np.array(delta_clip, np.float32),
        },
    )
    return LocalUpdateResult(delta, losses, float(norm))


class TorchLocalUpdate:
    """LocalUpdater in torch eager (the reference)."""

    def __init__(self, config: ModelConfig):
        self.config = config.resolved()

    def __call__(
        self, weights: np.ndarray, batches: Batches, *, steps: int, lr: float, grad_clip: float, delta_clip: float
    ) -> LocalUpdateResult:
        return local_update_torch(
            self.config, weights, batches, steps=steps, lr=lr, grad_clip=grad_clip, delta_clip=delta_clip
        )


class OnnxLocalUpdate:
    """LocalUpdater through local_update.onnx; one InferenceSession shared by every phone it serves."""

    def __init__(self, path: str | Path, intra_op_threads: int = 1, session_config: Mapping[str, str] | None = None):
        self.session = make_session(path, intra_op_threads, session_config)

    @classmethod
    def from_bundle(cls, bundle: Bundle, intra_op_threads: int = 1) -> OnnxLocalUpdate:
        return cls(bundle.path("local_update"), intra_op_threads, bundle.session_config("local_update"))

    def __call__(
        self, weights: np.ndarray, batches: Batches, *, steps: int, lr: float, grad_clip: float, delta_clip: float
    ) -> LocalUpdateResult:
        return local_update_onnx(
            self.session, weights, batches, steps=steps, lr=lr, grad_clip=grad_clip, delta_clip=delta_clip
        )
