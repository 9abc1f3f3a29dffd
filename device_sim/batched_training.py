"""Many phones' local SGD at once: ``torch.func.vmap`` over stacked per-phone weights.

Each phone runs exactly the local update of ``models.onnx_local_update`` (the reference the ONNX graph
is tested against): K SGD steps, step k on batch ``k mod N`` of the phone's own data, each gradient
clipped to a global L2 norm, and the delta clipped at the end. Here the phones of a group share every
tensor op: their flat weights are stacked into ``W [P, D]`` and one call of
``vmap(grad_and_value(mean_loss))`` computes all their gradients, so the CIFG recurrence's small
matmuls become batched matmuls and the per-op overhead is paid once per group instead of once per
phone. Phones are sorted by their number of steps; at step k only the phones that still have steps
left (a prefix) are computed, so a phone that ran out of batches costs nothing; trailing rows (the
empty fill of a phone's last batch) and trailing positions that no phone of the group counts are cut
off (exact: the network is causal, they are masked and the loss is a mean over counted targets), which
pays when batches hold rows of similar length (the phone host builds them so).

The loss is ``models.onnx_train.mean_loss`` with a row chunk for the vocabulary softmax (the
cache-friendly form, see ``models.cifg_lstm.masked_nll``); the result matches the per-phone reference
up to float rounding. Measured on a 2-core CPU, groups of one phone (``group=1``: chunked softmax and
cut padding, no vmap) were the fastest, 1.2x the reference loop, while vmap groups of 2-8 were slower
than the loop; ``simulate.vmap_group`` chooses (docs/simulate.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedkey.models.cifg_lstm import ModelConfig
from fedkey.models.onnx_local_update import Batches, LocalUpdateError
from fedkey.models.onnx_train import clip_scale, mean_loss

#: Working-set budget for one group of phones (logits kept for the backward pass dominate).
GROUP_BYTES = 192 * 2**20
#: Rows of the vocabulary softmax computed at a time per phone.
SOFTMAX_CHUNK = 256


@dataclass(frozen=True)
class PhonesResult:
    """Deltas [P, D] (clipped to delta_clip), each phone's mean step loss [P] and pre-clip delta norm [P]."""

    deltas: np.ndarray
    losses: np.ndarray
    delta_norms: np.ndarray


def group_size(config: ModelConfig, batch_size: int, seq_len: int, budget_bytes: int = GROUP_BYTES) -> int:
    """How many phones to vectorise together so that their softmax activations fit the budget."""
    vocab = config.resolved().vocab_size
    per_phone = 3 * 4 * batch_size * seq_len * vocab
    return max(1, budget_bytes // per_phone)


def train_phones(
    config: ModelConfig,
    weights: np.ndarray,
    batches: Sequence[Batches],
    steps: Sequence[int],
    *,
    lr: float,
    grad_clip: float,
    delta_clip: float,
    group: int | None = None,
) -> PhonesResult:
    """Run every phone's local update from the same start ``weights``; phone i uses ``batches[i]``."""
    config = config.resolved()
    shapes = config.param_shapes()
    dim = config.num_parameters()
    if weights.dtype != np.float32 or weights.shape != (dim,):
        raise LocalUpdateError(f"weights must be float32 of shape ({dim},); got {weights.dtype} {weights.shape}")
    if len(batches) != len(steps) or any(k < 1 for k in steps):
        raise LocalUpdateError("need one batch set and a step count >= 1 per phone")
    n = len(batches)
    deltas = np.empty((n, dim), np.float32)
    losses = np.empty(n, np.float32)
    norms = np.empty(n, np.float32)
    if n == 0:
        return PhonesResult(deltas, losses, norms)
    seq_lens = {b.seq_len for b in batches}
    batch_sizes = {b.tokens.shape[1] for b in batches}
    if len(seq_lens) != 1 or len(batch_sizes) != 1:
        raise LocalUpdateError("all phones must use one batch size and sequence length")
    g = group or group_size(config, batch_sizes.pop(), seq_lens.pop())
    loss_fn = functools.partial(mean_loss, shapes=shapes, chunk=SOFTMAX_CHUNK)
    step_fn = torch.func.vmap(torch.func.grad_and_value(loss_fn))
    start = torch.from_numpy(weights)
    lr_t = torch.tensor(lr, dtype=torch.float32)
    clip_t = torch.tensor(grad_clip, dtype=torch.float32)
    order = sorted(range(n), key=lambda i: (-steps[i], i))
    for g0 in range(0, n, g):
        members = order[g0 : g0 + g]
        tensors = [
            (
                torch.from_numpy(batches[i].tokens),
                torch.from_numpy(batches[i].targets),
                torch.from_numpy(batches[i].mask),
            )
            for i in members
        ]
        w = start.expand(len(members), dim).clone()
        loss_sum = torch.zeros(len(members))
        for k in range(steps[members[0]]):
            active = sum(1 for i in members if steps[i] > k)
            picked = [(t[k % len(t)], y[k % len(y)], m[k % len(m)]) for t, y, m in tensors[:active]]
            tok, tgt, msk = (torch.stack(x) for x in zip(*picked, strict=True))
            # rows and positions after the group's last counted target change nothing (the network is
            # causal, they are masked, the loss is a mean over counted targets): cut them
            if bool(msk.any()):
                rows = int(torch.nonzero(msk.sum(dim=(0, 2))).max()) + 1
                cols = int(torch.nonzero(msk.sum(dim=(0, 1))).max()) + 1
                tok, tgt, msk = tok[:, :rows, :cols], tgt[:, :rows, :cols], msk[:, :rows, :cols]
            grads, step_losses = step_fn(w[:active], tok, tgt, msk)
            with torch.no_grad():
                scale = clip_scale(torch.linalg.vector_norm(grads, dim=1), clip_t)
                w[:active] -= lr_t * scale[:, None] * grads
                loss_sum[:active] += step_losses
        with torch.no_grad():
            delta = w - start
            norm = torch.linalg.vector_norm(delta, dim=1)
            delta *= clip_scale(norm, torch.tensor(delta_clip, dtype=torch.float32))[:, None]
        for j, i in enumerate(members):
            deltas[i] = delta[j].numpy()
            losses[i] = float(loss_sum[j]) / steps[i]
            norms[i] = float(norm[j])
    return PhonesResult(deltas, losses, norms)
