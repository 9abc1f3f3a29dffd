"""A population of simulated phones whose cost grows with the cohort, not with the population.

Phones are ids ``0 .. size - 1``. Phone ``i < n_real_users`` is real user ``i`` of the corpus; phone
``i >= n_real_users`` is a synthetic phone that types a real user's text (its device, time zone and
randomness are its own). With the ``"balanced"`` mapping the synthetic phones come in blocks of
``n_real_users`` and every block holds each real user exactly once, cyclically shifted by a seeded
offset per block, so every real user has the same number of clones (within one); with ``"uniform"``
each synthetic phone draws its user uniformly at random. Both are pure functions of (seed, phone id).

Nothing is stored per phone: device profiles (:mod:`fedkey.device_sim.devices`), eligibility
(:mod:`fedkey.device_sim.availability`), dropouts and round times (:mod:`fedkey.device_sim.round_time`)
are all derived on demand from (seed, phone id[, round or time slot]). Queries about a cohort cost
memory proportional to the cohort; population-wide queries (who is eligible now, the fastest phone)
return at most one small value per phone and work through the population in bounded chunks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from fedkey.device_sim.availability import CHUNK, AvailabilityModel, BoolArray
from fedkey.device_sim.config import AvailabilityConfig, DeviceConfig, PopulationConfig, RoundTimeConfig
from fedkey.device_sim.devices import (
    DeviceModel,
    DeviceProfiles,
    FloatArray,
    IdArray,
    hashed_uniform,
    stream_key,
)
from fedkey.device_sim.round_time import RoundOutcome, round_times, simulate_round


class Population:
    """``size`` simulated phones over ``n_real_users`` real users, all reproducible from ``seed``."""

    def __init__(
        self,
        size: int | None,
        n_real_users: int,
        seed: int,
        *,
        devices: DeviceConfig | None = None,
        availability: AvailabilityConfig | None = None,
        round_time: RoundTimeConfig | None = None,
        synthetic_user_mapping: Literal["balanced", "uniform"] = "balanced",
    ) -> None:
        if n_real_users < 1:
            raise ValueError(f"n_real_users must be >= 1, got {n_real_users}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        size = n_real_users if size is None else size
        if size < 1:
            raise ValueError(f"population size must be >= 1, got {size}")
        self.size = size
        self.n_real_users = n_real_users
        self.seed = seed
        self.synthetic_user_mapping = synthetic_user_mapping
        self.round_time_config = round_time or RoundTimeConfig()
        self.devices = DeviceModel(devices or DeviceConfig(), seed)
        self.availability = AvailabilityModel(availability or AvailabilityConfig(), self.devices)
        self._user_key = stream_key(seed, "user_mapping")

    @classmethod
    def from_config(cls, config: PopulationConfig, n_real_users: int, seed: int) -> Population:
        """The population a :class:`PopulationConfig` describes, over a corpus of ``n_real_users``."""
        return cls(
            config.size,
            n_real_users,
            seed,
            devices=config.devices,
            availability=config.availability,
            round_time=config.round_time,
            synthetic_user_mapping=config.synthetic_user_mapping,
        )

    def _ids(self, ids: npt.ArrayLike) -> IdArray:
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.size):
            raise ValueError(f"phone ids must lie in [0, {self.size}), got [{arr.min()}, {arr.max()}]")
        return arr

    def user_of(self, ids: npt.ArrayLike) -> IdArray:
        """Index of the real user whose text each phone types."""
        arr = self._ids(ids)
        n = self.n_real_users
        synthetic = np.maximum(arr - n, 0)
        if self.synthetic_user_mapping == "uniform":
            drawn = np.floor(hashed_uniform(self._user_key, arr) * n).astype(np.int64)
        else:
            block_shift = np.floor(hashed_uniform(self._user_key, synthetic // n) * n).astype(np.int64)
            drawn = (synthetic % n + block_shift) % n
        return np.where(arr < n, arr, drawn)

    def phone_seeds(self, ids: npt.ArrayLike, round_idx: int) -> IdArray:
        """A seed in [0, 2**53) per phone for its local work (data order, noise) in round ``round_idx``."""
        u = hashed_uniform(stream_key(self.seed, "phone_seed", round_idx), self._ids(ids))
        return (u * float(1 << 53)).astype(np.int64)

    def profiles(self, ids: npt.ArrayLike) -> DeviceProfiles:
        """Device profiles of the given phones."""
        return self.devices.profiles(self._ids(ids))

    def is_eligible(self, ids: npt.ArrayLike, t_utc_s: float) -> BoolArray:
        """Whether each given phone is eligible at simulated UTC time ``t_utc_s`` (seconds)."""
        return self.availability.is_eligible(self._ids(ids), t_utc_s)

    def eligible_mask(self, t_utc_s: float) -> BoolArray:
        """One bool per phone of the population: eligible at ``t_utc_s``."""
        return self.availability.eligible_mask(self.size, t_utc_s)

    def eligible_ids(self, t_utc_s: float) -> IdArray:
        """Ids (ascending) of the phones eligible at ``t_utc_s``."""
        return self.availability.eligible_ids(self.size, t_utc_s)

    def round_times(
        self,
        ids: npt.ArrayLike,
        download_bytes: npt.ArrayLike,
        upload_bytes: npt.ArrayLike,
        compute_desktop_s: npt.ArrayLike = 0.0,
        flops: npt.ArrayLike = 0.0,
    ) -> FloatArray:
        """Seconds each given phone needs for a full round (field-guide model)."""
        return round_times(
            self.profiles(ids), download_bytes, upload_bytes, compute_desktop_s, flops, self.round_time_config
        )

    def fastest_round_time(
        self,
        download_bytes: float,
        upload_bytes: float,
        compute_desktop_s: float = 0.0,
        flops: float = 0.0,
    ) -> float:
        """The shortest round time of any phone for this workload; a deadline below it can never work."""
        best = np.inf
        for start in range(0, self.size, CHUNK):
            ids = np.arange(start, min(start + CHUNK, self.size), dtype=np.int64)
            best = min(
                best,
                float(self.round_times(ids, download_bytes, upload_bytes, compute_desktop_s, flops).min()),
            )
        return best

    def simulate_round(
        self,
        ids: npt.ArrayLike,
        *,
        round_idx: int,
        deadline_s: float,
        download_bytes: npt.ArrayLike,
        upload_bytes: npt.ArrayLike,
        compute_desktop_s: npt.ArrayLike = 0.0,
        flops: npt.ArrayLike = 0.0,
        target_reports: int | None = None,
    ) -> RoundOutcome:
        """Round times, dropouts and stragglers of a selected cohort (see :func:`simulate_round`)."""
        return simulate_round(
            self.profiles(ids),
            seed=self.seed,
            round_idx=round_idx,
            deadline_s=deadline_s,
            download_bytes=download_bytes,
            upload_bytes=upload_bytes,
            compute_desktop_s=compute_desktop_s,
            flops=flops,
            target_reports=target_reports,
            config=self.round_time_config,
        )
