"""CIFG-LSTM: shapes, the coupled gate, step vs sequence, chunked loss, a numerical gradient check."""

from __future__ import annotations

import pytest
import torch

from fedkey.models.cifg_lstm import CifgLstm, ModelConfig, cell_step, masked_nll, output_logits

TINY = ModelConfig(vocab_size=40, embed_dim=6, hidden_dim=5)


def test_default_size_is_close_to_gboard():
    n = ModelConfig(preset="default").num_parameters()
    assert 1.1e6 < n < 1.5e6
    assert ModelConfig(preset="small").num_parameters() < n
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig(preset="huge").resolved()


def test_shapes():
    model = CifgLstm(TINY, seed=0)
    logits, (h, c) = model(torch.randint(0, 40, (3, 7)))
    assert logits.shape == (3, 7, 40) and h.shape == (3, 6) and c.shape == (3, 5)


def test_cell_couples_input_and_forget_gates():
    model = CifgLstm(TINY, seed=1)
    p = model.param_dict()
    x, h, c = torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 5)
    gates = x @ p["w_x"] + h @ p["w_h"] + p["b"]
    f, g, o = gates[:, :5].sigmoid(), gates[:, 5:10].tanh(), gates[:, 10:].sigmoid()
    i = 1 - f  # CIFG: no separate input gate
    c_ref = f * c + i * g
    h_ref = (o * c_ref.tanh()) @ p["w_proj"]
    h2, c2 = cell_step(p, x, (h, c))
    torch.testing.assert_close(c2, c_ref)
    torch.testing.assert_close(h2, h_ref)


def test_step_by_step_equals_sequence():
    model = CifgLstm(TINY, seed=2)
    tokens = torch.randint(0, 40, (2, 9))
    full, _ = model(tokens)
    state = model.init_state(2)
    for t in range(9):
        logits, state = model.step(tokens[:, t], state)
        torch.testing.assert_close(logits, full[:, t])


def test_chunked_loss_matches_plain_cross_entropy():
    model = CifgLstm(TINY, seed=3)
    p = model.param_dict()
    h = torch.randn(4, 11, 6)
    targets = torch.randint(0, 40, (4, 11))
    mask = (torch.rand(4, 11) > 0.3).float()
    ref = torch.nn.functional.cross_entropy(output_logits(p, h).reshape(-1, 40), targets.reshape(-1), reduction="none")
    torch.testing.assert_close(masked_nll(p, h, targets, mask, chunk=7), (ref * mask.reshape(-1)).sum())


def test_gradient_check():
    model = CifgLstm(TINY, seed=4).double()
    tokens = torch.randint(0, 40, (2, 4))
    mask = torch.ones(2, 4, dtype=torch.float64)
    names = list(model.param_dict())

    def loss(*tensors):
        params = dict(zip(names, tensors, strict=True))
        from fedkey.models.cifg_lstm import hidden_states

        state = (torch.zeros(2, 6, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64))
        out, _ = hidden_states(params, tokens, state)
        return masked_nll(params, out, tokens, mask, chunk=3)

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in model.param_dict().values())
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5)


def test_dropout_is_off_by_default_and_regularises_when_on():
    model = CifgLstm(ModelConfig(vocab_size=50, embed_dim=8, hidden_dim=12), seed=0)
    tokens = torch.randint(4, 50, (6, 9), generator=torch.Generator().manual_seed(1))
    targets, mask = tokens.roll(-1, 1), torch.ones(6, 9)
    plain = model.loss(tokens, targets, mask)[0]
    assert torch.equal(plain, model.loss(tokens, targets, mask, 0.0)[0])
    torch.manual_seed(2)
    dropped = model.loss(tokens, targets, mask, 0.5)[0]
    torch.manual_seed(3)
    assert dropped != plain
    assert model.loss(tokens, targets, mask, 0.5)[0] != dropped  # a fresh mask each call
