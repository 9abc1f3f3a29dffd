"""Wire format v1 of a model update: serialise a batch of encoded rows, parse and validate one message.

Layout (all integers little-endian; full spec in WIRE_FORMAT.md):

    header   magic "FKUP" | version u16 = 1 | flags u16 = 0 | model_version u32 | round u32 |
             phone_id u64 | dim u32 | shared_seed u64 | num_stages u8                     (37 bytes)
    records  num_stages × (kind u8 | length u8 | parameters)
    indices  (top_k only) byte_length u32 | LEB128 gaps
    values   quantized: lo f32 × chunks | scale f32 × chunks | packed codes
             otherwise: f32 × m
    trailer  CRC-32 (IEEE 802.3, as zlib.crc32) of every byte before it, u32

The parser checks the checksum first, then reads through a bounds-checked cursor: it never reads past
the buffer, computes every section size from the validated stage list before reading it, and raises a
`WireFormatError` subclass for anything wrong.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkey.protocol.errors import (
    BadMagicError,
    ChecksumError,
    InvalidValueError,
    LayoutMismatchError,
    PipelineInputError,
    StageError,
    TrailingBytesError,
    TruncatedMessageError,
    UnsupportedVersionError,
)
from fedkey.protocol.pipeline_config import check_stage_order
from fedkey.protocol.quantize import num_chunks, pack, unpack
from fedkey.protocol.sparsify import decode_gaps, encode_gaps
from fedkey.protocol.stages import Batch, Clip, Quantize, Stage, TopK, stage_from_record

MAGIC = b"FKUP"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sHHIIQIQB")
MAX_STAGES = 8
CRC = struct.Struct("<I")

Layout = int | Sequence[tuple[str, Sequence[int]]]


def layout_size(layout: Layout) -> int:
    """Total parameter count of a layout: an int, or a list of (name, shape) in flat-vector order."""
    if isinstance(layout, int | np.integer):
        dims = [int(layout)]
    else:
        try:
            shapes = [tuple(int(n) for n in shape) for _, shape in layout]
        except (TypeError, ValueError) as err:
            raise LayoutMismatchError(f"layout must be a size or a list of (name, shape): {err}") from None
        if any(n < 0 for shape in shapes for n in shape):
            raise LayoutMismatchError(f"layout has a negative dimension: {shapes}")
        dims = [math.prod(shape) for shape in shapes]
    total = sum(dims)
    if not 0 < total < 2**32:
        raise LayoutMismatchError(f"layout size must be in [1, 2^32), got {total}")
    return total


@dataclass(frozen=True)
class UpdateHeader:
    """The fixed header fields of one update."""

    format_version: int
    model_version: int
    round: int
    phone_id: int
    dim: int
    shared_seed: int


def chain_lengths(stages: Sequence[Stage]) -> int:
    """Output length of the last stage (the number of values in the value section)."""
    return stages[-1].out_len if stages else 0


def serialize(
    batch: Batch, stages: Sequence[Stage], phone_ids: np.ndarray, round: int, model_version: int
) -> list[bytes]:
    """One v1 message per row of an encoded batch."""
    quant = next((s for s in stages if isinstance(s, Quantize)), None)
    if quant is not None:
        assert batch.codes is not None and batch.lo is not None and batch.scale is not None
        packed = pack(batch.codes, quant.bits)
        lo = batch.lo.astype("<f4")
        scale = batch.scale.astype("<f4")
    else:
        assert batch.values is not None
        with np.errstate(over="ignore"):
            values32 = batch.values.astype("<f4")
        if not np.isfinite(values32).all():
            raise PipelineInputError("a value overflows float32 and cannot be sent")
    messages = []
    for i in range(batch.n):
        parts = [
            HEADER.pack(
                MAGIC,
                FORMAT_VERSION,
                0,
                model_version,
                round,
                int(phone_ids[i]),
                batch.dim,
                int(batch.shared_seeds[i]),
                len(stages),
            )
        ]
        for s in stages:
            body = s.row_params(batch, i)
            parts.append(bytes((s.code, len(body))) + body)
        if batch.indices is not None:
            gaps = encode_gaps(batch.indices[i])
            parts.append(struct.pack("<I", len(gaps)) + gaps)
        if quant is not None:
            parts += [lo[i].tobytes(), scale[i].tobytes(), packed[i].tobytes()]
        else:
            parts.append(values32[i].tobytes())
        body = b"".join(parts)
        messages.append(body + CRC.pack(zlib.crc32(body)))
    return messages


class _Cursor:
    """Bounds-checked reader over a byte buffer."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise TruncatedMessageError(
                f"{what}: needs {n} bytes at offset {self.pos}, message body has {len(self.data)}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def remaining(self) -> int:
        return len(self.data) - self.pos


def parse(message: bytes, layout: Layout) -> tuple[UpdateHeader, list[Stage], Batch]:
    """Parse and validate one message into its header, stage list and a one-row Batch (wire payload)."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise TruncatedMessageError(f"message must be bytes, got {type(message).__name__}")
    expected_dim = layout_size(layout)
    data = memoryview(bytes(message))
    if len(data) < HEADER.size + CRC.size:
        raise TruncatedMessageError(f"message has {len(data)} bytes, less than header + checksum")
    if bytes(data[:4]) != MAGIC:
        raise BadMagicError(f"message starts with {bytes(data[:4])!r}, expected {MAGIC!r}")
    (crc,) = CRC.unpack(data[-4:])
    body = data[:-4]
    if zlib.crc32(body) != crc:
        raise ChecksumError("CRC-32 trailer does not match the message")
    cur = _Cursor(body)
    _, version, flags, model_version, round_, phone_id, dim, seed, n_stages = HEADER.unpack(
        cur.take(HEADER.size, "header")
    )
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(f"format version {version} (this decoder reads {FORMAT_VERSION})")
    if flags != 0:
        raise UnsupportedVersionError(f"reserved header flags are {flags:#x}, must be 0 in v1")
    if dim != expected_dim:
        raise LayoutMismatchError(f"message dimension {dim} does not match the model layout ({expected_dim})")
    if n_stages > MAX_STAGES:
        raise StageError(f"{n_stages} stages, at most {MAX_STAGES}")
    stages: list[Stage] = []
    within_bit = False
    length = dim
    for i in range(n_stages):
        code, size = cur.take(2, f"stage record {i}")
        body_i = bytes(cur.take(size, f"stage record {i} parameters"))
        stage = stage_from_record(code, body_i, length)
        if isinstance(stage, Clip) and body_i[1] & 2:
            within_bit = True
        stages.append(stage)
        length = stage.out_len
    clip = next((s for s in stages if isinstance(s, Clip)), None)
    try:
        check_stage_order([s.kind for s in stages], adaptive_clip=bool(clip and clip.adaptive))
    except ValueError as err:
        raise StageError(str(err)) from None

    header = UpdateHeader(version, model_version, round_, phone_id, dim, seed)
    batch = Batch(dim, np.array([seed], dtype=np.uint64), np.zeros(1, dtype=np.uint64))
    if clip is not None and clip.adaptive:
        batch.within_clip = np.array([within_bit])
    top = next((s for s in stages if isinstance(s, TopK)), None)
    if top is not None:
        (nbytes,) = struct.unpack("<I", cur.take(4, "index section length"))
        if nbytes > cur.remaining():
            raise TruncatedMessageError(f"index section claims {nbytes} bytes, {cur.remaining()} remain")
        try:
            idx = decode_gaps(np.frombuffer(cur.take(nbytes, "index section"), dtype=np.uint8), top.k, dim)
        except ValueError as err:
            raise InvalidValueError(f"index section: {err}") from None
        batch.indices = idx[None, :]
    m = chain_lengths(stages) if stages else dim
    quant = next((s for s in stages if isinstance(s, Quantize)), None)
    if quant is not None:
        chunks = num_chunks(m, quant.chunk)
        lo = np.frombuffer(cur.take(4 * chunks, "chunk minima"), dtype="<f4").astype(np.float32)
        scale = np.frombuffer(cur.take(4 * chunks, "chunk scales"), dtype="<f4").astype(np.float32)
        if not (np.isfinite(lo).all() and np.isfinite(scale).all()):
            raise InvalidValueError("a chunk minimum or scale is NaN or infinite")
        if (scale < 0).any():
            raise InvalidValueError("a chunk scale is negative")
        nbytes = -(-m * quant.bits // 8)
        packed = np.frombuffer(cur.take(nbytes, "packed codes"), dtype=np.uint8)
        used_bits = m * quant.bits
        if used_bits % 8 and packed[-1] >> (used_bits % 8):
            raise InvalidValueError("padding bits after the last code are not zero")
        batch.codes = unpack(packed[None, :], quant.bits, m)
        batch.lo, batch.scale = lo[None, :], scale[None, :]
    else:
        values = np.frombuffer(cur.take(4 * m, "values"), dtype="<f4")
        if not np.isfinite(values).all():
            raise InvalidValueError("a value is NaN or infinite")
        batch.values = values[None, :]  # float32 view; the pipeline widens it to binary64 block by block
    if cur.remaining():
        raise TrailingBytesError(f"{cur.remaining()} bytes left after the value section")
    return header, stages, batch
