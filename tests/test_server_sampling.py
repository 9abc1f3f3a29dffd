"""Cohort sampling statistics: uniform with over-selection, Poisson (server/sampling.py)."""

import numpy as np
import pytest

from fedkey.server.sampling import over_selected, sample_poisson, sample_uniform


def test_over_selection_default_is_130_percent():
    assert over_selected(100) == 130
    assert over_selected(1000) == 1300
    assert over_selected(7, 1.0) == 7
    assert over_selected(3) == 4
    with pytest.raises(ValueError, match="over_selection"):
        over_selected(10, 0.9)


def test_uniform_sampling_size_distinctness_determinism():
    eligible = np.arange(0, 20_000, 3)
    a = sample_uniform(eligible, 100, seed=5, round_idx=2)
    assert len(a) == 130 and len(np.unique(a)) == 130 and np.all(np.isin(a, eligible))
    assert np.array_equal(a, sample_uniform(eligible, 100, seed=5, round_idx=2))
    assert not np.array_equal(a, sample_uniform(eligible, 100, seed=5, round_idx=3))
    assert not np.array_equal(a, sample_uniform(eligible, 100, seed=6, round_idx=2))
    # fewer candidates than asked: all of them
    assert np.array_equal(sample_uniform(np.arange(50), 100, seed=0, round_idx=0), np.arange(50))


def test_uniform_sampling_rates_within_binomial_bounds():
    n, target, rounds = 1_000, 40, 2_000
    counts = np.zeros(n)
    for r in range(rounds):
        counts[sample_uniform(np.arange(n), target, seed=11, round_idx=r)] += 1
    p = 52 / n  # 130% of 40
    bound = 5 * np.sqrt(rounds * p * (1 - p))
    assert np.all(np.abs(counts - rounds * p) <= bound)
    # the spread across phones is the binomial one (not, e.g., a fixed rotation)
    assert 0.8 < counts.var() / (rounds * p * (1 - p)) < 1.2


def test_poisson_sampling_rate_and_independence():
    n, q, rounds = 20_000, 0.01, 200
    sizes = []
    counts = np.zeros(n)
    for r in range(rounds):
        ids = sample_poisson(np.arange(n), q, seed=3, round_idx=r)
        sizes.append(len(ids))
        counts[ids] += 1
    sizes = np.array(sizes)
    sd = np.sqrt(n * q * (1 - q))
    assert np.all(np.abs(sizes - n * q) <= 5 * sd)
    assert abs(sizes.mean() - n * q) <= 5 * sd / np.sqrt(rounds)
    assert 0.8 < sizes.var() / sd**2 < 1.25  # cohort size varies as Binomial(n, q)
    assert abs(counts.mean() - rounds * q) < 0.05
    assert np.array_equal(
        sample_poisson(np.arange(n), q, seed=3, round_idx=0),
        sample_poisson(np.arange(n), q, seed=3, round_idx=0),
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample_poisson(np.arange(n), 1.5, seed=0, round_idx=0)
