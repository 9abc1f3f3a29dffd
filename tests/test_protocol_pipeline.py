"""Pipeline behaviour end to end: local DP noise scale, error feedback, adaptive clipping, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from fedkey.protocol.errors import PipelineInputError
from fedkey.protocol.pipeline import UpdatePipeline, decode, decode_batch

CLIP_HALF = {"kind": "clip", "norm": 0.5}
CLIP_ONE = {"kind": "clip", "norm": 1.0}


def test_local_dp_noise_on_the_wire_has_the_calibrated_scale() -> None:
    dim = 50_000
    pipe = UpdatePipeline(
        [{"kind": "clip", "norm": 0.5}, {"kind": "gaussian_noise", "epsilon": 1.0, "delta": 1e-5}], dim
    )
    mech = pipe.local_mechanism()
    assert mech is not None and mech.sensitivity == 1.0
    out = decode_batch(pipe.encode(np.zeros((2, dim), np.float32), [1, 2], 0, seed=3).messages, dim)
    assert out.deltas.std() == pytest.approx(mech.scale, rel=0.01)
    assert out.updates[0].local_dp is not None
    assert out.updates[0].local_dp["scale"] == mech.scale


def test_noise_is_private_and_seeds_are_per_phone() -> None:
    dim = 200
    pipe = UpdatePipeline(
        [{"kind": "clip", "norm": 1.0}, {"kind": "gaussian_noise", "epsilon": 2.0, "delta": 1e-5}], dim
    )
    x = np.zeros((1, dim), np.float32)
    a = pipe.encode(x, [1], 0, shared_seeds=[7], private_seeds=[100]).messages[0]
    b = pipe.encode(x, [1], 0, shared_seeds=[7], private_seeds=[101]).messages[0]
    assert decode(a, dim).header.shared_seed == decode(b, dim).header.shared_seed == 7
    assert not np.array_equal(decode(a, dim).delta, decode(b, dim).delta)  # noise depends on the private seed


def test_error_feedback_accumulates_what_compression_dropped() -> None:
    dim = 1000
    rng = np.random.default_rng(0)
    pipe = UpdatePipeline(
        [{"kind": "error_feedback"}, {"kind": "top_k", "k": 50}, {"kind": "quantize", "bits": 2}], dim
    )
    x = rng.normal(size=(2, dim)).astype(np.float32)
    out = pipe.encode(x, [0, 1], 0, seed=0)
    dec = decode_batch(out.messages, dim).deltas
    assert out.residuals is not None
    assert np.allclose(out.residuals, x - dec, atol=1e-5)
    # Over many rounds the running sum of what was sent tracks the running sum of the true deltas.
    res = None
    sent = np.zeros((2, dim))
    for r in range(60):
        step = pipe.encode(x, [0, 1], r, seed=0, residuals=res)
        res = step.residuals
        sent += decode_batch(step.messages, dim).deltas
    assert np.abs(sent / 60 - x).max() < 0.1 * np.abs(x).max()


def test_adaptive_clip_reports_bits_and_uses_the_round_norm() -> None:
    dim = 100
    pipe = UpdatePipeline([{"kind": "clip", "norm": 1.0, "adaptive": {}}], dim)
    x = np.zeros((2, dim), np.float32)
    x[0, 0], x[1, 0] = 0.5, 3.0
    out = pipe.encode(x, [0, 1], 0, seed=0, clip_norm=2.0)
    assert out.within_clip is not None and out.within_clip.tolist() == [True, False]
    ups = decode_batch(out.messages, dim).updates
    assert [u.within_clip for u in ups] == [True, False] and ups[1].clip_norm == 2.0
    assert ups[1].delta[0] == pytest.approx(2.0)


def test_bad_encoder_input_raises() -> None:
    pipe = UpdatePipeline([{"kind": "top_k", "k": 5}], 100)
    good = np.zeros((2, 100), np.float32)
    bad_calls = [
        lambda: pipe.encode(np.zeros((2, 99), np.float32), [0, 1], 0, seed=0),
        lambda: pipe.encode(np.full((2, 100), np.nan, np.float32), [0, 1], 0, seed=0),
        lambda: pipe.encode(good, [0], 0, seed=0),
        lambda: pipe.encode(good, [0, -1], 0, seed=0),
        lambda: pipe.encode(good, [0, 1], 0),
        lambda: pipe.encode(good, [0, 1], 0, seed=0, shared_seeds=[1, 2], private_seeds=[1, 2]),
        lambda: pipe.encode(good, [0, 1], -1, seed=0),
        lambda: pipe.encode(good, [0, 1], 0, seed=0, clip_norm=1.0),
        lambda: pipe.encode(np.zeros((2, 100), np.int32), [0, 1], 0, seed=0),
    ]
    for call in bad_calls:
        with pytest.raises(PipelineInputError):
            call()
    with pytest.raises(PipelineInputError, match="k must be in"):
        UpdatePipeline([{"kind": "top_k", "k": 500}], 100)


def test_values_beyond_float32_are_refused_by_the_encoder() -> None:
    huge = np.array([[3e38, -3e38, 1.0, 0.0]], dtype=np.float32)
    with pytest.raises(PipelineInputError, match="overflows float32"):
        UpdatePipeline([{"kind": "quantize", "bits": 1}], 4).encode(huge, [0], 0, seed=0)
    scaled = UpdatePipeline([{"kind": "random_k", "k": 2}], 4).encode(huge, [0], 0, seed=0)
    assert len(scaled.messages) == 1  # values themselves fit; the server's d/k rescale is checked on decode
