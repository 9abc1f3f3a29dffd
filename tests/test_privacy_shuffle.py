"""Shuffle amplification (Feldman, McMillan & Talwar 2021): the numerical bound against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedkey.privacy.shuffle import (
    compose_epsilon_delta,
    gaussian_shuffle_epsilon,
    shuffle_delta,
    shuffle_epsilon,
    shuffle_epsilon_closed_form,
)


def brute_force_delta(eps0: float, n: int, eps: float) -> float:
    """D_{e^ε}(P‖Q) by enumerating every (c, a, Δ) of the clone reduction."""
    p, q = math.exp(-eps0), math.exp(eps0) / (math.exp(eps0) + 1)
    pmass: dict[tuple[int, int], float] = {}
    qmass: dict[tuple[int, int], float] = {}
    for c in range(n):
        wc = stats.binom.pmf(c, n - 1, p)
        for a in range(c + 1):
            wa = wc * stats.binom.pmf(a, c, 0.5)
            for d, wd in ((1, q), (0, 1 - q)):
                kp = (a + d, c - a + 1 - d)
                kq = (a + 1 - d, c - a + d)
                pmass[kp] = pmass.get(kp, 0.0) + wa * wd
                qmass[kq] = qmass.get(kq, 0.0) + wa * wd
    keys = set(pmass) | set(qmass)
    return sum(max(0.0, pmass.get(k, 0.0) - math.exp(eps) * qmass.get(k, 0.0)) for k in keys)


@pytest.mark.parametrize(("eps0", "n", "eps"), [(1.0, 10, 0.3), (2.0, 25, 0.5), (0.5, 40, 0.1), (3.0, 30, 1.0)])
def test_numerical_delta_equals_brute_force(eps0: float, n: int, eps: float) -> None:
    assert shuffle_delta(eps0, n, eps) == pytest.approx(brute_force_delta(eps0, n, eps), rel=1e-6, abs=1e-15)


def test_amplification_is_tighter_than_closed_form_and_grows_with_n() -> None:
    prev = math.inf
    for n in (5_000, 20_000, 50_000):
        eps = shuffle_epsilon(2.0, n, 1e-6)
        closed = shuffle_epsilon_closed_form(2.0, n, 1e-6)
        assert closed is not None and eps < closed < 2.0
        assert shuffle_delta(2.0, n, eps) <= 1e-6
        assert eps < prev
        prev = eps
    assert shuffle_epsilon_closed_form(8.0, 1000, 1e-6) is None


def test_gaussian_reports_and_composition() -> None:
    eps, eps0, delta0 = gaussian_shuffle_epsilon(6.0, 10_000, 1e-6)
    assert 0 < eps < eps0 and delta0 < 1e-6 / 10_000
    total, dtotal = compose_epsilon_delta(0.1, 1e-8, 100, 1e-7)
    assert total < 100 * 0.1 and dtotal == pytest.approx(100 * 1e-8 + 1e-7)
    assert compose_epsilon_delta(0.1, 1e-8, 0, 1e-7) == (0.0, 0.0)
    assert np.isclose(compose_epsilon_delta(2.0, 0.0, 2, 1e-9)[0], 4.0)
