"""Generator of the language-neutral wire format v1 test vectors in `protocol/testdata/`.

    python -m fedkey.protocol.testvectors           # (re)write protocol/testdata/update_v1_vectors.json
    python -m fedkey.protocol.testvectors --check   # exit 1 if the file differs from a fresh generation

Each vector gives the pipeline stages, the model dimension, header fields, both seeds, the float32
input, the expected message (hex), and the expected decoded float32 values, plus intermediates that
help a re-implementation find its first difference (random-k mask, top-k indices). Floats are written
as the shortest decimal that parses back to the same binary64 value, which for float32 data is the
exact float32. `encode_reproducible` is false for local-DP vectors: the noise is drawn from the phone's
private randomness and is not part of the spec, so those vectors test the decoder only. The
`invalid` list holds corrupted messages and the error class the decoder must raise.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedkey.protocol.errors import WireFormatError
from fedkey.protocol.pipeline import UpdatePipeline, decode
from fedkey.protocol.sparsify import random_k_masks, top_k_indices

OUTPUT = Path(__file__).parent / "testdata" / "update_v1_vectors.json"

ROTATE_Q8 = [{"kind": "rotate", "block": 8}, {"kind": "quantize", "bits": 8}]
CASES: list[dict[str, Any]] = [
    {"name": "dense_fp32", "dim": 8, "stages": []},
    {"name": "clip_l2_fp32", "dim": 10, "stages": [{"kind": "clip", "norm": 0.4}]},
    {"name": "clip_l1_fp32", "dim": 10, "stages": [{"kind": "clip", "norm": 0.75, "ord": 1}]},
    {"name": "top_k_fp32_ties", "dim": 20, "stages": [{"kind": "top_k", "k": 5}], "ties": True},
    {"name": "random_k_fp32", "dim": 32, "stages": [{"kind": "random_k", "k": 8}]},
    {"name": "random_k_biased_fp32", "dim": 32, "stages": [{"kind": "random_k", "k": 8, "unbiased": False}]},
    {"name": "quantize_1bit", "dim": 37, "stages": [{"kind": "quantize", "bits": 1, "chunk": 8}]},
    {"name": "quantize_2bit", "dim": 37, "stages": [{"kind": "quantize", "bits": 2, "chunk": 8}]},
    {"name": "quantize_4bit", "dim": 37, "stages": [{"kind": "quantize", "bits": 4, "chunk": 8}]},
    {"name": "quantize_8bit", "dim": 37, "stages": [{"kind": "quantize", "bits": 8, "chunk": 16}]},
    {
        "name": "rotate_q8",
        "dim": 20,
        "stages": [{"kind": "rotate", "block": 8}, {"kind": "quantize", "bits": 8}],
    },
    {
        "name": "clip_top_k_rotate_q4",
        "dim": 64,
        "stages": [
            {"kind": "clip", "norm": 0.5},
            {"kind": "top_k", "k": 16},
            {"kind": "rotate", "block": 8},
            {"kind": "quantize", "bits": 4, "chunk": 8},
        ],
    },
    {
        "name": "adaptive_clip_ef_random_k_q2",
        "dim": 48,
        "stages": [
            {"kind": "clip", "norm": 0.3, "adaptive": {"target_quantile": 0.5}},
            {"kind": "error_feedback"},
            {"kind": "random_k", "fraction": 0.25},
            {"kind": "quantize", "bits": 2, "chunk": 6},
        ],
    },
    {
        "name": "ldp_gaussian_random_k_q4",
        "dim": 40,
        "stages": [
            {"kind": "clip", "norm": 1.0},
            {"kind": "random_k", "k": 10},
            {"kind": "gaussian_noise", "epsilon": 4.0, "delta": 1e-5},
            {"kind": "quantize", "bits": 4, "chunk": 5},
        ],
    },
    {
        "name": "ldp_laplace_top_k_fp32",
        "dim": 24,
        "stages": [
            {"kind": "clip", "norm": 1.0, "ord": 1},
            {"kind": "laplace_noise", "epsilon": 8.0},
            {"kind": "top_k", "k": 6},
        ],
    },
]


def _floats(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(x, dtype=np.float32).astype(np.float64)]


def _input(case: dict[str, Any], index: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + index)
    x = (rng.normal(size=case["dim"]) * 0.2).astype(np.float32)
    if case.get("ties"):
        x[[2, 7, 11]] = np.float32(0.5)
        x[[3, 15]] = np.float32(-0.5)
    return x


def build_vector(case: dict[str, Any], index: int) -> dict[str, Any]:
    """One vector: inputs, seeds, expected bytes and decoded values for `case`."""
    dim = case["dim"]
    x = _input(case, index)
    phone_id, round_, model_version = 1000 + index, 7 + index, 3
    shared_seed = int(np.uint64(0x0123456789ABCDEF) * np.uint64(index + 1))
    private_seed = int(np.uint64(0xFEDCBA9876543210) ^ np.uint64(index))
    pipe = UpdatePipeline(case["stages"], dim)
    out = pipe.encode(x, [phone_id], round_, model_version, shared_seeds=[shared_seed], private_seeds=[private_seed])
    message = out.messages[0]
    decoded = decode(message, dim)
    kinds = [s["kind"] for s in case["stages"]]
    vector: dict[str, Any] = {
        "name": case["name"],
        "stages": case["stages"],
        "dim": dim,
        "phone_id": phone_id,
        "round": round_,
        "model_version": model_version,
        "shared_seed": str(shared_seed),
        "private_seed": str(private_seed),
        "encode_reproducible": not any(k.endswith("_noise") for k in kinds),
        "input": _floats(x),
        "message_hex": message.hex(),
        "message_length": len(message),
        "decoded": _floats(decoded.delta),
        "decoded_stage_records": decoded.stages,
    }
    for spec in case["stages"]:
        if spec["kind"] == "random_k":
            k = spec.get("k") or max(1, round(spec["fraction"] * dim))
            vector["random_k_mask"] = random_k_masks(np.array([shared_seed], dtype=np.uint64), dim, k)[0].tolist()
        if spec["kind"] == "top_k" and vector["encode_reproducible"] and kinds[0] != "clip":
            vector["top_k_indices"] = top_k_indices(x[None, :].astype(np.float64), spec["k"])[0].tolist()
    if out.residuals is not None:
        vector["error_feedback_residual"] = _floats(out.residuals[0])
    return vector


def _reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def build_invalid(valid: bytes, dim: int) -> list[dict[str, Any]]:
    """Corrupted variants of one valid message and the error each must raise."""
    body = valid[:-4]
    cases = {
        "truncated_header": valid[:20],
        "bad_magic": b"FKUQ" + valid[4:],
        "bad_checksum": valid[:-1] + bytes([valid[-1] ^ 0x01]),
        "version_2": _reseal(body[:4] + struct.pack("<H", 2) + body[6:]),
        "reserved_flags": _reseal(body[:6] + struct.pack("<H", 4) + body[8:]),
        "wrong_dimension": _reseal(body[:24] + struct.pack("<I", dim + 1) + body[28:]),
        "unknown_stage_kind": _reseal(body[:37] + bytes([42]) + body[38:]),
        "trailing_byte": _reseal(body + b"\x00"),
        "truncated_values": _reseal(body[:-2]),
    }
    out = []
    for name, msg in cases.items():
        try:
            decode(msg, dim)
        except WireFormatError as err:
            out.append({"name": name, "message_hex": msg.hex(), "error": type(err).__name__})
        else:
            raise AssertionError(f"invalid vector {name} decoded without error")
    return out


def build_all() -> dict[str, Any]:
    """The full test-vector document."""
    vectors = [build_vector(case, i) for i, case in enumerate(CASES)]
    base = next(v for v in vectors if v["name"] == "quantize_4bit")
    return {
        "format_version": 1,
        "spec": "protocol/WIRE_FORMAT.md",
        "generator": "python -m fedkey.protocol.testvectors",
        "vectors": vectors,
        "invalid": build_invalid(bytes.fromhex(base["message_hex"]), base["dim"]),
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render(build_all())
    if args.check:
        same = args.output.exists() and args.output.read_text() == text
        print("test vectors up to date" if same else f"{args.output} differs from a fresh generation")
        return 0 if same else 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
