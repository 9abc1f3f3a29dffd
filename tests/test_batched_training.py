"""The batched trainer's fused softmax loss and stacked-phone losses equal the model's own loss code."""

from __future__ import annotations

import numpy as np
import torch

from fedkey.device_sim.batched_training import fused_nll, phone_losses
from fedkey.models.cifg_lstm import CifgLstm, ModelConfig, masked_nll
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
    mask = (torch.rand(phones, rows, generator=gen) > 0.3).float() * torch.rand(phones, rows, generator=gen)
    mask[2] = 0.0  # a phone without any counted position
    upstream = torch.tensor([0.5, -2.0, 3.0])
    # chunk 4 splits the counted rows into several chunks, the last one short
    got = fused_nll(h, emb, bias, targets, mask, chunk=4)
    got_grads = torch.autograd.grad((got * upstream).sum(), (h, emb, bias))
    want = torch.stack(
        [
            masked_nll({"embedding": emb[p], "out_bias": bias[p]}, h[p], targets[p], mask[p], chunk=None)
            for p in range(phones)
        ]
    )
    want_grads = torch.autograd.grad((want * upstream).sum(), (h, emb, bias))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert float(got[2].detach()) == 0.0
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_stacked_phone_losses_and_gradients_equal_each_phones_mean_loss():
    shapes = MODEL.param_shapes()
    weights = torch.stack(
        [torch.from_numpy(flatten_params(CifgLstm(MODEL, seed=s).param_dict(), param_layout(MODEL))) for s in (0, 1)]
    ).requires_grad_()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 40, (2, 3, 6), generator=gen)
    targets = torch.randint(4, 40, (2, 3, 6), generator=gen)
    mask = (torch.arange(6)[None, None, :] < torch.randint(0, 7, (2, 3, 1), generator=gen)).float()
    got = phone_losses(weights, tokens, targets, mask, shapes, chunk=5)
    (got_grad,) = torch.autograd.grad(got.sum(), weights)
    for p in range(2):
        w = weights[p].detach().requires_grad_()
        want = mean_loss(w, tokens[p], targets[p], mask[p], shapes)
        (want_grad,) = torch.autograd.grad(want, w)
        torch.testing.assert_close(got[p], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_grad[p].numpy(), want_grad.numpy(), atol=1e-6)
