"""Validation of the fleet configuration models (device_sim/config.py)."""

import pytest
from pydantic import ValidationError

from fedkey.device_sim.config import AvailabilityConfig, DeviceConfig, PopulationConfig, RoundTimeConfig


def test_defaults_are_the_documented_figures():
    d = DeviceConfig()
    assert d.download_median_mb_s == 0.75 and d.upload_median_mb_s == 0.25
    assert (d.dropout_min, d.dropout_max) == (0.06, 0.10)
    assert RoundTimeConfig().overhead_s == 10.0


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (DeviceConfig, {"download_median_mb_s": -1.0}, "download_median_mb_s"),
        (DeviceConfig, {"upload_median_mb_s": 0.0}, "upload_median_mb_s"),
        (DeviceConfig, {"dropout_max": 1.5}, "dropout_max"),
        (DeviceConfig, {"dropout_min": 0.2, "dropout_max": 0.1}, "must not exceed dropout_max"),
        (DeviceConfig, {"memory_tier_weights": [1.0]}, "one weight per value"),
        (DeviceConfig, {"utc_offsets_h": [0.0], "utc_offset_weights": [-1.0]}, "weights must be >= 0"),
        (DeviceConfig, {"utc_offsets_h": [20.0], "utc_offset_weights": [1.0]}, "[-12, 14]"),
        (DeviceConfig, {"bandwidth_correlation": 2.0}, "bandwidth_correlation"),
        (AvailabilityConfig, {"peak_probability": -0.1}, "peak_probability"),
        (AvailabilityConfig, {"peak_probability": 0.1, "daytime_floor": 0.2}, "must not exceed peak"),
        (AvailabilityConfig, {"peak_local_hour": 24.0}, "peak_local_hour"),
        (RoundTimeConfig, {"overhead_s": -1.0}, "overhead_s"),
        (PopulationConfig, {"size": 0}, "size"),
        (PopulationConfig, {"synthetic_user_mapping": "random"}, "synthetic_user_mapping"),
        (DeviceConfig, {"download_mbps": 1.0}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_values_are_refused_with_a_clear_error(model, kwargs, message):
    with pytest.raises(ValidationError, match=message):
        model(**kwargs)


def test_every_field_is_described():
    for model in (DeviceConfig, AvailabilityConfig, RoundTimeConfig, PopulationConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_nested_config_from_plain_data():
    cfg = PopulationConfig.model_validate(
        {"size": 5000, "devices": {"utc_offsets_h": [1.0], "utc_offset_weights": [1]}}
    )
    assert cfg.size == 5000 and cfg.devices.utc_offsets_h == [1.0]
    assert cfg.availability == AvailabilityConfig()
