"""The field guide's round-time model, dropouts and stragglers, vectorised over a cohort.

Wang et al. 2021, "A Field Guide to Federated Optimization", estimate a phone's time for one round as
a fixed overhead plus the time to download the model, compute locally and upload the update::

    time_i = overhead + download_bytes / down_i + compute_desktop_s * slowdown_i + upload_bytes / up_i

with ``compute_desktop_s`` the local work in desktop-core seconds (or ``flops / desktop_flops_per_s``).
Bonawitz et al. 2019 ("Towards Federated Learning at Scale: System Design") describe the reporting
phase: the server waits for reports until it has enough (the goal count; it over-selected to get
them) or a deadline passes; 6-10% of the selected phones drop out. Here phone ``i`` drops out of
round ``r`` with its own probability (:mod:`fedkey.device_sim.devices`), decided by a counter-based
draw from (seed, round, phone), and the connection is lost at a uniform fraction of its round time.
The round closes at the earliest of: the deadline, the ``target_reports``-th report, and the moment
every selected phone has reported or dropped. Phones that did not drop and report after the close
are stragglers; their work is discarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedkey.device_sim.availability import BoolArray
from fedkey.device_sim.config import RoundTimeConfig
from fedkey.device_sim.devices import DeviceProfiles, FloatArray, IdArray, hashed_uniform, stream_key


def round_times(
    profiles: DeviceProfiles,
    download_bytes: npt.ArrayLike,
    upload_bytes: npt.ArrayLike,
    compute_desktop_s: npt.ArrayLike = 0.0,
    flops: npt.ArrayLike = 0.0,
    config: RoundTimeConfig | None = None,
) -> FloatArray:
    """Seconds each phone needs for a full round (overhead + download + compute + upload).

    Every workload argument is a scalar (same for all phones) or an array with one entry per phone.
    ``compute_desktop_s`` (desktop-core seconds) and ``flops`` (converted with ``desktop_flops_per_s``)
    add up; both are multiplied by the phone's slowdown.
    """
    cfg = config or RoundTimeConfig()
    work_s = np.asarray(compute_desktop_s, dtype=np.float64) + np.asarray(flops, dtype=np.float64) / (
        cfg.desktop_flops_per_s
    )
    if np.any(work_s < 0) or np.any(np.asarray(download_bytes) < 0) or np.any(np.asarray(upload_bytes) < 0):
        raise ValueError("bytes, compute seconds and FLOPs must be >= 0")
    return (
        cfg.overhead_s
        + np.asarray(download_bytes, dtype=np.float64) / profiles.download_bytes_per_s
        + work_s * profiles.slowdown
        + np.asarray(upload_bytes, dtype=np.float64) / profiles.upload_bytes_per_s
    )


def sample_dropouts(profiles: DeviceProfiles, seed: int, round_idx: int) -> BoolArray:
    """Which phones drop out of round ``round_idx``: phone i with probability ``dropout_prob[i]``."""
    u = hashed_uniform(stream_key(seed, "dropout", round_idx), profiles.ids)
    return u < profiles.dropout_prob


@dataclass(frozen=True)
class RoundOutcome:
    """What happened to each selected phone in one simulated round (arrays in cohort order).

    ``duration_s`` is the time the phone needs to report; ``dropped`` phones lost their connection at
    ``dropout_at_s``; ``reported`` phones reported by ``close_s``; ``straggler`` phones did not drop
    but were still working when the round closed. ``close_s`` is the round's simulated duration.
    """

    ids: IdArray
    duration_s: FloatArray
    dropped: BoolArray
    dropout_at_s: FloatArray
    reported: BoolArray
    straggler: BoolArray
    close_s: float

    @property
    def reported_ids(self) -> IdArray:
        """Ids of the phones whose reports count."""
        return self.ids[self.reported]

    @property
    def n_selected(self) -> int:
        """Number of phones selected for the round."""
        return len(self.ids)

    @property
    def n_reported(self) -> int:
        """Number of phones that reported in time."""
        return int(self.reported.sum())

    @property
    def n_dropped(self) -> int:
        """Number of phones that dropped out."""
        return int(self.dropped.sum())

    @property
    def n_stragglers(self) -> int:
        """Number of phones still working when the round closed."""
        return int(self.straggler.sum())


def simulate_round(
    profiles: DeviceProfiles,
    *,
    seed: int,
    round_idx: int,
    deadline_s: float,
    download_bytes: npt.ArrayLike,
    upload_bytes: npt.ArrayLike,
    compute_desktop_s: npt.ArrayLike = 0.0,
    flops: npt.ArrayLike = 0.0,
    target_reports: int | None = None,
    config: RoundTimeConfig | None = None,
) -> RoundOutcome:
    """Time, dropouts and stragglers of one round for a selected cohort.

    The round closes at ``min(deadline_s, time of the target_reports-th report, time every phone has
    reported or dropped)``; with ``target_reports=None`` only the deadline and the last event count.
    Deterministic from (seed, round_idx, phone ids).
    """
    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    if target_reports is not None and target_reports < 1:
        raise ValueError(f"target_reports must be >= 1 or None, got {target_reports}")
    duration = np.broadcast_to(
        round_times(profiles, download_bytes, upload_bytes, compute_desktop_s, flops, config),
        profiles.ids.shape,
    ).astype(np.float64)
    dropped = sample_dropouts(profiles, seed, round_idx)
    dropout_at = np.where(
        dropped, hashed_uniform(stream_key(seed, "dropout_at", round_idx), profiles.ids) * duration, np.inf
    )
    report_times = np.where(dropped, np.inf, duration)
    close = float(deadline_s)
    if len(profiles.ids):
        last_event = float(np.max(np.where(dropped, dropout_at, duration)))
        close = min(close, last_event)
    if target_reports is not None and target_reports <= len(report_times):
        close = min(close, float(np.partition(report_times, target_reports - 1)[target_reports - 1]))
    reported = report_times <= close
    return RoundOutcome(
        ids=profiles.ids,
        duration_s=duration,
        dropped=dropped,
        dropout_at_s=dropout_at,
        reported=reported,
        straggler=~dropped & ~reported,
        close_s=close,
    )
