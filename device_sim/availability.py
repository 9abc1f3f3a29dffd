"""Diurnal availability: which phones are eligible to train at a simulated UTC time.

Bonawitz et al. 2019 ("Towards Federated Learning at Scale: System Design") make a phone eligible
only while it is idle, charging and on an unmetered network, which happens mostly at night local
time. We model the probability that a phone is eligible at its local hour ``h`` as a night bump over
a daytime floor::

    p(h) = floor + (peak - floor) * 2 ** -((d / width) ** 2)
    d    = h - (peak_hour + jitter_i), wrapped to [-12, 12) hours

``jitter_i`` is the phone's own habit (uniform in +/- ``habit_jitter_h``), the local hour comes from the
phone's UTC offset (:mod:`fedkey.device_sim.devices`). Each phone's time is cut into sessions of
``session_minutes``, their boundaries shifted by a per-phone phase so that the fleet does not change
all at once. Within a session a phone's eligibility is fixed; each session is drawn independently::

    eligible = U(seed, phone, session) < p(local hour at the session's midpoint)

with a counter-based uniform, so the answer is a pure function of (seed, phone, time), costs memory
only for the ids asked about, and a phone that is eligible stays so for the rest of its session.
Parameters in :class:`fedkey.device_sim.config.AvailabilityConfig`; see ``docs/devices.md``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedkey.device_sim.config import AvailabilityConfig
from fedkey.device_sim.devices import DeviceModel, FloatArray, IdArray, hashed_uniform, stream_key

BoolArray = npt.NDArray[np.bool_]

#: Phones evaluated at once by the population-wide queries: bounds their temporary memory.
CHUNK = 1 << 16


class AvailabilityModel:
    """Eligibility of phones at simulated UTC times; deterministic from the device model's seed."""

    def __init__(self, config: AvailabilityConfig, devices: DeviceModel) -> None:
        self.config = config
        self.devices = devices
        self.session_s = config.session_minutes * 60.0
        self._jitter_key = stream_key(devices.seed, "habit")
        self._phase_key = stream_key(devices.seed, "session_phase")
        self._eligible_key = stream_key(devices.seed, "eligible")

    def probability_at_local_hour(self, local_hour: npt.ArrayLike) -> FloatArray:
        """Eligibility probability of a phone with no habit jitter at the given local hour(s)."""
        c = self.config
        d = np.mod(np.asarray(local_hour, dtype=np.float64) - c.peak_local_hour + 12.0, 24.0) - 12.0
        bump = np.exp2(-((d / c.night_width_h) ** 2))
        return c.daytime_floor + (c.peak_probability - c.daytime_floor) * bump

    def _session(self, ids: IdArray, t_utc_s: float) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Each phone's session index at ``t_utc_s`` and the session's midpoint (UTC seconds)."""
        phase = hashed_uniform(self._phase_key, ids) * self.session_s
        session = np.floor((t_utc_s + phase) / self.session_s)
        return session.astype(np.int64), (session + 0.5) * self.session_s - phase

    def probability(self, ids: npt.ArrayLike, t_utc_s: float) -> FloatArray:
        """Probability that each phone is eligible in its session containing ``t_utc_s``."""
        ids_arr = np.asarray(ids, dtype=np.int64)
        return self._probability(ids_arr, self._session(ids_arr, t_utc_s)[1])

    def _probability(self, ids: IdArray, t_mid_s: FloatArray) -> FloatArray:
        jitter = (2.0 * hashed_uniform(self._jitter_key, ids) - 1.0) * self.config.habit_jitter_h
        local_hour = t_mid_s / 3600.0 + self.devices.utc_offset_h(ids) - jitter
        return self.probability_at_local_hour(local_hour)

    def is_eligible(self, ids: npt.ArrayLike, t_utc_s: float) -> BoolArray:
        """Whether each phone is eligible (idle, charging, unmetered) at UTC time ``t_utc_s``."""
        ids_arr = np.asarray(ids, dtype=np.int64)
        session, t_mid = self._session(ids_arr, t_utc_s)
        return hashed_uniform(self._eligible_key, ids_arr, session) < self._probability(ids_arr, t_mid)

    def eligible_mask(self, population_size: int, t_utc_s: float) -> BoolArray:
        """Eligibility of phones ``0 .. population_size - 1``: one bool per phone, built chunk by chunk."""
        mask = np.empty(population_size, dtype=np.bool_)
        for start in range(0, population_size, CHUNK):
            stop = min(start + CHUNK, population_size)
            mask[start:stop] = self.is_eligible(np.arange(start, stop, dtype=np.int64), t_utc_s)
        return mask

    def eligible_ids(self, population_size: int, t_utc_s: float) -> IdArray:
        """Ids (ascending) of the phones among ``0 .. population_size - 1`` eligible at ``t_utc_s``."""
        return np.flatnonzero(self.eligible_mask(population_size, t_utc_s)).astype(np.int64)
