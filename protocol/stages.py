"""The update-pipeline stages at run time: a device half and a server half each, vectorised over phones.

The shape follows pfl-research's postprocessors (`postprocess_one_user` / `postprocess_server`): each
stage transforms a `Batch` (one row per phone) on the phone, and undoes or finishes its work on the
server, where the halves run in reverse order. A stage also knows its wire record (WIRE_FORMAT.md §3):
a kind code and its fixed-size parameters, so the server can rebuild the stage list from a message alone.

Lengths are static: the stage list is built for a model dimension d, and each stage knows its input
and output length (sparsifiers map d → k, rotation pads to a multiple of its block), which is what lets
the decoder compute every section size before reading it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedkey.privacy.mechanisms import add_gaussian_noise, add_laplace_noise, clip_rows
from fedkey.protocol.errors import PipelineInputError, StageError
from fedkey.protocol.hadamard import padded_length, rotate, unrotate
from fedkey.protocol.prng import STREAM_NOISE, derive
from fedkey.protocol.quantize import ALLOWED_BITS, dequantize, quantize
from fedkey.protocol.sparsify import random_k_masks, top_k_indices


@dataclass
class Batch:
    """The state of n phones' updates between stages (float64 values, one row per phone)."""

    dim: int
    shared_seeds: np.ndarray  # uint64 [n]
    private_seeds: np.ndarray  # uint64 [n]; all zero on the server
    values: np.ndarray | None = None  # float64 [n, m]; None while quantized
    indices: np.ndarray | None = None  # top-k indices [n, k], sent on the wire
    codes: np.ndarray | None = None  # uint8 [n, m] quantization codes
    lo: np.ndarray | None = None  # float32 [n, chunks]
    scale: np.ndarray | None = None  # float32 [n, chunks]
    within_clip: np.ndarray | None = None  # bool [n]: norm <= C before clipping (adaptive clipping)
    residuals: np.ndarray | None = None  # error feedback state in (device), [n, d]
    ef_reference: np.ndarray | None = None  # values at the error-feedback point (device)

    @property
    def n(self) -> int:
        return int(self.shared_seeds.shape[0])

    def copy_payload(self) -> Batch:
        """A copy holding only what the wire carries (for the device's own decode in error feedback)."""
        return Batch(
            self.dim,
            self.shared_seeds,
            np.zeros_like(self.private_seeds),
            None if self.values is None else self.values.copy(),
            self.indices,
            self.codes,
            self.lo,
            self.scale,
            self.within_clip,
        )


class Stage:
    """One stage: `device` and `server` transform a Batch in place; `params` is its wire record body."""

    kind: ClassVar[str]
    code: ClassVar[int]
    in_len: int
    out_len: int

    def device(self, batch: Batch) -> None:
        """Phone half (identity unless overridden)."""

    def server(self, batch: Batch) -> None:
        """Server half (identity unless overridden)."""

    def params(self) -> bytes:
        return b""

    def row_params(self, batch: Batch, row: int) -> bytes:
        """Record body for one phone (only clip carries a per-phone bit)."""
        return self.params()

    def describe(self) -> dict[str, object]:
        """Plain-data description (for logs, ledgers and the decoded metadata)."""
        return {"kind": self.kind}


class Clip(Stage):
    """L2 or L1 clipping to C (stored as float32 on the wire; the device clips to that float32 value)."""

    kind, code = "clip", 1
    FORMAT = struct.Struct("<BBf")

    def __init__(self, dim: int, norm: float, ord: int = 2, adaptive: bool = False) -> None:
        self.in_len = self.out_len = dim
        self.norm = float(np.float32(norm))
        if not (math.isfinite(self.norm) and self.norm > 0):
            raise StageError(f"clip norm must be positive and finite, got {norm}")
        if ord not in (1, 2):
            raise StageError(f"clip ord must be 1 or 2, got {ord}")
        self.ord, self.adaptive = ord, adaptive

    def device(self, batch: Batch) -> None:
        assert batch.values is not None
        batch.values, within = clip_rows(batch.values, self.norm, self.ord)
        batch.within_clip = within if self.adaptive else None

    def params(self) -> bytes:
        return self.FORMAT.pack(self.ord, int(self.adaptive), self.norm)

    def row_params(self, batch: Batch, row: int) -> bytes:
        within = bool(batch.within_clip[row]) if batch.within_clip is not None else False
        return self.FORMAT.pack(self.ord, int(self.adaptive) | (int(within) << 1), self.norm)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "norm": self.norm, "ord": self.ord, "adaptive": self.adaptive}


class _Noise(Stage):
    FORMAT = struct.Struct("<dd")
    mechanism: ClassVar[str]

    def __init__(self, length: int, scale: float, noise_multiplier: float) -> None:
        self.in_len = self.out_len = length
        for name, v in (("scale", scale), ("noise_multiplier", noise_multiplier)):
            if not (math.isfinite(v) and v > 0):
                raise StageError(f"{self.kind}: {name} must be positive and finite, got {v}")
        self.scale, self.noise_multiplier = float(scale), float(noise_multiplier)

    def params(self) -> bytes:
        return self.FORMAT.pack(self.scale, self.noise_multiplier)

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "mechanism": self.mechanism,
            "scale": self.scale,
            "noise_multiplier": self.noise_multiplier,
        }


class GaussianNoise(_Noise):
    """Local DP: N(0, σ²) per coordinate from the phone's private noise key (never from the wire)."""

    kind, code, mechanism = "gaussian_noise", 2, "gaussian"

    def device(self, batch: Batch) -> None:
        assert batch.values is not None
        batch.values = add_gaussian_noise(batch.values, self.scale, derive(batch.private_seeds, STREAM_NOISE))


class LaplaceNoise(_Noise):
    """Local DP: Laplace(b) per coordinate from the phone's private noise key."""

    kind, code, mechanism = "laplace_noise", 3, "laplace"

    def device(self, batch: Batch) -> None:
        assert batch.values is not None
        batch.values = add_laplace_noise(batch.values, self.scale, derive(batch.private_seeds, STREAM_NOISE))


class RandomK(Stage):
    """Keep a seed-derived uniformly random k-subset; the server scatters and (optionally) scales by d/k."""

    kind, code = "random_k", 4
    FORMAT = struct.Struct("<IB")

    def __init__(self, dim: int, k: int, unbiased: bool = True) -> None:
        if not 1 <= k <= dim:
            raise StageError(f"random_k: k must be in [1, {dim}], got {k}")
        self.in_len, self.out_len, self.k, self.unbiased = dim, k, k, unbiased

    def device(self, batch: Batch) -> None:
        assert batch.values is not None
        masks = random_k_masks(batch.shared_seeds, self.in_len, self.k)
        batch.values = np.take_along_axis(batch.values, masks, axis=1)

    def server(self, batch: Batch) -> None:
        assert batch.values is not None
        masks = random_k_masks(batch.shared_seeds, self.in_len, self.k)
        dense = np.zeros((batch.n, self.in_len))
        factor = self.in_len / self.k if self.unbiased else 1.0
        np.put_along_axis(dense, masks, batch.values * factor, axis=1)
        batch.values = dense

    def params(self) -> bytes:
        return self.FORMAT.pack(self.k, int(self.unbiased))

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "k": self.k, "unbiased": self.unbiased}


class TopK(Stage):
    """Keep the k largest-magnitude coordinates; their indices travel in the index section."""

    kind, code = "top_k", 5
    FORMAT = struct.Struct("<I")

    def __init__(self, dim: int, k: int) -> None:
        if not 1 <= k <= dim:
            raise StageError(f"top_k: k must be in [1, {dim}], got {k}")
        self.in_len, self.out_len, self.k = dim, k, k

    def device(self, batch: Batch) -> None:
        assert batch.values is not None
        batch.indices = top_k_indices(batch.values, self.k)
        batch.values = np.take_along_axis(batch.values, batch.indices, axis=1).astype(np.float64)

    def server(self, batch: Batch) -> None:
        assert batch.values is not None and batch.indices is not None
        dense = np.zeros((batch.n, self.in_len))
        np.put_along_axis(dense, batch.indices, batch.values, axis=1)
        batch.values = dense

    def params(self) -> bytes:
        return self.FORMAT.pack(self.k)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "k": self.k}


class ErrorFeedback(Stage):
    """Add the phone's residual; the pipeline stores the new residual after encoding (Seide et al. 2014)."""

    kind, code = "error_feedback", 6

    def __init__(self, dim: int) -> None:
        self.in_len = self.out_len = dim

    def device(self, batch: Batch) -> None:
        assert batch.values is not None
        if batch.residuals is not None:
            batch.values = batch.values + batch.residuals
        batch.ef_reference = batch.values.copy()


class Rotate(Stage):
    """Random signs + block Hadamard (seeded by the shared seed); pads to a multiple of the block."""

    kind, code = "rotate", 7
    FORMAT = struct.Struct("<B")

    def __init__(self, length: int, block: int) -> None:
        if block < 2 or block > 65536 or block & (block - 1):
            raise StageError(f"rotate: block must be a power of two in [2, 65536], got {block}")
        self.block, self.in_len, self.out_len = block, length, padded_length(length, block)

    def device(self, batch: Batch) -> None:
        assert batch.values is not None
        batch.values = rotate(batch.values, batch.shared_seeds, self.block)

    def server(self, batch: Batch) -> None:
        assert batch.values is not None
        batch.values = unrotate(batch.values, batch.shared_seeds, self.block, self.in_len)

    def params(self) -> bytes:
        return self.FORMAT.pack(self.block.bit_length() - 1)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "block": self.block}


class Quantize(Stage):
    """Unbiased stochastic b-bit quantization with a per-chunk float32 (lo, scale)."""

    kind, code = "quantize", 8
    FORMAT = struct.Struct("<BI")

    def __init__(self, length: int, bits: int, chunk: int) -> None:
        if bits not in ALLOWED_BITS:
            raise StageError(f"quantize: bits must be one of {ALLOWED_BITS}, got {bits}")
        if not 1 <= chunk <= 1 << 24:
            raise StageError(f"quantize: chunk must be in [1, 2^24], got {chunk}")
        self.in_len = self.out_len = length
        self.bits, self.chunk = bits, chunk

    def device(self, batch: Batch) -> None:
        assert batch.values is not None
        batch.codes, batch.lo, batch.scale = quantize(batch.values, batch.private_seeds, self.bits, self.chunk)
        if not np.isfinite(batch.scale).all():
            raise PipelineInputError("a chunk's value range overflows float32; these values cannot be quantized")
        batch.values = None

    def server(self, batch: Batch) -> None:
        assert batch.codes is not None and batch.lo is not None and batch.scale is not None
        batch.values = dequantize(batch.codes, batch.lo, batch.scale, self.chunk)
        batch.codes = None

    def params(self) -> bytes:
        return self.FORMAT.pack(self.bits, self.chunk)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "bits": self.bits, "chunk": self.chunk}


STAGE_TYPES: dict[int, type[Stage]] = {
    cls.code: cls for cls in (Clip, GaussianNoise, LaplaceNoise, RandomK, TopK, ErrorFeedback, Rotate, Quantize)
}


def stage_from_record(code: int, body: bytes, length: int) -> Stage:
    """Rebuild a stage from its wire record, given the length of its input. Raises StageError."""
    cls = STAGE_TYPES.get(code)
    if cls is None:
        raise StageError(f"unknown stage kind code {code}")
    fmt: struct.Struct | None = getattr(cls, "FORMAT", None)
    expected = fmt.size if fmt is not None else 0
    if len(body) != expected:
        raise StageError(f"{cls.kind} record has {len(body)} parameter bytes, expected {expected}")
    if cls is Clip:
        ord_, flags, norm = Clip.FORMAT.unpack(body)
        if flags & ~0b11:
            raise StageError(f"clip record has unknown flag bits {flags:#x}")
        if not (flags & 1) and flags & 2:
            raise StageError("clip record sets the within-clip bit without adaptive clipping")
        return Clip(length, norm, ord_, bool(flags & 1))
    if cls in (GaussianNoise, LaplaceNoise):
        scale, z = _Noise.FORMAT.unpack(body)
        return cls(length, scale, z)  # type: ignore[call-arg]
    if cls is RandomK:
        k, flags = RandomK.FORMAT.unpack(body)
        if flags > 1:
            raise StageError(f"random_k record has unknown flag bits {flags:#x}")
        return RandomK(length, k, bool(flags))
    if cls is TopK:
        (k,) = TopK.FORMAT.unpack(body)
        return TopK(length, k)
    if cls is ErrorFeedback:
        return ErrorFeedback(length)
    if cls is Rotate:
        (log2,) = Rotate.FORMAT.unpack(body)
        if not 1 <= log2 <= 16:
            raise StageError(f"rotate block log2 must be in [1, 16], got {log2}")
        return Rotate(length, 1 << log2)
    bits, chunk = Quantize.FORMAT.unpack(body)
    return Quantize(length, bits, chunk)
