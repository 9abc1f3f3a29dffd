"""train_step.onnx and local_update.onnx against torch: one step, K steps, clipping on and off."""

from __future__ import annotations

import export_fixtures as fx
import numpy as np
import pytest
import torch

from fedkey.models.manifest import flatten_params, load_bundle
from fedkey.models.onnx_local_update import Batches, local_update_onnx, local_update_torch
from fedkey.models.onnx_predict import make_session
from fedkey.models.onnx_train import sgd_step


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(fx.bundle_dir())


def random_batches(n: int, batch: int, seed: int) -> Batches:
    rng = np.random.default_rng(seed)
    shape = (n, batch, fx.SEQ_LEN)
    vocab = fx.tokenizer().vocab_size
    lengths = rng.integers(1, fx.SEQ_LEN + 1, size=(n, batch))
    mask = (np.arange(fx.SEQ_LEN)[None, None, :] < lengths[..., None]).astype(np.float32)
    tokens = rng.integers(0, vocab, shape).astype(np.int64)
    return Batches(tokens, rng.integers(0, vocab, shape).astype(np.int64), mask)


def step_feeds(weights: np.ndarray, b: Batches, lr: float, clip: float) -> dict[str, np.ndarray]:
    return {
        "weights": weights,
        "tokens": b.tokens[0],
        "targets": b.targets[0],
        "mask": b.mask[0],
        "lr": np.array(lr, np.float32),
        "clip": np.array(clip, np.float32),
    }


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_train_step_matches_torch_autograd(bundle, clip: float) -> None:
    """ONNX step == the same step in plain torch autograd (module loss, backward, clip_grad_norm_, SGD)."""
    model = fx.checkpoint().model
    b = random_batches(1, 4, seed=2)
    new_weights, loss = make_session(bundle.path("train_step")).run(
        None, step_feeds(bundle.weights, b, lr=0.5, clip=clip)
    )

    ref = type(model)(model.config)
    ref.load_state_dict(model.state_dict())
    total, count = ref.loss(torch.from_numpy(b.tokens[0]), torch.from_numpy(b.targets[0]), torch.from_numpy(b.mask[0]))
    (total / count).backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), clip) if clip > 0 else None
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.5 * p.grad
    expected = flatten_params(ref.param_dict(), bundle.manifest.parameters)
    assert norm is None or norm > clip  # the clipped case really clips
    np.testing.assert_allclose(float(loss), float((total / count).detach()), rtol=1e-6)
    np.testing.assert_allclose(new_weights, expected, atol=1e-6)


def test_train_step_matches_traced_function(bundle) -> None:
    b = random_batches(1, 3, seed=3)
    new_weights, loss = make_session(bundle.path("train_step")).run(
        None, step_feeds(bundle.weights, b, lr=0.3, clip=1.0)
    )
    shapes = fx.checkpoint().model.config.param_shapes()
    ref_w, ref_loss = sgd_step(
        torch.from_numpy(bundle.weights),
        torch.from_numpy(b.tokens[0]),
        torch.from_numpy(b.targets[0]),
        torch.from_numpy(b.mask[0]),
        torch.tensor(0.3),
        torch.tensor(1.0),
        shapes,
    )
    np.testing.assert_allclose(new_weights, ref_w.numpy(), atol=1e-7)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)


@pytest.mark.parametrize(("delta_clip", "clipped"), [(0.0, False), (100.0, False), (0.05, True)])
def test_local_update_matches_torch(bundle, delta_clip: float, clipped: bool) -> None:
    b = random_batches(3, 4, seed=4)
    kwargs = {"steps": 7, "lr": 0.5, "grad_clip": 0.5, "delta_clip": delta_clip}
    config = fx.checkpoint().model.config
    onnx_out = local_update_onnx(make_session(bundle.path("local_update")), bundle.weights, b, **kwargs)
    torch_out = local_update_torch(config, bundle.weights, b, **kwargs)
    assert onnx_out.losses.shape == (7,)
    np.testing.assert_allclose(onnx_out.losses, torch_out.losses, rtol=1e-5)
    np.testing.assert_allclose(onnx_out.delta_norm, torch_out.delta_norm, rtol=1e-5)
    np.testing.assert_allclose(onnx_out.delta, torch_out.delta, atol=1e-6)
    norm = float(np.linalg.norm(onnx_out.delta))
    if clipped:
        assert onnx_out.delta_norm > delta_clip
        assert norm == pytest.approx(delta_clip, rel=1e-5)
    else:
        assert norm == pytest.approx(onnx_out.delta_norm, rel=1e-5)


def test_local_update_equals_repeated_train_steps(bundle) -> None:
    """K=5 over 2 batches cycles k mod N and equals five train_step.onnx calls."""
    b = random_batches(2, 3, seed=5)
    step = make_session(bundle.path("train_step"))
    w = bundle.weights
    losses = []
    for k in range(5):
        i = k % 2
        feeds = {
            "weights": w,
            "tokens": b.tokens[i],
            "targets": b.targets[i],
            "mask": b.mask[i],
            "lr": np.array(0.2, np.float32),
            "clip": np.array(0.0, np.float32),
        }
        w, loss = step.run(None, feeds)
        losses.append(float(loss))
    out = local_update_onnx(
        make_session(bundle.path("local_update")), bundle.weights, b, steps=5, lr=0.2, grad_clip=0.0, delta_clip=0.0
    )
    np.testing.assert_allclose(out.losses, losses, rtol=1e-6)
    np.testing.assert_allclose(out.delta, w - bundle.weights, atol=1e-7)
