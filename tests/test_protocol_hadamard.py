"""Chunked rotation and rounding reproduce the whole-array formulation of the spec bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from fedkey.protocol import hadamard, quantize
from fedkey.protocol.hadamard import padded_length, rotate, signs, unrotate


def ref_fwht(x: np.ndarray, block: int) -> np.ndarray:
    """The spec's in-place butterfly order over whole rows: h = 1, 2, …; x[i], x[i+h] = a + b, a − b."""
    y = x.copy().reshape(-1, block)
    h = 1
    while h < block:
        v = y.reshape(y.shape[0], block // (2 * h), 2, h)
        a, b = v[:, :, 0, :].copy(), v[:, :, 1, :].copy()
        v[:, :, 0, :], v[:, :, 1, :] = a + b, a - b
        h *= 2
    return y.reshape(x.shape)


def ref_rotate(x: np.ndarray, seeds: np.ndarray, block: int) -> np.ndarray:
    padded = np.zeros((x.shape[0], padded_length(x.shape[1], block)))
    padded[:, : x.shape[1]] = x
    padded *= signs(seeds, padded.shape[1])
    return ref_fwht(padded, block) * (1.0 / np.sqrt(float(block)))


def ref_unrotate(y: np.ndarray, seeds: np.ndarray, block: int, m: int) -> np.ndarray:
    x = ref_fwht(y, block) * (1.0 / np.sqrt(float(block)))
    return (x * signs(seeds, y.shape[1]))[:, :m]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint64)


@pytest.mark.parametrize("group_values", [1, 40, 100, 1 << 20])
@pytest.mark.parametrize("block", [2, 16, 64])
def test_rotation_matches_the_spec_across_chunk_boundaries(
    monkeypatch: pytest.MonkeyPatch, group_values: int, block: int
) -> None:
    """Small chunk settings split rows and columns many ways; values span a wide dynamic range."""
    monkeypatch.setattr(hadamard, "_GROUP_VALUES", group_values)
    rng = np.random.default_rng(block)
    seeds = rng.integers(0, 2**63, size=5, dtype=np.uint64)
    for m in (1, block, 3 * block + 1, 301):
        x = rng.normal(size=(5, m)) * 10.0 ** rng.uniform(-150, 150, size=(5, m))
        y = rotate(x, seeds, block)
        assert (bits(y) == bits(ref_rotate(x, seeds, block))).all()
        assert (bits(unrotate(y, seeds, block, m)) == bits(ref_unrotate(y, seeds, block, m))).all()
        x32 = (rng.normal(size=(1, m)) * 10.0 ** rng.uniform(-30, 30, size=(1, m))).astype(np.float32)
        assert (bits(rotate(x32, seeds[:1], block)) == bits(ref_rotate(x32, seeds[:1], block))).all()


def test_rounding_stream_chunks_do_not_change_the_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 1001))
    seeds = rng.integers(0, 2**63, size=4, dtype=np.uint64)
    whole = quantize.quantize(x, seeds, 4, 64)
    monkeypatch.setattr(quantize, "_ROUNDING_VALUES", 28)
    chunked = quantize.quantize(x, seeds, 4, 64)
    for a, b in zip(whole, chunked, strict=True):
        assert np.array_equal(a, b)
