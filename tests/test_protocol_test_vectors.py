"""The committed wire-format test vectors are stable and the decoder/encoder reproduce them from JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedkey.protocol import errors
from fedkey.protocol.pipeline import UpdatePipeline, decode
from fedkey.protocol.testvectors import OUTPUT, build_all, render

DOC = json.loads(OUTPUT.read_text())


def test_vectors_are_stable() -> None:
    """Regenerating gives byte-identical JSON (python -m fedkey.protocol.testvectors --check)."""
    assert render(build_all()) == OUTPUT.read_text()


@pytest.mark.parametrize("vector", DOC["vectors"], ids=lambda v: v["name"])
def test_decoder_reproduces_expected_values(vector: dict) -> None:
    out = decode(bytes.fromhex(vector["message_hex"]), vector["dim"])
    assert out.delta.tolist() == pytest.approx(vector["decoded"], abs=0)
    assert (out.header.phone_id, out.header.round, out.header.shared_seed) == (
        vector["phone_id"],
        vector["round"],
        int(vector["shared_seed"]),
    )


@pytest.mark.parametrize("vector", [v for v in DOC["vectors"] if v["encode_reproducible"]], ids=lambda v: v["name"])
def test_encoder_reproduces_expected_bytes_from_json(vector: dict) -> None:
    pipe = UpdatePipeline(vector["stages"], vector["dim"])
    x = np.array(vector["input"], dtype=np.float32)
    out = pipe.encode(
        x,
        [vector["phone_id"]],
        vector["round"],
        vector["model_version"],
        shared_seeds=[int(vector["shared_seed"])],
        private_seeds=[int(vector["private_seed"])],
    )
    assert out.messages[0].hex() == vector["message_hex"]


@pytest.mark.parametrize("case", DOC["invalid"], ids=lambda c: c["name"])
def test_invalid_vectors_raise_the_named_error(case: dict) -> None:
    with pytest.raises(getattr(errors, case["error"])):
        decode(bytes.fromhex(case["message_hex"]), 37)
