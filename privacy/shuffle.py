"""Amplification by shuffling for local-DP reports (Feldman, McMillan & Talwar 2021).

Reference: V. Feldman, A. McMillan, K. Talwar, "Hiding Among the Clones: A Simple and Nearly Optimal
Analysis of Privacy Amplification by Shuffling", FOCS 2021, arXiv:2012.12803.

If each of n phones applies an ε₀-DP local randomizer and a trusted shuffler hides who sent what, the
shuffled multiset is (ε, δ)-DP for a much smaller ε. The paper's clone reduction (Section 3)
bounds δ(ε) by the hockey-stick divergence D_{e^ε}(P‖Q) of two distributions on pairs of counts:

    C ~ Bin(n−1, e^{−ε₀}),  A ~ Bin(C, 1/2),  Δ ~ Bern(e^{ε₀}/(e^{ε₀}+1)),
    P = (A + Δ, C − A + 1 − Δ),  Q = (A + 1 − Δ, C − A + Δ).

`shuffle_delta` evaluates that divergence numerically and exactly up to floating point: the
coordinate sum reveals C, and for fixed C the likelihood ratio P/Q increases with the first coordinate,
so the divergence for each C is a difference of binomial tail probabilities. The C-range is cut where
Bin(n−1, e^{−ε₀}) has less than 1e-18 mass in each tail, and that mass is added to δ (an upper bound).
`shuffle_epsilon` inverts it by bisection. The paper's closed-form bound (its main theorem) is
`shuffle_epsilon_closed_form`, kept to show the numerical bound is tighter.

For (ε₀, δ₀)-DP randomizers such as the Gaussian mechanism the paper's approximate-DP extension (Section 3) adds
(e^ε + 1)(1 + e^{−ε₀}/2)·n·δ₀ to δ; `gaussian_shuffle_epsilon` spends half the target δ there (choosing
δ₀ accordingly, ε₀ = ε₀(δ₀) from the analytic Gaussian curve) and half on the shuffle bound.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special, stats

from fedkey.privacy.calibration import gaussian_epsilon
from fedkey.privacy.errors import PrivacyConfigError

_TAIL = 1e-18


def shuffle_delta(epsilon0: float, n: int, epsilon: float) -> float:
    """Upper bound on δ at ε for the shuffled outputs of n ε₀-DP local reports (FMT21 clone reduction)."""
    _check(epsilon0, n)
    if epsilon >= epsilon0:
        return 0.0
    p = math.exp(-epsilon0)
    q = math.exp(epsilon0) / (math.exp(epsilon0) + 1.0)
    e = math.exp(epsilon)
    binom_c = stats.binom(n - 1, p)
    c_lo = int(binom_c.ppf(_TAIL)) if n > 1 else 0
    c_hi = int(binom_c.isf(_TAIL)) if n > 1 else 0
    c = np.arange(max(c_lo, 0), min(c_hi, n - 1) + 1)
    weight = binom_c.pmf(c)
    # P_c/Q_c > e^ε  ⇔  r = x/(c−x+1) > r*  ⇔  x ≥ x*.
    r_star = (e * q - (1.0 - q)) / (q - e * (1.0 - q))
    x_star = np.floor(r_star * (c + 1) / (1.0 + r_star)) + 1.0
    sf_minus2 = _binom_sf(x_star - 2, c)  # P(A ≥ x*−1), A ~ Bin(c, 1/2)
    sf_minus1 = _binom_sf(x_star - 1, c)  # P(A ≥ x*)
    p_tail = q * sf_minus2 + (1.0 - q) * sf_minus1
    q_tail = (1.0 - q) * sf_minus2 + q * sf_minus1
    per_c = np.maximum(p_tail - e * q_tail, 0.0)
    cut_mass = binom_c.cdf(c[0] - 1) + binom_c.sf(c[-1]) if n > 1 else 0.0
    return float(min(1.0, np.dot(weight, per_c) + cut_mass))


def shuffle_epsilon(epsilon0: float, n: int, delta: float) -> float:
    """Smallest ε (to 1e-6) with `shuffle_delta(epsilon0, n, ε) <= delta`; never above ε₀."""
    _check(epsilon0, n)
    if not (0.0 < delta < 1.0):
        raise PrivacyConfigError(f"delta must be in (0, 1), got {delta}")
    if shuffle_delta(epsilon0, n, 0.0) <= delta:
        return 0.0
    eps = float(optimize.brentq(lambda x: shuffle_delta(epsilon0, n, x) - delta, 0.0, epsilon0, xtol=1e-9))
    while shuffle_delta(epsilon0, n, eps) > delta:
        eps += 1e-9
    return min(eps, epsilon0)


def shuffle_epsilon_closed_form(epsilon0: float, n: int, delta: float) -> float | None:
    """FMT21 closed-form bound; None where it does not apply (ε₀ > ln(n / (16 ln(2/δ))))."""
    _check(epsilon0, n)
    if epsilon0 > math.log(n / (16.0 * math.log(2.0 / delta))):
        return None
    e0 = math.exp(epsilon0)
    inner = 8.0 * math.sqrt(e0 * math.log(4.0 / delta)) / math.sqrt(n) + 8.0 * e0 / n
    return math.log1p((e0 - 1.0) / (e0 + 1.0) * inner)


def gaussian_shuffle_epsilon(sigma_over_sensitivity: float, n: int, delta: float) -> tuple[float, float, float]:
    """Shuffled ε at δ for n Gaussian local reports with noise multiplier σ/Δ.

    Returns (ε, ε₀, δ₀): half of δ covers the n·δ₀ term of the FMT21 approximate-DP extension, half the shuffle bound.
    """
    if n < 2:
        raise PrivacyConfigError("shuffling needs at least 2 reports")
    half = delta / 2.0
    # Pick δ₀ so that (e^ε + 1)(1 + e^{−ε₀}/2)·n·δ₀ <= δ/2 with ε <= ε₀ (fixed point, conservative).
    delta0 = half / (3.0 * n)
    for _ in range(60):
        eps0 = gaussian_epsilon(sigma_over_sensitivity, delta0)
        needed = half / ((math.exp(eps0) + 1.0) * (1.0 + math.exp(-eps0) / 2.0) * n)
        if needed >= delta0:
            break
        delta0 = needed
    eps0 = gaussian_epsilon(sigma_over_sensitivity, delta0)
    return shuffle_epsilon(eps0, n, half), eps0, delta0


def compose_epsilon_delta(epsilon: float, delta: float, k: int, delta_slack: float) -> tuple[float, float]:
    """k-fold composition of an (ε, δ) mechanism: the better of basic and advanced composition.

    Advanced composition (Dwork, Rothblum & Vadhan 2010): (ε√(2k ln(1/δ')) + kε(e^ε − 1), kδ + δ').
    Returns (ε_total, δ_total).
    """
    if k <= 0:
        return 0.0, 0.0
    basic = (k * epsilon, k * delta)
    advanced_eps = epsilon * math.sqrt(2.0 * k * math.log(1.0 / delta_slack)) + k * epsilon * math.expm1(epsilon)
    if advanced_eps < basic[0]:
        return advanced_eps, k * delta + delta_slack
    return basic


def _binom_sf(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """P(Bin(n, 1/2) > k) elementwise, with the k < 0 and k >= n edges handled explicitly."""
    out = np.where(k < 0, 1.0, 0.0)
    inside = (k >= 0) & (k < n)
    out[inside] = special.bdtrc(k[inside], n[inside], 0.5)
    return out


def _check(epsilon0: float, n: int) -> None:
    if not (epsilon0 > 0 and math.isfinite(epsilon0)):
        raise PrivacyConfigError(f"epsilon0 must be positive and finite, got {epsilon0}")
    if n < 1:
        raise PrivacyConfigError(f"n must be >= 1, got {n}")
