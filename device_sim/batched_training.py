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
  the gradient in the same pass: the chunk's logits become ``softmax - onehot`` in place while they are
  still in cache (one softmax pass; the target's probability is read first for the loss) and are
  multiplied straight into the gradient of the projected outputs. The position weights (1 / count)
  scale rows of h instead of the [N, V] matrix, and the embedding's and bias's gradients are one
  product each over all rows. The [N, V] logits are never computed twice.
- The CIFG recurrence (``models.cifg_lstm.cell_step``) has small matmuls (16 rows per step) and
  elementwise ops on [16, H] tensors whose per-op cost matters as much as their arithmetic.
  :func:`_recurrence` computes the input projection of all steps in one matmul and keeps only the
  recurrent products in the step loop, and takes every tanh as ``2 sigmoid(2 z) - 1`` (one sigmoid over
  the three gates; torch's CPU tanh is ~5x slower than its sigmoid); :func:`_recurrence_backward`
  computes the gates' local derivatives for all steps at once, leaving five elementwise ops per step,
  and takes the weight gradients of all steps in one matmul each instead of two small ones per step.
  Per-step views are taken up front, and the backward's products use contiguous transposes of the
  recurrent weights (MKL ran these shapes 1.5-1.7x slower on transposed views).
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


def _sigmoid_tanh(z: Tensor, minus_one: Tensor, out: Tensor) -> Tensor:
    """tanh(z) as 2 * sigmoid(2 z) - 1, written into ``out``: torch's CPU tanh is about 5x slower than its
    sigmoid on the cell's [B, H] tensors; the two agree to float rounding (absolute error ~1e-7).
    ``minus_one`` (-1 in out's shape) makes the last two operations one ``add``."""
    return torch.add(minus_one, torch.mul(z, 2.0, out=out).sigmoid_(), alpha=2.0, out=out)


def _recurrence(xw: Tensor, w_h: Tensor, w_proj: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The CIFG recurrence of ``models.cifg_lstm.cell_step`` over stacked phones: (outputs, saved for backward).

    Input ``xw`` [P, T, B, 3H] is the input projection ``x @ w_x + b`` of every step, computed outside
    in one matmul, with its candidate columns doubled (``tanh(z) = 2 sigmoid(2 z) - 1``: one sigmoid over
    all three gates); per step only the recurrent products remain (``h @ w_h``, ``u @ w_proj``). The
    per-step views are taken up front (``unbind``): on tensors this small, indexing each step's slices in
    the loop cost as much as an elementwise op.
    """
    phones, steps, batch = xw.shape[:3]
    hidden, embed = w_proj.shape[1], w_proj.shape[2]
    w_h2 = w_h.clone()
    w_h2[..., hidden : 2 * hidden] *= 2.0
    hs = xw.new_zeros(phones, steps + 1, batch, embed)  # hs[:, t] = h before step t
    cs = xw.new_zeros(phones, steps + 1, batch, hidden)
    s_all = xw.new_empty(phones, steps, batch, 3 * hidden)  # sigmoid of the gates: f, (g + 1) / 2, o
    g_all, tc_all, u_all = (xw.new_empty(phones, steps, batch, hidden) for _ in range(3))
    minus_one = xw.new_full((phones, batch, hidden), -1.0)
    xw_t, hs_t, cs_t, s_t, g_t, tc_t, u_t = (a.unbind(1) for a in (xw, hs, cs, s_all, g_all, tc_all, u_all))
    f_t, mid_t, o_t = (s_all[..., k * hidden : (k + 1) * hidden].unbind(1) for k in range(3))
    for t in range(steps):
        torch.sigmoid(torch.baddbmm(xw_t[t], hs_t[t], w_h2), out=s_t[t])
        g = torch.add(minus_one, mid_t[t], alpha=2.0, out=g_t[t])
        c = torch.addcmul(g, f_t[t], cs_t[t] - g, out=cs_t[t + 1])  # f * c + (1 - f) * g
        u = torch.mul(o_t[t], _sigmoid_tanh(c, minus_one, tc_t[t]), out=u_t[t])
        torch.bmm(u, w_proj, out=hs_t[t + 1])
    return hs[:, 1:], (w_h, w_proj, hs, cs, s_all, g_all, tc_all, u_all)


def _recurrence_backward(saved: tuple[Tensor, ...], grad_out: Tensor, grad_w_h: Tensor, grad_w_proj: Tensor) -> Tensor:
    """The gradients of :func:`_recurrence`: returns the gates' [P, T, B, 3H] and writes the weights' into
    ``grad_w_h`` and ``grad_w_proj``.

    Each gate's local derivative depends on forward values only, so all of them are computed for every
    step at once before the reverse loop; per step that leaves two products and five elementwise ops
    on the state gradients (the per-step views taken up front, as in :func:`_recurrence`). Then the
    weight gradients of all steps are one batched matmul each, instead of two small matmuls per step.
    """
    w_h, w_proj, hs, cs, s_all, g_all, tc_all, u_all = saved
    phones, steps, batch, hidden = g_all.shape
    embed = w_proj.shape[2]
    f, o = s_all[..., :hidden], s_all[..., 2 * hidden :]
    # d c / d (c's inputs): grad_c += grad_u * o (1 - tanh(c)^2); the carried grad_c is scaled by f
    d_c = o * (1.0 - tc_all * tc_all)
    # d c / d (forget, candidate pre-activations)
    d_f = (cs[:, :steps] - g_all) * f * (1.0 - f)
    d_g = (1.0 - f) * (1.0 - g_all * g_all)
    d_o = tc_all * o * (1.0 - o)  # d u / d (output-gate pre-activation), times grad_u
    grad_gates = grad_out.new_empty(phones, steps, batch, 3 * hidden)
    grad_h_all = grad_out.new_empty(phones, steps, batch, embed)
    # contiguous transposes: MKL's products with a transposed view of these ran 1.5-1.7x slower
    w_h_t, w_proj_t = w_h.transpose(1, 2).contiguous(), w_proj.transpose(1, 2).contiguous()
    grad_c = grad_out.new_empty(phones, batch, hidden)
    carry = grad_out.new_zeros(phones, batch, hidden)  # grad_c of the next step, times its forget gate
    out_t, gates_t, h_t = grad_out.unbind(1), grad_gates.unbind(1), grad_h_all.unbind(1)
    gf_t, gg_t, go_t = (grad_gates[..., k * hidden : (k + 1) * hidden].unbind(1) for k in range(3))
    d_c_t, d_f_t, d_g_t, d_o_t, f_t = (a.unbind(1) for a in (d_c, d_f, d_g, d_o, f))
    for t in reversed(range(steps)):
        if t == steps - 1:
            grad_h = h_t[t].copy_(out_t[t])
        else:
            grad_h = torch.baddbmm(out_t[t], gates_t[t + 1], w_h_t, out=h_t[t])
        grad_u = torch.bmm(grad_h, w_proj_t)
        torch.addcmul(carry, grad_u, d_c_t[t], out=grad_c)
        torch.mul(grad_c, d_f_t[t], out=gf_t[t])
        torch.mul(grad_c, d_g_t[t], out=gg_t[t])
        torch.mul(grad_u, d_o_t[t], out=go_t[t])
        torch.mul(grad_c, f_t[t], out=carry)
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
    and d sums / d bias into ``grad_bias`` [P, V] (overwritten). Only the counted rows are computed.
    A chunk of rows at a time, while its logits are still in cache, they become ``softmax - onehot``
    in place (one pass: the target's probability is read first for the loss) and are multiplied into
    the gradient of h. The weights never touch the [N, V] matrix: they scale the rows of h's gradient,
    and the rows of h in the single product that gives the embedding's gradient (and in the bias's).
    """
    phones, vocab = h.shape[0], embedding.shape[1]
    losses = h.new_zeros(phones)
    grad_h = torch.zeros_like(h)
    tiny = torch.finfo(h.dtype).tiny  # -log of a probability that underflowed counts as ~87 nats, not inf
    for p in range(phones):
        rows = torch.nonzero(weight[p]).squeeze(1)
        emb_p, bias_p = embedding[p], bias[p]
        if len(rows) == 0:
            grad_emb[p].zero_()
            grad_bias[p].zero_()
            continue
        # the counted rows, compacted once; chunks are then contiguous views
        h_p = h[p].index_select(0, rows)
        t_p, m_p = targets[p, rows, None], weight[p, rows]
        probs = h.new_empty(len(rows), vocab)  # becomes d(sum of -logp[target]) / d logits, unweighted
        p_target = h.new_empty(len(rows), 1)
        minus_one = h.new_full((min(chunk, len(rows)), 1), -1.0)
        grad_h_p = torch.empty_like(h_p)
        for s in range(0, len(rows), chunk):
            part, t_c = probs[s : s + chunk], t_p[s : s + chunk]
            # the bias is added after the product, while the chunk is in cache: addmm would first copy
            # it, broadcast, into the cold output
            torch.mm(h_p[s : s + chunk], emb_p.t(), out=part).add_(bias_p)
            torch.softmax(part, dim=1, out=part)
            torch.gather(part, 1, t_c, out=p_target[s : s + chunk])
            part.scatter_add_(1, t_c, minus_one[: len(t_c)])
            torch.mm(part, emb_p, out=grad_h_p[s : s + chunk])
        losses[p] = -(p_target.squeeze(1).clamp_(min=tiny).log_() * m_p).sum()
        grad_h_p *= m_p[:, None]
        torch.mm(probs.t(), h_p * m_p[:, None], out=grad_emb[p])
        torch.mv(probs.t(), m_p, out=grad_bias[p])
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
    hidden = shapes["w_proj"][0]
    xw[..., hidden : 2 * hidden] *= 2.0  # the candidate's tanh is taken as 2 sigmoid(2 z) - 1
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
        delta_clip_t = torch.tensor(delta_clip, dtype=torch.float32)
        for j, i in enumerate(members):  # each delta computed and clipped in its row of the output
            delta = torch.sub(w[j], start, out=torch.from_numpy(deltas[i]))
            norm = torch.linalg.vector_norm(delta)
            delta *= clip_scale(norm, delta_clip_t)
            losses[i] = float(loss_sum[j]) / steps[i]
            norms[i] = float(norm)
    return PhonesResult(deltas, losses, norms)
