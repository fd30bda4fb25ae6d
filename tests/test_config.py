"""One convention for every config dataclass: to_dict / from_dict (nested configs, tuples, unknown keys) and one
range check with errors that name the field, what was expected and what was found."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from napari_unet.augment import AugmentConfig
from napari_unet.model import UNetConfig
from napari_unet.modelfile import Normalization
from napari_unet.postprocess import PostprocessConfig
from napari_unet.training import TrainConfig

CONFIGS = [
    UNetConfig(depth=3, base_channels=8, batch_norm=True),
    TrainConfig(iterations=7, augment=AugmentConfig(contrast=(0.5, 2.0), flip_p=0.0), time_budget=30.0),
    AugmentConfig(gamma=(0.9, 1.1)),
    PostprocessConfig(threshold=0.4, grow_threshold=0.2, watershed=True),
    Normalization(2.0, 98.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_json_and_reports_unknown_keys(config):
    saved = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(saved) == config
    # a saved TrainConfig without class_weights predates the field: every run then balanced the classes
    legacy = {"class_weights": "balanced"} if isinstance(config, TrainConfig) else {}
    assert type(config).from_dict({}) == replace(type(config)(), **legacy)
    with pytest.raises(ValueError, match=f"unknown {type(config).__name__} keys \\['typo'\\]"):
        type(config).from_dict({**saved, "typo": 1})


def test_nested_configs_and_tuples_come_back_with_their_types():
    config = TrainConfig(augment=AugmentConfig(brightness=(-0.1, 0.3)))
    restored = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert isinstance(restored.augment, AugmentConfig) and restored.augment.brightness == (-0.1, 0.3)
    assert config.to_dict()["augment"]["brightness"] == (-0.1, 0.3)


def test_numpy_values_are_saved_as_python_numbers():
    saved = PostprocessConfig(threshold=np.float32(0.25), min_size=np.int64(5)).to_dict()
    assert type(saved["threshold"]) is float and type(saved["min_size"]) is int


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: UNetConfig(depth=0), ValueError, r"UNetConfig.depth must be an integer >= 1; got 0"),
        (lambda: UNetConfig(depth=2.5), ValueError, r"UNetConfig.depth must be an integer >= 1; got 2.5"),
        (
            lambda: UNetConfig(dropout=1.0),
            ValueError,
            r"UNetConfig.dropout \(a probability\) must be a number in \[0, 1\)",
        ),
        (lambda: UNetConfig(padding="reflect"), ValueError, r"UNetConfig.padding must be one of 'valid', 'same'"),
        (lambda: TrainConfig(learning_rate=0), ValueError, r"TrainConfig.learning_rate must be a number > 0; got 0"),
        (lambda: TrainConfig(iterations="10"), TypeError, r"TrainConfig.iterations must be an integer >= 1; got '10'"),
        (lambda: TrainConfig(time_budget=-5.0), ValueError, r"time_budget \(seconds\) must be a number >= 0 or None"),
        (lambda: TrainConfig(calibrate_growth="no"), TypeError, r"TrainConfig.calibrate_growth must be True or False"),
        (lambda: TrainConfig(augment={"flip_p": 0.0}), TypeError, r"TrainConfig.augment must be an AugmentConfig"),
        (lambda: AugmentConfig(shift=-1.0), ValueError, r"AugmentConfig.shift must be a number >= 0; got -1.0"),
        (lambda: PostprocessConfig(threshold=True), TypeError, r"PostprocessConfig.threshold \(a probability\)"),
        (lambda: PostprocessConfig(threshold=float("nan")), ValueError, r"threshold .* got nan"),
        (
            lambda: Normalization(low=-1.0),
            ValueError,
            r"Normalization.low \(a percentile\) must be a number in \[0, 100\]",
        ),
        (lambda: Normalization(low=50.0, high=40.0), ValueError, r"0 <= low < high <= 100"),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_the_field(make, error, message):
    with pytest.raises(error, match=message):
        make()
