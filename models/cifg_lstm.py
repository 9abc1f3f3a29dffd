"""The CIFG-LSTM next-word model (Hard et al. 2018, "Federated Learning for Mobile Keyboard Prediction").

Coupled input and forget gate (input gate = 1 - forget gate), a projection from the cell output back to
the embedding size, and the input embedding tied to the output softmax. The network is written as a
pure function of a parameter dict with plain matmul/sigmoid/tanh ops, so the same code runs in torch,
under ``torch.func`` for gradients, and exports to ONNX together with its backward pass.

Parameter names and shapes (E = embed_dim, H = hidden_dim, V = vocab_size):

    embedding  (V, E)    input embedding, tied to the output layer
    w_x        (E, 3H)   input -> [forget, candidate, output] gates
    w_h        (E, 3H)   projected recurrent state -> gates
    b          (3H,)     gate biases (forget bias starts at 1)
    w_proj     (H, E)    cell output -> projected state (the recurrent and output state)
    out_bias   (V,)      output softmax bias
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from fedkey.models.manifest import flatten_params, param_layout, unflatten_weights
from fedkey.models.model_config import PARAM_NAMES, ModelConfig

__all__ = [
    "PARAM_NAMES",
    "CifgLstm",
    "ModelConfig",
    "initial_weights",
    "model_from_weights",
]  # the shape lives in model_config; re-exported

State = tuple[Tensor, Tensor]  # (h: projected output [B, E], c: cell [B, H])


def cell_step(params: dict[str, Tensor], x: Tensor, state: State) -> State:
    """One CIFG step for input embeddings x [B, E]; returns the new (h, c)."""
    h, c = state
    gates = x @ params["w_x"] + h @ params["w_h"] + params["b"]
    f_pre, g_pre, o_pre = torch.chunk(gates, 3, dim=-1)
    f = torch.sigmoid(f_pre)
    c = f * c + (1.0 - f) * torch.tanh(g_pre)
    h = (torch.sigmoid(o_pre) * torch.tanh(c)) @ params["w_proj"]
    return h, c


def hidden_states(
    params: dict[str, Tensor], tokens: Tensor, state: State, dropout: float = 0.0
) -> tuple[Tensor, State]:
    """Run the recurrence over tokens [B, T]; returns projected outputs [B, T, E] and the final state.

    `dropout` > 0 drops input embedding entries (server-side regularisation only: the exported graphs
    are traced with 0, so they hold no dropout op). Uses `torch.unbind` rather than indexing so that
    traced graphs do not bake in the batch size.
    """
    emb = params["embedding"][tokens]
    if dropout > 0:
        emb = torch.nn.functional.dropout(emb, dropout)
    outs = []
    for x in torch.unbind(emb, dim=1):
        state = cell_step(params, x, state)
        outs.append(state[0])
    return torch.stack(outs, dim=1), state


def output_logits(params: dict[str, Tensor], h: Tensor) -> Tensor:
    """Tied softmax logits for projected outputs h [..., E] -> [..., V]."""
    return h @ params["embedding"].t() + params["out_bias"]


def masked_nll(params: dict[str, Tensor], h: Tensor, targets: Tensor, mask: Tensor, chunk: int | None = 256) -> Tensor:
    """Sum of negative log-likelihoods of targets under the tied softmax, over positions where mask = 1.

    The [N, V] logits are built `chunk` rows at a time so they stay in cache: on CPU the vocabulary
    softmax dominates training and this was 1.6x faster with identical gradients (field notes).
    `chunk=None` computes all rows at once: the form for graphs traced with a symbolic batch size,
    where the number of chunks would depend on the batch.
    """
    flat_h = h.reshape(-1, h.shape[-1])
    flat_t = targets.reshape(-1)
    flat_m = mask.reshape(-1).to(flat_h.dtype)
    if chunk is None:
        logp = torch.log_softmax(output_logits(params, flat_h), dim=-1)
        return (-(logp.gather(1, flat_t.unsqueeze(1)).squeeze(1)) * flat_m).sum()
    total = flat_h.new_zeros(())
    for hs, ts, ms in zip(
        torch.split(flat_h, chunk), torch.split(flat_t, chunk), torch.split(flat_m, chunk), strict=True
    ):
        logp = torch.log_softmax(output_logits(params, hs), dim=-1)
        total = total + (-(logp.gather(1, ts.unsqueeze(1)).squeeze(1)) * ms).sum()
    return total


class CifgLstm(nn.Module):
    """The model as an nn.Module holding the parameter dict; the math lives in the functions above."""

    def __init__(self, config: ModelConfig, seed: int | None = None):
        super().__init__()
        self.config = config.resolved()
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        shapes = self.config.param_shapes()
        h = self.config.hidden_dim
        assert h is not None
        self.params = nn.ParameterDict()
        for name in PARAM_NAMES:
            shape = shapes[name]
            if name in ("b", "out_bias"):
                value = torch.zeros(shape)
                if name == "b":
                    value[:h] = 1.0  # forget-gate bias 1: remember by default early in training
            else:
                bound = 1.0 / math.sqrt(shape[0] if name != "embedding" else shape[1])
                value = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            self.params[name] = nn.Parameter(value)

    def param_dict(self) -> dict[str, Tensor]:
        return {name: self.params[name] for name in PARAM_NAMES}

    def named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        for name in PARAM_NAMES:
            yield name, self.params[name]

    def init_state(self, batch: int) -> State:
        e, h = self.config.embed_dim, self.config.hidden_dim
        assert e is not None and h is not None
        p = self.params["w_x"]
        return p.new_zeros(batch, e), p.new_zeros(batch, h)

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits [B, T, V] for every position of tokens [B, T], and the final state."""
        params = self.param_dict()
        out, state = hidden_states(params, tokens, state or self.init_state(tokens.shape[0]))
        return output_logits(params, out), state

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One keyboard event: logits [B, V] for the next token after token [B]."""
        params = self.param_dict()
        state = cell_step(params, params["embedding"][token], state)
        return output_logits(params, state[0]), state

    def loss(self, tokens: Tensor, targets: Tensor, mask: Tensor, dropout: float = 0.0) -> tuple[Tensor, Tensor]:
        """(sum of masked NLL, number of counted positions) for a batch of fixed-length sequences.

        `dropout` > 0 drops entries of the input embeddings and of the projected outputs before the tied
        softmax (Zaremba et al. 2014; Press & Wolf 2017), the regulariser of the centralised baseline."""
        params = self.param_dict()
        out, _ = hidden_states(params, tokens, self.init_state(tokens.shape[0]), dropout)
        if dropout > 0:
            out = torch.nn.functional.dropout(out, dropout)
        # chunking keeps the logits in a CPU core's cache; a GPU wants one large kernel instead
        return masked_nll(params, out, targets, mask, chunk=None if out.is_cuda else 256), mask.sum()


def initial_weights(config: ModelConfig, seed: int) -> np.ndarray:
    """The seeded initialisation of a model, flattened in the ``models.manifest`` layout."""
    return flatten_params(CifgLstm(config, seed=seed).param_dict(), param_layout(config.resolved()))


def model_from_weights(config: ModelConfig, weights: np.ndarray) -> CifgLstm:
    """A model holding these flat weights (``models.manifest`` layout)."""
    model = CifgLstm(config)
    with torch.no_grad():
        for name, value in unflatten_weights(np.asarray(weights, np.float32), param_layout(model.config)).items():
            model.params[name].copy_(torch.from_numpy(np.array(value)))
    return model
