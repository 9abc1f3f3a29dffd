"""Learning-rate schedules shared by the central trainer (per step) and the federated rounds (per round)."""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "cosine"]


def lr_factor(schedule: Schedule | str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at `step`: 1 for constant, half a cosine down to 0 for cosine."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (constant or cosine)")
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
