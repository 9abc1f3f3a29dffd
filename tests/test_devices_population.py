"""Population: real and synthetic phones, cohort queries, memory bounded by the cohort."""

import tracemalloc

import numpy as np
import pytest

from fedkey.device_sim.config import PopulationConfig
from fedkey.device_sim.population import Population
from fedkey.server.sampling import sample_uniform


def test_default_size_is_one_phone_per_real_user_and_real_phones_are_their_users():
    pop = Population(None, 628, seed=0)
    assert pop.size == 628
    assert np.array_equal(pop.user_of(np.arange(628)), np.arange(628))


def test_balanced_mapping_gives_every_real_user_the_same_number_of_clones():
    n_real = 100
    pop = Population(100_000 + 37, n_real, seed=4)
    users = pop.user_of(np.arange(pop.size))
    counts = np.bincount(users, minlength=n_real)
    assert counts.max() - counts.min() <= 1
    # each block of n_real synthetic phones is a seeded cyclic shift of the users
    block = users[n_real : 2 * n_real]
    assert sorted(block) == list(range(n_real))
    other = Population(100_000, n_real, seed=5).user_of(np.arange(n_real, 100_000))
    assert not np.array_equal(users[n_real:100_000], other)


def test_uniform_mapping_is_deterministic_and_covers_users():
    pop = Population(50_000, 50, seed=1, synthetic_user_mapping="uniform")
    ids = np.arange(50, 50_000)
    users = pop.user_of(ids)
    assert np.array_equal(users, Population(50_000, 50, seed=1, synthetic_user_mapping="uniform").user_of(ids))
    counts = np.bincount(users, minlength=50)
    assert users.min() >= 0 and users.max() < 50
    assert np.all(np.abs(counts - len(ids) / 50) < 5 * np.sqrt(len(ids) / 50))


def test_ids_outside_the_population_are_refused():
    pop = Population(1000, 10, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        pop.profiles([5, 1000])
    with pytest.raises(ValueError, match="n_real_users"):
        Population(10, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        Population(10, 5, seed=-1)


def test_from_config_and_determinism_by_seed():
    cfg = PopulationConfig(size=10_000)
    a, b = Population.from_config(cfg, 300, seed=9), Population.from_config(cfg, 300, seed=9)
    ids = np.arange(0, 10_000, 7)
    assert np.array_equal(a.profiles(ids).slowdown, b.profiles(ids).slowdown)
    assert np.array_equal(a.eligible_ids(3600.0), b.eligible_ids(3600.0))
    assert np.array_equal(a.phone_seeds(ids, 2), b.phone_seeds(ids, 2))
    assert not np.array_equal(a.phone_seeds(ids, 2), a.phone_seeds(ids, 3))
    assert a.phone_seeds(ids, 0).min() >= 0
    kwargs = {
        "round_idx": 1,
        "deadline_s": 60.0,
        "download_bytes": 1e6,
        "upload_bytes": 2e5,
        "compute_desktop_s": 2.0,
    }
    ra, rb = a.simulate_round(ids, **kwargs), b.simulate_round(ids, **kwargs)
    assert np.array_equal(ra.reported, rb.reported) and ra.close_s == rb.close_s


def test_fastest_round_time_bounds_every_phone():
    pop = Population(70_000, 100, seed=2)
    fastest = pop.fastest_round_time(1e6, 1e5, compute_desktop_s=1.0)
    assert fastest >= 10.0
    assert np.all(pop.round_times(np.arange(0, 70_000, 13), 1e6, 1e5, 1.0) >= fastest)


def test_cohort_queries_cost_memory_of_the_cohort_not_the_population():
    cohort = np.arange(0, 10_000_000, 10_000)  # 1,000 phones spread over a 10M-phone population
    tracemalloc.start()
    pop = Population(10_000_000, 628, seed=0)
    out = pop.simulate_round(cohort, round_idx=0, deadline_s=120.0, download_bytes=5.6e6, upload_bytes=3.5e5)
    users = pop.user_of(cohort)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.n_selected == 1000 and len(users) == 1000
    assert peak < 1_000_000  # well under a byte per phone of the population


def test_a_100k_round_of_eligibility_sampling_and_round_time_stays_small():
    tracemalloc.start()
    pop = Population(100_000, 628, seed=0)
    for r in range(3):
        eligible = pop.eligible_ids(r * 3600.0)
        ids = sample_uniform(eligible, 1000, seed=0, round_idx=r)
        out = pop.simulate_round(
            ids,
            round_idx=r,
            deadline_s=120.0,
            download_bytes=5.6e6,
            upload_bytes=3.5e5,
            compute_desktop_s=3.0,
        )
        assert out.n_selected == 1300
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8_000_000  # ~80 bytes per phone at most: a mask, the eligible ids and bounded chunks
