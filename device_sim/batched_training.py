"""Many phones' local SGD at once: stacked per-phone weights, a hand-written recurrence, a fused softmax loss.

Each phone runs exactly the local update of ``models.onnx_local_update`` (the reference the ONNX graph
is tested against): K SGD steps, step k on batch ``k mod N`` of the phone's own data, each gradient
clipped to a global L2 norm, and the delta clipped at the end. Phones of a group (``group``) are
stacked into ``W [P, D]`` and share every tensor op (batched matmuls). Phones are sorted by their
number of steps; at step k only the phones that still have steps left (a prefix) are computed;
trailing rows (the empty fill of a phone's last batch) and trailing positions that no phone of the
group counts are cut off (exact: the network is causal, they are masked and the loss is a mean over
counted targets), which pays when batches hold rows of similar length (the phone host builds them so).

Where the time goes and what is done about it (default model, 2-core CPU, one thread):

- The 8192-way tied softmax dominates. :func:`fused_nll` computes it only at counted positions
  (mask != 0; about half the positions of a chitchat batch are padding), 64 rows at a time, and takes
  the gradient in the same pass: the chunk's log-softmax becomes ``mask * (softmax - onehot)`` in place
  while it is still in cache and is multiplied straight into the gradients of the projected outputs,
  the tied embedding and the output bias. The [N, V] logits are never stored nor computed twice.
- The CIFG recurrence (``models.cifg_lstm.cell_step``) has small matmuls (16 rows per step).
  :class:`_Recurrence` computes the input projection of all steps in one matmul, keeps only the
  recurrent products in the step loop, and its hand-written backward takes the weight gradients of all
  steps in one matmul each instead of two small ones per step.

Measured in CPU time on the same 8 chitchat phones: 1.9-2.1x the plain torch loop (``nn.Module``,
autograd, SGD, the model's own chunked loss), where this module's earlier ``torch.func.vmap`` version
did 1.25x (bench/sim_throughput.py measures the whole simulation). Stacking
phones (``group`` > 1) was slower than one phone at a time: the group computes up to its longest
batch. Results match the per-phone reference up to float rounding (tests/test_batched_training.py,
tests/test_simulate_hosts.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedkey.models.cifg_lstm import PARAM_NAMES, ModelConfig
from fedkey.models.onnx_local_update import Batches, LocalUpdateError
from fedkey.models.onnx_train import clip_scale

#: Working-set budget for one group of phones (per-phone weights, gradients and activations).
GROUP_BYTES = 192 * 2**20
#: Rows of the vocabulary softmax computed at a time (their logits stay in the core's L2 cache).
SOFTMAX_CHUNK = 64


@dataclass(frozen=True)
class PhonesResult:
    """Deltas [P, D] (clipped to delta_clip), each phone's mean step loss [P] and pre-clip delta norm [P]."""

    deltas: np.ndarray
    losses: np.ndarray
    delta_norms: np.ndarray


def group_size(config: ModelConfig, batch_size: int, seq_len: int, budget_bytes: int = GROUP_BYTES) -> int:
    """How many phones to stack together so that their working set fits the budget.

    Per phone: weights, gradient and the loss's embedding gradient (~3 copies of the parameters) plus
    the recurrence's saved activations (~8 floats per cell unit and position).
    """
    c = config.resolved()
    assert c.hidden_dim is not None
    per_phone = 4 * (3 * c.num_parameters() + 8 * batch_size * seq_len * c.hidden_dim)
    return max(1, budget_bytes // per_phone)


class _Recurrence(torch.autograd.Function):
    """The CIFG recurrence of ``models.cifg_lstm.cell_step`` over stacked phones, with a hand-written backward.

    Input ``xw`` [P, T, B, 3H] is the input projection ``x @ w_x + b`` of every step, computed outside
    in one matmul; per step only the recurrent products remain (``h @ w_h``, ``u @ w_proj``). The
    backward runs the steps in reverse for the state gradients and then computes the weight gradients
    of all steps in one batched matmul each, instead of two small matmuls per step.
    """

    @staticmethod
    def forward(ctx: Any, xw: Tensor, w_h: Tensor, w_proj: Tensor) -> Tensor:  # type: ignore[override]
        phones, steps, batch = xw.shape[:3]
        hidden, embed = w_proj.shape[1], w_proj.shape[2]
        hs = xw.new_zeros(phones, steps + 1, batch, embed)  # hs[:, t] = h before step t
        cs = xw.new_zeros(phones, steps + 1, batch, hidden)
        f_all, g_all, o_all, tc_all = (xw.new_empty(phones, steps, batch, hidden) for _ in range(4))
        u_all = xw.new_empty(phones, steps, batch, hidden)
        for t in range(steps):
            gates = torch.baddbmm(xw[:, t], hs[:, t], w_h)
            f = torch.sigmoid(gates[..., :hidden], out=f_all[:, t])
            g = torch.tanh(gates[..., hidden : 2 * hidden], out=g_all[:, t])
            o = torch.sigmoid(gates[..., 2 * hidden :], out=o_all[:, t])
            c = torch.addcmul(g, f, cs[:, t] - g, out=cs[:, t + 1])  # f * c + (1 - f) * g
            u = torch.mul(o, torch.tanh(c, out=tc_all[:, t]), out=u_all[:, t])
            torch.bmm(u, w_proj, out=hs[:, t + 1])
        ctx.save_for_backward(w_h, w_proj, hs, cs, f_all, g_all, o_all, tc_all, u_all)
        return hs[:, 1:]

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        w_h, w_proj, hs, cs, f_all, g_all, o_all, tc_all, u_all = ctx.saved_tensors
        phones, steps, batch, hidden = f_all.shape
        embed = w_proj.shape[2]
        grad_gates = grad_out.new_empty(phones, steps, batch, 3 * hidden)
        grad_h_all = grad_out.new_empty(phones, steps, batch, embed)
        w_h_t, w_proj_t = w_h.transpose(1, 2), w_proj.transpose(1, 2)
        grad_h = grad_out.new_zeros(phones, batch, embed)
        grad_c = grad_out.new_zeros(phones, batch, hidden)
        for t in reversed(range(steps)):
            f, g, o, tc = f_all[:, t], g_all[:, t], o_all[:, t], tc_all[:, t]
            grad_h = torch.add(grad_out[:, t], grad_h, out=grad_h_all[:, t])
            grad_u = torch.bmm(grad_h, w_proj_t)
            grad_c = grad_c + grad_u * o * (1 - tc * tc)
            gg = grad_gates[:, t]
            torch.mul(grad_c * (cs[:, t] - g), f * (1 - f), out=gg[..., :hidden])
            torch.mul(grad_c * (1 - f), 1 - g * g, out=gg[..., hidden : 2 * hidden])
            torch.mul(grad_u * tc, o * (1 - o), out=gg[..., 2 * hidden :])
            grad_c = grad_c * f
            grad_h = torch.bmm(gg, w_h_t)
        rows = steps * batch
        grad_w_h = torch.bmm(
            hs[:, :steps].reshape(phones, rows, embed).transpose(1, 2), grad_gates.reshape(phones, rows, -1)
        )
        grad_w_proj = torch.bmm(
            u_all.reshape(phones, rows, hidden).transpose(1, 2), grad_h_all.reshape(phones, rows, embed)
        )
        return grad_gates, grad_w_h, grad_w_proj


class _FusedNll(torch.autograd.Function):
    """Per-phone sums of masked NLL under the tied softmax; the gradient is computed in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: Tensor, embedding: Tensor, bias: Tensor, targets: Tensor, mask: Tensor, chunk: int
    ) -> Tensor:
        phones = h.shape[0]
        losses = h.new_zeros(phones)
        grad_h = torch.zeros_like(h)
        grad_emb = torch.zeros_like(embedding)
        grad_bias = torch.zeros_like(bias)
        for p in range(phones):
            rows = torch.nonzero(mask[p]).squeeze(1)
            emb_p, bias_p, grad_emb_p = embedding[p], bias[p], grad_emb[p]
            # the counted rows, compacted once; chunks are then contiguous views
            h_p = h[p].index_select(0, rows)
            t_p, m_p = targets[p, rows, None], mask[p, rows, None]
            grad_h_p = torch.empty_like(h_p)
            for s in range(0, len(rows), chunk):
                h_c, t_c, m_c = h_p[s : s + chunk], t_p[s : s + chunk], m_p[s : s + chunk]
                logp = torch.log_softmax(torch.addmm(bias_p, h_c, emb_p.t()), dim=1)
                losses[p] -= (logp.gather(1, t_c) * m_c).sum()
                # d(sum of m * -logp[target]) / d logits = m * (softmax - onehot(target)), built in place
                g = logp.exp_().mul_(m_c).scatter_add_(1, t_c, -m_c)
                torch.mm(g, emb_p, out=grad_h_p[s : s + chunk])
                grad_emb_p.addmm_(g.t(), h_c)
                grad_bias[p] += g.sum(dim=0)
            grad_h[p].index_copy_(0, rows, grad_h_p)
        ctx.save_for_backward(grad_h, grad_emb, grad_bias)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_h, grad_emb, grad_bias = ctx.saved_tensors
        scale = grad_losses[:, None]
        return grad_h * scale[:, :, None], grad_emb * scale[:, :, None], grad_bias * scale, None, None, None


def fused_nll(h: Tensor, embedding: Tensor, bias: Tensor, targets: Tensor, mask: Tensor, chunk: int) -> Tensor:
    """Each phone's sum of ``mask * -log softmax(h @ embedding.T + bias)[target]`` over its positions.

    h [P, N, E], embedding [P, V, E], bias [P, V], targets [P, N] int64, mask [P, N] (0 = not counted).
    Differentiable in h, embedding and bias (first-order only).
    """
    return _FusedNll.apply(h, embedding, bias, targets, mask, chunk)  # type: ignore[no-any-return]


def _stacked_params(w: Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Per-phone views of stacked flat weights w [P, D] (the ``models.manifest`` layout): name -> [P, *shape]."""
    parts = torch.split(w, [math.prod(shapes[n]) for n in PARAM_NAMES], dim=1)
    return {n: part.reshape(w.shape[0], *shapes[n]) for n, part in zip(PARAM_NAMES, parts, strict=True)}


def _dropout_masks(generators: Sequence[torch.Generator], rows: int, width: int, rate: float) -> Tensor:
    """Inverted-dropout multipliers [P, rows, width]: 0 with probability ``rate``, else 1 / (1 - rate); phone
    p's from its own generator (its draws do not depend on the other phones of the group)."""
    keep = torch.stack([torch.empty(rows, width).bernoulli_(1.0 - rate, generator=g) for g in generators])
    return keep.div_(1.0 - rate)


def phone_losses(
    w: Tensor,
    tokens: Tensor,
    targets: Tensor,
    mask: Tensor,
    shapes: dict[str, tuple[int, ...]],
    chunk: int,
    dropout: float = 0.0,
    generators: Sequence[torch.Generator] = (),
) -> Tensor:
    """Each phone's mean NLL per counted position: w [P, D], tokens/targets [P, B, T], mask [P, B, T].

    Phone p's loss is ``models.onnx_train.mean_loss`` of its own weights and batch; the recurrence is
    ``models.cifg_lstm.hidden_states`` on stacked weights (``x @ w`` of [P, B, E] by [P, E, 3H] is a
    batched matmul), with the embedding table flattened to [P * V, E] and token ids offset by phone.
    ``dropout`` > 0 drops input embedding entries and projected outputs as ``CifgLstm.loss`` does (one
    generator per phone draws the masks).
    """
    params = _stacked_params(w, shapes)
    phones, batch, steps = tokens.shape
    vocab, embed = shapes["embedding"]
    offsets = torch.arange(phones, dtype=tokens.dtype)[:, None, None] * vocab
    # time-major rows ([P, T * B]): the input projection of every step in one batched matmul
    x = params["embedding"].reshape(phones * vocab, embed)[(tokens + offsets).transpose(1, 2).reshape(phones, -1)]
    if dropout > 0:
        x = x * _dropout_masks(generators, steps * batch, embed, dropout)
    xw = torch.baddbmm(params["b"][:, None, :], x, params["w_x"]).reshape(phones, steps, batch, -1)
    out = _Recurrence.apply(xw, params["w_h"], params["w_proj"])
    if dropout > 0:
        out = out * _dropout_masks(generators, steps * batch, embed, dropout).reshape(phones, steps, batch, embed)
    flat_mask = mask.transpose(1, 2).reshape(phones, -1)
    totals = fused_nll(
        out.reshape(phones, steps * batch, embed),
        params["embedding"],
        params["out_bias"],
        targets.transpose(1, 2).reshape(phones, -1),
        flat_mask,
        chunk,
    )
    return totals / torch.clamp(flat_mask.sum(dim=1), min=1.0)


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
    chunk: int = SOFTMAX_CHUNK,
    dropout: float = 0.0,
    seeds: Sequence[int] | None = None,
) -> PhonesResult:
    """Run every phone's local update from the same start ``weights``; phone i uses ``batches[i]``.

    ``group`` phones are stacked together (None: as many as :func:`group_size` allows). ``dropout`` > 0
    regularises local training like ``central.dropout`` (the masks of phone i come from ``seeds[i]``).
    """
    config = config.resolved()
    shapes = config.param_shapes()
    dim = config.num_parameters()
    if weights.dtype != np.float32 or weights.shape != (dim,):
        raise LocalUpdateError(f"weights must be float32 of shape ({dim},); got {weights.dtype} {weights.shape}")
    if len(batches) != len(steps) or any(k < 1 for k in steps):
        raise LocalUpdateError("need one batch set and a step count >= 1 per phone")
    if not 0.0 <= dropout < 1.0 or (dropout > 0 and (seeds is None or len(seeds) != len(batches))):
        raise LocalUpdateError("dropout must be in [0, 1) and needs one seed per phone")
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
        generators = [torch.Generator().manual_seed(int(seeds[i])) for i in members] if dropout > 0 else []
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
            w_active = w[:active].detach().requires_grad_()
            step_losses = phone_losses(w_active, tok, tgt, msk, shapes, chunk, dropout, generators[:active])
            (grads,) = torch.autograd.grad(step_losses.sum(), w_active)
            with torch.no_grad():
                scale = clip_scale(torch.linalg.vector_norm(grads, dim=1), clip_t)
                w[:active] -= lr_t * scale[:, None] * grads
                loss_sum[:active] += step_losses.detach()
        with torch.no_grad():
            delta = w - start
            norm = torch.linalg.vector_norm(delta, dim=1)
            delta *= clip_scale(norm, torch.tensor(delta_clip, dtype=torch.float32))[:, None]
        for j, i in enumerate(members):
            deltas[i] = delta[j].numpy()
            losses[i] = float(loss_sum[j]) / steps[i]
            norms[i] = float(norm[j])
    return PhonesResult(deltas, losses, norms)
