"""The reproducible random streams of wire format v1 (SplitMix64), vectorised over phones.

Everything the server must regenerate (the random-k mask, the rotation signs) and everything a test
vector must pin down (stochastic rounding) is drawn from SplitMix64 (Steele, Lea & Flood 2014), chosen
because it is a few lines in any language with 64-bit unsigned arithmetic (Kotlin `ULong`/`Long`):

    G = 0x9E3779B97F4A7C15
    mix64(z):  z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9
               z = (z ^ (z >>> 27)) * 0x94D049BB133111EB
               return z ^ (z >>> 31)                     (all arithmetic mod 2^64)
    output j of the stream keyed by k  =  mix64(k + (j + 1) * G)        (j = 0, 1, 2, ...)
    derive(k, v) = mix64(k ^ mix64(v))                    (sub-keys, see STREAM_*)

Output j is a pure function of (key, j), so numpy computes a whole [n_phones, m] block at once, or any
range of its columns (`stream_into` fills reusable cache-sized buffers).
Conversions (WIRE_FORMAT.md §4): uniform u = (r >>> 11) · 2⁻⁵³ in [0, 1); sign = +1 if the top bit of
r is 0 else −1; bounded integer in [0, d) = floor(r · d / 2⁶⁴) (the high 64 bits of the 128-bit product).
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
MASK64 = 0xFFFFFFFFFFFFFFFF

# Purposes of the sub-streams (the v in derive(seed, v)).
STREAM_MASK = 1  # random-k mask, from the shared seed
STREAM_SIGNS = 2  # Hadamard sign flips, from the shared seed
STREAM_ROUNDING = 3  # stochastic rounding, from the private seed
STREAM_NOISE = 4  # local DP noise key (simulator only; not part of the wire format), private seed
STREAM_SHARED = 5  # simulator: shared seed of (run seed, phone, round)
STREAM_PRIVATE = 6  # simulator: private seed of (run seed, phone, round)


def mix64(z: np.ndarray | int) -> np.ndarray:
    """The SplitMix64 finaliser, elementwise on uint64."""
    z = np.array(z, dtype=np.uint64)  # a fresh copy: mix64_inplace works in place
    return mix64_inplace(z, np.empty_like(z))


def mix64_inplace(z: np.ndarray, tmp: np.ndarray, *, last_step: bool = True) -> np.ndarray:
    """mix64 of the uint64 array z, overwriting z (returned); tmp is scratch of z's shape.

    last_step=False leaves out the final z ^= z >>> 31, which changes only the low 33 bits: the top bit,
    all that `to_sign` reads, is already final.
    """
    with np.errstate(over="ignore"):  # wrap-around mod 2^64 is the definition
        for shift, mult in ((30, _M1), (27, _M2)):
            np.right_shift(z, np.uint64(shift), out=tmp)
            np.bitwise_xor(z, tmp, out=z)
            np.multiply(z, mult, out=z)
        if last_step:
            np.right_shift(z, np.uint64(31), out=tmp)
            np.bitwise_xor(z, tmp, out=z)
    return z


def derive(keys: np.ndarray | int, value: np.ndarray | int) -> np.ndarray:
    """Sub-key derive(k, v) = mix64(k ^ mix64(v)), elementwise."""
    return mix64(np.asarray(keys, dtype=np.uint64) ^ mix64(np.asarray(value, dtype=np.uint64)))


def stream(keys: np.ndarray, start: int, count: int) -> np.ndarray:
    """Outputs start .. start+count−1 of each key's stream: array [len(keys), count] of uint64."""
    keys = np.asarray(keys, dtype=np.uint64)
    out = np.empty((keys.size, count), dtype=np.uint64)
    return stream_into(keys, start, out, np.empty_like(out))


def stream_into(
    keys: np.ndarray, start: int, out: np.ndarray, tmp: np.ndarray, *, last_step: bool = True
) -> np.ndarray:
    """`stream(keys, start, out.shape[1])` written into out (returned), tmp scratch of out's shape.

    For callers that reuse cache-sized buffers; last_step as in `mix64_inplace`.
    """
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 1)
    j = np.arange(start + 1, start + out.shape[1] + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.add(keys, j * GOLDEN, out=out)
    return mix64_inplace(out, tmp, last_step=last_step)


def to_uniform(r: np.ndarray) -> np.ndarray:
    """uint64 → float64 uniform in [0, 1): (r >>> 11) · 2⁻⁵³."""
    return (r >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def to_sign(r: np.ndarray) -> np.ndarray:
    """uint64 → ±1.0 from the top bit (0 → +1)."""
    return 1.0 - 2.0 * (r >> np.uint64(63)).astype(np.float64)


def to_bounded(r: np.ndarray, bound: int) -> np.ndarray:
    """uint64 → integer in [0, bound) as floor(r · bound / 2⁶⁴), for bound < 2³²; returns int64."""
    if not 0 < bound < 2**32:
        raise ValueError(f"bound must be in [1, 2^32), got {bound}")
    d = np.uint64(bound)
    hi = r >> np.uint64(32)
    lo = r & np.uint64(0xFFFFFFFF)
    # hi·d < 2^64 and hi·d + (lo·d >> 32) < 2^64, so nothing wraps here.
    return ((hi * d + ((lo * d) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


def simulation_seeds(run_seed: int, phone_ids: np.ndarray, round: int) -> tuple[np.ndarray, np.ndarray]:
    """(shared, private) seeds of simulated phones: derive(derive(derive(run_seed, phone), round), 5|6)."""
    base = derive(
        derive(
            np.full(len(phone_ids), run_seed & MASK64, dtype=np.uint64),
            np.asarray(phone_ids, dtype=np.uint64),
        ),
        np.uint64(round & MASK64),
    )
    return derive(base, STREAM_SHARED), derive(base, STREAM_PRIVATE)
