"""Diurnal availability with time zones (device_sim/availability.py)."""

import numpy as np

from fedkey.device_sim.availability import AvailabilityModel
from fedkey.device_sim.config import AvailabilityConfig, DeviceConfig
from fedkey.device_sim.devices import DeviceModel

N = 100_000
HOUR = 3600.0


def model(offset_h: float = 0.0, seed: int = 0, **availability) -> AvailabilityModel:
    devices = DeviceModel(DeviceConfig(utc_offsets_h=[offset_h], utc_offset_weights=[1.0]), seed)
    return AvailabilityModel(AvailabilityConfig(**availability), devices)


def within_binomial(k: int, n: int, p: float) -> bool:
    return abs(k - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1


def test_probability_curve_peaks_at_night_and_has_the_daytime_floor():
    m = model()
    c = m.config
    hours = np.arange(0, 24, 0.25)
    p = m.probability_at_local_hour(hours)
    assert hours[np.argmax(p)] == c.peak_local_hour and np.isclose(p.max(), c.peak_probability)
    assert np.isclose(p.min(), c.daytime_floor, atol=0.01)
    half = m.probability_at_local_hour(c.peak_local_hour + c.night_width_h)
    assert np.isclose(half, (c.peak_probability + c.daytime_floor) / 2)


def test_eligible_fraction_follows_the_diurnal_shape():
    m = model(habit_jitter_h=0.0)
    c = m.config
    at_peak = m.eligible_mask(N, c.peak_local_hour * HOUR).sum()
    at_noon = m.eligible_mask(N, (c.peak_local_hour + 12) * HOUR).sum()
    assert within_binomial(int(at_peak), N, c.peak_probability)
    assert within_binomial(int(at_noon), N, float(m.probability_at_local_hour(c.peak_local_hour + 12)))
    fractions = [m.eligible_mask(N, h * HOUR).mean() for h in range(24)]
    assert int(np.argmax(fractions)) == round(c.peak_local_hour)


def test_time_zone_shifts_the_curve():
    ids = np.arange(20_000)
    utc, india = model(0.0), model(5.5)
    for t in (0.0, 3 * HOUR, 17.25 * HOUR):
        # a phone at UTC+5.5 sees at UTC time t what a UTC phone sees at t + 5.5 h
        assert np.allclose(india.probability(ids, t), utc.probability(ids, t + 5.5 * HOUR))
    # its night comes 5.5 hours earlier in UTC
    grid = np.arange(0, 24, 0.5)
    fractions = [india.eligible_mask(N, h * HOUR).mean() for h in grid]
    assert abs(grid[int(np.argmax(fractions))] - (24 + 2.0 - 5.5)) <= 1.0


def test_deterministic_by_seed():
    ids = np.arange(10_000)
    a, b, other = model(seed=1), model(seed=1), model(seed=2)
    assert np.array_equal(a.is_eligible(ids, 7200.0), b.is_eligible(ids, 7200.0))
    assert not np.array_equal(a.is_eligible(ids, 7200.0), other.is_eligible(ids, 7200.0))


def test_sessions_hold_for_their_length_and_are_staggered_across_phones():
    m = model(seed=3)
    session_s = m.config.session_minutes * 60
    ids = np.arange(2_000)
    minutes = np.arange(0, 24 * 60, 1.0)
    states = np.array([m.is_eligible(ids, t * 60) for t in minutes])  # (time, phone)
    changes = states[1:] != states[:-1]
    for phone in range(0, 2_000, 97):  # a phone changes state only at its session boundaries
        flips = np.flatnonzero(changes[:, phone])
        assert np.all(np.diff(flips) >= session_s / 60 - 1)
    # the fleet does not switch all at once: about 1/session of the phones reach a boundary each
    # minute, and of those only the ones whose draw differs change state
    per_minute = changes.mean(axis=1)
    assert per_minute.max() < 3 / m.config.session_minutes
    assert per_minute.mean() > 0


def test_population_mask_matches_per_phone_queries():
    m = model(seed=5)
    n = 70_000  # more than one chunk
    mask = m.eligible_mask(n, 1.5 * HOUR)
    picked = np.array([3, 65_535, 65_536, 69_999])
    assert np.array_equal(mask[picked], m.is_eligible(picked, 1.5 * HOUR))
    assert np.array_equal(m.eligible_ids(n, 1.5 * HOUR), np.flatnonzero(mask))
