"""SplitMix64 streams and their conversions match a plain sequential reference written from the spec."""

from __future__ import annotations

import numpy as np

from fedkey.protocol.prng import MASK64, derive, mix64, stream, to_bounded, to_sign, to_uniform
from fedkey.protocol.sparsify import random_k_masks

G = 0x9E3779B97F4A7C15


def ref_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def ref_stream(key: int, count: int) -> list[int]:
    return [ref_mix((key + (j + 1) * G) & MASK64) for j in range(count)]


def test_splitmix64_known_values() -> None:
    # The published first outputs of SplitMix64 seeded with 1234567.
    assert stream(np.array([1234567], dtype=np.uint64), 0, 3)[0].tolist() == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
    ]


def test_vectorised_stream_matches_reference() -> None:
    keys = [0, 1, MASK64, 0xDEADBEEFCAFEBABE]
    out = stream(np.array(keys, dtype=np.uint64), 5, 7)
    for row, key in zip(out, keys, strict=True):
        assert row.tolist() == ref_stream(key, 12)[5:]
    assert int(derive(np.uint64(7), 3)) == ref_mix(7 ^ ref_mix(3))
    assert int(mix64(np.uint64(0))) == 0


def test_conversions() -> None:
    r = np.array([0, 1 << 63, MASK64, 12345678901234567890], dtype=np.uint64)
    assert to_sign(r).tolist() == [1.0, -1.0, -1.0, -1.0]
    assert to_uniform(r).tolist() == [(int(v) >> 11) * 2.0**-53 for v in r]
    for bound in (1, 7, 1_246_874, 2**32 - 1):
        assert to_bounded(r, bound).tolist() == [(int(v) * bound) >> 64 for v in r]


def test_random_k_mask_matches_spec() -> None:
    """First k distinct draws of floor(r·d/2^64), sorted — written out sequentially."""
    seeds = [3, 99, 2**63 + 5]
    dim, k = 50, 30  # many duplicates: exercises the skip rule
    masks = random_k_masks(np.array(seeds, dtype=np.uint64), dim, k)
    for seed, mask in zip(seeds, masks, strict=True):
        key = ref_mix(seed ^ ref_mix(1))
        chosen: list[int] = []
        j = 0
        while len(chosen) < k:
            c = (ref_mix((key + (j + 1) * G) & MASK64) * dim) >> 64
            if c not in chosen:
                chosen.append(c)
            j += 1
        assert mask.tolist() == sorted(chosen)
