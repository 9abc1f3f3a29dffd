"""Wire format v1: round trips, header fields, every rejection path, and hypothesis fuzzing."""

from __future__ import annotations

import contextlib
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkey.protocol.errors import (
    BadMagicError,
    ChecksumError,
    InvalidValueError,
    LayoutMismatchError,
    StageError,
    TrailingBytesError,
    TruncatedMessageError,
    UnsupportedVersionError,
    WireFormatError,
)
from fedkey.protocol.pipeline import UpdatePipeline, decode, decode_batch
from fedkey.protocol.wire import HEADER

DIM = 700
CONFIGS = {
    "dense": [],
    "clip_fp32": [{"kind": "clip", "norm": 2.0}],
    "topk_q4": [
        {"kind": "clip", "norm": 2.0},
        {"kind": "top_k", "fraction": 0.05},
        {"kind": "quantize", "bits": 4},
    ],
    "randk_rot_q2": [
        {"kind": "random_k", "k": 100},
        {"kind": "rotate", "block": 64},
        {"kind": "quantize", "bits": 2, "chunk": 32},
    ],
    "ef_topk_rot_q8": [
        {"kind": "clip", "norm": 1.0, "adaptive": {}},
        {"kind": "error_feedback"},
        {"kind": "top_k", "k": 33},
        {"kind": "rotate", "block": 16},
        {"kind": "quantize", "bits": 8, "chunk": 7},
    ],
    "ldp_randk_q1": [
        {"kind": "clip", "norm": 1.0},
        {"kind": "random_k", "fraction": 0.1},
        {"kind": "gaussian_noise", "epsilon": 4.0, "delta": 1e-5},
        {"kind": "quantize", "bits": 1, "chunk": 64},
    ],
}


def deltas(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, DIM)) * 0.01).astype(np.float32)


def reseal(body: bytes) -> bytes:
    """Replace the CRC so a deliberately corrupted body reaches the deeper checks."""
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_and_batch_decode(name: str) -> None:
    pipe = UpdatePipeline(CONFIGS[name], DIM)
    x = deltas(5)
    out = pipe.encode(x, [10, 11, 12, 13, 14], round=9, model_version=3, seed=123)
    batch = decode_batch(out.messages, DIM)
    for i, msg in enumerate(out.messages):
        one = decode(msg, [("a", (7, 50)), ("b", (350,))])  # a (name, shape) layout works too
        assert np.array_equal(one.delta, batch.deltas[i])
        assert (one.header.phone_id, one.header.round, one.header.model_version) == (10 + i, 9, 3)
        assert batch.updates[i].header.phone_id == 10 + i
    if name in ("dense", "clip_fp32"):
        scale = np.minimum(1.0, 2.0 / np.linalg.norm(x.astype(np.float64), axis=1)) if name == "clip_fp32" else 1.0
        assert np.allclose(batch.deltas, x * np.reshape(scale, (-1, 1)), atol=1e-7)


def test_one_phone_equals_vectorised() -> None:
    """Encoding 6 phones at once gives the same bytes as one at a time (and block sizes don't matter)."""
    for cfg in CONFIGS.values():
        pipe = UpdatePipeline(cfg, DIM)
        x = deltas(6, 1)
        together = pipe.encode(x, np.arange(6), 4, seed=5).messages
        blocked = pipe.encode(x, np.arange(6), 4, seed=5, rows_per_block=4).messages
        single = [pipe.encode(x[i], [i], 4, seed=5).messages[0] for i in range(6)]
        assert together == single == blocked


def test_quantized_error_within_bound() -> None:
    pipe = UpdatePipeline([{"kind": "quantize", "bits": 4, "chunk": 50}], DIM)
    x = deltas(3)
    dec = decode_batch(pipe.encode(x, [1, 2, 3], 0, seed=0).messages, DIM).deltas
    ranges = (x.reshape(3, -1, 50).max(axis=2) - x.reshape(3, -1, 50).min(axis=2)) / 15
    assert (np.abs(dec - x).reshape(3, -1, 50) <= ranges[:, :, None] * 1.0001 + 1e-9).all()


def test_metadata_for_server_and_ledger() -> None:
    out = UpdatePipeline(CONFIGS["ef_topk_rot_q8"], DIM).encode(deltas(2) * 1000, [1, 2], 0, seed=0)
    u = decode(out.messages[0], DIM)
    assert u.clip_norm == 1.0 and u.within_clip is False and u.local_dp is None and u.ledger_record() is None
    assert out.within_clip is not None and not out.within_clip.any()
    ldp = decode(UpdatePipeline(CONFIGS["ldp_randk_q1"], DIM).encode(deltas(1), [4], 2, seed=0).messages[0], DIM)
    rec = ldp.ledger_record()
    assert rec is not None and rec["mechanism"] == "gaussian" and rec["phone_id"] == 4 and rec["round"] == 2


def valid_message(name: str = "topk_q4") -> bytes:
    return UpdatePipeline(CONFIGS[name], DIM).encode(deltas(1), [1], 0, seed=0).messages[0]


def test_rejections_are_typed() -> None:
    msg = valid_message()
    body = msg[:-4]
    with pytest.raises(TruncatedMessageError):
        decode(msg[:20], DIM)
    with pytest.raises(BadMagicError):
        decode(b"XXXX" + msg[4:], DIM)
    with pytest.raises(ChecksumError):
        decode(msg[:-1] + bytes([msg[-1] ^ 1]), DIM)
    with pytest.raises(UnsupportedVersionError):
        decode(reseal(body[:4] + struct.pack("<H", 2) + body[6:]), DIM)
    with pytest.raises(UnsupportedVersionError):
        decode(reseal(body[:6] + struct.pack("<H", 1) + body[8:]), DIM)
    with pytest.raises(LayoutMismatchError):
        decode(msg, DIM + 1)
    with pytest.raises(TrailingBytesError):
        decode(reseal(body + b"\0"), DIM)
    with pytest.raises(TruncatedMessageError):
        decode(reseal(body[:-3]), DIM)
    # Unknown stage kind code in the first record.
    with pytest.raises(StageError):
        decode(reseal(body[: HEADER.size] + bytes([99]) + body[HEADER.size + 1 :]), DIM)
    with pytest.raises(WireFormatError):
        decode("not bytes", DIM)  # type: ignore[arg-type]


def test_nan_and_bad_ranges_are_rejected() -> None:
    msg = valid_message("clip_fp32")
    body = bytearray(msg[:-4])
    body[-4:] = struct.pack("<f", float("nan"))
    with pytest.raises(InvalidValueError):
        decode(reseal(bytes(body)), DIM)
    q = bytearray(valid_message("randk_rot_q2")[:-4])
    first_scale = HEADER.size + 3 * 2 + 5 + 1 + 5 + 4 * (128 // 32)  # records, then lo × 4 chunks
    q[first_scale : first_scale + 4] = struct.pack("<f", -1.0)
    with pytest.raises(InvalidValueError, match="negative"):
        decode(reseal(bytes(q)), DIM)


def test_unsafe_stage_order_on_the_wire_is_rejected() -> None:
    """A message claiming top_k before local noise is refused even if its bytes are well formed."""
    ok = valid_message("ldp_randk_q1")
    body = ok[:-4]
    pos = HEADER.size + 2 + 6  # the random_k record (kind 4, 5 parameter bytes) follows the clip record
    assert body[pos : pos + 2] == bytes([4, 5])
    top_k = bytes([5, 4]) + struct.pack("<I", 70)
    with pytest.raises(StageError, match="DP safety rule"):
        decode(reseal(body[:pos] + top_k + body[pos + 7 :]), DIM)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_garbage_never_crashes(data: bytes) -> None:
    stages = data[0] % 9 if data else 0
    header = HEADER.pack(b"FKUP", 1, 0, 0, 0, 0, DIM, 0, stages)  # valid header: fuzz the records and payload
    for candidate in (data, reseal(data), reseal(b"FKUP" + data), reseal(header + data[1:])):
        with contextlib.suppress(WireFormatError):
            decode(candidate, DIM)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(CONFIGS)), st.integers(0, 10_000), st.integers(0, 64))
def test_mutated_messages_decode_or_raise_typed(name: str, position: int, value: int) -> None:
    body = bytearray(valid_message(name)[:-4])
    body[position % len(body)] ^= value + 1 if value < 255 else 0xFF
    try:
        out = decode(reseal(bytes(body)), DIM)
    except WireFormatError:
        return
    assert out.delta.shape == (DIM,) and np.isfinite(out.delta).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=300),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(1, 300),
    st.integers(0, 2**64 - 1),
    st.booleans(),
)
def test_round_trip_property(values: list[float], bits: int, chunk: int, seed: int, top: bool) -> None:
    x = np.array(values, dtype=np.float32)
    dim = x.size
    stages: list[dict] = [{"kind": "top_k", "k": max(1, dim // 3)}] if top else []
    stages += [{"kind": "rotate", "block": 16}, {"kind": "quantize", "bits": bits, "chunk": chunk}]
    pipe = UpdatePipeline(stages, dim)
    msg = pipe.encode(x, [seed % 1000], 1, shared_seeds=[seed], private_seeds=[seed ^ 1]).messages[0]
    out = decode(msg, dim)
    assert out.header.shared_seed == seed
    kept = x.copy()
    if top:
        kept[np.argsort(-np.abs(x), kind="stable")[max(1, dim // 3) :]] = 0.0
    norm = float(np.linalg.norm(kept.astype(np.float64)))
    # Rotation is orthogonal and each rotated value lies within [-norm, norm]: the L2 error is at most
    # one quantization step (2·norm / (2^b − 1)) per padded coordinate.
    step = 2 * norm / ((1 << bits) - 1)
    assert np.linalg.norm(out.delta - kept) <= np.sqrt(dim + 16) * step * 1.001 + 1e-3
    dense = UpdatePipeline([], dim)
    assert np.array_equal(decode(dense.encode(x, [0], 0, seed=0).messages[0], dim).delta, x)
