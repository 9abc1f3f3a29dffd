"""Clipping, the central noised sum and adaptive quantile clipping."""

from __future__ import annotations

import numpy as np
import pytest

from fedkey.privacy.errors import PrivacyConfigError
from fedkey.privacy.mechanisms import (
    AdaptiveClipState,
    adaptive_delta_noise_multiplier,
    central_noised_sum,
    clip_rows,
)


def test_clip_rows_l2_and_l1() -> None:
    x = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped, within = clip_rows(x, 1.0)
    assert np.allclose(np.linalg.norm(clipped, axis=1), [1.0, 0.5, 0.0])
    assert within.tolist() == [False, True, True]
    clipped1, _ = clip_rows(x, 1.0, ord=1)
    assert np.allclose(np.abs(clipped1).sum(axis=1), [1.0, 0.7, 0.0])
    with pytest.raises(PrivacyConfigError):
        clip_rows(x, 0.0)


def test_central_noised_sum_reclips_and_has_the_right_noise() -> None:
    updates = np.zeros((3, 200_000))
    updates[0, 0] = 10.0  # a decoded update past the bound is clipped again on the server
    out = central_noised_sum(updates, clip_norm=0.5, noise_multiplier=2.0, rng=np.random.default_rng(0))
    assert np.std(out[1:]) == pytest.approx(1.0, rel=0.01)
    assert abs(out[0] - 0.5) < 5.0


def test_adaptive_clip_tracks_the_target_quantile() -> None:
    rng = np.random.default_rng(1)
    state = AdaptiveClipState(clip_norm=0.1, target_quantile=0.5, learning_rate=0.2)
    for _ in range(300):
        norms = rng.lognormal(0.0, 0.5, size=500)  # median norm 1.0
        state.update(norms <= state.clip_norm, rng)
    assert state.clip_norm == pytest.approx(1.0, rel=0.1)


def test_adaptive_noise_split() -> None:
    z = adaptive_delta_noise_multiplier(1.0, 10.0)
    assert z == pytest.approx((1.0 - 1 / 400) ** -0.5)
    with pytest.raises(PrivacyConfigError):
        adaptive_delta_noise_multiplier(1.0, 0.4)
