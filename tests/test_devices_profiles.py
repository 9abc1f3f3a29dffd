"""Device profiles: counter-based generator, determinism, documented distributions (device_sim/devices.py)."""

import numpy as np

from fedkey.device_sim.config import DeviceConfig
from fedkey.device_sim.devices import Categorical, DeviceModel, hashed_normal, hashed_uniform, stream_key

N = 100_000
IDS = np.arange(N)


def test_hashed_uniform_is_uniform_and_a_function_of_key_and_id():
    key = stream_key(7, "test")
    u = hashed_uniform(key, IDS)
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert np.all(np.abs(counts - N / 20) < 5 * np.sqrt(N / 20))
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    # same (key, id) -> same value whatever else is asked; another stream or seed -> other values
    assert np.array_equal(hashed_uniform(key, IDS[[5, 99_999, 3]]), u[[5, 99_999, 3]])
    assert abs(np.corrcoef(u, hashed_uniform(stream_key(7, "other"), IDS))[0, 1]) < 0.02
    assert abs(np.corrcoef(u, hashed_uniform(stream_key(8, "test"), IDS))[0, 1]) < 0.02
    assert stream_key(7, "test", 1) != stream_key(7, "test", 2)


def test_hashed_normal_moments():
    z = hashed_normal(stream_key(1, "z"), IDS)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.01


def test_profiles_are_deterministic_by_seed_and_independent_of_the_query():
    a = DeviceModel(DeviceConfig(), seed=3).profiles(IDS[:1000])
    b = DeviceModel(DeviceConfig(), seed=3).profiles(IDS[:1000][::-1])
    c = DeviceModel(DeviceConfig(), seed=4).profiles(IDS[:1000])
    for field in (
        "slowdown",
        "download_bytes_per_s",
        "upload_bytes_per_s",
        "memory_gb",
        "dropout_prob",
        "utc_offset_h",
    ):
        assert np.array_equal(getattr(a, field), getattr(b, field)[::-1]), field
    assert not np.array_equal(a.slowdown, c.slowdown)


def test_distributions_match_the_documented_medians_and_ranges():
    cfg = DeviceConfig()
    p = DeviceModel(cfg, seed=0).profiles(IDS)
    assert abs(np.median(p.download_bytes_per_s) / 0.75e6 - 1) < 0.03
    assert abs(np.median(p.upload_bytes_per_s) / 0.25e6 - 1) < 0.03
    assert abs(np.median(p.slowdown) / cfg.slowdown_median - 1) < 0.02
    assert 6.7 < p.slowdown.mean() < 7.3  # field guide: ~7x slower than a desktop core on average
    assert abs(np.std(np.log(p.slowdown)) - cfg.slowdown_sigma) < 0.01
    assert p.dropout_prob.min() >= 0.06 and p.dropout_prob.max() <= 0.10
    assert abs(p.dropout_prob.mean() - 0.08) < 0.001
    corr = np.corrcoef(np.log(p.download_bytes_per_s), np.log(p.upload_bytes_per_s))[0, 1]
    assert abs(corr - cfg.bandwidth_correlation) < 0.02


def test_categorical_attributes_follow_their_weights():
    cfg = DeviceConfig()
    p = DeviceModel(cfg, seed=0).profiles(IDS)
    for values, weights, drawn in (
        (cfg.memory_tiers_gb, cfg.memory_tier_weights, p.memory_gb),
        (cfg.utc_offsets_h, cfg.utc_offset_weights, p.utc_offset_h),
    ):
        shares = np.array(weights) / sum(weights)
        for value, share in zip(values, shares, strict=True):
            observed = np.mean(drawn == np.float32(value) if drawn.dtype == np.float32 else drawn == value)
            assert abs(observed - share) < 5 * np.sqrt(share * (1 - share) / N), (value, observed, share)
    # faster phones (lower slowdown) tend to have more RAM
    assert np.corrcoef(np.log(p.slowdown), p.memory_gb)[0, 1] < -0.3


def test_single_time_zone():
    cfg = DeviceConfig(utc_offsets_h=[-5.0], utc_offset_weights=[1.0])
    assert np.all(DeviceModel(cfg, seed=0).utc_offset_h(IDS[:100]) == -5.0)


def test_categorical_is_exact_at_boundaries_and_with_tiny_weights():
    weights = [0.3, 1e-7, 2e-7, 0.0, 0.7 - 3e-7]
    cat = Categorical(weights)
    cdf = np.cumsum(weights) / sum(weights)
    u = np.concatenate([hashed_uniform(stream_key(0, "cat"), IDS), cdf[:-1], np.nextafter(cdf[:-1], 0), [0.0]])
    expected = np.minimum(np.searchsorted(cdf, u, side="right"), len(weights) - 1)
    assert np.array_equal(cat(u), expected)
    assert not np.any(cat(u) == 3)  # a zero weight is never drawn
