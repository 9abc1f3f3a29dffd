"""Device profiles of simulated phones, derived on demand from ``(seed, phone_id)``.

No phone is an object and nothing is stored per phone: every attribute is a pure function of the
population seed and the phone id, computed through a counter-based generator (the SplitMix64
finaliser applied to a per-(seed, stream) key plus the phone id). Asking for the profiles of a cohort
costs memory proportional to the cohort, whatever the population size, and the same phone always
has the same profile.

Distributions (parameters in :class:`fedkey.device_sim.config.DeviceConfig`; sources in
``docs/devices.md``):

- compute slowdown (phone seconds per desktop-core second): lognormal, default median 6.2 and sigma
  0.5, mean ~7x, as in the round-time model of Wang et al. 2021, "A Field Guide to Federated
  Optimization" (phones ~7x slower than a desktop core);
- download / upload bandwidth: correlated lognormals with medians 0.75 MB/s and 0.25 MB/s (field guide);
- memory: GB tiers drawn with given weights, correlated with speed (faster phones have more RAM);
- per-round dropout probability: uniform between 6% and 10% (Bonawitz et al. 2019, "Towards Federated
  Learning at Scale: System Design": 6-10% of the devices selected for a round drop out);
- time zone: a UTC offset drawn from a weighted list.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from fedkey.device_sim.config import DeviceConfig

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GAMMA_U64 = np.uint64(_GAMMA)
_COUNTER_GAMMA = np.uint64(0xD1B54A32D192ED03)

IdArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _mix_int(x: int) -> int:
    """SplitMix64 finaliser on a Python int (used for keys, never per phone)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser on a uint64 array, in place; multiplications wrap modulo 2**64."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def stream_key(seed: int, stream: str, counter: int = 0) -> int:
    """The 64-bit key of one named random stream of a seed, optionally at a counter (a round, a slot).

    Different streams (``"slowdown"``, ``"dropout"``, ...) and counters give independent draws.
    """
    key = _mix_int(seed * _GAMMA + 1)
    for byte in stream.encode():
        key = _mix_int(key ^ (byte * _GAMMA))
    return _mix_int(key + (counter + 1) * 0xD1B54A32D192ED03)


def hashed_uniform(key: int, ids: npt.ArrayLike, counters: npt.ArrayLike | None = None) -> FloatArray:
    """One uniform in [0, 1) per id for a stream ``key``: a pure function of (key, id), vectorised.

    This is SplitMix64's output at position ``id`` of the sequence started at ``key``. With
    ``counters`` (one integer per id, e.g. a phone's own time slot) the value is a pure function of
    (key, id, counter), mixed a second time.
    """
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    x *= _GAMMA_U64
    x += np.uint64(key)
    _mix(x)
    if counters is not None:
        x += np.asarray(counters, dtype=np.int64).astype(np.uint64) * _COUNTER_GAMMA
        _mix(x)
    x >>= np.uint64(11)
    return x.astype(np.float64) * (1.0 / (1 << 53))


def hashed_normal(key: int, ids: npt.ArrayLike) -> FloatArray:
    """One standard normal per id for a stream ``key`` (Box-Muller on two hashed uniforms)."""
    u1 = 1.0 - hashed_uniform(key, ids)
    u2 = hashed_uniform(_mix_int(key ^ 0x5851F42D4C957F2D), ids)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


class Categorical:
    """Maps uniforms in [0, 1) to category indices with given weights, exactly and fast.

    ``np.searchsorted`` on unsorted keys is slow (a branchy binary search per key); here a table of
    2**12 buckets gives each uniform the category at its bucket's start, and a few vectorised steps
    move the uniforms whose bucket straddles a category boundary to the right category.
    """

    _BUCKETS = 1 << 12

    def __init__(self, weights: list[float]) -> None:
        cdf = np.cumsum(weights, dtype=np.float64)
        cdf /= cdf[-1]
        self._upper = np.append(cdf[:-1], np.inf)  # category i holds u in [upper[i-1], upper[i])
        starts = np.arange(self._BUCKETS, dtype=np.float64) / self._BUCKETS
        self._table = np.searchsorted(self._upper, starts, side="right").astype(np.intp)

    def __call__(self, u: FloatArray) -> npt.NDArray[np.intp]:
        idx = self._table[(u * self._BUCKETS).astype(np.intp)]
        while True:
            step = u >= self._upper[idx]
            if not step.any():
                return idx
            idx += step


@dataclass(frozen=True)
class DeviceProfiles:
    """Device profiles of a set of phones, one array entry per phone (same order as ``ids``).

    Units: ``slowdown`` phone seconds per desktop-core second; bandwidths bytes per second;
    ``memory_gb`` GB; ``dropout_prob`` probability per round; ``utc_offset_h`` hours east of UTC.
    """

    ids: IdArray
    slowdown: FloatArray
    download_bytes_per_s: FloatArray
    upload_bytes_per_s: FloatArray
    memory_gb: npt.NDArray[np.float32]
    dropout_prob: FloatArray
    utc_offset_h: FloatArray

    def __len__(self) -> int:
        return len(self.ids)


class DeviceModel:
    """Draws device profiles for any phone ids from ``(seed, phone_id)``; holds no per-phone state."""

    def __init__(self, config: DeviceConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self._memory_tiers = np.asarray(config.memory_tiers_gb, dtype=np.float32)
        # RAM tier thresholds in normal space, so a correlated normal picks the tier directly.
        cdf = np.cumsum(config.memory_tier_weights) / sum(config.memory_tier_weights)
        std = NormalDist()
        self._memory_thresholds = np.array([std.inv_cdf(min(max(c, 1e-12), 1 - 1e-12)) for c in cdf[:-1]])
        self._offsets = np.asarray(config.utc_offsets_h, dtype=np.float64)
        self._offset_category = Categorical(config.utc_offset_weights)

    def _key(self, stream: str) -> int:
        return stream_key(self.seed, stream)

    def slowdown(self, ids: npt.ArrayLike) -> FloatArray:
        """Compute slowdown versus a desktop core (lognormal; higher is slower)."""
        quality = hashed_normal(self._key("quality"), ids)
        return self.config.slowdown_median * np.exp(-self.config.slowdown_sigma * quality)

    def bandwidth(self, ids: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Download and upload bandwidth in bytes per second (correlated lognormals)."""
        c = self.config
        z_down = hashed_normal(self._key("download"), ids)
        z_own = hashed_normal(self._key("upload"), ids)
        rho = c.bandwidth_correlation
        z_up = rho * z_down + np.sqrt(1.0 - rho * rho) * z_own
        down = 1e6 * c.download_median_mb_s * np.exp(c.download_sigma * z_down)
        up = 1e6 * c.upload_median_mb_s * np.exp(c.upload_sigma * z_up)
        return down, up

    def memory_gb(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """RAM in GB: a tier picked by a normal correlated with the phone's speed."""
        rho = self.config.memory_speed_correlation
        quality = hashed_normal(self._key("quality"), ids)
        latent = rho * quality + np.sqrt(1.0 - rho * rho) * hashed_normal(self._key("memory"), ids)
        return self._memory_tiers[np.searchsorted(self._memory_thresholds, latent)]

    def dropout_prob(self, ids: npt.ArrayLike) -> FloatArray:
        """Per-round dropout probability, uniform in [dropout_min, dropout_max]."""
        c = self.config
        u = hashed_uniform(self._key("dropout_prob"), ids)
        return c.dropout_min + (c.dropout_max - c.dropout_min) * u

    def utc_offset_h(self, ids: npt.ArrayLike) -> FloatArray:
        """Time zone of each phone as hours east of UTC."""
        u = hashed_uniform(self._key("timezone"), ids)
        return self._offsets[self._offset_category(u)]

    def profiles(self, ids: npt.ArrayLike) -> DeviceProfiles:
        """All attributes of the given phones; memory and time grow with ``len(ids)`` only."""
        ids_arr = np.asarray(ids, dtype=np.int64)
        down, up = self.bandwidth(ids_arr)
        return DeviceProfiles(
            ids=ids_arr,
            slowdown=self.slowdown(ids_arr),
            download_bytes_per_s=down,
            upload_bytes_per_s=up,
            memory_gb=self.memory_gb(ids_arr),
            dropout_prob=self.dropout_prob(ids_arr),
            utc_offset_h=self.utc_offset_h(ids_arr),
        )
