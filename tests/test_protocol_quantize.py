"""Quantizer, rotation and sparsifiers: unbiasedness (statistical, fixed seeds), error bounds, inverses."""

from __future__ import annotations

import numpy as np
import pytest

from fedkey.protocol.hadamard import rotate, unrotate
from fedkey.protocol.pipeline import UpdatePipeline, decode_batch
from fedkey.protocol.quantize import dequantize, pack, quantize, unpack
from fedkey.protocol.sparsify import decode_gaps, encode_gaps, top_k_indices

TRIALS = 4000


def assert_unbiased(decoded: np.ndarray, truth: np.ndarray) -> None:
    """Every coordinate's mean error within 5 standard errors (+1e-6 for float32 rounding of ranges)."""
    err = decoded - truth
    bound = 5.0 * err.std(axis=0) / np.sqrt(err.shape[0]) + 1e-6
    assert (np.abs(err.mean(axis=0)) <= bound).all()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quantizer_is_unbiased_and_bounded(bits: int) -> None:
    x = np.random.default_rng(0).normal(size=64)
    rows = np.tile(x, (TRIALS, 1))
    codes, lo, scale = quantize(rows, np.arange(TRIALS, dtype=np.uint64), bits, chunk=16)
    dec = dequantize(codes, lo, scale, 16)
    # Error bounded by one quantization step of the chunk.
    step = np.repeat(scale.astype(np.float64), 16, axis=1)
    assert (np.abs(dec - rows) <= step * (1 + 1e-12)).all()
    # Unbiased (64 coordinates, fixed seeds).
    assert_unbiased(dec, rows)
    assert np.abs(dec.mean(axis=0) - x).max() < 0.05 * np.abs(x).max()


def test_chunk_ranges_cover_the_values() -> None:
    x = np.array([[0.1, 0.2, 0.3, 1e-8, -7.3]])
    codes, lo, scale = quantize(x, np.array([1], dtype=np.uint64), 4, chunk=2)
    mins = [0.1, 1e-8, -7.3]
    maxs = [0.2, 0.3, -7.3]
    assert (lo[0].astype(np.float64) <= mins).all()
    assert (lo[0].astype(np.float64) + 15 * scale[0].astype(np.float64) >= maxs).all()
    dec = dequantize(codes, lo, scale, 2)
    assert np.abs(dec - x).max() <= scale.max()
    const = np.full((1, 8), 0.5)
    c, lo2, s2 = quantize(const, np.array([1], dtype=np.uint64), 2, chunk=8)
    assert s2[0, 0] == 0 and (dequantize(c, lo2, s2, 8) == 0.5).all()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_round_trip(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 1 << bits, size=(3, 37)).astype(np.uint8)
    assert (unpack(pack(codes, bits), bits, 37) == codes).all()
    assert pack(np.array([[1, 0, 1, 1, 0, 0, 0, 1]], dtype=np.uint8), 1).tolist() == [[0b10001101]]


def test_rotation_is_orthogonal_and_invertible() -> None:
    x = np.random.default_rng(2).normal(size=(5, 1000))
    seeds = np.arange(5, dtype=np.uint64)
    y = rotate(x, seeds, 256)
    assert y.shape == (5, 1024)
    assert np.allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    assert np.allclose(unrotate(y, seeds, 256, 1000), x)
    spike = np.zeros((1, 256))
    spike[0, 3] = 1.0
    assert np.allclose(np.abs(rotate(spike, seeds[:1], 256)), 1 / 16)  # energy spread evenly


def test_top_k_breaks_ties_toward_lower_index() -> None:
    x = np.array([[1.0, -3.0, 2.0, 2.0, -2.0, 0.5]])
    assert top_k_indices(x, 3).tolist() == [[1, 2, 3]]
    assert top_k_indices(x, 6).tolist() == [[0, 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("kind", ["heavy_tailed", "ties", "clustered", "sparse"])
def test_top_k_matches_a_full_sort_on_long_rows(kind: str) -> None:
    """Long rows take the sampled-threshold path; it must pick exactly what a stable full sort picks."""
    rng = np.random.default_rng(1)
    dim = 200_003
    if kind == "heavy_tailed":
        x = rng.standard_normal((3, dim)) * rng.exponential(1, (3, dim))
    elif kind == "ties":  # few distinct magnitudes: many ties at the threshold
        x = rng.integers(-3, 4, (3, dim)).astype(np.float64)
    elif kind == "clustered":  # the large values sit in one block the strided sample mostly misses
        x = rng.standard_normal((3, dim)) * 1e-3
        x[:, 5000:30000] += rng.standard_normal((3, 25_000))
    else:  # fewer non-zeros than k
        x = np.zeros((3, dim))
        x[:, rng.choice(dim, 500, replace=False)] = 1.0
    x = x.astype(np.float32)
    for k in (1, 977, dim // 10, dim - 1):
        want = np.sort(np.argsort(-np.abs(x), axis=1, kind="stable")[:, :k], axis=1)
        assert np.array_equal(top_k_indices(x, k), want), k


def test_varint_gaps() -> None:
    idx = np.array([0, 1, 127, 128 + 127, 100_000, 2**32 - 2])
    blob = encode_gaps(idx)
    assert blob[:2] == bytes([0, 0])
    assert decode_gaps(blob, len(idx), 2**32 - 1).tolist() == idx.tolist()
    with pytest.raises(ValueError):
        decode_gaps(blob, len(idx), 100_001)
    with pytest.raises(ValueError):
        decode_gaps(blob[:-1], len(idx), 2**32 - 1)


def test_random_k_decoding_is_unbiased() -> None:
    dim = 40
    x = np.random.default_rng(3).normal(size=dim).astype(np.float32)
    pipe = UpdatePipeline([{"kind": "random_k", "k": 4}, {"kind": "quantize", "bits": 2, "chunk": 4}], dim)
    out = pipe.encode(np.tile(x, (TRIALS, 1)), np.arange(TRIALS), 0, seed=11)
    dec = decode_batch(out.messages, dim).deltas.astype(np.float64)
    assert_unbiased(dec, np.tile(x, (TRIALS, 1)))
