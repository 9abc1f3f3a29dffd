"""The field-guide round-time model, dropouts, stragglers and deadlines (device_sim/round_time.py)."""

import numpy as np
import pytest

from fedkey.device_sim.config import RoundTimeConfig
from fedkey.device_sim.devices import DeviceProfiles
from fedkey.device_sim.round_time import round_times, sample_dropouts, simulate_round


def profiles(slowdown, down, up, dropout=0.0) -> DeviceProfiles:
    n = len(slowdown)
    return DeviceProfiles(
        ids=np.arange(n, dtype=np.int64),
        slowdown=np.asarray(slowdown, dtype=np.float64),
        download_bytes_per_s=np.asarray(down, dtype=np.float64),
        upload_bytes_per_s=np.asarray(up, dtype=np.float64),
        memory_gb=np.full(n, 4.0, dtype=np.float32),
        dropout_prob=np.full(n, dropout, dtype=np.float64),
        utc_offset_h=np.zeros(n),
    )


def test_round_time_arithmetic_on_hand_made_phones():
    p = profiles(slowdown=[7.0, 2.0], down=[0.75e6, 1e6], up=[0.25e6, 0.5e6])
    t = round_times(p, download_bytes=1.5e6, upload_bytes=0.5e6, compute_desktop_s=3.0)
    # 10 s overhead + 1.5 MB / 0.75 MB/s + 3 s * 7 + 0.5 MB / 0.25 MB/s = 10 + 2 + 21 + 2
    assert np.allclose(t, [35.0, 10 + 1.5 + 6 + 1])


def test_flops_and_per_phone_workloads():
    p = profiles(slowdown=[4.0, 4.0], down=[1e6, 1e6], up=[1e6, 1e6])
    cfg = RoundTimeConfig(overhead_s=0.0, desktop_flops_per_s=1e9)
    t = round_times(p, 0.0, 0.0, compute_desktop_s=[1.0, 0.0], flops=[0.0, 2e9], config=cfg)
    assert np.allclose(t, [4.0, 8.0])
    with pytest.raises(ValueError, match=">= 0"):
        round_times(p, -1.0, 0.0)


def test_stragglers_are_the_phones_slower_than_the_deadline():
    p = profiles(slowdown=[1.0, 5.0, 10.0, 20.0], down=[1e9] * 4, up=[1e9] * 4)
    out = simulate_round(
        p, seed=0, round_idx=0, deadline_s=70.0, download_bytes=0, upload_bytes=0, compute_desktop_s=5.0
    )
    # times: 15, 35, 60, 110 s
    assert np.array_equal(out.reported, [True, True, True, False])
    assert np.array_equal(out.straggler, [False, False, False, True])
    assert out.close_s == 70.0 and out.n_stragglers == 1 and out.n_dropped == 0
    assert np.array_equal(out.reported_ids, [0, 1, 2])


def test_round_closes_when_everyone_reported_or_at_the_target():
    p = profiles(slowdown=[1.0, 5.0, 10.0], down=[1e9] * 3, up=[1e9] * 3)
    kwargs = {"seed": 0, "round_idx": 0, "download_bytes": 0, "upload_bytes": 0, "compute_desktop_s": 5.0}
    everyone = simulate_round(p, deadline_s=1000.0, **kwargs)
    assert everyone.close_s == 60.0 and everyone.n_reported == 3
    target = simulate_round(p, deadline_s=1000.0, target_reports=2, **kwargs)
    assert target.close_s == 35.0 and target.n_reported == 2 and target.n_stragglers == 1
    short = simulate_round(p, deadline_s=20.0, target_reports=2, **kwargs)
    assert short.close_s == 20.0 and short.n_reported == 1
    with pytest.raises(ValueError, match="deadline_s"):
        simulate_round(p, deadline_s=0.0, **kwargs)


def test_dropouts_follow_their_probability_and_are_deterministic():
    n = 50_000
    p = profiles([1.0] * n, [1e6] * n, [1e6] * n, dropout=0.08)
    dropped = sample_dropouts(p, seed=1, round_idx=3)
    assert abs(dropped.sum() - 0.08 * n) <= 5 * np.sqrt(n * 0.08 * 0.92)
    assert np.array_equal(dropped, sample_dropouts(p, seed=1, round_idx=3))
    assert not np.array_equal(dropped, sample_dropouts(p, seed=1, round_idx=4))
    out = simulate_round(p, seed=1, round_idx=3, deadline_s=1e6, download_bytes=1e6, upload_bytes=1e6)
    assert np.array_equal(out.dropped, dropped)
    assert not np.any(out.reported & out.dropped) and not np.any(out.straggler & out.dropped)
    assert np.all(out.dropout_at_s[dropped] <= out.duration_s[dropped])
    assert out.n_reported + out.n_dropped + out.n_stragglers == n
