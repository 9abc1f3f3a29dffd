"""Calibrating local DP noise to a clip bound: the analytic Gaussian mechanism and the Laplace mechanism.

Gaussian: Balle & Wang 2018 ("Improving the Gaussian Mechanism for Differential Privacy: Analytical
Calibration and Optimal Denoising", ICML), Theorem 8. For L2 sensitivity Δ and noise N(0, σ²I) the
mechanism is (ε, δ)-DP if and only if

    δ ≥ Φ(Δ/(2σ) − εσ/Δ) − e^ε · Φ(−Δ/(2σ) − εσ/Δ),

so the smallest σ for a target (ε, δ) is the root of that equation in σ (the right-hand side decreases
in σ). The classic bound σ = Δ·sqrt(2 ln(1.25/δ))/ε (Dwork & Roth, Thm A.1) is only valid for ε < 1
and is loose; `classic_gaussian_sigma` is kept to show the gain in reports.

Laplace: noise Lap(b) per coordinate with b = Δ₁/ε is ε-DP (pure) for L1 sensitivity Δ₁.

Sensitivity convention for local DP: a phone's report must hide *everything* the phone holds, so the
neighbouring inputs are any two clipped deltas; with an L2 clip of C they differ by at most Δ₂ = 2C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedkey.privacy.errors import PrivacyConfigError


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """Exact δ(ε) of the Gaussian mechanism with std `sigma` and L2 sensitivity (Balle & Wang, Thm 8)."""
    if sigma <= 0 or sensitivity <= 0 or epsilon < 0:
        raise PrivacyConfigError("gaussian_delta needs sigma > 0, sensitivity > 0, epsilon >= 0")
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    # Φ(a − b) − e^ε Φ(−a − b), evaluated in log space so tiny δ (1e-10 and below) keeps its digits.
    from scipy.special import log_ndtr  # scipy (~40 MB) only where noise is calibrated

    log_first = float(log_ndtr(a - b))
    log_second = epsilon + float(log_ndtr(-a - b))
    if log_second >= log_first:
        return 0.0
    return math.exp(log_first) * -math.expm1(log_second - log_first)


def gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest ε such that the Gaussian mechanism is (ε, δ)-DP (inverse of `gaussian_delta` in ε)."""
    _check_delta(delta)
    if gaussian_delta(sigma, 0.0, sensitivity) <= delta:
        return 0.0
    hi = 1.0
    while gaussian_delta(sigma, hi, sensitivity) > delta:
        hi *= 2.0
        if hi > 1e6:
            raise PrivacyConfigError(f"sigma={sigma} gives no useful epsilon at delta={delta}")
    from scipy import optimize

    return float(optimize.brentq(lambda e: gaussian_delta(sigma, e, sensitivity) - delta, 0.0, hi, xtol=1e-12))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest σ for which N(0, σ²) noise on an L2-sensitivity-Δ query is (ε, δ)-DP (exact calibration)."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise PrivacyConfigError(f"epsilon must be a positive finite number, got {epsilon}")
    _check_delta(delta)
    if sensitivity <= 0:
        raise PrivacyConfigError(f"sensitivity must be positive, got {sensitivity}")

    def gap(log_sigma: float) -> float:
        return math.log(gaussian_delta(math.exp(log_sigma), epsilon, sensitivity) + 1e-300) - math.log(delta)

    lo, hi = math.log(sensitivity) - 10.0, math.log(sensitivity) + 10.0
    while gap(hi) > 0:
        hi += 10.0
    from scipy import optimize

    log_sigma = optimize.brentq(gap, lo, hi, xtol=1e-14, rtol=1e-14)
    sigma = math.exp(log_sigma)
    # Brent stops within tolerance on either side; step up until the guarantee holds exactly.
    while gaussian_delta(sigma, epsilon, sensitivity) > delta:
        sigma = math.nextafter(sigma, math.inf) * (1 + 1e-12)
    return sigma


def classic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The textbook σ = Δ·sqrt(2 ln(1.25/δ))/ε (valid for ε < 1 only); shown for comparison."""
    _check_delta(delta)
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def laplace_scale(epsilon: float, l1_sensitivity: float) -> float:
    """Laplace scale b = Δ₁/ε giving pure ε-DP."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise PrivacyConfigError(f"epsilon must be a positive finite number, got {epsilon}")
    if l1_sensitivity <= 0:
        raise PrivacyConfigError(f"sensitivity must be positive, got {l1_sensitivity}")
    return l1_sensitivity / epsilon


@dataclass(frozen=True)
class LocalMechanism:
    """One local DP report, as the accountant and the report see it.

    `noise_multiplier` is the noise scale divided by the sensitivity (σ/Δ₂ for Gaussian, b/Δ₁ for
    Laplace): the number dp-accounting's `GaussianDpEvent` / `LaplaceDpEvent` take.
    """

    mechanism: str  # "gaussian" or "laplace"
    noise_multiplier: float
    scale: float  # σ or b, in parameter units
    sensitivity: float  # Δ₂ (Gaussian) or Δ₁ (Laplace)
    epsilon: float  # per report
    delta: float  # per report (0 for Laplace)


def gaussian_local_mechanism(epsilon: float, delta: float, clip_norm: float) -> LocalMechanism:
    """The analytic-Gaussian local report for an L2 clip of `clip_norm` (Δ₂ = 2·clip_norm)."""
    sensitivity = 2.0 * clip_norm
    sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
    return LocalMechanism("gaussian", sigma / sensitivity, sigma, sensitivity, epsilon, delta)


def laplace_local_mechanism(epsilon: float, l1_sensitivity: float) -> LocalMechanism:
    """The Laplace local report for a given L1 sensitivity."""
    b = laplace_scale(epsilon, l1_sensitivity)
    return LocalMechanism("laplace", b / l1_sensitivity, b, l1_sensitivity, epsilon, 0.0)


def _check_delta(delta: float) -> None:
    if not (0.0 < delta < 1.0):
        raise PrivacyConfigError(f"delta must be in (0, 1), got {delta}")
