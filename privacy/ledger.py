"""Per-phone local DP ledger: which rounds each phone reported in, with which mechanism, and its ε.

The privacy team's question for local DP is "what did THIS phone spend?". Every report a phone sends
under local DP is one dp-accounting event (`GaussianDpEvent(σ/Δ₂)` or `LaplaceDpEvent(b/Δ₁)`); a phone's
ε(δ) is the composition of exactly the reports it sent, computed by dp-accounting's PLD accountant
(RDP on request). Phones with the same multiset of reports share one computation (cache), so a ledger
of 100k phones answers `max_epsilon` quickly.

The ledger is plain data: `to_json` / `from_json`, and `replay(records)` rebuilds it from a run's
per-report records (e.g. the decoded wire headers the server logged).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Literal

import dp_accounting
from dp_accounting import pld, rdp
from dp_accounting.privacy_accountant import NeighboringRelation

from fedkey.privacy.errors import PrivacyConfigError

Mechanism = Literal["gaussian", "laplace"]


@dataclass(frozen=True)
class Report:
    """One local-DP report: phone, round, mechanism and its noise multiplier (scale / sensitivity)."""

    phone_id: int
    round: int
    mechanism: Mechanism
    noise_multiplier: float

    def __post_init__(self) -> None:
        if self.mechanism not in ("gaussian", "laplace"):
            raise PrivacyConfigError(f"unknown local mechanism {self.mechanism!r}")
        if not self.noise_multiplier > 0:
            raise PrivacyConfigError(f"noise_multiplier must be positive, got {self.noise_multiplier}")

    def event(self) -> dp_accounting.DpEvent:
        if self.mechanism == "gaussian":
            return dp_accounting.GaussianDpEvent(self.noise_multiplier)
        return dp_accounting.LaplaceDpEvent(self.noise_multiplier)


def epsilon_of_reports(reports: Counter[tuple[str, float]], delta: float, accountant: str = "pld") -> float:
    """ε(δ) of a multiset of (mechanism, noise multiplier) reports, composed by dp-accounting.

    The Gaussian pair compared is N(0, σ²) vs N(Δ, σ²): dp-accounting's add-or-remove relation on a
    `GaussianDpEvent` with noise multiplier σ/Δ (with Δ = 2C already the replace-one sensitivity).
    """
    if not (0.0 < delta < 1.0):
        raise PrivacyConfigError(f"delta must be in (0, 1), got {delta}")
    if not reports:
        return 0.0
    if accountant == "pld":
        acc: dp_accounting.PrivacyAccountant = pld.PLDAccountant(
            NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4
        )
    elif accountant == "rdp":
        acc = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    else:
        raise PrivacyConfigError(f"accountant must be 'pld' or 'rdp', got {accountant!r}")
    for (mechanism, z), count in sorted(reports.items()):
        acc.compose(Report(0, 0, mechanism, z).event(), count)  # type: ignore[arg-type]
    return float(acc.get_epsilon(delta))


class DeviceLedger:
    """Reports per phone; ε per phone at a fixed δ."""

    def __init__(self, delta: float, accountant: str = "pld") -> None:
        if not (0.0 < delta < 1.0):
            raise PrivacyConfigError(f"delta must be in (0, 1), got {delta}")
        self.delta = delta
        self.accountant = accountant
        self._reports: dict[int, list[Report]] = defaultdict(list)
        self._cache: dict[frozenset[tuple[tuple[str, float], int]], float] = {}

    def record(self, phone_id: int, round: int, mechanism: Mechanism, noise_multiplier: float) -> None:
        """Record that `phone_id` sent one local-DP report in `round`."""
        report = Report(int(phone_id), int(round), mechanism, float(noise_multiplier))
        if any(r.round == report.round for r in self._reports[report.phone_id]):
            raise PrivacyConfigError(f"phone {phone_id} already has a report in round {round}")
        self._reports[report.phone_id].append(report)

    def phones(self) -> list[int]:
        return sorted(self._reports)

    def reports(self, phone_id: int) -> list[Report]:
        return list(self._reports.get(phone_id, []))

    def participations(self, phone_id: int) -> int:
        return len(self._reports.get(phone_id, []))

    def epsilon(self, phone_id: int, delta: float | None = None) -> float:
        """ε(δ) that `phone_id` has spent over the reports it actually sent."""
        d = self.delta if delta is None else delta
        multiset = Counter((r.mechanism, r.noise_multiplier) for r in self._reports.get(phone_id, []))
        if d != self.delta:
            return epsilon_of_reports(multiset, d, self.accountant)
        key = frozenset(multiset.items())
        if key not in self._cache:
            self._cache[key] = epsilon_of_reports(multiset, d, self.accountant)
        return self._cache[key]

    def max_epsilon(self) -> float:
        """The largest per-phone ε at the ledger's δ (0 for an empty ledger)."""
        return max((self.epsilon(p) for p in self._reports), default=0.0)

    def summary(self) -> dict[str, Any]:
        eps = [self.epsilon(p) for p in self._reports]
        counts = [len(r) for r in self._reports.values()]
        return {
            "delta": self.delta,
            "phones": len(eps),
            "reports": sum(counts),
            "max_participations": max(counts, default=0),
            "max_epsilon": max(eps, default=0.0),
            "median_epsilon": sorted(eps)[len(eps) // 2] if eps else 0.0,
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "delta": self.delta,
                "accountant": self.accountant,
                "reports": [asdict(r) for p in sorted(self._reports) for r in self._reports[p]],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> DeviceLedger:
        data = json.loads(text)
        return cls.replay(data["reports"], data["delta"], data.get("accountant", "pld"))

    @classmethod
    def replay(cls, records: list[dict[str, Any]], delta: float, accountant: str = "pld") -> DeviceLedger:
        """Rebuild a ledger from per-report records with keys phone_id, round, mechanism, noise_multiplier."""
        ledger = cls(delta, accountant)
        for rec in records:
            ledger.record(rec["phone_id"], rec["round"], rec["mechanism"], rec["noise_multiplier"])
        return ledger
