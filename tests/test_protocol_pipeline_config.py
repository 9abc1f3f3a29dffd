"""Pipeline config: TOML mapping, ordering rules, and the DP safety rule refusing unsafe configs."""

from __future__ import annotations

import tomllib

import pytest
from pydantic import BaseModel, ValidationError

from fedkey.protocol.pipeline_config import PipelineConfig, QuantizeStage

SAFE_LDP = [
    [
        {"kind": "clip", "norm": 1},
        {"kind": "gaussian_noise", "epsilon": 2, "delta": 1e-6},
        {"kind": "top_k", "k": 5},
    ],
    [{"kind": "clip", "norm": 1}, {"kind": "random_k", "k": 5}, {"kind": "laplace_noise", "epsilon": 2}],
    [
        {"kind": "clip", "norm": 1},
        {"kind": "random_k", "k": 5},
        {"kind": "rotate", "block": 8},
        {"kind": "gaussian_noise", "epsilon": 2, "delta": 1e-6},
        {"kind": "quantize", "bits": 2},
    ],
    [
        {"kind": "clip", "norm": 1},
        {"kind": "gaussian_noise", "epsilon": 2, "delta": 1e-6},
        {"kind": "error_feedback"},
        {"kind": "top_k", "k": 5},
    ],
]

UNSAFE_LDP = {
    "top-k indices": [
        {"kind": "clip", "norm": 1},
        {"kind": "top_k", "k": 5},
        {"kind": "gaussian_noise", "epsilon": 2, "delta": 1e-6},
    ],
    "residual": [
        {"kind": "clip", "norm": 1},
        {"kind": "error_feedback"},
        {"kind": "laplace_noise", "epsilon": 2},
    ],
    "adaptive clipping": [
        {"kind": "clip", "norm": 1, "adaptive": {"target_quantile": 0.5}},
        {"kind": "gaussian_noise", "epsilon": 2, "delta": 1e-6},
    ],
    "without a bound on the norm": [{"kind": "gaussian_noise", "epsilon": 2, "delta": 1e-6}],
}

BAD_ORDER = {
    "quantize must be the last": [{"kind": "quantize", "bits": 4}, {"kind": "top_k", "k": 3}],
    "at most one sparsifier": [{"kind": "top_k", "k": 3}, {"kind": "random_k", "k": 3}],
    "clip must be the first": [{"kind": "top_k", "k": 3}, {"kind": "clip", "norm": 1}],
    "after the sparsifier": [{"kind": "rotate"}, {"kind": "top_k", "k": 3}],
    "appears twice": [{"kind": "rotate"}, {"kind": "rotate"}],
    "error_feedback must come before": [{"kind": "top_k", "k": 3}, {"kind": "error_feedback"}],
}


@pytest.mark.parametrize("stages", SAFE_LDP)
def test_safe_local_dp_configs_are_accepted(stages: list[dict]) -> None:
    assert PipelineConfig.model_validate(stages).local_mechanism(1000) is not None


@pytest.mark.parametrize("reason", sorted(UNSAFE_LDP))
def test_unsafe_local_dp_configs_are_refused_with_reason(reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        PipelineConfig.model_validate(UNSAFE_LDP[reason])


@pytest.mark.parametrize("reason", sorted(BAD_ORDER))
def test_bad_orders_are_refused(reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        PipelineConfig.model_validate(BAD_ORDER[reason])


def test_field_validation() -> None:
    for bad in (
        [{"kind": "quantize", "bits": 3}],
        [{"kind": "rotate", "block": 100}],
        [{"kind": "top_k"}],
        [{"kind": "top_k", "k": 3, "fraction": 0.1}],
        [{"kind": "clip", "norm": 1, "colour": "red"}],
        [{"kind": "sparkle"}],
        [{"kind": "clip", "norm": float("nan")}],
    ):
        with pytest.raises(ValidationError):
            PipelineConfig.model_validate(bad)


def test_toml_array_of_tables_maps_onto_the_config() -> None:
    class Top(BaseModel):
        pipeline: PipelineConfig

    text = """
    [[pipeline]]
    kind = "clip"
    norm = 0.5
    [[pipeline]]
    kind = "top_k"
    fraction = 0.01
    [[pipeline]]
    kind = "quantize"
    bits = 4
    """
    cfg = Top.model_validate(tomllib.loads(text)).pipeline
    assert cfg.kinds() == ["clip", "top_k", "quantize"]
    assert isinstance(cfg.root[2], QuantizeStage) and cfg.root[2].chunk == 512
    assert cfg.root[1].kept(1_246_874) == 12_469  # type: ignore[union-attr]


def test_laplace_sensitivity_follows_the_clip_norm_type() -> None:
    l1 = PipelineConfig.model_validate([{"kind": "clip", "norm": 1, "ord": 1}, {"kind": "laplace_noise", "epsilon": 2}])
    l2 = PipelineConfig.model_validate(
        [{"kind": "clip", "norm": 1}, {"kind": "random_k", "k": 100}, {"kind": "laplace_noise", "epsilon": 2}]
    )
    m1, m2 = l1.local_mechanism(10_000), l2.local_mechanism(10_000)
    assert m1 is not None and m1.sensitivity == 2.0 and m1.scale == 1.0
    assert m2 is not None and m2.sensitivity == pytest.approx(20.0)  # 2C·√k over the k noised coordinates


def test_describe_names_every_stage_with_its_settings_in_phone_order() -> None:
    config = PipelineConfig.model_validate(
        [{"kind": "clip", "norm": 1.5}, {"kind": "random_k", "k": 7}, {"kind": "quantize", "bits": 2}]
    )
    expected = "clip(norm=1.5, ord=2) → random_k(k=7, unbiased=True) → quantize(bits=2, chunk=512)"
    assert config.describe() == expected
    assert PipelineConfig.model_validate([]).describe() == "none (raw float32 deltas)"
