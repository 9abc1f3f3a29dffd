"""predict.onnx / predict.int8.onnx against the torch model: logits, state, token-by-token; int8 weight-only
quantization, its load-time dequantization (the manifest's session config) and top-1 agreement."""

from __future__ import annotations

import copy
from pathlib import Path

import export_fixtures as fx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from fedkey.models.manifest import load_bundle
from fedkey.models.onnx_predict import INT8_CHANNEL_AXES, INT8_SESSION_CONFIG, OnnxPredictor


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
    fp32 = OnnxPredictor.from_bundle(bundle, "predict").run_sequences(tokens)
    int8 = OnnxPredictor.from_bundle(bundle, "predict_int8").run_sequences(tokens)
    agreement = float((fp32.argmax(-1) == int8.argmax(-1)).mean())
    assert agreement >= 0.9, agreement
    assert bundle.path("predict_int8").stat().st_size < bundle.path("predict").stat().st_size


def dequantized_params(path: Path) -> dict[str, torch.Tensor]:
    """The weights predict.int8.onnx computes with: int8 values times their per-channel scales."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    params = {name: inits[name] for name in ("b", "out_bias")}
    for name, axis in INT8_CHANNEL_AXES.items():
        params[name] = inits[f"{name}_int8"].astype(np.float32) * np.expand_dims(inits[f"{name}_scale"], 1 - axis)
    return {name: torch.tensor(value) for name, value in params.items()}


def test_int8_is_per_channel_weight_only_quantization(bundle) -> None:
    """Each matrix is int8 with one scale per output channel, within half a step of the fp32 weights."""
    fp32 = bundle.params()
    deq = dequantized_params(bundle.path("predict_int8"))
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(bundle.path("predict_int8")).graph.initializer}
    for name, axis in INT8_CHANNEL_AXES.items():
        assert inits[f"{name}_int8"].dtype == np.int8 and name not in inits
        scale = np.expand_dims(inits[f"{name}_scale"], 1 - axis)
        assert inits[f"{name}_scale"].shape == (fp32[name].shape[axis],)
        assert np.all(np.abs(deq[name].numpy() - fp32[name]) <= scale / 2 + 1e-7), name


def test_int8_logits_are_the_fp32_step_on_dequantized_weights(bundle, tokens) -> None:
    """With the manifest's session config, the int8 graph computes in fp32 on weights dequantized once."""
    model = copy.deepcopy(fx.checkpoint().model)  # the cached fixture model must keep its weights
    with torch.no_grad():
        for name, value in dequantized_params(bundle.path("predict_int8")).items():
            model.params[name].copy_(value)
        expected, _ = model(torch.from_numpy(tokens))
    got = OnnxPredictor.from_bundle(bundle, "predict_int8").run_sequences(tokens)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-5)


def optimized_ops(path: Path, config: dict[str, str], out: Path) -> list[str]:
    """Op types of the graph ONNX Runtime runs after its load-time optimisations."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3  # the serializer warns that the file is hardware specific
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(out).graph.node]


def test_session_config_dequantizes_the_weights_once_at_load(bundle, tmp_path: Path) -> None:
    assert bundle.session_config("predict_int8") == INT8_SESSION_CONFIG == {"session.disable_quant_qdq": "1"}
    path = bundle.path("predict_int8")
    folded = optimized_ops(path, bundle.session_config("predict_int8"), tmp_path / "folded.onnx")
    assert "DequantizeLinear" not in folded and "MatMulNBits" not in folded, folded
    # Without the entry the runtime keeps dequantizing (or fuses into 8-bit kernels) on every call.
    assert "DequantizeLinear" in optimized_ops(path, {}, tmp_path / "plain.onnx")


def test_tied_embedding_is_stored_once(bundle) -> None:
    """Small models make the exporter fold embedding.T into a second initializer; the bundle must not,
    and the output layer reads the embedding itself (Gemm transB) rather than a transposed copy."""
    vocab, embed = bundle.manifest.model.vocab_size, bundle.manifest.model.embed_dim
    for role in ("predict", "predict_int8"):
        model = onnx.load(bundle.path(role))
        sizes = [int(np.prod(t.dims)) for t in model.graph.initializer]
        assert sizes.count(vocab * embed) == 1, role
        ops = [node.op_type for node in model.graph.node]
        assert "Transpose" not in ops, role
        gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
        assert list(gemm.input[1:]) == ["embedding", "out_bias"] and list(gemm.output) == ["logits"], role
