"""The L1 sensitivity of Laplace noise counts every coordinate the noise touches, padding included."""

from __future__ import annotations

import math

from fedkey.protocol.pipeline_config import PipelineConfig


def test_rotation_padding_counts_in_the_noised_length():
    stages = [{"kind": "clip", "norm": 1.0}, {"kind": "rotate", "block": 8}, {"kind": "laplace_noise", "epsilon": 1.0}]
    config = PipelineConfig.model_validate(stages)
    assert config.noised_length(20) == 24  # 20 values padded to three blocks of 8
    plain = PipelineConfig.model_validate([stages[0], stages[2]])
    assert plain.noised_length(20) == 20
    b_rotated = config.local_mechanism(20).scale
    b_plain = plain.local_mechanism(20).scale
    assert math.isclose(b_rotated / b_plain, math.sqrt(24 / 20))
