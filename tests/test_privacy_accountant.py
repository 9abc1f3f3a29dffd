"""Central DP accountant agrees with dp-accounting on the same events; budget and inverse questions."""

from __future__ import annotations

import itertools

import dp_accounting
import pytest
from dp_accounting import pld, rdp
from dp_accounting.privacy_accountant import NeighboringRelation

from fedkey.privacy.accountant import (
    CentralDpAccountant,
    RoundSpec,
    epsilon_of,
    noise_multiplier_for,
    rounds_allowed,
)
from fedkey.privacy.errors import BudgetExhaustedError, PrivacyConfigError


def direct_rdp(z: float, q: float, steps: int, delta: float) -> float:
    acc = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return acc.get_epsilon(delta)


def direct_pld(z: float, q: float, steps: int, delta: float) -> float:
    acc = pld.PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return acc.get_epsilon(delta)


DELTAS = (1e-5, 1e-8)
RDP_GRID = list(itertools.product([0.7, 1.1, 2.0], [0.001, 0.01, 0.1], [1, 2000]))
PLD_GRID = [(1.2, 0.01, 300), (2.0, 0.05, 10), (1.5, 0.02, 100), (1.0, 0.004, 300)]


@pytest.mark.parametrize(("z", "q", "steps"), RDP_GRID)
def test_rdp_agrees_with_dp_accounting(z: float, q: float, steps: int) -> None:
    acc = CentralDpAccountant(DELTAS[0], accountant="rdp")
    for _ in range(3):
        acc.step(RoundSpec(z, "poisson", q), steps)
    assert acc.rounds == 3 * steps
    for delta in DELTAS:
        assert acc.epsilon(delta) == pytest.approx(direct_rdp(z, q, 3 * steps, delta), rel=0.01)


@pytest.mark.parametrize(("z", "q", "steps"), PLD_GRID)
def test_pld_agrees_with_dp_accounting(z: float, q: float, steps: int) -> None:
    acc = CentralDpAccountant(DELTAS[0], accountant="pld")
    acc.step(RoundSpec(z, "poisson", q), steps)
    for delta in DELTAS:
        assert acc.epsilon(delta) == pytest.approx(direct_pld(z, q, steps, delta), rel=0.01)


def test_fixed_size_sampling_is_rdp_without_replacement() -> None:
    spec = RoundSpec(1.2, "fixed", cohort_size=200, population=50_000)
    direct = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    direct.compose(dp_accounting.SampledWithoutReplacementDpEvent(50_000, 200, dp_accounting.GaussianDpEvent(0.6)), 500)
    assert epsilon_of([(spec, 500)], 1e-6, "rdp") == pytest.approx(direct.get_epsilon(1e-6), rel=0.01)
    with pytest.raises(PrivacyConfigError, match="rdp"):
        epsilon_of([(spec, 5)], 1e-6, "pld")


def test_changing_noise_across_rounds_is_composed_exactly() -> None:
    acc = CentralDpAccountant(1e-6, accountant="rdp")
    acc.step(RoundSpec(0.9, "poisson", 0.01), 100)
    acc.step(RoundSpec(1.4, "poisson", 0.02), 50)
    acc.step(RoundSpec(0.9, "poisson", 0.01), 10)
    direct = rdp.RdpAccountant()
    direct.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(0.9)), 110)
    direct.compose(dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.4)), 50)
    assert acc.epsilon() == pytest.approx(direct.get_epsilon(1e-6), rel=1e-9)
    replayed = CentralDpAccountant.from_dict(acc.to_dict())
    assert replayed.epsilon() == acc.epsilon() and replayed.rounds == 160


def test_budget_stops_training() -> None:
    spec = RoundSpec(1.0, "poisson", 0.3)
    acc = CentralDpAccountant(1e-5, accountant="rdp", target_epsilon=2.0)
    done = 0
    while not acc.budget_exhausted(spec):
        acc.step(spec, enforce=True)
        done += 1
    assert acc.epsilon() <= 2.0 < acc.epsilon_after(spec)
    with pytest.raises(BudgetExhaustedError, match="stop training"):
        acc.step(spec, enforce=True)
    assert done == rounds_allowed(spec, 2.0, 1e-5, "rdp")


def test_rounds_allowed_and_noise_multiplier_inverse() -> None:
    spec = RoundSpec(1.1, "poisson", 0.004)
    n = rounds_allowed(spec, 1.0, 1e-5, "rdp")
    assert epsilon_of([(spec, n)], 1e-5, "rdp") <= 1.0 < epsilon_of([(spec, n + 1)], 1e-5, "rdp")
    z = noise_multiplier_for(1.0, 1e-5, 1000, "poisson", sampling_rate=0.004, kind="rdp")
    assert epsilon_of([(RoundSpec(z, "poisson", 0.004), 1000)], 1e-5, "rdp") <= 1.0
    assert epsilon_of([(RoundSpec(z * 0.99, "poisson", 0.004), 1000)], 1e-5, "rdp") > 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(noise_multiplier=0.0, sampling="poisson", sampling_rate=0.1),
        dict(noise_multiplier=1.0, sampling="poisson", sampling_rate=1.5),
        dict(noise_multiplier=1.0, sampling="fixed", cohort_size=10, population=5),
        dict(noise_multiplier=1.0, sampling="uniform", sampling_rate=0.1),
    ],
)
def test_bad_round_specs_raise(kwargs: dict) -> None:
    with pytest.raises(PrivacyConfigError):
        RoundSpec(**kwargs)


def test_mixing_sampling_kinds_is_refused() -> None:
    acc = CentralDpAccountant(1e-5, accountant="rdp")
    acc.step(RoundSpec(1.0, "poisson", 0.1))
    with pytest.raises(PrivacyConfigError):
        acc.step(RoundSpec(1.0, "fixed", cohort_size=10, population=100))
    assert acc.rounds == 1
