"""Analytic Gaussian calibration meets (ε, δ) exactly; noise stages have the calibrated scale."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from scipy.stats import norm

from fedkey.privacy.calibration import (
    analytic_gaussian_sigma,
    classic_gaussian_sigma,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_local_mechanism,
    laplace_local_mechanism,
)
from fedkey.privacy.errors import PrivacyConfigError
from fedkey.privacy.mechanisms import add_gaussian_noise, add_laplace_noise

GRID = [(0.1, 1e-6), (0.5, 1e-5), (1.0, 1e-5), (2.0, 1e-8), (8.0, 1e-10), (20.0, 1e-5)]


def balle_wang_delta(sigma: float, eps: float, sens: float) -> float:
    """Balle & Wang 2018 Thm 8, written directly with norm.cdf."""
    return norm.cdf(sens / (2 * sigma) - eps * sigma / sens) - math.exp(eps) * norm.cdf(
        -sens / (2 * sigma) - eps * sigma / sens
    )


@pytest.mark.parametrize(("eps", "delta"), GRID)
@pytest.mark.parametrize("sens", [1.0, 2.0, 0.3])
def test_sigma_meets_target_exactly(eps: float, delta: float, sens: float) -> None:
    sigma = analytic_gaussian_sigma(eps, delta, sens)
    assert balle_wang_delta(sigma, eps, sens) <= delta * (1 + 1e-6)
    assert gaussian_delta(sigma, eps, sens) <= delta
    # Tight: a 0.01% smaller σ breaks the guarantee.
    assert gaussian_delta(sigma * 0.9999, eps, sens) > delta
    # Same as dp-accounting's independent implementation of the analytic Gaussian mechanism.
    assert sigma / sens == pytest.approx(dp_accounting.get_sigma_gaussian(eps, delta), rel=1e-6)


def test_delta_matches_formula_where_cdf_is_accurate() -> None:
    for sigma, eps in [(1.0, 0.5), (3.0, 1.0), (0.7, 2.0)]:
        assert gaussian_delta(sigma, eps, 1.0) == pytest.approx(balle_wang_delta(sigma, eps, 1.0), rel=1e-9)


def test_epsilon_is_inverse_of_calibration() -> None:
    for eps, delta in GRID:
        assert gaussian_epsilon(analytic_gaussian_sigma(eps, delta), delta) == pytest.approx(eps, rel=1e-6)


def test_analytic_beats_classic_bound() -> None:
    for eps, delta in [(0.1, 1e-6), (0.5, 1e-5), (0.9, 1e-8)]:
        assert analytic_gaussian_sigma(eps, delta) < classic_gaussian_sigma(eps, delta)


def test_local_mechanisms_use_replace_one_sensitivity() -> None:
    g = gaussian_local_mechanism(2.0, 1e-6, clip_norm=0.5)
    assert g.sensitivity == 1.0 and g.noise_multiplier == pytest.approx(g.scale)
    lap = laplace_local_mechanism(4.0, l1_sensitivity=2.0)
    assert lap.scale == 0.5 and lap.noise_multiplier == 0.25 and lap.delta == 0.0


@pytest.mark.parametrize("bad", [dict(epsilon=0, delta=1e-5), dict(epsilon=1, delta=0), dict(epsilon=1, delta=1.5)])
def test_bad_settings_raise(bad: dict[str, float]) -> None:
    with pytest.raises(PrivacyConfigError):
        analytic_gaussian_sigma(bad["epsilon"], bad["delta"])


def test_noise_scale_statistics() -> None:
    """Sample std of the added noise matches σ (Gaussian) and √2·b (Laplace) within 0.5% (±7 s.e.)."""
    zeros = np.zeros((4, 250_000))
    keys = np.arange(4, dtype=np.uint64)
    g = add_gaussian_noise(zeros, 0.37, keys)
    assert np.std(g) == pytest.approx(0.37, rel=5e-3)
    assert abs(np.mean(g)) < 0.37 * 7 / math.sqrt(g.size)
    lap = add_laplace_noise(zeros, 0.2, keys)
    assert np.std(lap) == pytest.approx(0.2 * math.sqrt(2), rel=1e-2)
    # Different phones get independent streams.
    assert abs(np.corrcoef(g[0], g[1])[0, 1]) < 0.01
