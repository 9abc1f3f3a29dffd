"""The DP mechanisms themselves, vectorised over phones: clipping, local noise, central noised sum,
and adaptive quantile clipping.

Every function takes a 2-D array [n_phones, dim] (one row per phone). Randomness for noise comes from
numpy's Philox generator keyed per phone; it is never derived from anything the phone sends, so the
server cannot subtract it. (A phone in the field draws its noise from a CSPRNG; the noise stream is
not part of the wire format.)

Adaptive clipping follows Andrew, Thakkar, McMahan & Ramaswamy 2021, "Differentially Private Learning
with Adaptive Clipping" (NeurIPS): each phone also reports the bit b = [‖Δ‖ ≤ C]; the server adds
N(0, σ_b²) to the count and moves C geometrically toward the target quantile γ:
C ← C · exp(−η (b̄ − γ)). Because the bits are a second Gaussian query on the same phones, the delta
sum needs noise multiplier z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) for the pair to cost what z alone costs
(their Theorem 1); `adaptive_delta_noise_multiplier` computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedkey.privacy.errors import PrivacyConfigError


def l2_norms(x: np.ndarray) -> np.ndarray:
    """Row L2 norms in float64, summed sequentially in index order (the order the wire spec fixes)."""
    sq = np.square(x, dtype=np.float64)
    return np.sqrt(np.cumsum(sq, axis=1)[:, -1]) if x.shape[1] else np.zeros(x.shape[0])


def l1_norms(x: np.ndarray) -> np.ndarray:
    """Row L1 norms in float64, summed sequentially in index order."""
    a = np.abs(x.astype(np.float64, copy=False))
    return np.cumsum(a, axis=1)[:, -1] if x.shape[1] else np.zeros(x.shape[0])


def clip_rows(x: np.ndarray, clip_norm: float, ord: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Scale each row to norm <= clip_norm (L2 or L1). Returns (clipped float64 rows, within-clip bits).

    A row with norm N > C is multiplied by C/N (binary64); rows within the bound are unchanged.
    """
    if not clip_norm > 0:
        raise PrivacyConfigError(f"clip_norm must be positive, got {clip_norm}")
    x = np.asarray(x, dtype=np.float64)
    norms = l2_norms(x) if ord == 2 else l1_norms(x)
    within = norms <= clip_norm
    factor = np.where(within, 1.0, clip_norm / np.where(norms > 0, norms, 1.0))
    return x * factor[:, None], within


def _phone_rng(key: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=int(key) & 0xFFFFFFFFFFFFFFFF))


def add_gaussian_noise(x: np.ndarray, sigma: float, keys: np.ndarray) -> np.ndarray:
    """x + N(0, σ²) per coordinate; row i uses a Philox stream keyed by keys[i]."""
    out = np.array(x, dtype=np.float64, copy=True)
    for i, key in enumerate(np.asarray(keys, dtype=np.uint64)):
        out[i] += _phone_rng(int(key)).standard_normal(out.shape[1]) * sigma
    return out


def add_laplace_noise(x: np.ndarray, scale: float, keys: np.ndarray) -> np.ndarray:
    """x + Laplace(0, b) per coordinate; row i uses a Philox stream keyed by keys[i]."""
    out = np.array(x, dtype=np.float64, copy=True)
    for i, key in enumerate(np.asarray(keys, dtype=np.uint64)):
        out[i] += _phone_rng(int(key)).laplace(0.0, scale, out.shape[1])
    return out


def central_noised_sum(
    updates: np.ndarray, clip_norm: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Server half of central DP-FedAvg: clip each decoded update to C, sum, add N(0, (zC)²).

    Clipping again on the server makes the sensitivity exactly C whatever compression did to the norm
    on the way (stochastic quantization and error feedback can push a decoded update past C).
    """
    if not noise_multiplier > 0:
        raise PrivacyConfigError(f"noise_multiplier must be positive, got {noise_multiplier}")
    clipped, _ = clip_rows(updates, clip_norm)
    total = clipped.sum(axis=0)
    return total + rng.standard_normal(total.shape[0]) * noise_multiplier * clip_norm


def adaptive_delta_noise_multiplier(noise_multiplier: float, count_noise_multiplier: float) -> float:
    """Noise multiplier for the delta sum so (delta sum, clip-bit count) together cost `noise_multiplier`."""
    rest = noise_multiplier**-2 - (2.0 * count_noise_multiplier) ** -2
    if rest <= 0:
        raise PrivacyConfigError(
            f"count_noise_multiplier={count_noise_multiplier} is too small for noise_multiplier="
            f"{noise_multiplier}: it must exceed noise_multiplier/2"
        )
    return rest**-0.5


@dataclass
class AdaptiveClipState:
    """Server state of quantile clipping: the current bound C, updated once per round."""

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise PrivacyConfigError("clip_norm must be positive")
        if not 0.0 < self.target_quantile < 1.0:
            raise PrivacyConfigError("target_quantile must be in (0, 1)")

    def update(self, within_clip: np.ndarray, rng: np.random.Generator) -> float:
        """New C from this round's bits b = [‖Δ‖ ≤ C] (noised count with σ_b = count_noise_multiplier)."""
        bits = np.asarray(within_clip, dtype=np.float64)
        if bits.size == 0:
            return self.clip_norm
        noisy_count = (
            bits.sum() + rng.normal(0.0, self.count_noise_multiplier) if self.count_noise_multiplier > 0 else bits.sum()
        )
        fraction = noisy_count / bits.size
        self.clip_norm = float(self.clip_norm * math.exp(-self.learning_rate * (fraction - self.target_quantile)))
        return self.clip_norm
