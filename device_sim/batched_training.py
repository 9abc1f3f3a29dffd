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
  :func:`_recurrence` computes the input projection of all steps in one matmul and keeps only the
  recurrent products in the step loop; :func:`_recurrence_backward` takes the weight gradients of all
  steps in one matmul each instead of two small ones per step.
- Every SGD step touches all D = 1.25M weights (the tied softmax gives every embedding row a
  gradient), so passes over D count. :func:`phone_gradients` writes the backward out instead of using
  autograd: each gradient lands in its slice of one preallocated [P, D] buffer (no per-parameter
  gradient buffers, no concatenation, no zero fill), the mean over counted positions is folded into the
  loss's weights, and the clipped SGD update is one pass (measured: 1.11x the autograd version).

``bench/trainer_profile.py`` measures this trainer against the plain torch loop (``nn.Module``,
autograd, SGD, the model's own chunked loss) on the same phones and splits its time into matmuls and the
rest (docs/results.md). Stacking phones (``group`` > 1) was slower than one phone at a time: the group
computes up to its longest batch. Results match the per-phone reference up to float rounding
(tests/test_batched_training.py, tests/test_simulate_hosts.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedkey.models.model_config import PARAM_NAMES, ModelConfig
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


def _recurrence(xw: Tensor, w_h: Tensor, w_proj: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The CIFG recurrence of ``models.cifg_lstm.cell_step`` over stacked phones: (outputs, saved for backward).

    Input ``xw`` [P, T, B, 3H] is the input projection ``x @ w_x + b`` of every step, computed outside
    in one matmul; per step only the recurrent products remain (``h @ w_h``, ``u @ w_proj``).
    """
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
    return hs[:, 1:], (w_h, w_proj, hs, cs, f_all, g_all, o_all, tc_all, u_all)


def _recurrence_backward(saved: tuple[Tensor, ...], grad_out: Tensor, grad_w_h: Tensor, grad_w_proj: Tensor) -> Tensor:
    """The gradients of :func:`_recurrence`: returns the gates' [P, T, B, 3H] and writes the weights' into
    ``grad_w_h`` and ``grad_w_proj``. The steps run in reverse for the state gradients; then the weight
    gradients of all steps are one batched matmul each, instead of two small matmuls per step.
    """
    w_h, w_proj, hs, cs, f_all, g_all, o_all, tc_all, u_all = saved
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
    torch.bmm(
        hs[:, :steps].reshape(phones, rows, embed).transpose(1, 2),
        grad_gates.reshape(phones, rows, -1),
        out=grad_w_h,
    )
    torch.bmm(
        u_all.reshape(phones, rows, hidden).transpose(1, 2),
        grad_h_all.reshape(phones, rows, embed),
        out=grad_w_proj,
    )
    return grad_gates


def fused_nll(
    h: Tensor,
    embedding: Tensor,
    bias: Tensor,
    targets: Tensor,
    weight: Tensor,
    chunk: int,
    grad_emb: Tensor,
    grad_bias: Tensor,
) -> tuple[Tensor, Tensor]:
    """Each phone's sum of ``weight * -log softmax(h @ embedding.T + bias)[target]`` and its gradient.

    h [P, N, E], embedding [P, V, E], bias [P, V], targets [P, N] int64, weight [P, N] (0 = not counted).
    Returns (sums [P], d sums / d h [P, N, E]) and writes d sums / d embedding into ``grad_emb`` [P, V, E]
    and d sums / d bias into ``grad_bias`` [P, V] (overwritten). Only the counted rows are computed, a
    chunk of rows at a time: the chunk's log-softmax becomes ``weight * (softmax - onehot)`` in place while
    it is still in cache and is multiplied straight into the three gradients.
    """
    phones = h.shape[0]
    losses = h.new_zeros(phones)
    grad_h = torch.zeros_like(h)
    for p in range(phones):
        rows = torch.nonzero(weight[p]).squeeze(1)
        emb_p, bias_p, grad_emb_p, grad_bias_p = embedding[p], bias[p], grad_emb[p], grad_bias[p]
        if len(rows) == 0:
            grad_emb_p.zero_()
            grad_bias_p.zero_()
            continue
        # the counted rows, compacted once; chunks are then contiguous views
        h_p = h[p].index_select(0, rows)
        t_p, m_p = targets[p, rows, None], weight[p, rows, None]
        grad_h_p = torch.empty_like(h_p)
        for s in range(0, len(rows), chunk):
            h_c, t_c, m_c = h_p[s : s + chunk], t_p[s : s + chunk], m_p[s : s + chunk]
            logp = torch.log_softmax(torch.addmm(bias_p, h_c, emb_p.t()), dim=1)
            losses[p] -= (logp.gather(1, t_c) * m_c).sum()
            # d(sum of m * -logp[target]) / d logits = m * (softmax - onehot(target)), built in place
            g = logp.exp_().mul_(m_c).scatter_add_(1, t_c, -m_c)
            torch.mm(g, emb_p, out=grad_h_p[s : s + chunk])
            if s == 0:  # the first chunk writes the gradients, later ones add to them
                torch.mm(g.t(), h_c, out=grad_emb_p)
                torch.sum(g, dim=0, out=grad_bias_p)
            else:
                grad_emb_p.addmm_(g.t(), h_c)
                grad_bias_p += g.sum(dim=0)
        grad_h[p].index_copy_(0, rows, grad_h_p)
    return losses, grad_h


def _stacked_params(w: Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Per-phone views of stacked flat weights w [P, D] (the ``models.manifest`` layout): name -> [P, *shape]."""
    parts = torch.split(w, [math.prod(shapes[n]) for n in PARAM_NAMES], dim=1)
    return {n: part.reshape(w.shape[0], *shapes[n]) for n, part in zip(PARAM_NAMES, parts, strict=True)}


def _dropout_masks(generators: Sequence[torch.Generator], rows: int, width: int, rate: float) -> Tensor:
    """Inverted-dropout multipliers [P, rows, width]: 0 with probability ``rate``, else 1 / (1 - rate); phone
    p's from its own generator (its draws do not depend on the other phones of the group)."""
    keep = torch.stack([torch.empty(rows, width).bernoulli_(1.0 - rate, generator=g) for g in generators])
    return keep.div_(1.0 - rate)


def phone_gradients(
    w: Tensor,
    tokens: Tensor,
    targets: Tensor,
    mask: Tensor,
    shapes: dict[str, tuple[int, ...]],
    chunk: int,
    grads: Tensor,
    dropout: float = 0.0,
    generators: Sequence[torch.Generator] = (),
) -> Tensor:
    """Each phone's mean NLL per counted position [P], its gradient in w written into ``grads`` [P, D].

    w [P, D], tokens/targets [P, B, T], mask [P, B, T]. Phone p's loss is ``models.onnx_train.mean_loss``
    of its own weights and batch; the recurrence is ``models.cifg_lstm.hidden_states`` on stacked
    weights (``x @ w`` of [P, B, E] by [P, E, 3H] is a batched matmul). The backward is written out
    (no autograd): every gradient lands in its slice of ``grads`` without a per-parameter buffer or a
    concatenation, and the mean is taken by weighting the loss's counted positions by 1 / count, so no
    pass over the full gradient scales it. ``dropout`` > 0 drops input embedding entries and projected
    outputs as ``CifgLstm.loss`` does (one generator per phone draws the masks).
    """
    params, grad = _stacked_params(w, shapes), _stacked_params(grads, shapes)
    phones, batch, steps = tokens.shape
    embed = shapes["embedding"][1]
    # time-major rows ([P, T * B]): the input projection of every step in one batched matmul
    ids = tokens.transpose(1, 2).reshape(phones, -1)
    x = torch.stack([params["embedding"][p][ids[p]] for p in range(phones)])
    keep_in = keep_out = None
    if dropout > 0:
        keep_in = _dropout_masks(generators, steps * batch, embed, dropout)
        keep_out = _dropout_masks(generators, steps * batch, embed, dropout)
        x = x * keep_in
    xw = torch.baddbmm(params["b"][:, None, :], x, params["w_x"]).reshape(phones, steps, batch, -1)
    out, saved = _recurrence(xw, params["w_h"], params["w_proj"])
    out = out.reshape(phones, steps * batch, embed)
    if keep_out is not None:
        out = out * keep_out
    flat_mask = mask.transpose(1, 2).reshape(phones, -1)
    weight = flat_mask / torch.clamp(flat_mask.sum(dim=1, keepdim=True), min=1.0)
    losses, grad_out = fused_nll(
        out,
        params["embedding"],
        params["out_bias"],
        targets.transpose(1, 2).reshape(phones, -1),
        weight,
        chunk,
        grad["embedding"],
        grad["out_bias"],
    )
    if keep_out is not None:
        grad_out *= keep_out
    grad_gates = _recurrence_backward(
        saved, grad_out.reshape(phones, steps, batch, embed), grad["w_h"], grad["w_proj"]
    ).reshape(phones, steps * batch, -1)
    torch.sum(grad_gates, dim=1, out=grad["b"])
    torch.bmm(x.transpose(1, 2), grad_gates, out=grad["w_x"])
    grad_x = torch.bmm(grad_gates, params["w_x"].transpose(1, 2))
    if keep_in is not None:
        grad_x *= keep_in
    for p in range(phones):  # the input side of the tied embedding: rows of the batch's tokens
        grad["embedding"][p].index_add_(0, ids[p], grad_x[p])
    return losses


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
        grads = torch.empty_like(w)
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
            step_losses = phone_gradients(
                w[:active], tok, tgt, msk, shapes, chunk, grads[:active], dropout, generators[:active]
            )
            scale = clip_scale(torch.linalg.vector_norm(grads[:active], dim=1), clip_t)
            for j in range(active):  # w -= lr * scale * grad, one pass over each phone's weights
                w[j].add_(grads[j], alpha=-float(lr_t * scale[j]))
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
