"""Learning-rate schedules shared by the central trainer (per step) and the federated rounds (per round)."""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "cosine"]


def lr_factor(schedule: Schedule | str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at `step` (from 0): 1 for constant, half a cosine down to 0 for
    cosine; with ``warmup_steps`` > 0 it is also scaled by ``(step + 1) / warmup_steps`` until that reaches 1
    (a linear warm-up, Goyal et al. 2017)."""
    if schedule == "constant":
        factor = 1.0
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (constant or cosine)")
    if warmup_steps < 0:
        raise ValueError(f"warm-up steps must be >= 0, got {warmup_steps}")
    return factor * min(1.0, (step + 1) / warmup_steps) if warmup_steps else factor
