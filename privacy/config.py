"""DP settings as configuration: central DP-FedAvg and how local-DP spending is reported.

The local DP mechanism itself is a stage of the update pipeline (`fedkey.protocol.pipeline_config`:
`gaussian_noise` / `laplace_noise` after `clip`); these models cover what the server does and what the
privacy report should answer. In TOML:

    [central_dp]
    noise_multiplier = 1.1      # σ / C on the sum of clipped updates
    clip_norm = 1.0
    sampling = "poisson"        # or "fixed" (cohort_size of population, without replacement)
    sampling_rate = 0.004
    rounds = 1000
    delta = 1e-5
    target_epsilon = 8.0        # budget: training stops before passing it
    accountant = "pld"          # or "rdp"

    [local_accounting]
    delta = 1e-8                # δ for a phone's composed ε
    participations = [1, 10, 100]
    reports_per_round = 10000   # phones shuffled together (amplification by shuffling)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # the accountant loads dp-accounting and scipy (~45 MB): only where DP is on
    from fedkey.privacy.accountant import RoundSpec


class CentralDpConfig(BaseModel):
    """Central DP-FedAvg: Gaussian noise on the sum of clipped updates, amplified by cohort sampling."""

    model_config = ConfigDict(extra="forbid")

    noise_multiplier: float = Field(gt=0, allow_inf_nan=False, description="noise std / clip norm (z)")
    clip_norm: float = Field(1.0, gt=0, allow_inf_nan=False, description="per-update L2 bound C")
    sampling: Literal["poisson", "fixed"] = Field("poisson", description="how each round's cohort is drawn")
    sampling_rate: float | None = Field(None, gt=0, le=1, description="Poisson: each phone's probability q")
    cohort_size: int | None = Field(None, ge=1, description="fixed: phones per round m")
    population: int | None = Field(None, ge=1, description="fixed: eligible phones N")
    rounds: int = Field(1000, ge=1, description="planned training rounds")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ; at most 1/population is customary")
    target_epsilon: float | None = Field(None, gt=0, description="budget: stop before ε(δ) passes it")
    accountant: Literal["pld", "rdp"] = Field("pld", description="dp-accounting accountant")

    @model_validator(mode="after")
    def _sampling_fields(self) -> CentralDpConfig:
        if self.sampling == "poisson" and self.sampling_rate is None:
            raise ValueError("central_dp: Poisson sampling needs sampling_rate")
        if self.sampling == "fixed":
            if self.cohort_size is None or self.population is None:
                raise ValueError("central_dp: fixed-size sampling needs cohort_size and population")
            if self.cohort_size > self.population:
                raise ValueError("central_dp: cohort_size exceeds population")
            if self.accountant == "pld":
                raise ValueError(
                    "central_dp: fixed-size sampling is accounted with accountant = 'rdp' "
                    "(dp-accounting's PLD has no sampling-without-replacement event)"
                )
        return self

    def round_spec(self, noise_multiplier: float | None = None) -> RoundSpec:
        """The per-round accounting spec (optionally with another noise multiplier)."""
        from fedkey.privacy.accountant import RoundSpec

        return RoundSpec(
            self.noise_multiplier if noise_multiplier is None else noise_multiplier,
            self.sampling,
            self.sampling_rate if self.sampling == "poisson" else None,
            self.cohort_size if self.sampling == "fixed" else None,
            self.population if self.sampling == "fixed" else None,
        )


class LocalAccountingConfig(BaseModel):
    """What the report states about local DP: per-device ε after N reports and the shuffled ε."""

    model_config = ConfigDict(extra="forbid")

    delta: float = Field(1e-8, gt=0, lt=1, description="δ for a phone's composed ε")
    participations: list[int] = Field(default_factory=lambda: [1, 10, 100], description="N reports per phone")
    reports_per_round: int | None = Field(
        None, ge=2, description="phones whose reports are shuffled together each round (None: no shuffler)"
    )
    accountant: Literal["pld", "rdp"] = "pld"

    @model_validator(mode="after")
    def _positive(self) -> LocalAccountingConfig:
        if not self.participations or min(self.participations) < 1:
            raise ValueError("local_accounting.participations must be a non-empty list of integers >= 1")
        return self
