"""The batched trainer's hand-written gradients (fused softmax loss, recurrence) equal autograd through the
model's own loss code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedkey.device_sim.batched_training import fused_nll, phone_gradients
from fedkey.models.cifg_lstm import PARAM_NAMES, CifgLstm, ModelConfig, cell_step, masked_nll
from fedkey.models.manifest import flatten_params, param_layout
from fedkey.models.onnx_train import mean_loss

torch.set_num_threads(1)

MODEL = ModelConfig(vocab_size=40, embed_dim=8, hidden_dim=12).resolved()


def test_fused_nll_and_its_gradient_equal_masked_nll():
    gen = torch.Generator().manual_seed(0)
    phones, rows, embed, vocab = 3, 11, 5, 17
    h = torch.randn(phones, rows, embed, generator=gen, requires_grad=True)
    emb = torch.randn(phones, vocab, embed, generator=gen, requires_grad=True)
    bias = torch.randn(phones, vocab, generator=gen, requires_grad=True)
    targets = torch.randint(0, vocab, (phones, rows), generator=gen)
    weight = (torch.rand(phones, rows, generator=gen) > 0.3).float() * torch.rand(phones, rows, generator=gen)
    weight[2] = 0.0  # a phone without any counted position
    # stale values in the gradient buffers: fused_nll must overwrite them, not add to them
    grad_emb, grad_bias = torch.full((phones, vocab, embed), 7.0), torch.full((phones, vocab), 7.0)
    # chunk 4 splits the counted rows into several chunks, the last one short
    got, got_grad_h = fused_nll(h.detach(), emb.detach(), bias.detach(), targets, weight, 4, grad_emb, grad_bias)
    want = torch.stack(
        [
            masked_nll({"embedding": emb[p], "out_bias": bias[p]}, h[p], targets[p], weight[p], chunk=None)
            for p in range(phones)
        ]
    )
    want_grads = torch.autograd.grad(want.sum(), (h, emb, bias))
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    assert float(got[2]) == 0.0
    for g, w in zip((got_grad_h, grad_emb, grad_bias), want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_stacked_phone_gradients_equal_each_phones_mean_loss_gradient(dropout):
    shapes = MODEL.param_shapes()
    weights = torch.stack(
        [torch.from_numpy(flatten_params(CifgLstm(MODEL, seed=s).param_dict(), param_layout(MODEL))) for s in (0, 1)]
    )
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 40, (2, 3, 6), generator=gen)
    targets = torch.randint(4, 40, (2, 3, 6), generator=gen)
    mask = (torch.arange(6)[None, None, :] < torch.randint(0, 7, (2, 3, 1), generator=gen)).float()
    grads = torch.full_like(weights, 7.0)  # stale: every slice must be overwritten
    seeds = (11, 12)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    got = phone_gradients(weights, tokens, targets, mask, shapes, 5, grads, dropout, generators)
    for p in range(2):
        w = weights[p].clone().requires_grad_()
        if dropout > 0:
            # the reference: autograd through the same computation with phone p's own masks
            gen_p = torch.Generator().manual_seed(seeds[p])
            rows, embed = 6 * 3, shapes["embedding"][1]
            keep_in = torch.empty(rows, embed).bernoulli_(1 - dropout, generator=gen_p) / (1 - dropout)
            keep_out = torch.empty(rows, embed).bernoulli_(1 - dropout, generator=gen_p) / (1 - dropout)
            want = _dropout_reference(w, tokens[p], targets[p], mask[p], shapes, keep_in, keep_out)
        else:
            want = mean_loss(w, tokens[p], targets[p], mask[p], shapes)
        (want_grad,) = torch.autograd.grad(want, w)
        torch.testing.assert_close(got[p], want.detach(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grads[p].numpy(), want_grad.numpy(), atol=1e-6)


def _dropout_reference(w, tokens, targets, mask, shapes, keep_in, keep_out):
    """mean_loss with the given dropout multipliers on the inputs and outputs (time-major rows)."""
    parts = torch.split(w, [math.prod(shapes[n]) for n in PARAM_NAMES])
    params = {n: part.reshape(shapes[n]) for n, part in zip(PARAM_NAMES, parts, strict=True)}
    x = params["embedding"][tokens.t().reshape(-1)] * keep_in  # [T * B, E], time-major
    steps, batch = tokens.shape[1], tokens.shape[0]
    x = x.reshape(steps, batch, -1)
    h = torch.zeros(batch, shapes["embedding"][1])
    c = torch.zeros(batch, shapes["w_proj"][0])
    outs = []
    for t in range(steps):
        h, c = cell_step(params, x[t], (h, c))
        outs.append(h)
    out = torch.stack(outs).reshape(steps * batch, -1) * keep_out
    flat_mask = mask.t().reshape(-1)
    total = masked_nll(params, out, targets.t().reshape(-1), flat_mask, chunk=None)
    return total / torch.clamp(flat_mask.sum(), min=1.0)
