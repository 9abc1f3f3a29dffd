"""The update pipeline: phone-side `encode` of a batch of deltas into v1 messages, server-side `decode`.

    pipeline = UpdatePipeline(config, layout=model_config.num_parameters())
    out = pipeline.encode(deltas, phone_ids=ids, round=r, model_version=v, seed=run_seed)
    out.messages          # list[bytes], one per phone
    out.residuals         # new error-feedback state (when the pipeline has error_feedback)
    update = decode(out.messages[0], layout)       # DecodedUpdate: .delta (float32 [d]) + metadata
    batch = decode_batch(out.messages, layout)     # DecodedBatch: .deltas [n, d] + .updates

`encode` runs every stage's device half on up to `rows_per_block` phones at a time (one 2-D array per
stage); a one-phone call is the same code with n = 1. Seeds: pass `seed` (the simulator's run seed;
per-phone seeds are then derived from (seed, phone id, round), see `prng.simulation_seeds`) or explicit
per-phone `shared_seeds` / `private_seeds` (a real phone draws both from a CSPRNG). Only the shared
seed is sent; the private seed (local DP noise, stochastic rounding) never leaves the phone.

The decoder needs nothing but the message and the model layout: the stage list is in the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from fedkey.privacy.calibration import LocalMechanism
from fedkey.protocol.errors import InvalidValueError, PipelineInputError, StageError
from fedkey.protocol.pipeline_config import (
    ClipStage,
    ErrorFeedbackStage,
    GaussianNoiseStage,
    LaplaceNoiseStage,
    PipelineConfig,
    QuantizeStage,
    RandomKStage,
    RotateStage,
    StageSpec,
    TopKStage,
)
from fedkey.protocol.prng import MASK64, simulation_seeds
from fedkey.protocol.stages import (
    Batch,
    Clip,
    ErrorFeedback,
    GaussianNoise,
    LaplaceNoise,
    Quantize,
    RandomK,
    Rotate,
    Stage,
    TopK,
)
from fedkey.protocol.wire import Layout, UpdateHeader, layout_size, parse, serialize

# Working memory per block of phones (float64 values). Small models batch many phones per numpy call;
# million-parameter rows already amortise the call overhead, and bigger blocks only add cache misses and
# page faults (measured: one default-size row per block was fastest), so 16 MiB is one such row.
BLOCK_BYTES = 16 * 2**20


@dataclass
class EncodedBatch:
    """What `encode` returns: one message per phone, plus phone-side state and flags."""

    messages: list[bytes]
    residuals: np.ndarray | None  # new error-feedback state [n, d] float32, or None
    within_clip: np.ndarray | None  # adaptive clipping bits [n], or None

    @property
    def total_bytes(self) -> int:
        return sum(len(m) for m in self.messages)


@dataclass
class DecodedUpdate:
    """One decoded message: the delta and everything the server needs to know about how it was made."""

    header: UpdateHeader
    delta: np.ndarray  # float32 [d]
    stages: list[dict[str, Any]] = field(default_factory=list)
    clip_norm: float | None = None
    within_clip: bool | None = None  # only with adaptive clipping

    @property
    def local_dp(self) -> dict[str, Any] | None:
        """The local noise stage's description (mechanism, scale, noise_multiplier), if any."""
        return next((s for s in self.stages if s["kind"] in ("gaussian_noise", "laplace_noise")), None)

    def ledger_record(self) -> dict[str, Any] | None:
        """The record `privacy.ledger.DeviceLedger.replay` takes, or None without local DP."""
        noise = self.local_dp
        if noise is None:
            return None
        return {
            "phone_id": self.header.phone_id,
            "round": self.header.round,
            "mechanism": noise["mechanism"],
            "noise_multiplier": noise["noise_multiplier"],
        }


@dataclass
class DecodedBatch:
    """Decoded messages stacked: deltas[i] belongs to updates[i]."""

    deltas: np.ndarray  # float32 [n, d]
    updates: list[DecodedUpdate]


@lru_cache(maxsize=256)
def _mechanism(config_json: str, dim: int, clip_norm: float) -> LocalMechanism | None:
    return PipelineConfig.model_validate_json(config_json).local_mechanism(dim, clip_norm)


class UpdatePipeline:
    """A validated stage list bound to a model layout; `encode` runs the phone halves."""

    def __init__(self, config: PipelineConfig | Sequence[StageSpec | dict[str, Any]], layout: Layout) -> None:
        self.config = config if isinstance(config, PipelineConfig) else PipelineConfig.model_validate(list(config))
        self.dim = layout_size(layout)
        clip = self.config.clip()
        self.default_clip_norm = clip.norm if clip else None
        try:
            self.build_stages(self.default_clip_norm)  # fail early on k > d and friends
        except StageError as err:
            raise PipelineInputError(f"pipeline does not fit the model layout: {err}") from None

    @property
    def has_error_feedback(self) -> bool:
        return "error_feedback" in self.config.kinds()

    def local_mechanism(self, clip_norm: float | None = None) -> LocalMechanism | None:
        """The calibrated local DP report of this pipeline (None without a noise stage)."""
        if self.config.noise() is None:
            return None
        c = self.default_clip_norm if clip_norm is None else clip_norm
        assert c is not None
        return _mechanism(self.config.model_dump_json(), self.dim, float(np.float32(c)))

    def build_stages(self, clip_norm: float | None) -> list[Stage]:
        """Runtime stages for this dimension and clip norm (noise calibrated to that norm)."""
        stages: list[Stage] = []
        length = self.dim
        for spec in self.config.root:
            stage: Stage
            if isinstance(spec, ClipStage):
                assert clip_norm is not None
                stage = Clip(length, clip_norm, spec.ord, spec.adaptive is not None)
            elif isinstance(spec, GaussianNoiseStage | LaplaceNoiseStage):
                mech = self.local_mechanism(clip_norm)
                assert mech is not None
                cls = GaussianNoise if isinstance(spec, GaussianNoiseStage) else LaplaceNoise
                stage = cls(length, mech.scale, mech.noise_multiplier)
            elif isinstance(spec, RandomKStage):
                stage = RandomK(length, spec.kept(length), spec.unbiased)
            elif isinstance(spec, TopKStage):
                stage = TopK(length, spec.kept(length))
            elif isinstance(spec, ErrorFeedbackStage):
                stage = ErrorFeedback(length)
            elif isinstance(spec, RotateStage):
                stage = Rotate(length, spec.block)
            else:
                assert isinstance(spec, QuantizeStage)
                stage = Quantize(length, spec.bits, spec.chunk)
            stages.append(stage)
            length = stage.out_len
        return stages

    def encode(
        self,
        deltas: np.ndarray,
        phone_ids: Sequence[int] | np.ndarray,
        round: int,
        model_version: int = 0,
        *,
        seed: int | None = None,
        shared_seeds: Sequence[int] | np.ndarray | None = None,
        private_seeds: Sequence[int] | np.ndarray | None = None,
        clip_norm: float | None = None,
        residuals: np.ndarray | None = None,
        rows_per_block: int | None = None,
    ) -> EncodedBatch:
        """Encode deltas [n, d] (or one delta [d]) of phones `phone_ids` into v1 messages.

        `clip_norm` overrides the configured bound for this round (adaptive clipping); `residuals` is
        the error-feedback state from the previous call (zeros when None).
        """
        x = np.asarray(deltas)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise PipelineInputError(f"deltas must have shape [n, {self.dim}], got {np.shape(deltas)}")
        if not np.issubdtype(x.dtype, np.floating):
            raise PipelineInputError(f"deltas must be floating point, got {x.dtype}")
        n = x.shape[0]
        ids = _u64_array(phone_ids, n, "phone_ids")
        if not (0 <= round < 2**32 and 0 <= model_version < 2**32):
            raise PipelineInputError("round and model_version must be in [0, 2^32)")
        shared, private = self._seeds(seed, shared_seeds, private_seeds, ids, round, n)
        if residuals is not None:
            residuals = np.asarray(residuals)
            if residuals.shape != x.shape:
                raise PipelineInputError(f"residuals must have shape {x.shape}, got {residuals.shape}")
        if clip_norm is not None and self.default_clip_norm is None:
            raise PipelineInputError("clip_norm given but the pipeline has no clip stage")
        stages = self.build_stages(self.default_clip_norm if clip_norm is None else clip_norm)
        block = rows_per_block or max(1, BLOCK_BYTES // (8 * self.dim))
        messages: list[bytes] = []
        new_res = np.empty(x.shape, dtype=np.float32) if self.has_error_feedback else None
        within = np.empty(n, dtype=bool) if isinstance(stages[0] if stages else None, Clip) else None
        for start in range(0, n, block):
            rows = slice(start, min(n, start + block))
            chunk = x[rows]
            if not np.isfinite(chunk).all():
                raise PipelineInputError("deltas contain NaN or infinite values")
            # top-k first selects on the float32 values and widens only the kept ones (same result)
            values = chunk if stages and isinstance(stages[0], TopK) else chunk.astype(np.float64)
            batch = Batch(self.dim, shared[rows], private[rows], values=values)
            if residuals is not None:
                batch.residuals = residuals[rows].astype(np.float64)
            for stage in stages:
                stage.device(batch)
            messages += serialize(batch, stages, ids[rows], round, model_version)
            if new_res is not None:
                new_res[rows] = self._residual(batch, stages)
            if within is not None:
                clip_within = batch.within_clip
                within[rows] = clip_within if clip_within is not None else False
        clip_spec = self.config.clip()
        adaptive = clip_spec is not None and clip_spec.adaptive is not None
        return EncodedBatch(messages, new_res, within if adaptive else None)

    @staticmethod
    def _residual(batch: Batch, stages: list[Stage]) -> np.ndarray:
        """Error feedback: what the server will see at the error-feedback point, subtracted from the truth."""
        assert batch.ef_reference is not None
        at = next(i for i, s in enumerate(stages) if isinstance(s, ErrorFeedback))
        view = batch.copy_payload()
        for stage in reversed(stages[at + 1 :]):
            stage.server(view)
        assert view.values is not None
        return batch.ef_reference - view.values

    @staticmethod
    def _seeds(
        seed: int | None, shared: Any, private: Any, ids: np.ndarray, round: int, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if seed is not None:
            if shared is not None or private is not None:
                raise PipelineInputError("give either seed or shared_seeds/private_seeds, not both")
            return simulation_seeds(seed, ids, round)
        if shared is None or private is None:
            raise PipelineInputError("give seed, or both shared_seeds and private_seeds")
        return _u64_array(shared, n, "shared_seeds"), _u64_array(private, n, "private_seeds")


def _u64_array(values: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise PipelineInputError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.dtype == np.uint64:
        return arr
    ints = [int(v) for v in arr.tolist()]
    if any(v < 0 or v > MASK64 for v in ints):
        raise PipelineInputError(f"{name} must be in [0, 2^64)")
    return np.array(ints, dtype=np.uint64)


def _server_halves(stages: list[Stage], batch: Batch, out: np.ndarray) -> None:
    """Run the server halves (binary64) and write the float32 result into `out` [n, d]."""
    if batch.values is not None:
        batch.values = batch.values.astype(np.float64)
    # a leading top-k scatters its kept values straight into `out` (no dense binary64 copy; same result)
    sparse = bool(stages) and isinstance(stages[0], TopK)
    for stage in reversed(stages[1:] if sparse else stages):
        stage.server(batch)
    assert batch.values is not None
    with np.errstate(over="ignore"):
        if sparse:
            assert batch.indices is not None
            kept = batch.values.astype(np.float32)
            out[...] = 0.0
            np.put_along_axis(out, batch.indices, kept, axis=1)
        else:
            out[...] = batch.values
            kept = out
    if not np.isfinite(kept).all():
        raise InvalidValueError("decoded update is not finite (value ranges overflow float32)")


def _update(header: UpdateHeader, stages: list[Stage], batch: Batch, row: int, delta: np.ndarray) -> DecodedUpdate:
    clip = next((s for s in stages if isinstance(s, Clip)), None)
    within = bool(batch.within_clip[row]) if batch.within_clip is not None else None
    return DecodedUpdate(header, delta, [s.describe() for s in stages], clip.norm if clip else None, within)


def decode(message: bytes, layout: Layout) -> DecodedUpdate:
    """Decode and validate one v1 message against the model layout; raises a WireFormatError subclass."""
    header, stages, batch = parse(message, layout)
    out = np.empty((1, header.dim), dtype=np.float32)
    _server_halves(stages, batch, out)
    return _update(header, stages, batch, 0, out[0])


def decode_batch(messages: Sequence[bytes], layout: Layout) -> DecodedBatch:
    """Decode many messages; messages with identical stage lists run the server halves together
    (in blocks of rows that keep the float64 working set near BLOCK_BYTES). deltas[i] is message i."""
    parsed = [parse(m, layout) for m in messages]
    dim = layout_size(layout)
    out = np.empty((len(parsed), dim), dtype=np.float32)
    updates: list[DecodedUpdate | None] = [None] * len(parsed)
    groups: dict[tuple[bytes, ...], list[int]] = {}
    for i, (_, stages, _) in enumerate(parsed):
        groups.setdefault(tuple(bytes([s.code]) + s.params() for s in stages), []).append(i)
    block = max(1, BLOCK_BYTES // (8 * dim))
    for group in groups.values():
        for start in range(0, len(group), block):
            rows = group[start : start + block]
            stages = parsed[rows[0]][1]
            parts = [parsed[i][2] for i in rows]
            batch = Batch(
                dim,
                np.concatenate([p.shared_seeds for p in parts]),
                np.zeros(len(rows), dtype=np.uint64),
                values=_stack([p.values for p in parts]),
                indices=_stack([p.indices for p in parts]),
                codes=_stack([p.codes for p in parts]),
                lo=_stack([p.lo for p in parts]),
                scale=_stack([p.scale for p in parts]),
                within_clip=_stack([p.within_clip for p in parts]),
            )
            contiguous = rows[-1] - rows[0] == len(rows) - 1
            target = out[rows[0] : rows[-1] + 1] if contiguous else np.empty((len(rows), dim), dtype=np.float32)
            _server_halves(stages, batch, target)
            if not contiguous:
                out[rows] = target
            for j, i in enumerate(rows):
                updates[i] = _update(parsed[i][0], stages, batch, j, out[i])
    return DecodedBatch(out, [u for u in updates if u is not None])


def _stack(parts: list[np.ndarray | None]) -> np.ndarray | None:
    return None if parts[0] is None else np.concatenate(parts)  # type: ignore[arg-type]
