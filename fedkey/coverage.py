"""Who a run's schedule reaches: replay its selection and reporting without training anything.

A federated run only learns from the phones that report. Which ones do depends on the schedule:
availability is diurnal (a phone is eligible mostly at night, local time), so a run whose rounds
follow each other back to back spans a few simulated hours and only meets the time zones whose night
falls in them; and the goal count (``cohort_size`` of ``cohort_size * over_selection`` selected)
closes each round at its fastest reports, so phones that are slow every time (slow links, the most
local work) never report. :func:`schedule_coverage` runs the strategy's own selection and reporting
(:meth:`~fedkey.server.strategy.FleetStrategy.simulate_reporting`, the same draws as a real run of
the same config and seed) and the clock (:meth:`~fedkey.server.strategy.FleetStrategy.advance_clock`)
for every round and counts the reports per phone: seconds of work for a run that trains for hours.

It assumes every report is accepted (no rejected updates, no central-DP budget stop), which is what a
run without faults does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedkey.server.strategy import FleetStrategy
from fedkey.simulate import SimulationSetup


@dataclass(frozen=True)
class Coverage:
    """Reports per phone over a schedule, and how much of the fleet's text they reach."""

    rounds: int
    span_s: float
    reports: np.ndarray  # int64, one entry per phone: rounds in which it reported
    text: np.ndarray  # messages each phone holds for training (its real user's)
    per_round: np.ndarray  # int64, one entry per round: phones that reported

    @property
    def phones_never(self) -> int:
        return int(np.sum(self.reports == 0))

    @property
    def text_never(self) -> float:
        """Share of the fleet's training text held by phones that never report."""
        return float(self.text[self.reports == 0].sum() / self.text.sum())

    @property
    def reports_per_round(self) -> float:
        return float(self.per_round.mean())

    def messages_trained(self, max_messages: int, local_epochs: float) -> np.ndarray:
        """Expected message passes each phone trains over the schedule: its reports × ``local_epochs``
        passes over at most ``max_messages`` of its messages (0 = all); float64, one entry per phone."""
        cap = max_messages or int(self.text.max())
        return self.reports * np.minimum(self.text, cap) * float(local_epochs)


def schedule_coverage(setup: SimulationSetup, rounds: int | None = None) -> Coverage:
    """Replay ``rounds`` (default: the config's) rounds of selection and reporting of ``setup``."""
    rounds = setup.config.simulate.rounds if rounds is None else rounds
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    dim = setup.model_config.num_parameters()
    strategy = FleetStrategy(setup.strategy_settings, setup.fleet, np.zeros(dim, np.float32), {})
    reports = np.zeros(setup.fleet.size, np.int64)
    per_round = np.zeros(rounds, np.int64)
    for server_round in range(1, rounds + 1):
        outcome = strategy.simulate_reporting(server_round)
        reports[outcome.ids[outcome.reported]] += 1
        per_round[server_round - 1] = np.sum(outcome.reported)
        strategy.advance_clock(outcome.close_s)
    population = setup.fleet.population
    messages = np.array([len(u.messages) for u in setup.data.train_users], np.int64)
    text = messages[population.user_of(np.arange(population.size))]
    return Coverage(rounds=rounds, span_s=strategy.elapsed_s, reports=reports, text=text, per_round=per_round)
