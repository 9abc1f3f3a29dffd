"""What the strategy needs to know about the phones, as a Protocol: the server never imports device_sim.

The strategy asks a :class:`Fleet` who is eligible at a simulated time, derives per-phone seeds, and
asks what happens to a selected cohort by a deadline (who reports, who drops out, who is still working
when the round closes). ``fedkey.simulate.PopulationFleet`` satisfies it with a
``device_sim.population.Population``; a deployment with real phones would satisfy it with check-in data.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

IdArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class RoundOutcome(Protocol):
    """What happened to each selected phone in one round (arrays in cohort order)."""

    @property
    def ids(self) -> IdArray: ...

    @property
    def reported(self) -> BoolArray: ...

    @property
    def dropped(self) -> BoolArray: ...

    @property
    def straggler(self) -> BoolArray: ...

    @property
    def close_s(self) -> float:
        """Simulated seconds from the round's start until it closed."""
        ...


class Fleet(Protocol):
    """The phone population as the server sees it; every answer is deterministic from the run seed."""

    @property
    def size(self) -> int:
        """Number of phones; ids are 0 .. size - 1."""
        ...

    def eligible_ids(self, t_utc_s: float) -> IdArray:
        """Ids (ascending) of the phones eligible to train at simulated UTC time ``t_utc_s``."""
        ...

    def phone_seeds(self, ids: IdArray, round_idx: int) -> IdArray:
        """A seed in [0, 2**53) per phone for its local work in round ``round_idx``."""
        ...

    def simulate_round(
        self,
        ids: IdArray,
        *,
        round_idx: int,
        deadline_s: float,
        download_bytes: float,
        upload_bytes: float,
        target_reports: int | None,
    ) -> RoundOutcome:
        """Who reports by the close of the round (deadline or goal count), who drops, who straggles."""
        ...

    def fastest_round_s(self, download_bytes: float, upload_bytes: float) -> float:
        """The shortest time any phone could need for a round: a deadline below it never works."""
        ...
