"""Run outputs, resume and refusals of `fedkey simulate`, driven through an in-process grid (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from simulate_helpers import LocalGrid, tiny_config

from fedkey.config import ConfigError, load_config, to_toml
from fedkey.models.checkpoint import Checkpoint
from fedkey.server.app import METRIC_KEYS, ServerRunError, SimulationRun
from fedkey.simulate import RunSettings, SimulationConfigError, build_setup, config_from_run_config

torch.set_num_threads(1)

# FedAdam and central DP: a resumed run must restore optimizer moments and the accountant too.
STATEFUL = (
    "simulate.optimizer.name='fedadam'",
    "simulate.optimizer.lr=0.05",
    "simulate.sampling='poisson'",
    "simulate.poisson_rate=0.3",
    "central_dp.noise_multiplier=0.5",
    "central_dp.accountant='rdp'",
)


def run(prepared, out: Path, *overrides: str, resume: bool = False) -> list[dict]:
    config = tiny_config(*STATEFUL, *overrides)
    simulation = SimulationRun(
        RunSettings(config, prepared.root, out, resume, False), build_setup(config, prepared.root)
    )
    simulation.prepare_outputs()
    simulation.run(LocalGrid())
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_wall(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "wall_time_s"} for line in lines]


def test_outputs_and_resume_equal_an_uninterrupted_run(prepared, tmp_path: Path):
    full = run(prepared, tmp_path / "full")
    assert [tuple(line) for line in full] == [METRIC_KEYS] * 3
    assert [line["recall@1"] is None for line in full] == [True, False, False]  # eval_every=2 and the last
    assert all(line["epsilon"] > 0 and line["delta"] == 1e-5 for line in full)
    assert full[0]["epsilon"] < full[2]["epsilon"]

    run(prepared, tmp_path / "split", "simulate.rounds=2")
    # the rest in one-phone messages: how a round is cut into messages changes nothing
    resumed = run(prepared, tmp_path / "split", "simulate.phones_per_message=1", resume=True)
    assert without_wall(resumed) == without_wall(full)
    a = Checkpoint.load(tmp_path / "full" / "checkpoint.pt")
    b = Checkpoint.load(tmp_path / "split" / "checkpoint.pt")
    for (name, x), (_, y) in zip(a.model.named_tensors(), b.model.named_tensors(), strict=True):
        assert torch.equal(x, y), name
    assert a.meta["round"] == 3 and a.model_version == 3

    participation = json.loads((tmp_path / "full" / "participation.json").read_text())
    assert sum(participation["counts"]) == sum(line["reported"] - line["rejected"] for line in full)
    final = json.loads((tmp_path / "full" / "final.json").read_text())
    assert final["rounds"] == 3 and final["stopped_by"] == "rounds"
    assert 0 <= final["held_out_users"]["recall@1"] <= 1
    saved = load_config(tmp_path / "full" / "config.toml")
    assert saved.simulate.optimizer.name == "fedadam" and saved.central_dp is not None


def test_run_stops_at_the_privacy_budget(prepared, tmp_path: Path):
    probe = build_setup(tiny_config(*STATEFUL), prepared.root).strategy_settings.central_dp
    assert probe is not None
    from fedkey.privacy.accountant import epsilon_of

    budget = (
        epsilon_of([(probe.round_spec(), 1)], probe.delta, "rdp")
        + epsilon_of([(probe.round_spec(), 2)], probe.delta, "rdp")
    ) / 2
    lines = run(prepared, tmp_path, f"central_dp.target_epsilon={budget}")
    assert len(lines) == 1
    assert json.loads((tmp_path / "final.json").read_text())["stopped_by"] == "privacy budget"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["simulate.cohort_size=100"], "population has"),
        (["simulate.deadline_s=5"], "shorter than the fastest phone"),
        (["simulate.local_dropout=0.2", "simulate.local_engine='onnx'"], "needs local_engine = 'torch'"),
        (["simulate.sampling='poisson'", "simulate.poisson_rate=0.001"], "raise the rate"),
        (
            [
                "simulate.sampling='poisson'",
                "simulate.poisson_rate=0.5",
                "central_dp.noise_multiplier=0.5",
                "central_dp.target_epsilon=0.01",
                "central_dp.accountant='rdp'",
            ],
            "budget already spent at round 0",
        ),
        (["population.size=1000", "central_dp.noise_multiplier=1", "central_dp.population=999"], "but population.size"),
        (["pipeline=[{kind='error_feedback'}, {kind='top_k', fraction=0.1}]"], "error_feedback"),
    ],
)
def test_configurations_that_cannot_work_are_refused(prepared, overrides: list[str], message: str):
    with pytest.raises((SimulationConfigError, ConfigError), match=message):
        build_setup(tiny_config(*overrides), prepared.root)


def test_central_dp_needs_consistent_sampling():
    with pytest.raises(ConfigError, match=r"population\.size"):
        load_config(None, ["central_dp.noise_multiplier=1"])
    with pytest.raises(ConfigError, match="sampling_rate"):
        load_config(
            None,
            [
                "simulate.sampling='poisson'",
                "simulate.poisson_rate=0.1",
                "central_dp.noise_multiplier=1",
                "central_dp.sampling_rate=0.2",
            ],
        )
    config = load_config(
        None, ["simulate.sampling='poisson'", "simulate.poisson_rate=0.1", "central_dp.noise_multiplier=1"]
    )
    assert config.central_dp is not None and config.central_dp.sampling_rate == 0.1


def test_run_config_keys_and_dotted_overrides(tmp_path: Path):
    settings = config_from_run_config(
        {
            "out": str(tmp_path),
            "data-dir": "d",
            "simulate.rounds": 7,
            "simulate.local_engine": "onnx",
            "simulate.export_bundle": False,
        }
    )
    assert settings.config.simulate.rounds == 7 and settings.config.simulate.local_engine == "onnx"
    assert not settings.config.simulate.export_bundle and not settings.resume
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_run_config({"out": "o", "data-dir": "d", "rounds": 3})
    with pytest.raises(ConfigError, match="needs 'out'"):
        config_from_run_config({"data-dir": "d"})
    np.testing.assert_equal(settings.data_dir, Path("d"))


def test_resume_refuses_a_run_folder_written_before_a_setting_existed(tmp_path: Path):
    """A config.toml lacking a setting (an older fedkey wrote it) would resume on today's default silently."""
    full = to_toml(load_config(None, ["simulate.rounds=9"]))
    assert 'message_selection = "sample"' in full
    (tmp_path / "config.toml").write_text(full.replace('message_selection = "sample"\n', ""))
    run_config = {"out": str(tmp_path), "data-dir": "d", "resume": True}
    with pytest.raises(ConfigError, match=r"before these settings existed.*simulate\.message_selection"):
        config_from_run_config(run_config)
    given = config_from_run_config(run_config | {"simulate.message_selection": "first"})
    assert given.config.simulate.message_selection == "first" and given.config.simulate.rounds == 9
    (tmp_path / "config.toml").write_text(full)  # a complete file resumes as written
    assert config_from_run_config(run_config).config.simulate.rounds == 9


def test_resume_refuses_a_checkpoint_of_another_model_or_kind_and_changes_nothing(prepared, tmp_path: Path):
    out = tmp_path / "run"
    run(prepared, out, "simulate.rounds=1")
    before = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "checkpoint.pt", "config.toml")}
    wider = tiny_config(*STATEFUL, "model.hidden_dim=20")
    simulation = SimulationRun(RunSettings(wider, prepared.root, out, True, False), build_setup(wider, prepared.root))
    with pytest.raises(ServerRunError, match="holds a model of shape"):
        simulation.prepare_outputs()
    assert {name: (out / name).read_bytes() for name in before} == before

    central = Checkpoint.load(out / "checkpoint.pt")
    central.meta = {"kind": "central", "step": 3}
    central.save(out / "checkpoint.pt")
    config = tiny_config(*STATEFUL)
    simulation = SimulationRun(RunSettings(config, prepared.root, out, True, False), build_setup(config, prepared.root))
    with pytest.raises(ServerRunError, match="not a `fedkey simulate` checkpoint"):
        simulation.prepare_outputs()
    assert all((out / name).read_bytes() == before[name] for name in ("metrics.jsonl", "config.toml"))
