"""predict.onnx / predict.int8.onnx against the torch model: logits, state, token-by-token, int8 top-1."""

from __future__ import annotations

import export_fixtures as fx
import numpy as np
import onnx
import pytest
import torch

from fedkey.models.manifest import load_bundle
from fedkey.models.onnx_predict import OnnxPredictor


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(fx.bundle_dir())


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(4, fx.tokenizer().vocab_size, size=(5, 13)).astype(np.int64)


def test_one_step_logits_and_state_match_torch(bundle) -> None:
    model = fx.checkpoint().model
    predictor = OnnxPredictor(bundle.path("predict"))
    rng = np.random.default_rng(1)
    e, h = model.config.embed_dim, model.config.hidden_dim
    state = (rng.normal(size=(3, e)).astype(np.float32), rng.normal(size=(3, h)).astype(np.float32))
    token = np.array([4, 9, 17], np.int64)
    logits, (h_out, c_out) = predictor.step(token, state)
    with torch.no_grad():
        ref_logits, (ref_h, ref_c) = model.step(
            torch.from_numpy(token), (torch.from_numpy(state[0]), torch.from_numpy(state[1]))
        )
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h_out, ref_h.numpy(), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(c_out, ref_c.numpy(), atol=1e-6, rtol=1e-5)


def test_token_by_token_equals_whole_sequence(bundle, tokens) -> None:
    model = fx.checkpoint().model
    predictor = OnnxPredictor(bundle.path("predict"))
    stepped = predictor.run_sequences(tokens)
    with torch.no_grad():
        whole, (h_last, c_last) = model(torch.from_numpy(tokens))
    np.testing.assert_allclose(stepped, whole.numpy(), atol=1e-5, rtol=1e-5)
    state = predictor.zero_state(len(tokens))
    for t in range(tokens.shape[1]):
        _, state = predictor.step(tokens[:, t], state)
    np.testing.assert_allclose(state[0], h_last.numpy(), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(state[1], c_last.numpy(), atol=1e-6, rtol=1e-5)


def test_dynamic_batch_rows_are_independent(bundle, tokens) -> None:
    predictor = OnnxPredictor(bundle.path("predict"))
    batched = predictor.run_sequences(tokens)
    single = predictor.run_sequences(tokens[2:3])
    np.testing.assert_allclose(single[0], batched[2], atol=1e-6, rtol=1e-6)


def test_int8_agrees_on_top1(bundle, tokens) -> None:
    fp32 = OnnxPredictor(bundle.path("predict")).run_sequences(tokens)
    int8 = OnnxPredictor(bundle.path("predict_int8")).run_sequences(tokens)
    agreement = float((fp32.argmax(-1) == int8.argmax(-1)).mean())
    assert agreement >= 0.9, agreement
    assert bundle.path("predict_int8").stat().st_size < bundle.path("predict").stat().st_size


def test_tied_embedding_is_stored_once(bundle) -> None:
    """Small models make the exporter fold embedding.T into a second initializer; the bundle must not."""
    vocab, embed = bundle.manifest.model.vocab_size, bundle.manifest.model.embed_dim
    for role in ("predict", "predict_int8"):
        model = onnx.load(bundle.path(role))
        sizes = [int(np.prod(t.dims)) for t in model.graph.initializer]
        assert sizes.count(vocab * embed) == 1, role
