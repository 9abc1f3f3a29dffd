"""Seeded cohort sampling among eligible phones: uniform with over-selection, and Poisson.

Bonawitz et al. 2019 ("Towards Federated Learning at Scale: System Design") select more phones than a
round needs, 130% of the goal count, because some drop out or report too late. ``sample_uniform``
draws ``ceil(target * over_selection)`` distinct phones uniformly among the candidates (usually the
phones eligible now). ``sample_poisson`` includes every candidate independently with probability
``rate``: the sampling that DP-FedAvg's privacy amplification assumes (McMahan et al. 2018). Both are
deterministic functions of (seed, round, candidates) and cost memory proportional to the candidates.
A server decision (which phones take part), so it lives in ``server``; numpy only.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

_UNIFORM = 0x756E69  # tags keep the two samplers' random streams apart
_POISSON = 0x706F69


def _rng(seed: int, round_idx: int, tag: int) -> np.random.Generator:
    if seed < 0 or round_idx < 0:
        raise ValueError(f"seed and round_idx must be >= 0, got {seed} and {round_idx}")
    return np.random.default_rng(np.random.SeedSequence([seed, round_idx, tag]))


def over_selected(target: int, over_selection: float = 1.3) -> int:
    """How many phones to select for ``target`` reports: ``ceil(target * over_selection)``."""
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    if over_selection < 1.0:
        raise ValueError(f"over_selection must be >= 1, got {over_selection}")
    return math.ceil(round(target * over_selection, 9))


def sample_uniform(
    candidates: npt.ArrayLike,
    target: int,
    *,
    seed: int,
    round_idx: int,
    over_selection: float = 1.3,
) -> npt.NDArray[np.int64]:
    """Distinct phone ids (ascending) drawn uniformly from ``candidates``, over-selected.

    Asks for ``over_selected(target, over_selection)`` phones; when fewer candidates exist it returns
    them all, and the caller decides whether the round can go ahead.
    """
    ids = np.asarray(candidates, dtype=np.int64)
    k = min(over_selected(target, over_selection), len(ids))
    chosen = _rng(seed, round_idx, _UNIFORM).choice(len(ids), size=k, replace=False)
    return np.sort(ids[chosen])


def sample_poisson(candidates: npt.ArrayLike, rate: float, *, seed: int, round_idx: int) -> npt.NDArray[np.int64]:
    """Phone ids (ascending) of ``candidates``, each kept independently with probability ``rate``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"Poisson sampling rate must lie in [0, 1], got {rate}")
    ids = np.asarray(candidates, dtype=np.int64)
    keep = _rng(seed, round_idx, _POISSON).random(len(ids)) < rate
    return np.sort(ids[keep])
