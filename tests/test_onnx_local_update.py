"""The simulator hook: a phone's local update through local_update.onnx is interchangeable with torch."""

from __future__ import annotations

import export_fixtures as fx
import numpy as np
import pytest

from fedkey.models.manifest import load_bundle
from fedkey.models.onnx_local_update import (
    Batches,
    LocalUpdateError,
    LocalUpdater,
    OnnxLocalUpdate,
    TorchLocalUpdate,
)
from fedkey.models.sequences import message_sequences


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(fx.bundle_dir())


def phone_batches(seed: int, batch_size: int = 4) -> Batches:
    """A phone's messages as training rows (models/sequences.py), then batched."""
    seqs = message_sequences(fx.tokenizer(), fx.sentences(6, seed=seed), fx.SEQ_LEN)
    return Batches.from_rows(seqs.inputs, seqs.targets, seqs.mask, batch_size)


def test_from_rows_pads_last_batch() -> None:
    rows = np.arange(5 * 3, dtype=np.int64).reshape(5, 3)
    b = Batches.from_rows(rows, rows + 1, np.ones((5, 3), np.float32), batch_size=2)
    assert b.tokens.shape == (3, 2, 3)
    assert b.mask[2, 1].sum() == 0 and b.mask[2, 0].sum() == 3
    np.testing.assert_array_equal(b.tokens[1, 0], rows[2])


def test_fleet_onnx_and_torch_give_the_same_deltas(bundle) -> None:
    updaters: dict[str, LocalUpdater] = {
        "onnx": OnnxLocalUpdate.from_bundle(bundle),  # one session, reused for every phone
        "torch": TorchLocalUpdate(bundle.manifest.to_model_config()),
    }
    for phone in range(3):
        batches = phone_batches(seed=100 + phone)
        steps = 2 * batches.tokens.shape[0]  # two local epochs
        results = {
            name: run(bundle.weights, batches, steps=steps, lr=0.5, grad_clip=1.0, delta_clip=0.1)
            for name, run in updaters.items()
        }
        np.testing.assert_allclose(results["onnx"].delta, results["torch"].delta, atol=1e-6)
        np.testing.assert_allclose(results["onnx"].losses, results["torch"].losses, rtol=1e-5)
        assert results["onnx"].delta_norm == pytest.approx(results["torch"].delta_norm, rel=1e-5)
        assert np.linalg.norm(results["onnx"].delta) <= 0.1 * (1 + 1e-5)


def test_bad_inputs_are_refused(bundle) -> None:
    run = OnnxLocalUpdate.from_bundle(bundle)
    batches = phone_batches(seed=1)
    with pytest.raises(LocalUpdateError, match="steps"):
        run(bundle.weights, batches, steps=0, lr=0.1, grad_clip=1.0, delta_clip=1.0)
    with pytest.raises(LocalUpdateError, match="weights"):
        run(bundle.weights[:-1], batches, steps=1, lr=0.1, grad_clip=1.0, delta_clip=1.0)
    with pytest.raises(LocalUpdateError, match="sequence length"):
        arrays = (batches.tokens, batches.targets, batches.mask)
        short = Batches(*(np.ascontiguousarray(a[..., :4]) for a in arrays))
        run(bundle.weights, short, steps=1, lr=0.1, grad_clip=1.0, delta_clip=1.0)
    with pytest.raises(LocalUpdateError, match="int64"):
        Batches(batches.tokens.astype(np.int32), batches.targets, batches.mask)
