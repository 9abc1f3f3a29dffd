"""Configuration of the simulated phone fleet: device profiles, availability, round time, population.

Pydantic v2 models, ``extra="forbid"``, every field described (the descriptions feed the CLI help).
Defaults follow the sources cited in ``docs/devices.md``: the round-time model of Wang et al. 2021,
"A Field Guide to Federated Optimization" (~0.75 MB/s down, ~0.25 MB/s up, phones ~7x slower than a
desktop core, ~10 s fixed overhead per round), and Bonawitz et al. 2019, "Towards Federated Learning
at Scale: System Design" (eligible = idle + charging + unmetered, mostly at night; 6-10% of the
selected devices drop out of a round). Where the papers give no number the default is an assumption
and its description says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(extra="forbid", frozen=True)


def _check_weights(values: list[float], weights: list[float], what: str) -> None:
    if len(values) != len(weights):
        raise ValueError(f"{what}: {len(values)} values but {len(weights)} weights; give one weight per value")
    if any(w < 0 for w in weights):
        raise ValueError(f"{what}: weights must be >= 0, got {weights}")
    if sum(weights) <= 0:
        raise ValueError(f"{what}: weights must not all be zero")


class DeviceConfig(BaseModel):
    """Distributions every phone's device profile is drawn from (see docs/devices.md)."""

    model_config = _STRICT

    slowdown_median: float = Field(
        6.2,
        gt=0,
        description="Median of the lognormal compute slowdown: phone seconds per desktop-core second. "
        "With the default spread the mean is ~7x, the field guide's figure (Wang et al. 2021).",
    )
    slowdown_sigma: float = Field(
        0.5,
        ge=0,
        description="Lognormal sigma (natural-log scale) of the compute slowdown: the spread across "
        "low-, mid- and high-end phones (assumption: ~2.7x between the 16th and 84th percentiles).",
    )
    download_median_mb_s: float = Field(
        0.75,
        gt=0,
        description="Median download bandwidth in MB/s (1 MB = 10^6 bytes); field guide: ~0.75 MB/s.",
    )
    download_sigma: float = Field(0.8, ge=0, description="Lognormal sigma of the download bandwidth (assumption).")
    upload_median_mb_s: float = Field(
        0.25,
        gt=0,
        description="Median upload bandwidth in MB/s (1 MB = 10^6 bytes); field guide: ~0.25 MB/s.",
    )
    upload_sigma: float = Field(0.8, ge=0, description="Lognormal sigma of the upload bandwidth (assumption).")
    bandwidth_correlation: float = Field(
        0.7,
        ge=-1,
        le=1,
        description="Correlation of a phone's log download and log upload bandwidth (same network; assumption).",
    )
    memory_tiers_gb: list[float] = Field(
        [2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
        min_length=1,
        description="RAM tiers in GB a phone can have.",
    )
    memory_tier_weights: list[float] = Field(
        [0.08, 0.14, 0.24, 0.24, 0.20, 0.10],
        min_length=1,
        description="Share of phones in each RAM tier (assumption, shaped like the Android fleet).",
    )
    memory_speed_correlation: float = Field(
        0.6,
        ge=-1,
        le=1,
        description="Correlation between a phone's speed and its RAM tier (faster phones have more RAM; assumption).",
    )
    dropout_min: float = Field(
        0.06,
        ge=0,
        le=1,
        description="Lowest per-round dropout probability of a phone (Bonawitz et al. 2019: 6-10%).",
    )
    dropout_max: float = Field(
        0.10,
        ge=0,
        le=1,
        description="Highest per-round dropout probability of a phone (Bonawitz et al. 2019: 6-10%); "
        "each phone's probability is uniform between dropout_min and dropout_max.",
    )
    utc_offsets_h: list[float] = Field(
        [-8.0, -7.0, -6.0, -5.0, -3.0, 0.0, 1.0, 2.0, 3.0, 5.5, 7.0, 8.0, 9.0],
        min_length=1,
        description="UTC offsets in hours a phone's time zone can have.",
    )
    utc_offset_weights: list[float] = Field(
        [0.04, 0.02, 0.04, 0.07, 0.06, 0.03, 0.10, 0.05, 0.05, 0.17, 0.09, 0.22, 0.06],
        min_length=1,
        description="Share of phones in each UTC offset (assumption: roughly where smartphone users "
        "live; set a single offset to put the whole fleet in one zone).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DeviceConfig:
        _check_weights(self.memory_tiers_gb, self.memory_tier_weights, "memory_tiers_gb")
        if any(m <= 0 for m in self.memory_tiers_gb):
            raise ValueError(f"memory_tiers_gb must be > 0, got {self.memory_tiers_gb}")
        _check_weights(self.utc_offsets_h, self.utc_offset_weights, "utc_offsets_h")
        if any(not -12.0 <= o <= 14.0 for o in self.utc_offsets_h):
            raise ValueError(f"utc_offsets_h must lie in [-12, 14] hours, got {self.utc_offsets_h}")
        if self.dropout_min > self.dropout_max:
            raise ValueError(f"dropout_min ({self.dropout_min}) must not exceed dropout_max ({self.dropout_max})")
        return self


class AvailabilityConfig(BaseModel):
    """Diurnal eligibility: a phone may train only when idle, charging and on an unmetered network.

    Bonawitz et al. 2019 report that this happens mostly at night local time; the curve's numbers are
    assumptions (see docs/devices.md).
    """

    model_config = _STRICT

    peak_probability: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Probability that a phone is eligible at its local peak hour (night).",
    )
    daytime_floor: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Probability that a phone is eligible far from its peak (daytime); must not "
        "exceed peak_probability.",
    )
    peak_local_hour: float = Field(2.0, ge=0, lt=24, description="Local hour (0-24) at which eligibility peaks.")
    night_width_h: float = Field(
        4.0,
        gt=0,
        le=12,
        description="Half-width in hours of the night bump: eligibility is halfway between floor and "
        "peak this many hours from the peak.",
    )
    habit_jitter_h: float = Field(
        1.5,
        ge=0,
        le=12,
        description="Each phone's own peak hour is shifted uniformly within +/- this many hours "
        "(people go to bed at different times).",
    )
    session_minutes: float = Field(
        30.0,
        gt=0,
        le=1440,
        description="A phone's eligibility holds for sessions of this many minutes and is redrawn at "
        "the next session; session boundaries are staggered per phone (assumption).",
    )

    @model_validator(mode="after")
    def _floor_below_peak(self) -> AvailabilityConfig:
        if self.daytime_floor > self.peak_probability:
            raise ValueError(
                f"daytime_floor ({self.daytime_floor}) must not exceed peak_probability ({self.peak_probability})"
            )
        return self


class RoundTimeConfig(BaseModel):
    """The field guide's per-phone round-time model (Wang et al. 2021)."""

    model_config = _STRICT

    overhead_s: float = Field(
        10.0, ge=0, description="Fixed per-round overhead in seconds (check-in, setup); field guide: ~10 s."
    )
    desktop_flops_per_s: float = Field(
        3.3e10,
        gt=0,
        description="Training FLOP/s of one desktop core, used to turn FLOPs into desktop seconds "
        "(measured here: a bare torch loop reaches ~48% of ~69 GFLOP/s per core).",
    )


class PopulationConfig(BaseModel):
    """The simulated fleet: how many phones, where their text comes from, and their devices."""

    model_config = _STRICT

    size: int | None = Field(
        None,
        ge=1,
        description="Number of phones; default: one phone per real training user. Phones beyond the "
        "real users reuse a real user's text (see synthetic_user_mapping).",
    )
    synthetic_user_mapping: Literal["balanced", "uniform"] = Field(
        "balanced",
        description="How phone i >= n_real_users picks its real user: 'balanced' gives every real user "
        "the same number of clones (a seeded cyclic shift per block of n_real_users phones); 'uniform' "
        "draws the user uniformly at random per phone.",
    )
    devices: DeviceConfig = Field(default_factory=DeviceConfig, description="Device profile distributions.")
    availability: AvailabilityConfig = Field(
        default_factory=AvailabilityConfig, description="Diurnal availability process."
    )
    round_time: RoundTimeConfig = Field(default_factory=RoundTimeConfig, description="Per-phone round-time model.")
