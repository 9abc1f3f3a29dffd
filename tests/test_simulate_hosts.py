"""Phone hosts: batched local training equals the per-phone reference; the ONNX engine agrees with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from simulate_helpers import tiny_config

from fedkey.device_sim.batched_training import group_size, train_phones
from fedkey.device_sim.host_runtime import PhoneHost
from fedkey.device_sim.phone_host import HostTask, PhoneHostError
from fedkey.models.cifg_lstm import CifgLstm, ModelConfig, initial_weights
from fedkey.models.manifest import flatten_params, param_layout
from fedkey.models.onnx_local_update import Batches, LocalUpdateError, local_update_torch
from fedkey.models.sequences import encode_sequences
from fedkey.protocol.pipeline import decode
from fedkey.simulate import build_setup, local_steps

torch.set_num_threads(1)

MODEL = ModelConfig(vocab_size=40, embed_dim=8, hidden_dim=12).resolved()


def random_batches(rng: np.random.Generator, n_batches: int) -> Batches:
    rows = n_batches * 4 - int(rng.integers(0, 3))
    lengths = rng.integers(1, 7, size=rows)
    mask = (np.arange(6)[None, :] < lengths[:, None]).astype(np.float32)
    return Batches.from_rows(rng.integers(4, 40, size=(rows, 6)), rng.integers(4, 40, size=(rows, 6)), mask, 4)


def test_batched_phones_equal_the_per_phone_reference():
    rng = np.random.default_rng(0)
    weights = flatten_params(CifgLstm(MODEL, seed=0).param_dict(), param_layout(MODEL))
    batches = [random_batches(rng, n) for n in (1, 3, 2, 3, 1)]
    steps = [1, 5, 2, 3, 4]  # more steps than batches cycles through them; phones finish at different steps
    for group in (1, 2, 8):
        result = train_phones(MODEL, weights, batches, steps, lr=0.5, grad_clip=0.7, delta_clip=0.05, group=group)
        for i, (b, k) in enumerate(zip(batches, steps, strict=True)):
            ref = local_update_torch(MODEL, weights, b, steps=k, lr=0.5, grad_clip=0.7, delta_clip=0.05)
            np.testing.assert_allclose(result.deltas[i], ref.delta, atol=1e-6)
            assert result.losses[i] == pytest.approx(float(ref.losses.mean()), rel=1e-5)
            assert result.delta_norms[i] == pytest.approx(ref.delta_norm, rel=1e-5)


def test_group_size_follows_the_memory_budget():
    assert group_size(ModelConfig(vocab_size=8192), 16, 20) >= 1
    assert group_size(ModelConfig(vocab_size=64), 16, 20) > group_size(ModelConfig(vocab_size=8192), 16, 20)


def test_task_round_trip_and_node_overrides(prepared):
    task = build_setup(tiny_config(), prepared.root).task
    assert HostTask.from_config(task.to_config()) == task
    moved = HostTask.from_config(task.to_config(), {"data-dir": "/elsewhere", "threads": 3})
    assert (moved.data_dir, moved.threads) == ("/elsewhere", 3)
    broken = task.to_config()
    del broken["pipeline"]
    with pytest.raises(PhoneHostError, match="pipeline"):
        HostTask.from_config(broken)
    with pytest.raises(PhoneHostError, match="dropout"):
        HostTask.from_config(task.to_config() | {"dropout": 0.2, "engine": "onnx"})


@pytest.mark.slow
def test_onnx_engine_agrees_with_torch_engine(prepared, tmp_path: Path):
    setup = build_setup(tiny_config("pipeline=[]"), prepared.root)
    ids, seeds = [0, 3, 7], [11, 12, 13]
    deltas, weights = {}, initial_weights(setup.model_config, 0)
    for engine in ("torch", "onnx"):
        task = HostTask.from_config(setup.task.to_config() | {"engine": engine})
        result = PhoneHost(task, cache_dir=str(tmp_path)).run(weights, ids, seeds, 1, 0, 1)
        assert result.phone_ids == ids and min(result.examples) > 0
        deltas[engine] = np.stack([decode(p, len(weights)).delta for p in result.payloads])
    np.testing.assert_allclose(deltas["onnx"], deltas["torch"], atol=1e-5)


def test_message_selection_samples_fresh_text_each_round(prepared):
    task = build_setup(tiny_config("simulate.max_messages_per_phone=3"), prepared.root).task
    host = PhoneHost(task)
    user = max(range(len(host.users)), key=lambda u: len(host.users[u].messages))
    assert len(host.users[user].messages) > 3

    def picked(seed: int, selection: str) -> set[tuple[int, ...]]:
        host.task = HostTask.from_config(task.to_config() | {"message-selection": selection})
        seqs = host.sequences(user, np.random.default_rng(seed))
        return {tuple(row[row > 0]) for row in seqs.inputs}

    assert picked(5, "sample") == picked(5, "sample")  # the phone's round seed decides
    rounds = [picked(seed, "sample") for seed in range(8)]
    assert len(set(map(frozenset, rounds))) > 1  # other rounds, other messages
    assert len(set().union(*rounds)) > max(map(len, rounds))  # over rounds it sees more than one window's text
    assert len({frozenset(picked(seed, "first")) for seed in range(8)}) == 1
    with pytest.raises(PhoneHostError, match="message-selection"):
        HostTask.from_config(task.to_config() | {"message-selection": "latest"})


def test_update_weight_counts_the_trained_or_the_cached_windows(prepared):
    task = build_setup(tiny_config("simulate.max_messages_per_phone=3"), prepared.root).task
    host = PhoneHost(task)
    user = max(range(len(host.users)), key=lambda u: len(host.users[u].messages))
    whole = len(encode_sequences(host.encoded(user), task.seq_len))
    _, _, trained, _ = host.phone_batches(user, seed=4)
    assert trained == len(host.sequences(user, np.random.default_rng(4))) < whole  # the 3 messages' windows
    host.task = HostTask.from_config(task.to_config() | {"update-weight": "cached"})
    batches, _, cached, _ = host.phone_batches(user, seed=4)
    assert cached == whole  # every message of the cache, though it still trains on 3
    assert int(batches.mask.any(axis=2).sum()) == trained  # the rows it trains on are the same
    with pytest.raises(PhoneHostError, match="update-weight"):
        HostTask.from_config(task.to_config() | {"update-weight": "sampled"})


def test_local_dropout_is_seeded_per_phone_and_regularises():
    rng = np.random.default_rng(3)
    weights = flatten_params(CifgLstm(MODEL, seed=0).param_dict(), param_layout(MODEL))
    batches = [random_batches(rng, n) for n in (2, 3, 1)]
    steps, kw = [3, 3, 2], {"lr": 0.5, "grad_clip": 0.0, "delta_clip": 0.0}
    plain = train_phones(MODEL, weights, batches, steps, **kw)
    first, again = (train_phones(MODEL, weights, batches, steps, dropout=0.3, seeds=[7, 8, 9], **kw) for _ in range(2))
    np.testing.assert_array_equal(first.deltas, again.deltas)  # the phones' seeds decide the masks
    other = train_phones(MODEL, weights, batches, steps, dropout=0.3, seeds=[7, 8, 10], **kw)
    np.testing.assert_array_equal(other.deltas[:2], first.deltas[:2])  # phone 3's seed moves phone 3 only
    assert not np.allclose(other.deltas[2], first.deltas[2])
    assert not np.allclose(first.deltas, plain.deltas)
    tiny = train_phones(MODEL, weights, batches, steps, dropout=1e-7, seeds=[7, 8, 9], **kw)
    np.testing.assert_allclose(tiny.deltas, plain.deltas, atol=1e-5)  # masks of ones: the plain update
    with pytest.raises(LocalUpdateError, match="seed"):
        train_phones(MODEL, weights, batches, steps, dropout=0.3, **kw)


@pytest.mark.parametrize(("selection", "cap", "exact"), [("first", 8, True), ("sample", 0, True), ("sample", 8, False)])
def test_the_round_time_models_steps_are_those_phones_train(prepared, selection, cap, exact):
    # The device model times a phone's round by local_steps' count; the host counts the batches it trains.
    # A sample of a phone's messages has windows that vary with the sample: the model uses their mean.
    config = tiny_config(
        f'simulate.message_selection="{selection}"',
        f"simulate.max_messages_per_phone={cap}",
        "simulate.local_epochs=1.5",
    )
    setup = build_setup(config, prepared.root)
    host = PhoneHost(setup.task)
    expected = local_steps(setup.data, config)
    trained = np.array([host.phone_batches(user, seed=user)[1] for user in range(len(host.users))])
    if exact:
        np.testing.assert_array_equal(expected, trained)
    else:
        assert abs(expected.mean() / trained.mean() - 1) < 0.05
