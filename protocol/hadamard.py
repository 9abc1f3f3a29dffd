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

Implementation: `rotate` and `unrotate` work through the [n, m_pad] matrix in cache-sized chunks of
whole blocks (a range of phones × a range of columns), drawing each chunk's signs with the stream's
random access, and run the levels in constant-geometry form (each level reads the butterfly pairs as
neighbours and writes sums to the first half, differences to the second, so the data ends up transposed).
Only where values are stored changes: every value is the same a + b or a − b of the same operands, level
by level, so the bits are those of the in-place order above.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fedkey.protocol.prng import STREAM_SIGNS, derive, stream, stream_into, to_sign


def padded_length(m: int, block: int) -> int:
    """m rounded up to a multiple of `block`."""
    return -(-m // block) * block


# Values worked on at a time: about 256 KiB per float64/uint64 buffer, so a chunk's four buffers (and
# all log2(B) butterfly levels) stay in L2.
_GROUP_VALUES = 32768

_SIGN_BIT = np.uint64(1 << 63)
_ONE_BITS = np.uint64(0x3FF0000000000000)  # binary64 1.0: with the sign bit set or not, ±1.0


def _fwht_into(src: np.ndarray, dst: np.ndarray, block: int) -> np.ndarray:
    """Unnormalised WHT of each length-`block` block of the flat float64 array src, transposed.

    src and dst (same size) are both overwritten. Each level maps position 2p + e to p + e·size/2, a
    rotation of the position's bits, so after log2(block) levels element i of block k sits at position
    i·blocks + k: the result, returned as a flat view of src or dst, is the [block, blocks] transpose.
    """
    half = src.size // 2
    for _ in range(block.bit_length() - 1):
        a, b = src[0::2], src[1::2]
        np.add(a, b, out=dst[:half])
        np.subtract(a, b, out=dst[half:])
        src, dst = dst, src
    return src


def _untransposed(result: np.ndarray, rows: int, block: int) -> np.ndarray:
    """View of `_fwht_into`'s result for `rows` rows of whole blocks as [rows, blocks per row, block]."""
    return result.reshape(block, rows, -1).transpose(1, 2, 0)


def signs(shared_seeds: np.ndarray, length: int) -> np.ndarray:
    """The ±1 sign vector of each phone: outputs 0..length−1 of derive(shared_seed, STREAM_SIGNS)."""
    return to_sign(stream(derive(shared_seeds, STREAM_SIGNS), 0, length))


class _Chunks:
    """Cache-sized chunks (phone range × column range of whole blocks) of an [n, length] matrix, with
    reusable buffers for a chunk's values and its sign stream."""

    def __init__(self, shared_seeds: np.ndarray, n: int, length: int, block: int) -> None:
        self.keys = derive(shared_seeds, STREAM_SIGNS).reshape(-1)
        self.n, self.length, self.block = n, length, block
        self.cols = min(length, max(block, _GROUP_VALUES // max(n, 1) // block * block))
        self.rows = max(1, min(n, _GROUP_VALUES // max(self.cols, 1)))
        size = self.rows * self.cols
        self._values, self._scratch = np.empty(size), np.empty(size)
        self._stream, self._tmp = np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.uint64)

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        for r in range(0, self.n, self.rows):
            for c in range(0, self.length, self.cols):
                yield slice(r, min(r + self.rows, self.n)), slice(c, min(c + self.cols, self.length))

    def values(self, rows: slice, cols: slice) -> np.ndarray:
        """The chunk's value buffer, float64 [rows, cols]."""
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        return self._values[: shape[0] * shape[1]].reshape(shape)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Block-Hadamard of `values` (from `values()`, overwritten), flat and transposed (`_fwht_into`)."""
        flat = values.reshape(-1)
        return _fwht_into(flat, self._scratch[: flat.size], self.block)

    def signs(self, rows: slice, cols: slice) -> np.ndarray:
        """The chunk's part of `signs`, float64 [rows, cols]."""
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        size = shape[0] * shape[1]
        z = self._stream[:size].reshape(shape)
        # mix64's skipped last step (z ^= z >>> 31) keeps the top bit, the only one the sign reads.
        stream_into(self.keys[rows], cols.start, z, self._tmp[:size].reshape(shape), last_step=False)
        np.bitwise_and(z, _SIGN_BIT, out=z)
        np.bitwise_or(z, _ONE_BITS, out=z)
        return z.view(np.float64)


def _blocks(a: np.ndarray, block: int) -> np.ndarray:
    """a [rows, cols] (cols a multiple of block) as a view [rows, cols / block, block]."""
    return a.reshape(a.shape[0], -1, block, copy=False)


def rotate(x: np.ndarray, shared_seeds: np.ndarray, block: int) -> np.ndarray:
    """Pad rows of x [n, m] to a multiple of `block`, flip signs, block-Hadamard; float64 [n, m_pad]."""
    n, m = x.shape
    out = np.empty((n, padded_length(m, block)))
    scale = 1.0 / np.sqrt(float(block))
    chunks = _Chunks(shared_seeds, n, out.shape[1], block)
    for rows, cols in chunks:
        v = chunks.values(rows, cols)
        width = min(cols.stop, m) - cols.start  # ≥ 1: a chunk starts at a block, and m_pad − m < block
        v[:, :width] = x[rows, cols.start : cols.start + width]
        v[:, width:] = 0.0
        np.multiply(v, chunks.signs(rows, cols), out=v)
        x_rot = _untransposed(chunks.transform(v), v.shape[0], block)
        np.multiply(x_rot, scale, out=_blocks(out[rows, cols], block))
    return out


def unrotate(y: np.ndarray, shared_seeds: np.ndarray, block: int, m: int) -> np.ndarray:
    """Inverse of `rotate`: block-Hadamard, scale, flip signs, drop the padding; returns float64 [n, m]."""
    n, length = y.shape
    out = np.empty((n, length))
    scale = 1.0 / np.sqrt(float(block))
    chunks = _Chunks(shared_seeds, n, length, block)
    for rows, cols in chunks:
        if cols.start >= m:
            continue  # only padding, which is dropped
        v = chunks.values(rows, cols)
        v[...] = y[rows, cols]
        flat = chunks.transform(v)
        np.multiply(flat, scale, out=flat)
        x = _untransposed(flat, v.shape[0], block)
        np.multiply(x, _blocks(chunks.signs(rows, cols), block), out=_blocks(out[rows, cols], block))
    return out[:, :m]
