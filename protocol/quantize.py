"""Unbiased stochastic b-bit quantization with a per-chunk range, and bit packing (wire format v1 §6).

A row of m values is cut into chunks of `chunk` values (the last may be shorter). For each chunk:

    lo  = the largest float32 <= min(chunk)                        (rounded down: lo ≤ every value)
    s   = the smallest float32 >= (max(chunk) − lo) / L, L = 2^b − 1   (rounded up: lo + L·s ≥ max)
    t_i = (x_i − lo) / s                   (binary64; t_i = 0 when s == 0)
    q_i = min(L, floor(t_i + u_i)),  u_i uniform in [0, 1) from the rounding stream

and the decoder returns lo + q_i·s (binary64). E[q_i] = t_i, so the decoded value is an unbiased
estimate of x_i, with error |x̂_i − x_i| < s. Codes are packed LSB-first: value j occupies bits
(j·b mod 8) … of byte floor(j·b / 8); with b ∈ {1, 2, 4, 8} no code straddles a byte.
"""

from __future__ import annotations

import numpy as np

from fedkey.protocol.prng import STREAM_ROUNDING, derive, stream_into, to_uniform

ALLOWED_BITS = (1, 2, 4, 8)

# Rounding-stream values drawn at a time (all phones, a range of columns), so its temporaries stay in cache.
_ROUNDING_VALUES = 32768


def num_chunks(m: int, chunk: int) -> int:
    return -(-m // chunk)


def _round_f32(x: np.ndarray, direction: int) -> np.ndarray:
    """float64 → float32, rounding down (direction −1) or up (+1) instead of to nearest."""
    with np.errstate(over="ignore"):  # out-of-range becomes ±inf, which the encoder then refuses
        f = x.astype(np.float32)
    wrong = f.astype(np.float64) > x if direction < 0 else f.astype(np.float64) < x
    toward = np.float32(-np.inf) if direction < 0 else np.float32(np.inf)
    return np.where(wrong, np.nextafter(f, toward), f)


def chunk_ranges(x: np.ndarray, chunk: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-chunk (lo, scale) as float32 arrays [n, n_chunks] for float64 rows x [n, m]."""
    n, m = x.shape
    k = num_chunks(m, chunk)
    pad = k * chunk - m
    lo64 = np.empty((n, k))
    hi64 = np.empty((n, k))
    full = (m // chunk) * chunk
    if full:
        blocks = x[:, :full].reshape(n, m // chunk, chunk)
        lo64[:, : m // chunk] = blocks.min(axis=2)
        hi64[:, : m // chunk] = blocks.max(axis=2)
    if pad:
        tail = x[:, full:]
        lo64[:, -1] = tail.min(axis=1)
        hi64[:, -1] = tail.max(axis=1)
    lo = _round_f32(lo64, -1)
    levels = (1 << bits) - 1
    scale = _round_f32((hi64 - lo.astype(np.float64)) / levels, +1)
    return lo, scale


def _chunked(x: np.ndarray, chunk: int) -> np.ndarray:
    """View (or zero-padded copy) of rows [n, m] as [n, chunks, chunk]."""
    n, m = x.shape
    k = num_chunks(m, chunk)
    if k * chunk == m:
        return x.reshape(n, k, chunk)
    padded = np.zeros((n, k * chunk), dtype=x.dtype)
    padded[:, :m] = x
    return padded.reshape(n, k, chunk)


def quantize(
    x: np.ndarray, private_seeds: np.ndarray, bits: int, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize float64 rows [n, m]; returns (codes uint8 [n, m], lo f32 [n, k], scale f32 [n, k]).

    Works through a range of columns at a time (whole chunks, all phones), so t, the rounding stream and
    its temporaries stay in cache; the arithmetic is the module docstring's, operation for operation.
    """
    n, m = x.shape
    lo, scale = chunk_ranges(x, chunk, bits)
    lo64 = lo.astype(np.float64)
    # a chunk of equal values has s == 0 and x − lo == 0 everywhere: dividing by inf gives its t = 0
    s64 = np.where(scale == 0, np.inf, scale.astype(np.float64))
    levels = (1 << bits) - 1
    codes = np.empty((n, m), dtype=np.uint8)
    keys = derive(private_seeds, STREAM_ROUNDING)
    width = max(1, _ROUNDING_VALUES // max(n, 1) // chunk) * chunk
    t_buf, r_buf, tmp = np.empty((n, width)), np.empty((n, width), np.uint64), np.empty((n, width), np.uint64)
    for start in range(0, m, width):
        stop = min(m, start + width)
        w, first, last = stop - start, start // chunk, -(-stop // chunk)
        t = t_buf[:, :w]
        np.subtract(x[:, start:stop], np.repeat(lo64[:, first:last], chunk, axis=1)[:, :w], out=t)
        with np.errstate(divide="ignore", invalid="ignore"):  # an overflowing range is refused by the caller
            np.divide(t, np.repeat(s64[:, first:last], chunk, axis=1)[:, :w], out=t)
            t += to_uniform(stream_into(keys, start, r_buf[:, :w], tmp[:, :w]))
            np.floor(t, out=t)
            np.minimum(t, levels, out=t)  # t ≥ 0: lo ≤ every value
            codes[:, start:stop] = t
    return codes, lo, scale


def dequantize(codes: np.ndarray, lo: np.ndarray, scale: np.ndarray, chunk: int) -> np.ndarray:
    """lo + q·s per chunk, binary64 [n, m]."""
    n, m = codes.shape
    q = _chunked(codes, chunk).astype(np.float64)
    q *= scale.astype(np.float64)[:, :, None]
    q += lo.astype(np.float64)[:, :, None]
    return q.reshape(n, -1)[:, :m]


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes [n, m] (values < 2^bits) LSB-first into bytes [n, ceil(m·bits/8)]."""
    n, m = codes.shape
    per = 8 // bits
    if m % per:
        codes = np.concatenate([codes, np.zeros((n, per - m % per), dtype=np.uint8)], axis=1)
    packed = codes[:, 0::per].copy()
    for k in range(1, per):  # code j of a byte goes to bits j·b … j·b + b − 1
        packed |= codes[:, k::per] << np.uint8(k * bits)
    return packed


def unpack(packed: np.ndarray, bits: int, m: int) -> np.ndarray:
    """Inverse of `pack`: bytes [n, nbytes] → codes uint8 [n, m]."""
    n, per = packed.shape[0], 8 // bits
    mask = np.uint8((1 << bits) - 1)
    codes = np.empty((n, packed.shape[1] * per), dtype=np.uint8)
    for k in range(per):
        np.bitwise_and(packed >> np.uint8(k * bits), mask, out=codes[:, k::per])
    return codes[:, :m]
