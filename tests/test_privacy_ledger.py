"""Per-phone ledger: ε of exactly the reports each phone sent, JSON round trip, replay from records."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from dp_accounting.privacy_accountant import NeighboringRelation

from fedkey.privacy.calibration import gaussian_local_mechanism
from fedkey.privacy.errors import PrivacyConfigError
from fedkey.privacy.ledger import DeviceLedger
from fedkey.protocol.pipeline import UpdatePipeline, decode


def direct(events: list[dp_accounting.DpEvent], delta: float) -> float:
    acc = pld.PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    for e in events:
        acc.compose(e)
    return acc.get_epsilon(delta)


def test_per_phone_epsilon_composes_only_its_reports() -> None:
    ledger = DeviceLedger(delta=1e-6)
    for r in range(6):
        ledger.record(1, r, "gaussian", 4.0)
    for r in (0, 3):
        ledger.record(2, r, "gaussian", 4.0)
    ledger.record(2, 5, "laplace", 2.0)
    e1 = ledger.epsilon(1)
    e2 = ledger.epsilon(2)
    assert e1 == pytest.approx(direct([dp_accounting.GaussianDpEvent(4.0)] * 6, 1e-6), rel=1e-3)
    expected2 = direct([dp_accounting.GaussianDpEvent(4.0)] * 2 + [dp_accounting.LaplaceDpEvent(2.0)], 1e-6)
    assert e2 == pytest.approx(expected2, rel=1e-3)
    assert ledger.epsilon(3) == 0.0
    assert ledger.max_epsilon() == max(e1, e2)
    assert ledger.summary()["max_participations"] == 6


def test_single_report_matches_its_calibration() -> None:
    mech = gaussian_local_mechanism(2.0, 1e-5, clip_norm=1.0)
    ledger = DeviceLedger(delta=1e-5)
    ledger.record(7, 0, "gaussian", mech.noise_multiplier)
    assert ledger.epsilon(7) == pytest.approx(2.0, rel=0.01)


def test_json_round_trip_and_duplicate_round() -> None:
    ledger = DeviceLedger(delta=1e-8)
    ledger.record(5, 1, "gaussian", 3.0)
    ledger.record(6, 1, "laplace", 1.5)
    back = DeviceLedger.from_json(ledger.to_json())
    assert back.phones() == [5, 6] and back.epsilon(5) == ledger.epsilon(5)
    with pytest.raises(PrivacyConfigError):
        ledger.record(5, 1, "gaussian", 3.0)
    with pytest.raises(PrivacyConfigError):
        ledger.record(9, 1, "gaussian", 0.0)


def test_replay_from_decoded_messages() -> None:
    dim = 300
    pipe = UpdatePipeline(
        [{"kind": "clip", "norm": 1.0}, {"kind": "gaussian_noise", "epsilon": 3.0, "delta": 1e-5}], dim
    )
    records = []
    for rnd in range(3):
        ids = [10, 11] if rnd < 2 else [10]
        out = pipe.encode(np.zeros((len(ids), dim), np.float32), ids, rnd, seed=1)
        records += [decode(m, dim).ledger_record() for m in out.messages]
    ledger = DeviceLedger.replay(records, delta=1e-5)
    assert ledger.participations(10) == 3 and ledger.participations(11) == 2
    assert ledger.epsilon(10) > ledger.epsilon(11) > 2.9
