"""Sparsification, vectorised over phones: the random-k mask, top-k selection, and the index code.

Random-k (wire format v1 §5.1): phone i's mask is the first k *distinct* values of
c_j = floor(r_j · d / 2⁶⁴), r_j = output j of the stream derive(shared_seed, STREAM_MASK), j = 0, 1, …
(duplicates are skipped), sorted ascending. It is a uniformly random k-subset, data-independent, and the
server regenerates it from the seed in the header, so the indices cost no bytes.

Top-k (§5.2): the k coordinates of largest |x|, ties broken toward the lower index, sent as ascending
indices coded as LEB128 varints of the gaps g_0 = i_0, g_j = i_j − i_{j−1} − 1.
"""

from __future__ import annotations

import numpy as np

from fedkey.protocol.prng import STREAM_MASK, derive, stream, to_bounded


def random_k_masks(shared_seeds: np.ndarray, dim: int, k: int) -> np.ndarray:
    """Sorted index masks [n, k] (int64) of the random-k sparsifier for each phone's shared seed."""
    if not 0 < k <= dim:
        raise ValueError(f"k must be in [1, {dim}], got {k}")
    keys = derive(np.asarray(shared_seeds, dtype=np.uint64), STREAM_MASK)
    n = keys.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    draws = k + 16 + int(2 * k * k / dim)  # expected duplicates ≈ k²/(2d): draw a few more up front
    cands = to_bounded(stream(keys, 0, draws), dim)
    order = np.argsort(cands, axis=1, kind="stable")
    sorted_c = np.take_along_axis(cands, order, axis=1)
    first_sorted = np.ones_like(sorted_c, dtype=bool)
    first_sorted[:, 1:] = sorted_c[:, 1:] != sorted_c[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    rank = np.cumsum(first, axis=1)
    enough = rank[:, -1] >= k
    keep = first & (rank <= k)
    if enough.all():
        out[:] = np.sort(cands[keep].reshape(n, k), axis=1)
        return out
    for i in range(n):
        if enough[i]:
            out[i] = np.sort(cands[i][keep[i]])
        else:
            out[i] = _random_k_sequential(keys[i], dim, k, draws, list(cands[i][first[i]]))
    return out


def _random_k_sequential(key: np.uint64, dim: int, k: int, start: int, seen_in_order: list[int]) -> np.ndarray:
    """Continue drawing stream outputs start, start+1, … until k distinct indices (rare slow path)."""
    seen = set(seen_in_order)
    j = start
    batch = max(1024, k)
    while len(seen) < k:
        for c in to_bounded(stream(np.array([key]), j, batch), dim)[0]:
            if len(seen) == k:
                break
            seen.add(int(c))
        j += batch
    return np.array(sorted(seen), dtype=np.int64)


def top_k_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices [n, k] of the k largest |x| per row, ties broken toward the lower index."""
    n, dim = x.shape
    if not 0 < k <= dim:
        raise ValueError(f"k must be in [1, {dim}], got {k}")
    if k == dim:
        return np.broadcast_to(np.arange(dim, dtype=np.int64), (n, dim)).copy()
    return np.stack([_top_k_row(np.abs(row), k) for row in x]).astype(np.int64)


#: Coordinates sampled to guess a row's top-k threshold (see :func:`_top_k_row`).
_THRESHOLD_SAMPLE = 8192


def _top_k_row(mag: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the k largest entries of ``mag``, ties toward the lower index.

    A full-length partition costs most of the encoding. Instead a strided sample guesses a threshold a
    little below the k-th largest value; the coordinates at or above it (a few percent more than k)
    hold every top-k coordinate and every tie at the true threshold, so the exact selection runs on
    them alone. A guess that leaves fewer than k candidates falls back to the whole row.
    """
    dim = mag.shape[0]
    candidates = None
    if dim > 4 * _THRESHOLD_SAMPLE:
        sample = np.sort(mag[:: dim // _THRESHOLD_SAMPLE])
        # a sample quantile's fraction has standard deviation sqrt(p(1-p)/n): aim 2% + 4 of those above k
        p = k / dim
        above_fraction = min(1.0, 1.02 * p + 4 * np.sqrt(p * (1 - p) / sample.size))
        above = np.flatnonzero(mag >= sample[max(int(sample.size * (1 - above_fraction)), 0)])
        if above.size >= k:
            candidates = above
    if candidates is None:
        candidates = np.arange(dim)
    values = mag[candidates]
    thresh = np.partition(values, values.size - k)[values.size - k]
    greater = values > thresh
    equal = values == thresh
    need = k - int(greater.sum())
    keep = greater | (equal & (np.cumsum(equal) <= need))
    return candidates[keep]


def encode_gaps(indices: np.ndarray) -> bytes:
    """LEB128 varints of the gaps of one sorted index row."""
    idx = np.asarray(indices, dtype=np.int64)
    gaps = np.diff(idx, prepend=-1) - 1
    if gaps.size and gaps.min() < 0:
        raise ValueError("indices must be strictly increasing")
    g = gaps.astype(np.uint64)
    nbytes = np.ones(g.shape, dtype=np.int64)
    for shift in range(7, 7 * _varint_bytes(int(g.max(initial=0))), 7):  # only the shifts the largest gap needs
        nbytes += (g >> np.uint64(shift)) > 0
    total = int(nbytes.sum())
    out = np.empty(total, dtype=np.uint8)
    starts = np.cumsum(nbytes) - nbytes
    for b in range(int(nbytes.max(initial=0))):
        has = nbytes > b
        byte = ((g[has] >> np.uint64(7 * b)) & np.uint64(0x7F)).astype(np.uint8)
        more = nbytes[has] > b + 1
        out[starts[has] + b] = byte | (more.astype(np.uint8) << 7)
    return out.tobytes()


def _varint_bytes(value: int) -> int:
    """Bytes of one LEB128 varint of ``value``."""
    return max(1, -(-value.bit_length() // 7))


def decode_gaps(blob: bytes | np.ndarray, count: int, dim: int) -> np.ndarray:
    """Parse exactly `count` varints from blob into sorted indices < dim; raises ValueError if malformed."""
    data = np.frombuffer(blob, dtype=np.uint8) if isinstance(blob, bytes | bytearray | memoryview) else blob
    ends = np.flatnonzero(data < 0x80)
    if ends.size != count or (count and ends[-1] != data.size - 1) or (count == 0 and data.size):
        raise ValueError(f"index section holds {ends.size} complete varints in {data.size} bytes, expected {count}")
    starts = np.concatenate(([0], ends[:-1] + 1)) if count else ends
    lengths = ends - starts + 1
    if lengths.size and lengths.max() > 5:
        raise ValueError("index varint longer than 5 bytes (value >= 2^35)")
    gaps = np.zeros(count, dtype=np.int64)
    for b in range(int(lengths.max(initial=0))):
        has = lengths > b
        gaps[has] |= (data[starts[has] + b].astype(np.int64) & 0x7F) << (7 * b)
    indices = np.cumsum(gaps + 1) - 1
    if count and indices[-1] >= dim:
        raise ValueError(f"index {int(indices[-1])} out of range for dimension {dim}")
    return indices
