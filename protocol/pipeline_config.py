"""Configuration of the update pipeline: a plain list of stage specs, checked against the DP safety rule.

In TOML each stage is one table of an array, applied in order on the phone (and undone in reverse on
the server):

    [[pipeline]]
    kind = "clip"
    norm = 1.0
    [[pipeline]]
    kind = "top_k"
    fraction = 0.01
    [[pipeline]]
    kind = "quantize"
    bits = 4

Ordering rules (also enforced by the wire decoder, see `check_stage_order`):
clip first; at most one of each kind; at most one sparsifier (random_k / top_k) and one noise stage;
error feedback before any sparsifier, rotation or quantization; rotation after the sparsifier;
quantize last.

**DP safety rule** (local DP on, i.e. a gaussian_noise or laplace_noise stage): nothing computed from
the un-noised delta may leave the phone. Before the noise stage only clip (the sensitivity bound) and
data-independent stages (random_k, whose mask depends on the seed only, and rotate) are allowed: top-k
indices, quantization scales and error-feedback residuals would all reveal the un-noised delta. After
the noise they are post-processing and free. Adaptive clipping sends the bit [‖Δ‖ ≤ C] un-noised, so
it is refused with local DP too. A config that breaks the rule is refused with the reason.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from fedkey.privacy.calibration import LocalMechanism, gaussian_local_mechanism, laplace_local_mechanism
from fedkey.protocol.hadamard import padded_length


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdaptiveClipSpec(_Stage):
    """Quantile clipping (Andrew et al. 2021): the server moves the bound toward a target quantile."""

    target_quantile: float = Field(0.5, gt=0, lt=1, description="fraction of updates meant to fall within C")
    learning_rate: float = Field(0.2, gt=0, description="geometric step size η")
    count_noise_multiplier: float = Field(
        0.0, ge=0, description="σ_b of the Gaussian noise on the count of within-clip bits (central DP)"
    )


class ClipStage(_Stage):
    """Scale the delta to norm <= `norm` (the sensitivity bound every DP guarantee rests on)."""

    kind: Literal["clip"] = "clip"
    norm: float = Field(gt=0, allow_inf_nan=False, description="clip bound C (initial C when adaptive)")
    ord: Literal[1, 2] = Field(2, description="2: L2 norm; 1: L1 norm (tight for Laplace noise)")
    adaptive: AdaptiveClipSpec | None = Field(None, description="quantile clipping for central DP")


class GaussianNoiseStage(_Stage):
    """Local DP: add N(0, σ²) with σ from the analytic Gaussian mechanism for (ε, δ) and Δ₂ = 2C."""

    kind: Literal["gaussian_noise"] = "gaussian_noise"
    epsilon: float = Field(gt=0, allow_inf_nan=False, description="ε per report")
    delta: float = Field(gt=0, lt=1, description="δ per report")


class LaplaceNoiseStage(_Stage):
    """Local DP: add Laplace(b) per coordinate, b = Δ₁/ε (pure ε-DP per report)."""

    kind: Literal["laplace_noise"] = "laplace_noise"
    epsilon: float = Field(gt=0, allow_inf_nan=False, description="ε per report")


class _Sparsifier(_Stage):
    fraction: float | None = Field(None, gt=0, le=1, description="kept fraction of coordinates")
    k: int | None = Field(None, ge=1, description="kept coordinates (instead of fraction)")

    @model_validator(mode="after")
    def _one_of(self) -> _Sparsifier:
        if (self.fraction is None) == (self.k is None):
            raise ValueError(f"{self.__class__.__name__}: give exactly one of fraction or k")
        return self

    def kept(self, dim: int) -> int:
        """Number of coordinates kept out of `dim` (a k above dim is refused when the stage is built)."""
        if self.k is not None:
            return self.k
        assert self.fraction is not None
        return min(dim, max(1, round(self.fraction * dim)))


class RandomKStage(_Sparsifier):
    """Keep k coordinates chosen by a seed-only mask; the server rescales by d/k (unbiased)."""

    kind: Literal["random_k"] = "random_k"
    unbiased: bool = Field(True, description="server multiplies by d/k so the decoded update is unbiased")


class TopKStage(_Sparsifier):
    """Keep the k coordinates of largest magnitude (indices travel as varint gaps)."""

    kind: Literal["top_k"] = "top_k"


class ErrorFeedbackStage(_Stage):
    """Keep what compression dropped on the phone and add it to the next round's delta."""

    kind: Literal["error_feedback"] = "error_feedback"


class RotateStage(_Stage):
    """Random sign flips + block Hadamard before quantization (shrinks the per-chunk range)."""

    kind: Literal["rotate"] = "rotate"
    block: int = Field(1024, ge=2, le=65536, description="Hadamard block size, a power of two")

    @model_validator(mode="after")
    def _power_of_two(self) -> RotateStage:
        if self.block & (self.block - 1):
            raise ValueError(f"rotate.block must be a power of two, got {self.block}")
        return self


class QuantizeStage(_Stage):
    """Unbiased stochastic b-bit quantization with a float32 (lo, scale) per chunk."""

    kind: Literal["quantize"] = "quantize"
    bits: Literal[1, 2, 4, 8] = 4
    chunk: int = Field(512, ge=1, le=1 << 24, description="values per (lo, scale) pair")


StageSpec = Annotated[
    ClipStage
    | GaussianNoiseStage
    | LaplaceNoiseStage
    | RandomKStage
    | TopKStage
    | ErrorFeedbackStage
    | RotateStage
    | QuantizeStage,
    Field(discriminator="kind"),
]

NOISE_KINDS = ("gaussian_noise", "laplace_noise")
SPARSIFIER_KINDS = ("random_k", "top_k")
# Stages allowed before the local DP noise: the clip and data-independent transforms.
SAFE_BEFORE_NOISE = ("clip", "random_k", "rotate")
_WHY_UNSAFE = {
    "top_k": "top-k indices are chosen from the un-noised delta and are sent in the clear",
    "quantize": "quantization ranges (min/scale per chunk) are computed from the un-noised delta",
    "error_feedback": "the error-feedback residual carries the un-noised delta into what is sent",
}


def check_stage_order(kinds: list[str], adaptive_clip: bool = False) -> None:
    """Raise ValueError (with the reason) if a stage sequence breaks the ordering or DP safety rules."""
    seen: set[str] = set()
    for kind in kinds:
        if kind in seen:
            raise ValueError(f"stage {kind!r} appears twice")
        seen.add(kind)
    pos = {k: i for i, k in enumerate(kinds)}
    if "clip" in pos and pos["clip"] != 0:
        raise ValueError("clip must be the first stage")
    if sum(k in pos for k in SPARSIFIER_KINDS) > 1:
        raise ValueError("use at most one sparsifier (random_k or top_k)")
    if sum(k in pos for k in NOISE_KINDS) > 1:
        raise ValueError("use at most one local noise stage")
    if "quantize" in pos and pos["quantize"] != len(kinds) - 1:
        raise ValueError("quantize must be the last stage")
    sparsifier = next((pos[k] for k in SPARSIFIER_KINDS if k in pos), None)
    if "rotate" in pos and sparsifier is not None and pos["rotate"] < sparsifier:
        raise ValueError("rotate must come after the sparsifier (it rotates the kept values)")
    if "error_feedback" in pos:
        later = [k for k in ("random_k", "top_k", "rotate", "quantize") if k in pos and pos[k] < pos["error_feedback"]]
        if later:
            raise ValueError(f"error_feedback must come before {later[0]} (it must see what compression drops)")
    noise = next((pos[k] for k in NOISE_KINDS if k in pos), None)
    if noise is None:
        return
    if "clip" not in pos:
        raise ValueError(
            "local DP noise needs a clip stage before it: without a bound on the norm "
            "there is no sensitivity to calibrate the noise to"
        )
    if adaptive_clip:
        raise ValueError(
            "DP safety rule: adaptive clipping sends the bit [norm <= C] of the un-noised delta, "
            "so it cannot be combined with local DP; use a fixed clip norm"
        )
    for kind in kinds[:noise]:
        if kind not in SAFE_BEFORE_NOISE:
            raise ValueError(
                f"DP safety rule: {kind!r} before the local DP noise stage would leak the un-noised delta "
                f"({_WHY_UNSAFE.get(kind, 'it is data-dependent')}); move it after the noise stage, "
                "where it is post-processing, or use random_k, whose mask depends only on the seed"
            )


class PipelineConfig(RootModel[list[StageSpec]]):
    """The ordered stage list (device order). Validated by `check_stage_order` on construction."""

    @model_validator(mode="after")
    def _safe(self) -> PipelineConfig:
        clip = self.clip()
        check_stage_order([s.kind for s in self.root], adaptive_clip=bool(clip and clip.adaptive))
        return self

    def kinds(self) -> list[str]:
        return [s.kind for s in self.root]

    def describe(self) -> str:
        """One line for reports and bench tables, e.g. ``top_k(fraction=0.25) → quantize(bits=8, chunk=512)``."""
        stages = self.model_dump(mode="json", exclude_none=True)
        if not stages:
            return "none (raw float32 deltas)"
        return " → ".join(f"{s['kind']}({', '.join(f'{k}={v}' for k, v in s.items() if k != 'kind')})" for s in stages)

    def clip(self) -> ClipStage | None:
        return next((s for s in self.root if isinstance(s, ClipStage)), None)

    def noise(self) -> GaussianNoiseStage | LaplaceNoiseStage | None:
        return next((s for s in self.root if isinstance(s, GaussianNoiseStage | LaplaceNoiseStage)), None)

    def noised_length(self, dim: int) -> int:
        """How many coordinates the noise stage sees: k after a random_k, padded to whole Hadamard
        blocks after a rotate (the padding zeros are noised too and count for the L1 sensitivity)."""
        kinds = self.kinds()
        noise_at = next(i for i, k in enumerate(kinds) if k in NOISE_KINDS)
        length = dim
        for s in self.root[:noise_at]:
            if isinstance(s, RandomKStage):
                length = s.kept(length)
            elif isinstance(s, RotateStage):
                length = padded_length(length, s.block)
        return length

    def local_mechanism(self, dim: int, clip_norm: float | None = None) -> LocalMechanism | None:
        """The calibrated local DP report (σ or b, noise multiplier, ε, δ), or None without local DP.

        Gaussian: Δ₂ = 2C (for an L1 clip too, as ‖·‖₂ ≤ ‖·‖₁). Laplace: Δ₁ = 2C for an L1 clip,
        and 2C·√m for an L2 clip over the m noised coordinates (‖·‖₁ ≤ √m‖·‖₂).
        """
        noise = self.noise()
        if noise is None:
            return None
        clip = self.clip()
        assert clip is not None  # guaranteed by the validator
        c = clip.norm if clip_norm is None else clip_norm
        if isinstance(noise, GaussianNoiseStage):
            return gaussian_local_mechanism(noise.epsilon, noise.delta, c)
        l1 = 2.0 * c if clip.ord == 1 else 2.0 * c * math.sqrt(self.noised_length(dim))
        return laplace_local_mechanism(noise.epsilon, l1)
