"""Central DP-FedAvg accounting: one dp-accounting event per round, ε(δ) over the rounds, a budget.

Nothing here re-derives privacy curves: every number comes from Google's `dp_accounting` (RDP or PLD
accountant) composing the events recorded by `CentralDpAccountant.step`. A round of DP-FedAvg is the
Gaussian mechanism on the sum of clipped updates (noise std = noise_multiplier · clip_norm), amplified by
how the cohort was drawn:

- Poisson sampling (each phone independently with probability q): `PoissonSampledDpEvent(q,
  GaussianDpEvent(z))`, add-or-remove-one neighbouring (the sum moves by at most C), RDP or PLD.
- Fixed-size sampling without replacement (m of N): `SampledWithoutReplacementDpEvent(N, m,
  GaussianDpEvent(z/2))`, replace-one neighbouring — replacing a phone moves the sum by up to 2C, so
  the event's noise multiplier (std / sensitivity) is z/2. dp-accounting supports this event in its
  RDP accountant only, so fixed-size rounds are accounted with RDP.

Rounds with different noise or sampling are simply different events; identical consecutive rounds are
kept as one `SelfComposedDpEvent` so a 10,000-round run composes fast. The accountant serialises to a
plain dict so a run's record can be replayed (`from_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import dp_accounting
from dp_accounting import pld, rdp
from dp_accounting.privacy_accountant import NeighboringRelation

from fedkey.privacy.errors import BudgetExhaustedError, PrivacyConfigError

AccountantKind = Literal["rdp", "pld"]
SamplingKind = Literal["poisson", "fixed"]

# Smallest noise multiplier the inverse search tries (below it a PLD grows to gigabytes; such tiny
# noise is never a sensible DP-FedAvg setting). If even this meets the target, it is returned.
MIN_SEARCHED_NOISE_MULTIPLIER: dict[str, float] = {"pld": 0.3, "rdp": 0.05}

# PLD discretisation: 1e-4 keeps ε within ~0.1% of the exact value for the settings used here.
PLD_DISCRETIZATION = 1e-4


@dataclass(frozen=True)
class RoundSpec:
    """How one round touched the data: noise multiplier z (std / clip norm) and the sampling."""

    noise_multiplier: float
    sampling: SamplingKind
    sampling_rate: float | None = None  # Poisson q
    cohort_size: int | None = None  # fixed-size m
    population: int | None = None  # fixed-size N

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise PrivacyConfigError(
                f"noise_multiplier must be positive and finite, got {self.noise_multiplier}; "
                "zero noise is not differentially private"
            )
        if self.sampling == "poisson":
            q = self.sampling_rate
            if q is None or not (0.0 < q <= 1.0):
                raise PrivacyConfigError(f"Poisson sampling needs 0 < sampling_rate <= 1, got {q}")
        elif self.sampling == "fixed":
            m, n = self.cohort_size, self.population
            if m is None or n is None or not (0 < m <= n):
                raise PrivacyConfigError(f"fixed-size sampling needs 0 < cohort_size <= population, got {m}, {n}")
        else:
            raise PrivacyConfigError(f"sampling must be 'poisson' or 'fixed', got {self.sampling!r}")

    def event(self) -> dp_accounting.DpEvent:
        """The dp-accounting event of one such round."""
        if self.sampling == "poisson":
            assert self.sampling_rate is not None
            return dp_accounting.PoissonSampledDpEvent(
                self.sampling_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
            )
        assert self.population is not None and self.cohort_size is not None
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.cohort_size, dp_accounting.GaussianDpEvent(self.noise_multiplier / 2.0)
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def make_accountant(kind: AccountantKind, sampling: SamplingKind) -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting accountant for rounds of the given sampling kind."""
    if sampling == "fixed":
        if kind == "pld":
            raise PrivacyConfigError(
                "dp-accounting's PLD accountant has no fixed-size (without replacement) sampling event; "
                "use accountant='rdp' for fixed-size cohorts"
            )
        return rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    if kind == "rdp":
        return rdp.RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    if kind == "pld":
        return pld.PLDAccountant(
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            value_discretization_interval=PLD_DISCRETIZATION,
        )
    raise PrivacyConfigError(f"accountant must be 'rdp' or 'pld', got {kind!r}")


def epsilon_of(rounds: list[tuple[RoundSpec, int]], delta: float, kind: AccountantKind = "pld") -> float:
    """ε at δ of a sequence of (round spec, repeat count), composed by dp-accounting."""
    _check_delta(delta)
    if not rounds:
        return 0.0
    samplings = {spec.sampling for spec, _ in rounds}
    if len(samplings) > 1:
        raise PrivacyConfigError("one run cannot mix Poisson and fixed-size rounds (different neighbouring relations)")
    acc = make_accountant(kind, samplings.pop())
    for spec, count in rounds:
        acc.compose(spec.event(), count)
    return float(acc.get_epsilon(delta))


class CentralDpAccountant:
    """Records one event per round (`step`) and answers ε(δ) and budget questions.

    With `target_epsilon` set, `check_budget`/`step(..., enforce=True)` refuse a round that would
    take ε(δ) past the budget — training must stop there.
    """

    def __init__(
        self,
        delta: float,
        accountant: AccountantKind = "pld",
        target_epsilon: float | None = None,
    ) -> None:
        _check_delta(delta)
        if target_epsilon is not None and not target_epsilon > 0:
            raise PrivacyConfigError(f"target_epsilon must be positive, got {target_epsilon}")
        self.delta = delta
        self.kind: AccountantKind = accountant
        self.target_epsilon = target_epsilon
        self._rounds: list[tuple[RoundSpec, int]] = []

    @property
    def rounds(self) -> int:
        """Rounds recorded so far."""
        return sum(c for _, c in self._rounds)

    def step(self, spec: RoundSpec, count: int = 1, enforce: bool = False) -> None:
        """Record `count` rounds of `spec`; with `enforce`, refuse if that exceeds the budget."""
        if count < 1:
            raise PrivacyConfigError(f"count must be >= 1, got {count}")
        if enforce:
            self.check_budget(spec, count)
        if self._rounds and self._rounds[0][0].sampling != spec.sampling:
            raise PrivacyConfigError("one run cannot mix Poisson and fixed-size rounds")
        if self._rounds and self._rounds[-1][0] == spec:
            self._rounds[-1] = (spec, self._rounds[-1][1] + count)
        else:
            self._rounds.append((spec, count))

    def event(self) -> dp_accounting.DpEvent:
        """All recorded rounds as one composed dp-accounting event."""
        return dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(s.event(), c) for s, c in self._rounds])

    def epsilon(self, delta: float | None = None) -> float:
        """ε at δ (default: the accountant's δ) of everything recorded."""
        return epsilon_of(self._rounds, self.delta if delta is None else delta, self.kind)

    def epsilon_after(self, spec: RoundSpec, count: int = 1) -> float:
        """ε at the accountant's δ if `count` more rounds of `spec` were run."""
        return epsilon_of([*self._rounds, (spec, count)], self.delta, self.kind)

    def check_budget(self, spec: RoundSpec, count: int = 1) -> None:
        """Raise `BudgetExhaustedError` if `count` more rounds of `spec` would pass the budget."""
        if self.target_epsilon is None:
            return
        eps = self.epsilon_after(spec, count)
        if eps > self.target_epsilon:
            raise BudgetExhaustedError(
                f"privacy budget reached: after {self.rounds} rounds ε={self.epsilon():.4g}; one more round "
                f"would give ε={eps:.4g} > budget {self.target_epsilon:g} at δ={self.delta:g} — stop training"
            )

    def budget_exhausted(self, next_round: RoundSpec) -> bool:
        """True when the next round of `next_round` would exceed the budget (training must stop)."""
        try:
            self.check_budget(next_round)
        except BudgetExhaustedError:
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "accountant": self.kind,
            "target_epsilon": self.target_epsilon,
            "rounds": [{"spec": s.to_dict(), "count": c} for s, c in self._rounds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CentralDpAccountant:
        """Replay an accountant from `to_dict` output (e.g. a run's records)."""
        acc = cls(data["delta"], data.get("accountant", "pld"), data.get("target_epsilon"))
        for item in data["rounds"]:
            acc.step(RoundSpec(**item["spec"]), int(item["count"]))
        return acc


def rounds_allowed(
    spec: RoundSpec,
    target_epsilon: float,
    delta: float,
    kind: AccountantKind = "pld",
    max_rounds: int = 10_000_000,
) -> int:
    """Largest number of identical rounds whose ε(δ) stays within `target_epsilon` (0 if none).

    For PLD the search starts from the RDP answer (RDP's ε is an upper bound, so that many rounds are
    normally within budget under PLD too; it is checked, not assumed).
    """

    def ok(n: int) -> bool:
        return epsilon_of([(spec, n)], delta, kind) <= target_epsilon

    if not ok(1):
        return 0
    lo = 1
    if kind == "pld" and spec.sampling == "poisson":
        start = rounds_allowed(spec, target_epsilon, delta, "rdp", max_rounds)
        if start > 1 and ok(start):
            lo = start
    hi = lo * 2
    while hi <= max_rounds and ok(hi):
        lo, hi = hi, hi * 2
    if hi > max_rounds:
        if ok(max_rounds):
            return max_rounds
        hi = max_rounds
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling: SamplingKind,
    sampling_rate: float | None = None,
    cohort_size: int | None = None,
    population: int | None = None,
    kind: AccountantKind = "pld",
) -> float:
    """Smallest noise multiplier z such that `rounds` rounds stay within (target_epsilon, δ).

    Uses dp-accounting's `calibrate_dp_mechanism` (Brent search on fresh accountants).
    """
    _check_delta(delta)
    if rounds < 1 or not target_epsilon > 0:
        raise PrivacyConfigError("rounds must be >= 1 and target_epsilon > 0")

    def event(z: float) -> dp_accounting.DpEvent:
        spec = RoundSpec(z, sampling, sampling_rate, cohort_size, population)
        return dp_accounting.SelfComposedDpEvent(spec.event(), rounds)

    RoundSpec(1.0, sampling, sampling_rate, cohort_size, population)  # validates the sampling fields
    lowest = MIN_SEARCHED_NOISE_MULTIPLIER[kind]
    if (
        epsilon_of([(RoundSpec(lowest, sampling, sampling_rate, cohort_size, population), rounds)], delta, kind)
        <= target_epsilon
    ):
        return lowest
    bracket: dp_accounting.mechanism_calibration.BracketInterval = dp_accounting.LowerEndpointAndGuess(lowest, 1.0)
    if kind == "pld":
        # RDP needs at least as much noise as PLD: its answer is the top of the bracket.
        upper = noise_multiplier_for(
            target_epsilon, delta, rounds, sampling, sampling_rate, cohort_size, population, "rdp"
        )
        if upper > lowest:
            bracket = dp_accounting.ExplicitBracketInterval(max(lowest, upper / 2), upper)
    z = dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(kind, sampling),
        event,
        target_epsilon,
        delta,
        bracket,
        tol=1e-4,
    )
    z = float(z)
    # calibrate returns a value within tol of the optimum: make sure the answer meets the target.
    while (
        epsilon_of([(RoundSpec(z, sampling, sampling_rate, cohort_size, population), rounds)], delta, kind)
        > target_epsilon
    ):
        z *= 1.0 + 1e-4
    return z


def _check_delta(delta: float) -> None:
    if not (0.0 < delta < 1.0):
        raise PrivacyConfigError(f"delta must be in (0, 1), got {delta}")
