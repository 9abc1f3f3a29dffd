"""The shape of the CIFG-LSTM: size presets, parameter names and shapes (no torch: the server and the
config load this without the training stack).

Parameter names and shapes (E = embed_dim, H = hidden_dim, V = vocab_size) are documented in
:mod:`fedkey.models.cifg_lstm`.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

PARAM_NAMES = ("embedding", "w_x", "w_h", "b", "w_proj", "out_bias")

PRESETS: dict[str, dict[str, int]] = {
    # Gboard's size: 670 units, 96-d tied embedding/projection.
    "default": {"embed_dim": 96, "hidden_dim": 670},
    # For fast runs, tests and the demo.
    "small": {"embed_dim": 64, "hidden_dim": 256},
}


class ModelConfig(BaseModel):
    """Shape of the network. `preset` fills embed_dim/hidden_dim unless they are given explicitly."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("default", description="size preset: " + ", ".join(PRESETS))
    vocab_size: int = Field(8192, ge=16, description="tokenizer vocabulary size (set from the tokenizer)")
    embed_dim: int | None = Field(None, ge=4, description="embedding = projection size (tied softmax)")
    hidden_dim: int | None = Field(None, ge=4, description="LSTM cell units")

    def resolved(self) -> ModelConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[self.preset]
        return self.model_copy(
            update={
                "embed_dim": self.embed_dim or base["embed_dim"],
                "hidden_dim": self.hidden_dim or base["hidden_dim"],
            }
        )

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.resolved()
        v, e, h = c.vocab_size, c.embed_dim, c.hidden_dim
        assert e is not None and h is not None
        return {
            "embedding": (v, e),
            "w_x": (e, 3 * h),
            "w_h": (e, 3 * h),
            "b": (3 * h,),
            "w_proj": (h, e),
            "out_bias": (v,),
        }

    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())
