"""Randomised block Hadamard rotation (fast Walsh–Hadamard transform), vectorised over phones.

A vector of length m is zero-padded to a multiple of the block size B (a power of two), each block is
multiplied by random signs D (from the shared seed's STREAM_SIGNS stream, one sign per padded
coordinate, in order) and then by the orthonormal Hadamard matrix H_B / √B. The inverse is D · H_B / √B
(H is symmetric and H² = B·I). Rotation spreads a vector's energy evenly over coordinates, so the
per-chunk range a quantizer has to cover shrinks (Suresh et al. 2017, "Distributed Mean Estimation
with Limited Communication").

The butterfly order is part of the spec (so Kotlin reproduces the same bits): for h = 1, 2, 4, …, B/2,
for every index i in the block with (i & h) == 0: (a, b) = (x[i], x[i+h]); x[i] = a + b; x[i+h] = a − b;
finally every element is multiplied by s = 1/√B (computed once in binary64). All arithmetic is binary64.
"""

from __future__ import annotations

import numpy as np

from fedkey.protocol.prng import STREAM_SIGNS, derive, stream, to_sign


def padded_length(m: int, block: int) -> int:
    """m rounded up to a multiple of `block`."""
    return -(-m // block) * block


# Blocks transformed together: about 256 KiB of float64, so all log2(B) levels run in cache.
_GROUP_VALUES = 32768


def fwht_blocks(x: np.ndarray, block: int) -> np.ndarray:
    """Unnormalised Walsh–Hadamard transform of each length-`block` block of the rows of x (float64)."""
    n, length = x.shape
    y = np.array(x, dtype=np.float64).reshape(n * (length // block), block)
    per_group = max(1, _GROUP_VALUES // block)
    diff = np.empty((per_group, block // 2))
    for start in range(0, y.shape[0], per_group):
        g = y[start : start + per_group]
        rows = g.shape[0]
        h = 1
        while h < block:
            v = g.reshape(rows, block // (2 * h), 2, h)
            a, b = v[:, :, 0, :], v[:, :, 1, :]
            d = diff[:rows].reshape(rows, block // (2 * h), h)
            np.subtract(a, b, out=d)
            a += b
            b[...] = d
            h *= 2
    return y.reshape(n, length)


def signs(shared_seeds: np.ndarray, length: int) -> np.ndarray:
    """The ±1 sign vector of each phone: outputs 0..length−1 of derive(shared_seed, STREAM_SIGNS)."""
    return to_sign(stream(derive(shared_seeds, STREAM_SIGNS), 0, length))


def rotate(x: np.ndarray, shared_seeds: np.ndarray, block: int) -> np.ndarray:
    """Pad rows of x [n, m] to a multiple of `block`, flip signs, block-Hadamard; float64 [n, m_pad]."""
    n, m = x.shape
    padded = np.zeros((n, padded_length(m, block)), dtype=np.float64)
    padded[:, :m] = x
    padded *= signs(shared_seeds, padded.shape[1])
    return fwht_blocks(padded, block) * (1.0 / np.sqrt(float(block)))


def unrotate(y: np.ndarray, shared_seeds: np.ndarray, block: int, m: int) -> np.ndarray:
    """Inverse of `rotate`: block-Hadamard, scale, flip signs, drop the padding; returns float64 [n, m]."""
    x = fwht_blocks(np.asarray(y, dtype=np.float64), block) * (1.0 / np.sqrt(float(block)))
    x *= signs(shared_seeds, y.shape[1])
    return x[:, :m]
